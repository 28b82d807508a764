"""`minisgl-decl check SPEC [--model DIR]`: parity with transformers, float32."""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from ..parity.check import DEFAULT_TOLERANCE, hf_reference_fn, run_parity_checks, verdict
from ..parity.hf_reference import build_reference, load_reference
from ..pipeline import compile_spec, load_model
from ..runtime.runner import ModelRunner
from ..validate import load_valid_spec


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="compare logits with transformers (tiny random model, or --model DIR)")
    p.add_argument("spec", help="spec .yaml file")
    p.add_argument("--model", metavar="DIR", help="HF checkpoint directory; default: a tiny random model")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |Δlogit| (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers/hub in our report."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    spec = load_valid_spec(args.spec)
    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="minisgl-check-") as tmp:
        model_dir = args.model or build_reference(spec, seed=args.seed, directory=tmp)
        what = args.model or f"tiny random {spec.spec.serves.architectures[0]}"
        compiled = compile_spec(spec, model_dir)
        arch = (compiled.checkpoint.config.get("architectures") if compiled.checkpoint else None) or [
            spec.spec.serves.architectures[0]]
        hf = load_reference(model_dir, arch[0])
        model = load_model(compiled)
        vocab = int(compiled.config["vocab"]) if "vocab" in compiled.config.values else hf.config.vocab_size
        print(f"check {spec.spec.name}: {what}, tp=1, float32, tolerance {args.tolerance:g}")
        results = run_parity_checks(lambda: ModelRunner(model, 256), hf_reference_fn(hf), vocab, args.seed)
    for r in results:
        print(f"  {r.name:<48} max|Δlogit| = {r.max_abs_diff:.3e}")
    ok, worst = verdict(results, args.tolerance)
    print(f"{'PASS' if ok else 'FAIL'} max_abs_diff={worst:.3e}")
    return 0 if ok else 1
