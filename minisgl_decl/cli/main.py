"""Entry point: parse arguments, run a command, and show user errors without tracebacks."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..errors import SpecError, UserError
from . import checks, cmd_check, cmd_compile, cmd_generate, cmd_new, cmd_schema, cmd_serve, cmd_validate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minisgl-decl",
        description="Declarative, YAML-driven LLM model compiler and inference runtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (cmd_validate, cmd_schema, cmd_compile, cmd_check, cmd_generate, cmd_new, cmd_serve):
        module.register(sub)
    return parser


def check_common(args: argparse.Namespace) -> None:
    """Options several commands share, checked before any command runs (each names its option)."""
    if getattr(args, "max_new_tokens", None) is not None:
        checks.check_count(args.max_new_tokens, "--max-new-tokens")
    if getattr(args, "max_tokens", None) is not None:
        checks.check_count(args.max_tokens, "--max-tokens/--max-new-tokens")
    if getattr(args, "device", None) is not None:
        checks.check_device(args.device)
    if getattr(args, "model", None) is not None and not getattr(args, "model_may_be_hub_id", False):
        checks.check_input_dir(args.model, "--model")
    if getattr(args, "tp", None) is not None:
        checks.check_count(args.tp, "--tp", 1, 1024)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_common(args)
        return int(args.run(args) or 0)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} error(s)", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "internal error: this is a bug in minisgl-decl, please report it with the traceback above", file=sys.stderr
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
