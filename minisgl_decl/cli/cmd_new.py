"""`minisgl-decl new --from DIR|config.json -o SPEC`: draft a spec for a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..spec.draft import draft_spec, read_checkpoint
from ..spec.find import default_spec_dirs


def register(sub: Any) -> None:
    p = sub.add_parser("new", help="draft a spec for a checkpoint from its config and tensor names")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="DIR|config.json",
        help="an HF checkpoint directory (config.json + safetensors) or a config.json",
    )
    p.add_argument("-o", "--output", required=True, metavar="SPEC", help="where to write the draft .yaml")
    p.add_argument("--specs", action="append", metavar="DIR", help="spec directories to match (default: specs/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    dirs = [Path(d) for d in args.specs] if args.specs else default_spec_dirs()
    text, best = draft_spec(read_checkpoint(args.source), out, dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    todos = text.count("# TODO")
    print(f"wrote {out}: extends `{best.spec.name}`" + (f", {todos} TODO(s)" if todos else ""))
    return 0
