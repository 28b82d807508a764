"""Where do CUDA-graph decode and eager decode part ways? (diagnostic, CUDA only)

    PYTHONPATH=$PWD python tools/diag_graph_equality.py

A tiny random Llama (transformers class, bf16, loaded through our plan), 4 prompts decoded
together for 12 steps, teacher-forced on the same tokens, by: (A) the eager runner (slot
lists), (A2) the same again, (P) eager with the paged decode of the graph path, (S) P on a
side stream, (G) graph replay. Prints the largest logit difference between pairs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.parity.run import quiet_transformers
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.runtime.cuda_graph import DecodeGraphs
from minisgl_decl.runtime.runner import ModelRunner, StepBatch
from minisgl_decl.spec.compile import load_ir

SPECS = Path(__file__).resolve().parent.parent / "specs"


class EagerPaged(DecodeGraphs):
    """The graph path's inputs and paged attention, run eagerly (optionally on a side stream)."""

    side = False

    def run(self, step: StepBatch, req_to_token: torch.Tensor) -> torch.Tensor:
        b = step.tokens.shape[0]
        inputs = self.inputs[b]
        inputs.copy_(torch.stack((step.tokens, step.positions, step.out_slots, step.rows, step.kv_lens)))
        req_to_token[inputs[3], inputs[1]] = inputs[2].to(req_to_token.dtype)
        tokens, batch = self._batch(b)
        if not self.side:
            return self.model(tokens, batch)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.model(tokens, batch)
        torch.cuda.current_stream().wait_stream(stream)
        return out


def decode(model: Any, mode: str, prompts: list[list[int]], forced: list[list[int]] | None) -> list[torch.Tensor]:
    runner = ModelRunner(model, 1024, dtype=torch.bfloat16, device="cuda", max_rows=8, max_len=128)
    if mode == "G":
        runner.capture_cuda_graphs([4])
    elif mode in ("P", "S"):
        graphs = EagerPaged(model, runner.kv, runner.req_to_token, runner.comm, runner.device, [4])
        graphs.side = mode == "S"
        graphs.graphs = {4: None}  # type: ignore[dict-item]  # fits() only checks for entries
        runner.graphs = graphs
    logits = runner.extend(dict(enumerate(prompts)))
    tokens = [int(x.argmax()) for x in logits]
    seen = []
    for step in range(12):
        out = torch.stack(runner.decode(dict(enumerate(tokens)))).float().cpu()
        seen.append(out)
        tokens = [f[step] for f in forced] if forced is not None else out.argmax(-1).tolist()
    return seen


def main() -> None:
    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_ir(SPECS / "llama.yaml")
        build_reference(spec, None, seed=3, directory=tmp)
        model = load_model(compile_spec(spec, tmp), device="cuda", dtype=torch.bfloat16)
        gen = torch.Generator().manual_seed(4)
        prompts = [torch.randint(0, 211, (n,), generator=gen).tolist() for n in (5, 9, 14, 21)]
        forced = [torch.randint(0, 211, (12,), generator=gen).tolist() for _ in prompts]
        runs = {m: decode(model, m, prompts, forced) for m in ("A", "A2", "P", "S", "G")}
    for a, b in (("A", "A2"), ("A", "P"), ("P", "S"), ("P", "G"), ("A", "G")):
        diffs = [(x - y).abs().max().item() for x, y in zip(runs[a], runs[b], strict=True)]
        first = next((i for i, d in enumerate(diffs) if d > 0), None)
        print(f"{a} vs {b}: max |dlogit| {max(diffs):.3g}, first differing step {first}", flush=True)


if __name__ == "__main__":
    main()
