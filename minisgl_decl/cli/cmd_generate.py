"""`minisgl-decl generate --model DIR [--spec SPEC] PROMPT...`: offline generation through the engine.

The prompts run together through the same engine as `serve` (continuous batching, chunked
prefill, prefix cache, sampling). The chat template is applied unless `--raw`. `--tp N`
runs N ranks (one process each, gloo on CPU, NCCL on CUDA): the plain command starts the
ranks itself; under `torchrun` each process is one rank; rank 0 alone prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .engine_args import add_engine_args


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint through the engine (CPU or CUDA)")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--model", metavar="DIR", required=True, help="HF checkpoint directory")
    p.add_argument("--spec", help="spec .yaml (default: chosen from config.json `architectures`)")
    p.add_argument(
        "--max-tokens",
        "--max-new-tokens",
        dest="max_tokens",
        type=int,
        default=64,
        help="most tokens generated per prompt (default 64)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    add_engine_args(p, "cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--show-ids", action="store_true", help="also print the generated token ids")
    p.add_argument(
        "--overlap",
        choices=["auto", "on", "off"],
        default="auto",
        help="overlap scheduling: plan the next step while the device runs this one (auto: on for CUDA)",
    )
    p.add_argument(
        "--warmup",
        choices=["on", "off"],
        default="off",
        help="CUDA: compile / autotune every kernel variant before generating (default off: a few prompts "
        "compile only the variants they meet; `serve` warms up by default)",
    )
    p.set_defaults(run=run)


def _argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "generate",
        *args.prompts,
        "--model",
        args.model,
        "--max-tokens",
        str(args.max_tokens),
        "--temperature",
        repr(args.temperature),
        "--top-p",
        repr(args.top_p),
        "--top-k",
        str(args.top_k),
        "--tp",
        str(args.tp),
        "--device",
        args.device,
        "--overlap",
        args.overlap,
        "--warmup",
        args.warmup,
        "--schedule-policy",
        args.schedule_policy,
        "--max-wait-steps",
        str(args.max_wait_steps),
    ]
    for flag, value in (
        ("--spec", args.spec),
        ("--seed", args.seed),
        ("--dtype", args.dtype),
        ("--max-kv-tokens", args.max_kv_tokens),
        ("--chunked-prefill-size", args.chunked_prefill_size),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for flag, on in (("--raw", args.raw), ("--no-prefix-cache", args.no_prefix_cache), ("--show-ids", args.show_ids)):
        if on:
            argv.append(flag)
    return argv


def run(args: argparse.Namespace) -> int:
    from ..engine.api import EngineConfig, SamplingParams
    from ..parity.run import quiet_transformers
    from ..runtime.distributed import init_group, launch, rank_env, shutdown

    if args.tp < 1:
        raise UserError(f"--tp must be at least 1, got {args.tp}")
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed
    )
    config = EngineConfig(
        model=Path(args.model),
        spec=Path(args.spec) if args.spec else None,
        tp=args.tp,
        device=args.device,
        dtype=args.dtype,
        max_kv_tokens=args.max_kv_tokens,
        chunked_prefill_size=args.chunked_prefill_size,
        prefix_cache=not args.no_prefix_cache,
        overlap={"auto": None, "on": True, "off": False}[args.overlap],
        schedule_policy=args.schedule_policy,
        max_wait_steps=args.max_wait_steps,
        warmup=args.warmup == "on",
    )
    quiet_transformers()
    env = rank_env()
    if args.tp > 1 and env is None:
        from ..pipeline import compile_spec
        from ..plan.checkpoint import load_config
        from ..spec.find import find_spec
        from ..validate import load_valid_spec

        spec = load_valid_spec(args.spec) if args.spec else find_spec(load_config(Path(args.model)))
        compile_spec(spec, args.model, args.tp)  # problems a person must fix, reported once
        return launch([sys.executable, "-m", "minisgl_decl.cli.main", *_argv(args)], args.tp)
    if env is not None and env.world_size != args.tp:
        raise UserError(f"--tp {args.tp} does not match WORLD_SIZE={env.world_size} of this launch")
    comm = init_group(env, args.device) if env is not None and env.world_size > 1 else None
    try:
        if comm is not None and comm.rank > 0:
            from ..engine.client import run_worker

            run_worker(config, comm)
            return 0
        return _generate(args, config, params, comm)
    finally:
        if comm is not None:
            shutdown()


def _generate(args: argparse.Namespace, config: Any, params: Any, comm: Any) -> int:
    from ..engine.client import LLM

    llm = LLM(config, comm)
    try:
        tok = llm.tokenizer
        if args.raw or tok.chat_template is None:
            texts = list(args.prompts)
        else:
            texts = [
                tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                for p in args.prompts
            ]
        ids = [tok(t, add_special_tokens=args.raw)["input_ids"] for t in texts]
        outputs = llm.generate(ids, params)
    finally:
        llm.close()
    for prompt, out in zip(args.prompts, outputs, strict=True):
        print(f"> {prompt}\n{out.text}\n")
        if args.show_ids:
            print(f"ids: {' '.join(map(str, out.token_ids))}\n")
    return 0
