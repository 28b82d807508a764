"""A CLI whose reader goes away (`minisgl-decl schema | head -1`) stops quietly, like Unix tools:
no traceback, no "internal error", exit status 141 (what a shell shows for SIGPIPE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_closed_stdout_pipe_exits_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "minisgl_decl.cli.main", "schema"],  # ~110 KB: more than a pipe buffer holds
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # like `head -1` exiting
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_full_output_still_exits_0() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "schema"], capture_output=True, env=env, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0 and done.stderr == b"" and done.stdout.rstrip().endswith(b"}")
