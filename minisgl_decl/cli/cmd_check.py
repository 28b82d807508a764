"""`minisgl-decl check SPEC [--model DIR] [--tp N]`: parity with transformers, float32.

With `--tp N` the same checks run on N ranks (one process each, gloo on CPU): the plain
command starts the ranks itself on a free localhost port; under `torchrun` (RANK /
WORLD_SIZE set) each process is one rank. Rank 0 alone prints; the report and exit code
are the same as at TP=1.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ..errors import UserError
from ..parity.check import DEFAULT_TOLERANCE, CheckResult, verdict
from ..parity.run import parity_on_checkpoint, parity_on_random_model, quiet_transformers
from ..validate import load_valid_spec
from .checks import check_count, check_device, check_input_dir


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="compare logits with transformers (tiny random model, or --model DIR)")
    p.add_argument("spec", help="spec .yaml file")
    p.add_argument("--model", metavar="DIR", help="HF checkpoint directory; default: a tiny random model")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |Δlogit| (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size: N ranks on this host (default 1)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: both models there, ours on the Triton kernels (with --tp: NCCL, one GPU a rank)",
    )
    p.set_defaults(run=run)


def _argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "check",
        args.spec,
        "--tolerance",
        repr(args.tolerance),
        "--seed",
        str(args.seed),
        "--tp",
        str(args.tp),
        "--device",
        args.device,
    ]
    return [*argv, "--model", args.model] if args.model else argv


def _header(args: argparse.Namespace, name: str, arch: str) -> str:
    what = args.model or f"tiny random {arch} from the spec's example_config"
    return f"check {name}: {what}, tp={args.tp}, float32 on {args.device}, tolerance {args.tolerance:g}"


def _report(results: list[CheckResult], tolerance: float) -> int:
    for r in results:
        print(f"  {r.name:<48} max|Δlogit| = {r.max_abs_diff:.3e}" + (f"  ({r.nonfinite})" if r.nonfinite else ""))
    ok, worst = verdict(results, tolerance)
    why = next((r.nonfinite for r in results if r.nonfinite), None)
    print(
        f"{'PASS' if ok else 'FAIL'} max_abs_diff={worst:.3e}" + (f": non-finite logits: {why}" if why else ""),
        flush=True,
    )
    return 0 if ok else 1


def _run_tp(args: argparse.Namespace) -> int:
    from ..parity.tp import parity_on_rank
    from ..pipeline import compile_spec
    from ..runtime.distributed import init_group, launch, rank_env, shutdown

    spec = load_valid_spec(args.spec)
    env = rank_env()
    if env is None:  # start the ranks; problems a person must fix are reported once, before that
        compile_spec(spec, args.model, args.tp)
        return launch([sys.executable, "-m", "minisgl_decl.cli.main", *_argv(args)], args.tp)
    if env.world_size != args.tp:
        raise UserError(f"--tp {args.tp} does not match WORLD_SIZE={env.world_size} of this launch")
    if env.rank == 0:
        quiet_transformers()
        print(_header(args, spec.name, spec.architectures[0]), flush=True)
    comm = init_group(env, args.device)
    try:
        results = parity_on_rank(spec, comm, args.model, seed=args.seed)
    except UserError:
        if env.rank == 0:
            raise
        return 1  # rank 0 reports the same error
    finally:
        shutdown()
    return _report(results, args.tolerance) if env.rank == 0 else 0


def run(args: argparse.Namespace) -> int:
    if args.tp < 1:
        raise UserError(f"--tp must be at least 1, got {args.tp}")
    check_count(args.tp, "--tp", 1, 1024)
    check_device(args.device)
    check_count(args.seed, "--seed", 0, 2**63 - 1)
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise UserError(f"--tolerance {args.tolerance}: expected a finite number >= 0")
    if args.model is not None:
        check_input_dir(args.model, "--model")
    if args.tp > 1:
        return _run_tp(args)
    spec = load_valid_spec(args.spec)
    quiet_transformers()
    print(_header(args, spec.name, spec.architectures[0]), flush=True)
    if args.model:
        results = parity_on_checkpoint(spec, args.model, args.seed, args.device)
    else:
        results = parity_on_random_model(spec, seed=args.seed, device=args.device)
    return _report(results, args.tolerance)
