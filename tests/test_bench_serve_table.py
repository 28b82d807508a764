"""tools/bench_serve.py --shapes: the table from workers' events, the GPU split, the worker's command line,
the time budget's stop of a worker's process group, and (slow) the whole tool on the CPU at tiny shapes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))

from bench_serve import build_parser
from bench_serve_gpu import check_gpu_args, wait_workers, worker_argv, worker_parser
from bench_serve_table import assign, phase_note, read_events, render, shape_rows, start_timeline

META = {"shapes": ["llama3-8b"], "concurrent": 64, "lengths": "100:1024", "seed": 0, "b1_requests": 3}


def _events(gpu: str = "0", shape: str = "llama3-8b", card: str = "NVIDIA H200") -> list[dict[str, Any]]:
    v = {"torch": "2.11.0", "triton": "3.6.0", "transformers": "5.17.0", "python": "3.12.3"}
    return [
        {"type": "device", "gpu": gpu, "t": 0, "card": card, "sms": 132, "copy_tbps": 4.0, "date": "D", "versions": v},
        {"type": "begin", "gpu": gpu, "t": 1, "shape": shape, "phase": "checkpoint"},
        {"type": "phase", "gpu": gpu, "t": 9, "shape": shape, "phase": "checkpoint", "seconds": 8.0},
        {
            "type": "shape",
            "gpu": gpu,
            "t": 9,
            "shape": shape,
            "weight_bytes": 16e9,
            "active_bytes": 16e9,
            "bound": 250.0,
        },
        {"type": "result", "gpu": gpu, "t": 20, "shape": shape, "key": "serve_b1", "value": {"tok_s": 200.0}},
        {
            "type": "result",
            "gpu": gpu,
            "t": 30,
            "shape": shape,
            "key": "serve_many",
            "value": {
                "n": 64,
                "output_tok_s": 4000.0,
                "ttft_p50": 1004.4,
                "ttft_p99": 1974.0,
                "itl_p50": 6.54,
                "itl_p99": 52.1,
            },
        },
        {"type": "result", "gpu": gpu, "t": 50, "shape": shape, "key": "hf_b1", "value": {"tok_s": 16.0}},
        {"type": "result", "gpu": gpu, "t": 180, "shape": shape, "key": "hf_many", "value": {"tok_s": 250.0, "n": 64}},
    ]


def test_rows_ratios_and_bound() -> None:
    rows = shape_rows("llama3-8b", _events(), "H200", 64)
    assert rows == [
        ["H200", "llama3-8b", "batch 1", "serve (graphs, overlap)", "200.0", "80%", "12.50x", "-", "-"],
        ["H200", "llama3-8b", "batch 1", "transformers generate", "16.0", "6%", "1.00x", "-", "-"],
        ["H200", "llama3-8b", "batch 1", "bound: 16.00 GB / 4.00 TB/s", "250.0", "100%", "-", "-", "-"],
        [
            "H200",
            "llama3-8b",
            "64 concurrent",
            "serve (graphs, overlap)",
            "4000.0",
            "-",
            "16.00x",
            "1004 / 1974",
            "6.5 / 52.1",
        ],
        ["H200", "llama3-8b", "64 concurrent", "transformers generate (batch 64)", "250.0", "-", "1.00x", "-", "-"],
    ]


def test_rows_without_the_baseline_have_no_ratio() -> None:
    events = [e for e in _events() if e.get("key") not in ("hf_b1", "hf_many")]
    rows = shape_rows("llama3-8b", events, "H200", 64)
    assert [r[3] for r in rows] == ["serve (graphs, overlap)", "bound: 16.00 GB / 4.00 TB/s", "serve (graphs, overlap)"]
    assert rows[0][6] == "-" and rows[2][6] == "-"


def test_render_header_table_and_notes() -> None:
    text = render(_events(), {**META, "wall_s": 200.0, "budget": None, "stopped": False})
    lines = text.splitlines()
    assert lines[1] == "card: H200, 132 SMs; date: D"
    assert lines[2] == "torch 2.11.0, triton 3.6.0, transformers 5.17.0, python 3.12.3"
    assert "4.00 TB/s" in lines[3]
    header = (
        "| card | shape | load | engine | tok/s | of bound | vs transformers | TTFT p50 / p99 (ms) "
        "| ITL p50 / p99 (ms) |"
    )
    assert header in lines
    assert sum(line.startswith("| H200 | llama3-8b |") for line in lines) == 5
    assert "- llama3-8b (H200): checkpoint 8.0 s; 8 s in finished phases" in lines
    assert "- wall time of the whole run: 200 s" in lines


def test_render_parallel_names_each_gpu() -> None:
    events = _events("0", "llama3-8b", "NVIDIA H100 80GB HBM3") + _events("1", "qwen3-0.6b", "NVIDIA H100 80GB HBM3")
    text = render(events, {**META, "shapes": ["qwen3-0.6b", "llama3-8b"], "gpus": 2})
    rows = [line for line in text.splitlines() if line.startswith("| H100")]
    assert rows[0].startswith("| H100 80GB HBM3, GPU 1 | qwen3-0.6b |")  # the order asked for, not the GPUs'
    assert rows[-1].startswith("| H100 80GB HBM3, GPU 0 | llama3-8b |")
    assert "4.00 TB/s (GPU 0); 4.00 TB/s (GPU 1)" in text and "--parallel-gpus" in text


def test_phase_note_marks_the_unfinished_phase() -> None:
    events = [*_events()[:3], {"type": "begin", "gpu": "0", "t": 10, "shape": "llama3-8b", "phase": "serve start"}]
    note = phase_note("llama3-8b", events, "H200", stopped=True)
    assert note == "llama3-8b (H200): checkpoint 8.0 s, serve start stopped by --time-budget; 8 s in finished phases"
    failed = [*_events()[:2], {**_events()[2], "error": "RuntimeError('x')"}]
    assert "checkpoint 8.0 s (failed)" in (phase_note("llama3-8b", failed, "H200", stopped=False) or "")
    assert phase_note("qwen3-0.6b", events, "H200", stopped=True) is None


def test_render_lists_failures_and_unstarted_shapes() -> None:
    events = [*_events()[:3], {"type": "error", "gpu": "0", "t": 9, "shape": "llama3-8b", "text": "OOM"}]
    text = render(
        events, {**META, "shapes": ["llama3-8b", "qwen3-0.6b"], "stopped": True, "budget": 540, "wall_s": 560.0}
    )
    assert "  - FAILED: OOM" in text
    assert "- qwen3-0.6b: not started (time budget)" in text
    assert "- wall time of the whole run: 560 s (--time-budget 540 s: stopped there)" in text


def test_start_timeline() -> None:
    lines = [
        (3.0, "INFO something else"),
        (9.5, "engine: m on cuda:0 (bfloat16), KV pool 1000 tokens"),
        (21.0, "engine: captured CUDA graph for decode batch 64 (1/3)"),
        (22.0, "engine: captured CUDA graph for decode batch 2 (2/3)"),
        (23.0, "engine: captured CUDA graph for decode batch 1 (3/3)"),
        (24.0, "engine: warm-up prefill 2048 tokens (1/3, 1.0 s)"),
        (25.0, "engine: warm-up prefill 1024 tokens (2/3, 1.0 s)"),
        (26.0, "engine: warm-up decode 8 rows (3/3, 1.0 s)"),
    ]
    assert start_timeline(lines, 27.0) == (
        "9.5 s engine: m on cuda:0 (bfloat16), KV pool 1000 tokens; "
        "21.0 s engine: captured CUDA graph for decode batch 64 (1/3); "
        "23.0 s engine: captured CUDA graph for decode batch 1 (3/3); "
        "24.0 s engine: warm-up prefill 2048 tokens (1/3, 1.0 s); "
        "26.0 s engine: warm-up decode 8 rows (3/3, 1.0 s); 27.0 s healthy"
    )
    assert start_timeline([(1.0, "engine: only")], 4.0) == "1.0 s engine: only; 4.0 s healthy"
    assert start_timeline([], 4.0) == "4.0 s healthy"


def test_read_events_skips_a_cut_line(tmp_path: Path) -> None:
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"type": "end", "gpu": "0"}) + '\n{"type": "res')
    assert read_events(f) == [{"type": "end", "gpu": "0"}]
    assert read_events(tmp_path / "missing.jsonl") == []


def test_assign_balances_and_keeps_order() -> None:
    three = ["llama3-8b", "qwen3-0.6b", "qwen3-30b-a3b-12l"]
    assert assign(three, 1) == [three]
    # longest first: MoE (290) -> GPU 0, 8B (235) -> GPU 1, 0.6B (165) -> GPU 1 (235 < 290)
    assert assign(three, 2) == [["qwen3-30b-a3b-12l"], ["llama3-8b", "qwen3-0.6b"]]
    assert assign(three, 3) == [["qwen3-30b-a3b-12l"], ["llama3-8b"], ["qwen3-0.6b"]]
    assert assign(["tiny-llama"], 4) == [["tiny-llama"]]  # no empty GPU groups
    with pytest.raises(ValueError):
        assign(three, 0)


def _shapes_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["--shapes", "llama3-8b,qwen3-0.6b", *extra])


def test_worker_argv_round_trip(tmp_path: Path) -> None:
    opts = _shapes_args(
        "--concurrent",
        "32",
        "--lengths",
        "10:20",
        "--b1-requests",
        "5",
        "--seed",
        "7",
        "--no-overlap-b1",
        "--serve-arg=--no-cuda-graph",
        "--serve-arg=--chunked-prefill-size=512",
    )
    w = worker_parser().parse_args(worker_argv(opts, ["qwen3-0.6b"], tmp_path / "e.jsonl", "1", tmp_path))
    assert w.shapes == "qwen3-0.6b" and w.events == str(tmp_path / "e.jsonl") and w.label == "1"
    assert w.workdir == str(tmp_path)
    for name in (
        "concurrent",
        "lengths",
        "b1_requests",
        "seed",
        "no_overlap_b1",
        "no_transformers",
        "serve_arg",
        "device",
    ):
        assert getattr(w, name) == getattr(opts, name), name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--parallel-gpus", "0"], "--parallel-gpus"),
        (["--time-budget", "0"], "--time-budget"),
        (["--b1-requests", "0"], "--b1-requests"),
        (["--lengths", "9:2"], "--lengths"),
    ],
)
def test_gpu_args_rejected(extra: list[str], message: str) -> None:
    assert message in (check_gpu_args(_shapes_args(*extra)) or "")
    assert check_gpu_args(_shapes_args()) is None
    assert "twice" in (check_gpu_args(build_parser().parse_args(["--shapes", "tiny-llama,tiny-llama"])) or "")
    assert "unknown shape" in (check_gpu_args(build_parser().parse_args(["--shapes", "gpt5"])) or "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_budget_stops_the_worker_and_its_child(tmp_path: Path) -> None:
    """A worker ignoring SIGTERM, with a child of its own (as a server): both gone after the grace period."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '120'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.1)
    child = int(pid_file.read_text())
    import bench_serve_gpu

    t0 = time.monotonic()
    original = bench_serve_gpu.GRACE_S
    bench_serve_gpu.GRACE_S = 1.0
    try:
        assert wait_workers([proc], deadline=time.monotonic() + 0.5) is True
    finally:
        bench_serve_gpu.GRACE_S = original
    assert time.monotonic() - t0 < 30
    assert proc.returncode is not None
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def test_finished_workers_are_not_stopped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    assert wait_workers([proc], deadline=time.monotonic() + 60) is False
    assert proc.returncode == 0


@pytest.mark.slow
def test_tool_on_cpu_tiny_shapes_two_workers(tmp_path: Path) -> None:
    """The whole tool on the CPU: two workers at once, a server each, transformers beside; the table on stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "bench_serve.py"),
        "--shapes",
        "tiny-llama,tiny-qwen3-moe",
        "--device",
        "cpu",
        "--parallel-gpus",
        "2",
        "--concurrent",
        "3",
        "--lengths",
        "5:9",
        "--b1-requests",
        "1",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "serve_tiny-llama_tiny-qwen3-moe.md").read_text()
    assert table.strip() in done.stdout
    for shape, gpu in (("tiny-llama", 0), ("tiny-qwen3-moe", 1)):  # equal estimates: in the order given
        rows = [r for r in table.splitlines() if r.startswith(f"| cpu, GPU {gpu} | {shape} |")]
        assert [r.split(" | ")[3] for r in rows] == [
            "serve (graphs, overlap)",
            "transformers generate",
            rows[2].split(" | ")[3],
            "serve (graphs, overlap)",
            "transformers generate (batch 3)",
        ]
        assert rows[2].split(" | ")[3].startswith("bound: ")
        assert all(float(r.split(" | ")[4]) > 0 for r in rows)
    for shape, gpu in (("tiny-llama", 0), ("tiny-qwen3-moe", 1)):
        note = next(line for line in table.splitlines() if line.startswith(f"- {shape} (cpu, GPU {gpu}): "))
        for phase in (
            "checkpoint",
            "serve start",
            "serve batch 1",
            "serve 3 concurrent",
            "serve stop",
            "transformers load",
            "transformers batch 1",
            "transformers batch 3",
        ):
            assert f" {phase} " in note, (phase, note)
    events = json.loads((tmp_path / "serve_tiny-llama_tiny-qwen3-moe.json").read_text())["events"]
    assert {e["gpu"] for e in events} == {"0", "1"}
