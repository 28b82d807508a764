"""Run the hostile corpus against a checkout and classify every run (issue 11's before/after table).

    python tests/hostile/run.py [--repo DIR] [--jobs 2] [--timeout 30] [--json OUT]

Each case runs as `python -m minisgl_decl.cli.main ...` with PYTHONPATH=DIR, a wall-clock
limit and an address-space limit (`RLIMIT_AS`, 3 GiB), and is classified as:
clear (expected exit code, expected message, no traceback), other-error (exit 1/2 but
not the expected message), traceback, hang (timed out or killed, e.g. out of memory), or
silent (exit 0 where an error belongs). The tiny good checkpoint is built with this
checkout's code, so the corpus is the same for every repo measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import Case, build

MEMORY_LIMIT = 3 << 30
HERE = Path(__file__).resolve().parents[2]


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def classify(case: Case, code: int | None, output: str) -> str:
    if code is None or code < 0 or code == 137:
        return "hang"
    if "Traceback" in output or code == 70:
        return "traceback"
    if code == 0 and 0 not in case.codes:
        return "silent"
    if code in case.codes and case.expect in output:
        return "clear"
    return "other-error"


def run_subprocess(case: Case, repo: Path, timeout: float) -> tuple[str, int | None, str, float]:
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **case.env}
    start = time.monotonic()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "minisgl_decl.cli.main", *case.argv],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            preexec_fn=limit_memory,
            stdin=subprocess.DEVNULL,
            cwd=repo,
        )
        code: int | None = res.returncode
        output = res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = None, f"timed out after {timeout}s\n{exc.stderr or ''}"
    took = time.monotonic() - start
    return classify(case, code, output), code, output, took


def good_checkpoint(directory: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from minisgl_decl.parity.hf_reference import build_reference
    from minisgl_decl.spec.compile import load_ir

    build_reference(load_ir(HERE / "specs" / "llama.yaml"), directory=directory)
    return directory


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=str(HERE), help="checkout whose CLI is run (default: this one)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--json", help="write per-case results here")
    ap.add_argument("--only", help="run only cases whose name contains this")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        good = good_checkpoint(Path(tmp) / "good")
        cases = build(Path(tmp) / "corpus", good)
        if args.only:
            cases = [c for c in cases if args.only in c.name]

        def one(c: Case) -> tuple[Case, str, int | None, str, float]:
            kind, code, out, took = run_subprocess(c, Path(args.repo), args.timeout)
            print(f"{kind:<12} {c.name:<36} rc={code} {took:6.1f}s", flush=True)
            return c, kind, code, out, took

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one, cases))
    counts = Counter(r[1] for r in results)
    rows = [
        {
            "name": c.name,
            "group": c.group,
            "result": kind,
            "code": code,
            "seconds": round(took, 2),
            "tail": out.strip().splitlines()[-1][:200] if out.strip() else "",
        }
        for c, kind, code, out, took in results
    ]
    for r in rows:
        if r["result"] != "clear":
            print(f"{r['result']:<12} {r['name']:<36} rc={r['code']} {r['seconds']:6.1f}s  {r['tail']}")
    print(
        f"\nruns {len(rows)}: "
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("clear", "other-error", "traceback", "hang", "silent"))
    )
    print(f"slowest: {max(r['seconds'] for r in rows):.1f}s; total {sum(r['seconds'] for r in rows):.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
