"""Start `minisgl-decl serve` in a subprocess for the server tests and read its URL from the banner.

Not a test module: imported by tests/test_server*.py. The server listens on `--port 0` (a
free port chosen by the OS) and prints `serving ... at http://HOST:PORT/v1`; output is
drained by a thread so the pipe never fills, and shown when a test fails to start it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _helpers import DEMO, ROOT

_URL = re.compile(r"serving `([^`]+)` at (http://\S+)/v1")
START_TIMEOUT_S = 300


def demo_model() -> Path:
    if not (DEMO / "config.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{DEMO} missing: .ci/run must run tools/prepare_demo_model.py")
        pytest.skip("demo model not prepared: python tools/prepare_demo_model.py")
    return DEMO


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minisgl_decl.cli.main", "serve", "--port", "0", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.url, self.model = self._wait_for_banner()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def output(self) -> str:
        with self._seen:
            return "".join(self.lines)

    def _wait_for_banner(self) -> tuple[str, str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        with self._seen:
            while True:
                for line in self.lines:
                    m = _URL.search(line)
                    if m:
                        return m.group(2), m.group(1)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{''.join(self.lines)}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"serve did not start in {START_TIMEOUT_S}s:\n{''.join(self.lines)}")
                self._seen.wait(timeout=1.0)

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM and wait: the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
