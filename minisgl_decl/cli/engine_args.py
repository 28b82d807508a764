"""The engine options `generate` and `serve` share, declared once."""

from __future__ import annotations

import argparse

from ..engine.api import DEFAULT_MAX_WAIT_STEPS, SCHEDULE_POLICIES


def add_engine_args(p: argparse.ArgumentParser, device_default: str | None) -> None:
    """--tp, --device, --dtype, --max-kv-tokens, --chunked-prefill-size, --no-prefix-cache,
    --schedule-policy, --max-wait-steps."""
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size: N ranks on this host (default 1)")
    p.add_argument("--device", default=device_default, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="weights and KV cache (default: float32 on CPU, bfloat16 on CUDA)",
    )
    p.add_argument(
        "--max-kv-tokens", type=int, default=None, help="KV pool size in tokens (CPU default: from the model size)"
    )
    p.add_argument(
        "--chunked-prefill-size", type=int, default=None, help="prompt tokens per step (default: measured per device)"
    )
    p.add_argument("--no-prefix-cache", action="store_true", help="turn the radix prefix cache off")
    p.add_argument(
        "--schedule-policy",
        choices=SCHEDULE_POLICIES,
        default="fcfs",
        help="order waiting prompts are admitted in: fcfs (default), or shortest-first (fewest prompt "
        "tokens first, with aging: see --max-wait-steps)",
    )
    p.add_argument(
        "--max-wait-steps",
        type=int,
        default=DEFAULT_MAX_WAIT_STEPS,
        help="shortest-first: steps a waiting request may be passed over by shorter ones before it is "
        f"admitted first, oldest first (default {DEFAULT_MAX_WAIT_STEPS})",
    )
