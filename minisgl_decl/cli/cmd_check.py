"""`minisgl-decl check SPEC [--model DIR] [--tp N]`: parity with transformers, float32.

Each check passes when our max |Δlogit| is within `--tolerance` or within
`--noise-multiple` x transformers' own float32 noise on the same logits (float32 vs a
float64 copy of the reference). On a failure the report names the first module whose
output diverges from transformers (`parity/diagnose.py`). `--format json` prints one JSON
document with the same numbers and the diagnosis.

With `--tp N` the same checks run on N ranks (one process each, gloo on CPU): the plain
command starts the ranks itself on a free localhost port; under `torchrun` (RANK /
WORLD_SIZE set) each process is one rank. Rank 0 alone prints; the report and exit code
are the same as at TP=1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from ..errors import UserError
from ..parity.check import DEFAULT_NOISE_MULTIPLE, DEFAULT_TOLERANCE, allowed, check_passes, verdict
from ..parity.run import ParityReport, check_checkpoint, check_random_model, quiet_transformers
from ..validate import load_valid_spec
from .checks import check_count, check_device, check_input_dir

FORMATS = ("text", "json")


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="compare logits with transformers (tiny random model, or --model DIR)")
    p.add_argument("spec", help="spec .yaml file")
    p.add_argument("--model", metavar="DIR", help="HF checkpoint directory; default: a tiny random model")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |Δlogit| (default 1e-4)")
    p.add_argument(
        "--noise-multiple",
        type=float,
        default=DEFAULT_NOISE_MULTIPLE,
        help="or at most this many times transformers' own float32 noise vs float64 (default 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size: N ranks on this host (default 1)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: both models there, ours on the Triton kernels (with --tp: NCCL, one GPU a rank)",
    )
    p.add_argument("--format", choices=FORMATS, default="text", help="text (default) or one JSON document")
    p.set_defaults(run=run)


def _argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "check",
        args.spec,
        "--tolerance",
        repr(args.tolerance),
        "--noise-multiple",
        repr(args.noise_multiple),
        "--seed",
        str(args.seed),
        "--tp",
        str(args.tp),
        "--device",
        args.device,
        "--format",
        args.format,
    ]
    return [*argv, "--model", args.model] if args.model else argv


def _header(args: argparse.Namespace, name: str, arch: str) -> str:
    what = args.model or f"tiny random {arch} from the spec's example_config"
    import transformers

    bound = f"tolerance {args.tolerance:g} or {args.noise_multiple:g} x noise floor"
    return (
        f"check {name}: {what}, tp={args.tp}, float32 on {args.device}, {bound}, "
        f"reference transformers {transformers.__version__}"
    )


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _json_ready(value: Any) -> Any:
    """NaN/Inf become null: the output stays valid JSON."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _report_json(args: argparse.Namespace, name: str, report: ParityReport) -> int:
    tol, k = args.tolerance, args.noise_multiple
    ok, worst = verdict(report.results, tol, k)
    doc = {
        "spec": name,
        "model": args.model,
        "tp": args.tp,
        "device": args.device,
        "tolerance": tol,
        "noise_multiple": k,
        "pass": ok,
        "max_abs_diff": worst,
        "checks": [
            {
                "name": r.name,
                "max_abs_diff": r.max_abs_diff,
                "noise_floor": r.noise_floor,
                "allowed": allowed(r, tol, k),
                "pass": check_passes(r, tol, k),
                "nonfinite": r.nonfinite,
            }
            for r in report.results
        ],
        "diagnosis": report.diagnosis.to_json() if report.diagnosis is not None else None,
    }
    print(json.dumps(_json_ready(doc), indent=2), flush=True)
    return 0 if ok else 1


def _report(args: argparse.Namespace, name: str, report: ParityReport) -> int:
    if args.format == "json":
        return _report_json(args, name, report)
    tol, k = args.tolerance, args.noise_multiple
    for r in report.results:
        bound = (
            f"  noise floor {r.noise_floor:.1e} -> bound {allowed(r, tol, k):.1e}" if r.noise_floor is not None else ""
        )
        mark = "" if check_passes(r, tol, k) else "  FAIL"
        print(
            f"  {r.name:<48} max|Δlogit| = {r.max_abs_diff:.3e}{bound}{mark}"
            + (f"  ({r.nonfinite})" if r.nonfinite else "")
        )
    ok, worst = verdict(report.results, tol, k)
    why = next((r.nonfinite for r in report.results if r.nonfinite), None)
    print(
        f"{'PASS' if ok else 'FAIL'} max_abs_diff={worst:.3e}" + (f": non-finite logits: {why}" if why else ""),
        flush=True,
    )
    if report.diagnosis is not None:
        for line in report.diagnosis.lines():
            print(line)
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
        if args.format == "text":
            print(_header(args, spec.name, spec.architectures[0]), flush=True)
    comm = init_group(env, args.device)
    try:
        report = parity_on_rank(
            spec, comm, args.model, seed=args.seed, tolerance=args.tolerance, multiple=args.noise_multiple
        )
    except UserError:
        if env.rank == 0:
            raise
        return 1  # rank 0 reports the same error
    finally:
        shutdown()
    return _report(args, spec.name, report) if env.rank == 0 else 0


def run(args: argparse.Namespace) -> int:
    if args.tp < 1:
        raise UserError(f"--tp must be at least 1, got {args.tp}")
    check_count(args.tp, "--tp", 1, 1024)
    check_device(args.device)
    check_count(args.seed, "--seed", 0, 2**63 - 1)
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise UserError(f"--tolerance {args.tolerance}: expected a finite number >= 0")
    if not math.isfinite(args.noise_multiple) or args.noise_multiple < 0:
        raise UserError(f"--noise-multiple {args.noise_multiple}: expected a finite number >= 0 (0: tolerance only)")
    if args.model is not None:
        check_input_dir(args.model, "--model")
    if args.tp > 1:
        return _run_tp(args)
    spec = load_valid_spec(args.spec)
    quiet_transformers()
    if args.format == "text":
        print(_header(args, spec.name, spec.architectures[0]), flush=True)
    tol, k = args.tolerance, args.noise_multiple
    if args.model:
        report = check_checkpoint(spec, args.model, args.seed, args.device, tol, k)
    else:
        report = check_random_model(spec, seed=args.seed, device=args.device, tolerance=tol, multiple=k)
    return _report(args, spec.name, report)
