"""Parity with transformers at TP > 1: every rank runs the same checks through its own shard.

Call `parity_on_rank` on every rank of a process group (started by `launch`, torchrun,
or the `python -m minisgl_decl.parity.tp` entry below). Rank 0 builds the tiny random
checkpoint (unless one is given) and tells the others where it is; every rank compiles
the plan (headers only), loads its shard, and runs the same requests; rank 0 alone runs
transformers and holds the real differences (the logits are gathered on every rank).

The module entry runs many cases in one process group, so tests pay the process start
and the imports once:

    python -m minisgl_decl.parity.tp CASES.json RESULTS.json   # under launch/torchrun

CASES.json: `[{"spec": "specs/llama.yaml", "overrides": {...}, "seed": 0}, ...]` (optional
`model`: a checkpoint directory instead of a random model; `reference`: where transformers
reads the same weights, if not from `model`);
RESULTS.json (rank 0): per case, either `{"results": [[name, max_abs_diff], ...],
"noise_floors": [...], "diagnosis": {...} or null}` or `{"error": message}` for a user error (e.g. tp does not
divide the heads).

On a failed check every rank replays its input with module outputs recorded and rank 0
names the first module diverging from transformers (`diagnose.py`): the hooks run at
this TP size, so a bug that only shows at TP > 1 is located too.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..pipeline import compile_spec, load_model
from ..runtime.distributed import GroupComm, init_group, rank_env, shutdown
from ..runtime.runner import ModelRunner
from ..spec.compile import load_ir
from ..spec.ir import SpecIR
from .check import (
    DEFAULT_NOISE_MULTIPLE,
    DEFAULT_TOLERANCE,
    Reference,
    first_failing,
    hf_reference_fn,
    run_parity_checks,
)
from .hf_reference import build_reference, load_reference, require_reference_release
from .run import ParityReport, diagnose_failure, float64_reference

KV_SLOTS = 256


def _placeholder_reference(vocab: int) -> Callable[[list[int]], torch.Tensor]:
    """Ranks > 0 take part in every forward but compare nothing: their differences are discarded."""
    return lambda ids: torch.zeros(len(ids), vocab)


def parity_on_rank(
    spec: SpecIR,
    comm: GroupComm,
    model_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    reference_dir: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    multiple: float = DEFAULT_NOISE_MULTIPLE,
) -> ParityReport:
    """Run the parity checks as rank `comm.rank` of `comm.size`; meaningful results on rank 0.

    `reference_dir`: where transformers loads the same weights from, when `model_dir` holds
    them in a layout transformers does not read (e.g. fused qkv); default `model_dir`.
    """
    tmp: str | None = None

    def make_checkpoint() -> str:
        nonlocal tmp
        if model_dir is not None:
            return str(model_dir)
        tmp = tempfile.mkdtemp(prefix="minisgl-check-")
        build_reference(spec, overrides, seed=seed, directory=tmp)
        return tmp

    path = _from_rank0(comm, make_checkpoint)
    try:
        compiled = compile_spec(spec, path, tp=comm.size)
        assert compiled.checkpoint is not None
        device = comm.device
        hf: Any = None
        ref64: Reference | None = None

        def load_hf() -> str:  # and its float64 logits, before our model: peak memory as without them
            nonlocal hf, ref64
            require_reference_release(spec)
            assert compiled.checkpoint is not None
            arch = compiled.checkpoint.config.get("architectures") or spec.architectures
            hf = load_reference(reference_dir or path, arch[0]).to(device)
            vocab = int(hf.config.get_text_config().vocab_size)
            ref64 = float64_reference(hf, vocab, seed, str(device))
            return str(vocab)

        vocab = int(_from_rank0(comm, load_hf))
        model = load_model(compiled, comm.rank, progress=False, device=device)
        ref = hf_reference_fn(hf, device) if hf is not None else _placeholder_reference(vocab)

        def new_runner() -> ModelRunner:
            return ModelRunner(model, KV_SLOTS, comm=comm, device=device)

        results = run_parity_checks(new_runner, ref, vocab, seed, ref64)
        failing = _from_rank0(comm, lambda: str(first_failing(results, tolerance, multiple)))
        if failing == "None":
            return ParityReport(results, None)
        found = diagnose_failure(compiled, model, new_runner, hf, vocab, seed, int(failing), multiple, device)
        return ParityReport(results, found)
    finally:
        comm.barrier()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _from_rank0(comm: GroupComm, work: Callable[[], str]) -> str:
    """Run `work` on rank 0 and give its answer (or its user error) to every rank."""
    message = b""
    if comm.rank == 0:
        try:
            message = b"ok:" + work().encode()
        except UserError as exc:
            message = b"error:" + str(exc).encode()[:4000]
    shared = comm.broadcast_bytes(message)
    if shared.startswith(b"error:"):
        raise UserError(shared[len(b"error:") :].decode(errors="replace"))
    return shared[len(b"ok:") :].decode()


def run_cases(cases: list[dict[str, Any]], comm: GroupComm) -> list[dict[str, Any]]:
    """Each case on this group; a user error (same on every rank) is recorded and the next case runs."""
    out: list[dict[str, Any]] = []
    for case in cases:
        try:
            spec = load_ir(case["spec"])
            seed = int(case.get("seed", 0))
            report = parity_on_rank(spec, comm, case.get("model"), case.get("overrides"), seed, case.get("reference"))
            out.append(
                {
                    "case": case,
                    "results": [[r.name, r.max_abs_diff] for r in report.results],
                    "noise_floors": [r.noise_floor for r in report.results],
                    "diagnosis": report.diagnosis.to_json() if report.diagnosis is not None else None,
                }
            )
        except UserError as exc:
            out.append({"case": case, "error": str(exc)})
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = rank_env()
    if env is None or len(args) != 2:
        print(
            "usage: (under torchrun or minisgl_decl.runtime.distributed.launch) "
            "python -m minisgl_decl.parity.tp CASES.json RESULTS.json",
            file=sys.stderr,
        )
        return 2
    from .run import quiet_transformers

    quiet_transformers()
    comm = init_group(env)
    try:
        results = run_cases(json.loads(Path(args[0]).read_text()), comm)
    finally:
        shutdown()
    if env.rank == 0:
        Path(args[1]).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
