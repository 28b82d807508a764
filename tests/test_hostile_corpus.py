"""The hostile corpus (tests/hostile/corpus.py): every case fails clearly, in bounded time and memory.

Cheap cases run in-process through `main([...])` (one import of torch for all of them,
each under a SIGALRM time limit); the hang / memory class runs as subprocesses of the CLI
with a wall-clock limit and `RLIMIT_AS` (tests/hostile/run.py), two at a time. Every
case must exit with its expected code, print its expected message and no traceback.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
from corpus import Case, build
from run import classify, good_checkpoint, run_subprocess

from minisgl_decl.cli.main import main

REPO = Path(__file__).resolve().parents[1]
CASE_SECONDS = 60  # generous on a loaded 2-core machine; a clear error takes a fraction of it


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    root = tmp_path_factory.mktemp("hostile")
    return build(root / "corpus", good_checkpoint(root / "good"))


class _Timeout(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise _Timeout


def _in_process(case: Case) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    code: int | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(case.argv)
            except SystemExit as exc:  # argparse usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    except _Timeout:
        code = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = out.getvalue() + err.getvalue()
    return classify(case, code, text), text


def _report(failures: list[tuple[Case, str, str]]) -> str:
    return "\n\n".join(
        f"{c.name} [{c.group}] -> {kind}; expected exit {c.codes} and {c.expect!r}; argv {c.argv}\n{text[-1500:]}"
        for c, kind, text in failures
    )


def test_cheap_cases_fail_clearly_in_process(cases: list[Case]) -> None:
    light = [c for c in cases if not c.heavy]
    assert len(light) > 100
    failures = []
    for case in light:
        kind, text = _in_process(case)
        if kind != "clear":
            failures.append((case, kind, text))
    assert not failures, _report(failures)


def test_hang_and_memory_cases_fail_clearly_within_limits(cases: list[Case]) -> None:
    heavy = [c for c in cases if c.heavy]
    assert len(heavy) > 20
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: (c, *run_subprocess(c, REPO, CASE_SECONDS)), heavy))
    failures = [(c, kind, text) for c, kind, _code, text, _took in results if kind != "clear"]
    assert not failures, _report(failures)


def test_corpus_covers_every_class_of_the_issue(cases: list[Case]) -> None:
    groups = {c.group for c in cases}
    assert groups == {"yaml", "expr", "config", "dataflow", "serves", "checkpoint", "check", "cli", "unsafe"}


def test_failed_json_output_leaves_no_half_written_file(cases: list[Case]) -> None:
    case = next(c for c in cases if c.name == "cli_out_json_failure")
    kind, text = _in_process(case)
    assert kind == "clear", text
    out = Path(case.argv[case.argv.index("-o") + 1])
    assert not out.exists() or not any(out.iterdir())
