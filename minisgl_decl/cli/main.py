"""Entry point: parse arguments, run a command, and show user errors without tracebacks."""

from __future__ import annotations

import argparse
import os
import select
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


#: the exit status of a process killed by SIGPIPE, as a shell reports it (128 + 13)
EXIT_BROKEN_PIPE = 141


def _stdout_closed() -> int:
    """The reader of our output went away (``... | head``): stop quietly, as Unix tools do.

    stdout is pointed at /dev/null so that the interpreter's final flush of what is still
    buffered does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end is closed (polling it reports an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd (captured), or no poll on this platform
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_common(args)
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
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
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():  # not another pipe or socket
            return _stdout_closed()
        traceback.print_exc()
        print(
            "internal error: this is a bug in minisgl-decl, please report it with the traceback above", file=sys.stderr
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
