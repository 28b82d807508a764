"""The pure half of `tools/bench_serve.py --shapes`: events in, the Markdown table and notes out.

Each worker (`tools/bench_serve_gpu.py`, one per GPU) appends one JSON object per line to
its events file as it goes: `device` (card, copy bandwidth, versions), `shape` (bytes and the
batch-1 bound), `begin` / `phase` (a phase started / ended, with its wall time), `result`
(one measurement), `note`, `error`, `end`. The orchestrator renders whatever arrived, so a
run stopped by `--time-budget` still prints the rows and phase times of what finished.
This module also splits shapes over GPUs (`assign`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Event = dict[str, Any]

COLUMNS = (
    "card",
    "shape",
    "load",
    "engine",
    "tok/s",
    "of bound",
    "vs transformers",
    "TTFT p50 / p99 (ms)",
    "ITL p50 / p99 (ms)",
)
#: rough wall seconds of one shape on one H100/H200 (checkpoint, serve start and loads, transformers load, batch 1
#: and batch 64), estimated from docs/perf.md's numbers; used to split shapes over GPUs and to print the estimate
EST_SECONDS = {
    "tiny-llama": 10.0,
    "tiny-qwen3-moe": 10.0,
    "qwen3-0.6b": 165.0,
    "llama3-8b": 235.0,
    "qwen3-30b-a3b-12l": 290.0,
}
DEFAULT_EST_SECONDS = 200.0


def read_events(path: Path) -> list[Event]:
    """The events of one file; a line cut off by a killed worker is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def assign(shapes: Sequence[str], gpus: int) -> list[list[str]]:
    """Shapes per GPU: longest first onto the least-loaded GPU (by EST_SECONDS); each GPU keeps the given order."""
    if gpus < 1:
        raise ValueError(f"need at least one GPU, got {gpus}")
    load = [0.0] * gpus
    where: dict[str, int] = {}
    for name in sorted(shapes, key=lambda s: -EST_SECONDS.get(s, DEFAULT_EST_SECONDS)):
        g = min(range(gpus), key=lambda i: (load[i], i))
        where[name] = g
        load[g] += EST_SECONDS.get(name, DEFAULT_EST_SECONDS)
    return [[s for s in shapes if where[s] == g] for g in range(gpus) if any(where[s] == g for s in shapes)]


def estimate(shapes: Sequence[str]) -> float:
    return sum(EST_SECONDS.get(s, DEFAULT_EST_SECONDS) for s in shapes)


def short_card(name: str) -> str:
    return name.removeprefix("NVIDIA ").strip()


def _f(x: float) -> str:
    return f"{x:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def _share(a: float | None, bound: float | None) -> str:
    if a is None or bound is None or not bound:
        return "-"
    return f"{a / bound:.0%}"


def _devices(events: Iterable[Event]) -> dict[str, Event]:
    return {str(e["gpu"]): e for e in events if e.get("type") == "device"}


def card_label(device: Event | None, gpu: str, parallel: bool) -> str:
    name = short_card(str(device["card"])) if device else "?"
    return f"{name}, GPU {gpu}" if parallel else name


def shape_rows(shape: str, events: Sequence[Event], card: str, concurrent: int) -> list[list[str]]:
    """The rows of one shape from its events (only measurements that arrived)."""
    res: dict[str, dict[str, Any]] = {}
    info: Event | None = None
    copy = None
    for e in events:
        if e.get("shape") != shape:
            continue
        if e["type"] == "result":
            res[str(e["key"])] = dict(e["value"])
        elif e["type"] == "shape":
            info = e
    for e in events:
        if e.get("type") == "device" and info is not None and e.get("gpu") == info.get("gpu"):
            copy = float(e["copy_tbps"])
    bound = float(info["bound"]) if info is not None else None
    b1 = res.get("serve_b1", {}).get("tok_s")
    sync = res.get("serve_b1_sync", {}).get("tok_s")
    hf_b1 = res.get("hf_b1", {}).get("tok_s")
    many = res.get("serve_many")
    hf_many = res.get("hf_many", {}).get("tok_s")
    rows: list[list[str]] = []

    def row(*cells: str) -> None:
        rows.append([card, shape, *cells])

    if b1 is not None:
        row("batch 1", "serve (graphs, overlap)", _f(b1), _share(b1, bound), _ratio(b1, hf_b1), "-", "-")
    if sync is not None:
        row("batch 1", "serve --no-overlap", _f(sync), _share(sync, bound), _ratio(sync, hf_b1), "-", "-")
    if hf_b1 is not None:
        row("batch 1", "transformers generate", _f(hf_b1), _share(hf_b1, bound), "1.00x", "-", "-")
    if info is not None and bound is not None:
        gb = float(info["active_bytes"]) / 1e9
        label = f"bound: {gb:.2f} GB / {copy:.2f} TB/s" if copy is not None else f"bound: {gb:.2f} GB / copy BW"
        row("batch 1", label, _f(bound), "100%", "-", "-", "-")
    n = int(many.get("n", concurrent)) if many is not None else concurrent
    if many is not None:
        row(
            f"{n} concurrent",
            "serve (graphs, overlap)",
            _f(float(many["output_tok_s"])),
            "-",
            _ratio(float(many["output_tok_s"]), hf_many),
            f"{many['ttft_p50']:.0f} / {many['ttft_p99']:.0f}",
            f"{many['itl_p50']:.1f} / {many['itl_p99']:.1f}",
        )
    for key, other in sorted(res.items()):
        if key.startswith("serve_many@"):
            row(
                f"{n} concurrent",
                f"serve --schedule-policy {key.partition('@')[2]}",
                _f(float(other["output_tok_s"])),
                "-",
                _ratio(float(other["output_tok_s"]), hf_many),
                f"{other['ttft_p50']:.0f} / {other['ttft_p99']:.0f}",
                f"{other['itl_p50']:.1f} / {other['itl_p99']:.1f}",
            )
    if hf_many is not None:
        row(f"{n} concurrent", f"transformers generate (batch {n})", _f(hf_many), "-", "1.00x", "-", "-")
    return rows


def phase_note(shape: str, events: Sequence[Event], card: str, stopped: bool) -> str | None:
    """`shape (card): checkpoint 9 s, serve start 41 s, ...; total 216 s`, with an unfinished phase marked."""
    begun: dict[str, float] = {}
    parts: list[str] = []
    total = 0.0
    last_t = 0.0
    for e in events:
        if e.get("shape") != shape:
            continue
        last_t = max(last_t, float(e.get("t", 0.0)))
        if e["type"] == "begin":
            begun[str(e["phase"])] = float(e.get("t", 0.0))
        elif e["type"] == "phase":
            begun.pop(str(e["phase"]), None)
            total += float(e["seconds"])
            failed = " (failed)" if e.get("error") else ""
            parts.append(f"{e['phase']} {float(e['seconds']):.1f} s{failed}")
    if not parts and not begun:
        return None
    for phase in begun:  # started, never ended: the worker was stopped or died there
        why = "stopped by --time-budget" if stopped else "did not finish"
        parts.append(f"{phase} {why}")
    return f"{shape} ({card}): " + ", ".join(parts) + f"; {total:.0f} s in finished phases"


def render(events: Sequence[Event], meta: dict[str, Any]) -> str:
    """The whole report: header (cards, date, versions, copy bandwidth), the table, then the notes."""
    devices = _devices(events)
    parallel = len(devices) > 1 or int(meta.get("gpus", 1)) > 1
    first = next(iter(devices.values()), None)
    v = first["versions"] if first else {}
    cards = "; ".join(
        f"{short_card(str(d['card']))}"
        + (f" (GPU {g})" if parallel else "")
        + (f", {d['sms']} SMs" if d.get("sms") else "")
        for g, d in devices.items()
    )
    copies = "; ".join(
        f"{float(d['copy_tbps']):.2f} TB/s"
        + (f" (GPU {g})" if parallel else "")
        + (" (assumed: a CPU smoke test of the tool, no bound)" if d.get("card") == "cpu" else "")
        for g, d in devices.items()
    )
    lines = [
        f"bench_serve --shapes {','.join(meta['shapes'])}",
        f"card: {cards or '?'}; date: {first['date'] if first else '?'}",
        f"torch {v.get('torch', '?')}, triton {v.get('triton', '?')}, transformers {v.get('transformers', '?')}, "
        f"python {v.get('python', '?')}",
        f"copy bandwidth (1 GiB bf16 device copy, bytes read + written, at the start of this run): {copies or '?'}",
        f"batch 1: prompt 128, 256 new tokens, {meta['b1_requests']} requests one at a time, tok/s = 1 / median TPOT; "
        f"concurrent: {meta['concurrent']} requests sent at once, input and output lengths uniform {meta['lengths']}, "
        f"seed {meta['seed']}; bound = bytes one batch-1 step reads / copy bandwidth",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    by_shape_gpu = {str(e["shape"]): str(e["gpu"]) for e in events if e.get("shape") and "gpu" in e}
    for shape in meta["shapes"]:
        gpu = by_shape_gpu.get(shape)
        card = card_label(devices.get(gpu) if gpu is not None else None, gpu or "?", parallel)
        lines += ["| " + " | ".join(r) + " |" for r in shape_rows(shape, events, card, int(meta["concurrent"]))]
    notes = ["", "Notes:"]
    for shape in meta["shapes"]:
        gpu = by_shape_gpu.get(shape)
        card = card_label(devices.get(gpu) if gpu is not None else None, gpu or "?", parallel)
        note = phase_note(shape, events, card, bool(meta.get("stopped")))
        notes.append(
            f"- {note}" if note else f"- {shape}: not started" + (" (time budget)" if meta.get("stopped") else "")
        )
        for e in events:
            if e.get("shape") == shape and e["type"] in ("note", "error"):
                prefix = "FAILED: " if e["type"] == "error" else ""
                notes.append(f"  - {prefix}{e.get('phase', '') + ': ' if e.get('phase') else ''}{e['text']}")
    for e in events:
        if e.get("type") == "error" and not e.get("shape"):
            notes.append(f"- GPU {e.get('gpu')}: FAILED: {e['text']}")
    wall = meta.get("wall_s")
    if wall is not None:
        budget = meta.get("budget")
        tail = f" (--time-budget {budget:.0f} s{': stopped there' if meta.get('stopped') else ''})" if budget else ""
        notes.append(f"- wall time of the whole run: {wall:.0f} s{tail}")
    if parallel:
        notes.append(
            f"- --parallel-gpus: shapes ran at the same time on {len(devices)} GPUs of one host; each row's "
            "bound and transformers baseline come from its own GPU; the host (CPU cores, memory bandwidth, "
            "PCIe, disk) was shared"
        )
    return "\n".join(lines + notes)


def start_timeline(lines: Sequence[tuple[float, str]], healthy_s: float, width: int = 140) -> str:
    """When `serve`'s `engine:` lines appeared; of a run of lines with the same first word (the CUDA-graph
    captures, the warm-up steps) only the first and the last."""
    engine = [(t, text.strip()) for t, text in lines if text.startswith("engine:")]
    words = [text.split()[1] if len(text.split()) > 1 else "" for _, text in engine]
    parts = [
        f"{t:.1f} s {text[:width]}"
        for i, (t, text) in enumerate(engine)
        if i in (0, len(engine) - 1) or words[i] != words[i - 1] or words[i] != words[i + 1]
    ]
    return "; ".join([*parts, f"{healthy_s:.1f} s healthy"])
