"""Host cost of one decode forward: the generated module vs an op-by-op interpreter.

CPU decode of a small model is host-bound, so the executor's own Python overhead shows.
Builds a tiny random Llama (30 layers, hidden 64) from specs/llama.yaml, then times
`model(tokens, batch)` (the generated `block` loop the runtime executes) against the
baseline: an interpreter over the unrolled, fused `graph.program` (the design the
generated module replaced; kept here only as the baseline), on the same modules and
inputs, interleaved. Checks both give equal logits first.

    PYTHONPATH=$PWD python tools/bench_host_forward.py [--layers 30] [--batch 4] [--reps 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minisgl_decl.catalogue.context import ForwardBatch
from minisgl_decl.graph.build import FORWARD_INPUT, FORWARD_OUTPUT
from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.runtime.model import CompiledModel
from minisgl_decl.runtime.runner import ModelRunner
from minisgl_decl.spec.compile import load_ir

_ARITH = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


def interpret(model: CompiledModel, tokens: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
    """Baseline: walk the unrolled program, one dict lookup per module and variable."""
    env: dict[str, torch.Tensor] = {FORWARD_INPUT: tokens}
    for op in model.graph.program:
        args = [env[v] if isinstance(v, str) else v for v in op.inputs]
        if op.kind == "call":
            env[op.outputs[0]] = model.module(op.module or "")(*args, batch)
        elif op.kind == "add_norm":
            normed, env[op.outputs[0]] = model.module(op.module or "").forward_add(args[0], args[1], batch)
            env[op.outputs[1]] = normed
        else:
            env[op.outputs[0]] = _ARITH[op.kind](args[0], args[1])
    return env[FORWARD_OUTPUT]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_ir(Path(__file__).resolve().parent.parent / "specs" / "llama.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "num_hidden_layers": a.layers,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
        build_reference(spec, overrides, directory=tmp)
        model = load_model(compile_spec(spec, tmp))
    runner = ModelRunner(model, 4096)
    runner.extend({r: [1, 2, 3, 4] for r in range(a.batch)})
    captured: list[tuple[torch.Tensor, ForwardBatch]] = []  # one real decode step's inputs
    hook = model.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs) and None)
    runner.decode({r: 5 for r in range(a.batch)})
    hook.remove()
    tokens, batch = captured[0]
    with torch.inference_mode():
        assert torch.equal(model(tokens, batch), interpret(model, tokens, batch))
        runs = {"generated module": model.forward, "interpreter (baseline)": lambda t, b: interpret(model, t, b)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(a.reps):  # interleaved, so drift on a shared machine hits both alike
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn(tokens, batch)
                times[name].append(time.perf_counter() - t0)
    print(f"decode forward, {a.layers} layers, batch {a.batch}, {a.reps} reps, 1 thread (median / p10 ms):")
    for name, ts in times.items():
        ts.sort()
        print(f"  {name:<24} {statistics.median(ts) * 1e3:7.3f} / {ts[len(ts) // 10] * 1e3:7.3f}")


if __name__ == "__main__":
    main()
