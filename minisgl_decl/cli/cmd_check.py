"""`minisgl-decl check SPEC [--model DIR]`: parity with transformers, float32."""

from __future__ import annotations

import argparse
from typing import Any

from ..parity.check import DEFAULT_TOLERANCE, verdict
from ..parity.run import parity_on_checkpoint, parity_on_random_model, quiet_transformers
from ..validate import load_valid_spec


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="compare logits with transformers (tiny random model, or --model DIR)")
    p.add_argument("spec", help="spec .yaml file")
    p.add_argument("--model", metavar="DIR", help="HF checkpoint directory; default: a tiny random model")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |Δlogit| (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = load_valid_spec(args.spec)
    quiet_transformers()
    what = args.model or f"tiny random {spec.spec.serves.architectures[0]} from the spec's example_config"
    print(f"check {spec.spec.name}: {what}, tp=1, float32, tolerance {args.tolerance:g}", flush=True)
    if args.model:
        results = parity_on_checkpoint(spec, args.model, args.seed)
    else:
        results = parity_on_random_model(spec, seed=args.seed)
    for r in results:
        print(f"  {r.name:<48} max|Δlogit| = {r.max_abs_diff:.3e}")
    ok, worst = verdict(results, args.tolerance)
    print(f"{'PASS' if ok else 'FAIL'} max_abs_diff={worst:.3e}")
    return 0 if ok else 1
