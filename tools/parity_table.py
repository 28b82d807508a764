"""Max |Δlogit| of `minisgl-decl check` per spec at TP 1 and TP 2 (tiny random model, float32, CPU).

    python tools/parity_table.py [SPEC_NAME ...]      # default: every spec in specs/

Prints a markdown table; each cell is the verdict line of one `check` run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worst(spec: Path, tp: int) -> str:
    cmd = [sys.executable, "-m", "minisgl_decl.cli.main", "check", str(spec), "--tp", str(tp)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    last = (p.stdout.strip().splitlines() or ["(no output)"])[-1]
    verdict, _, value = last.partition(" max_abs_diff=")
    return f"{value} ({verdict})" if value else f"error: {p.stderr.strip().splitlines()[-1:]}"


def main(names: list[str]) -> None:
    specs = [ROOT / "specs" / f"{n}.yaml" for n in names] if names else sorted((ROOT / "specs").glob("*.yaml"))
    print("| spec | TP 1 max abs dlogit | TP 2 max abs dlogit |")
    print("| --- | --- | --- |")
    for spec in specs:
        print(f"| {spec.stem} | {worst(spec, 1)} | {worst(spec, 2)} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
