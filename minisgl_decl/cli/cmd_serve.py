"""`minisgl-decl serve [--model DIR|HUB_ID] [--tp N] ...`: the OpenAI-compatible HTTP server.

Without `--model` it serves the embedded default (SmolLM2-135M-Instruct, prepared on first
use into the cache directory). With `--tp N` the plain command starts N ranks of itself
(the `check --tp` launcher; torchrun works the same): rank 0 runs the HTTP server and the
engine's scheduler, ranks > 0 run the model in lock-step (`run_worker`) and print nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from ..engine.api import EngineConfig
from ..errors import UserError
from .engine_args import add_engine_args

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (default model: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--model",
        metavar="DIR|HUB_ID",
        help="HF checkpoint directory or hub id (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--spec", metavar="FILE", help="spec .yaml (default: chosen from config.json `architectures`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    add_engine_args(p, None)
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="context length, prompt + output (default: the model's max_position_embeddings)",
    )
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: from --model)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("MINISGL_DECL_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1/* (401 otherwise); "
        "default: $MINISGL_DECL_API_KEY (keeps the key out of `ps`)",
    )
    p.add_argument(
        "--mem-fraction",
        type=float,
        default=0.85,
        help="CUDA: fraction of free memory after the weights for the KV pool (default 0.85)",
    )
    p.add_argument("--max-running", type=int, default=256, help="most requests decoding at once (default 256)")
    p.add_argument("--no-cuda-graph", action="store_true", help="CUDA: run decode without CUDA graphs")
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="CUDA: skip the start-up warm-up (every kernel variant compiled / autotuned before serving)",
    )
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="CUDA: no overlap scheduling (wait for each step's tokens before planning the next)",
    )
    p.add_argument("--seed", type=int, default=0, help="engine seed for requests without `seed` (default 0)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run, model_may_be_hub_id=True)  # serve resolves hub ids itself


def _check_args(args: argparse.Namespace) -> None:
    problems = [
        (args.tp < 1, f"--tp must be at least 1, got {args.tp}"),
        (not 0 <= args.port <= 65535, f"--port must be in 0..65535, got {args.port}"),
        (
            args.max_model_len is not None and args.max_model_len < 2,
            f"--max-model-len must be at least 2, got {args.max_model_len}",
        ),
        (
            args.max_kv_tokens is not None and args.max_kv_tokens < 1,
            f"--max-kv-tokens must be at least 1, got {args.max_kv_tokens}",
        ),
        (not 0 < args.mem_fraction <= 1, f"--mem-fraction must be in (0, 1], got {args.mem_fraction}"),
        (
            args.chunked_prefill_size is not None and args.chunked_prefill_size < 1,
            f"--chunked-prefill-size must be at least 1, got {args.chunked_prefill_size}",
        ),
        (args.max_running < 1, f"--max-running must be at least 1, got {args.max_running}"),
        (args.api_key is not None and not args.api_key.strip(), "--api-key must not be empty"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)


def resolve_model(arg: str | None) -> Path:
    """--model -> a local checkpoint directory (the default model is prepared, a hub id downloaded)."""
    if arg is None:
        from ..demo_model import prepare

        return prepare()
    path = Path(arg).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {arg}: the directory has no config.json (expected a Hugging Face checkpoint)")
        return path
    if path.exists():
        raise UserError(f"--model {arg}: not a directory (pass the checkpoint directory, not a file in it)")
    if not _HUB_ID.match(arg):
        raise UserError(f"--model {arg}: no such directory (and not a hub id like `org/name`)")
    from huggingface_hub import snapshot_download

    print(f"downloading {arg} from the Hugging Face hub", file=sys.stderr, flush=True)
    try:
        return Path(snapshot_download(arg, allow_patterns=_HUB_FILES))
    except Exception as exc:
        raise UserError(
            f"--model {arg}: not a local directory, and the Hugging Face hub did not provide it "
            f"({type(exc).__name__}: {exc}); pass a local checkpoint directory"
        ) from None


def _served_name(args: argparse.Namespace, model: Path) -> str:
    if args.served_model_name:
        return str(args.served_model_name)
    if args.model is None:
        from ..demo_model import NAME

        return NAME
    return str(args.model) if not Path(args.model).expanduser().is_dir() else model.resolve().name


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return str(args.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_config(args: argparse.Namespace, model: Path) -> EngineConfig:
    return EngineConfig(
        model=model,
        spec=Path(args.spec) if args.spec else None,
        tp=args.tp,
        device=_device(args),
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_kv_tokens=args.max_kv_tokens,
        mem_fraction=args.mem_fraction,
        chunked_prefill_size=args.chunked_prefill_size,
        max_running=args.max_running,
        prefix_cache=not args.no_prefix_cache,
        cuda_graph=not args.no_cuda_graph,
        overlap=False if args.no_overlap else None,
        seed=args.seed,
        schedule_policy=args.schedule_policy,
        max_wait_steps=args.max_wait_steps,
        warmup=False if args.no_warmup else None,
    )


def _rank_argv(args: argparse.Namespace, model: Path, name: str) -> list[str]:
    """The same command for every rank, with the model already resolved to a local directory."""
    argv = [
        "serve",
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--tp",
        str(args.tp),
        "--device",
        _device(args),
        "--mem-fraction",
        repr(args.mem_fraction),
        "--max-running",
        str(args.max_running),
        "--seed",
        str(args.seed),
        "--log-level",
        args.log_level,
        "--schedule-policy",
        args.schedule_policy,
        "--max-wait-steps",
        str(args.max_wait_steps),
    ]
    optional = {
        "--spec": args.spec,
        "--dtype": args.dtype,
        "--max-model-len": args.max_model_len,
        "--max-kv-tokens": args.max_kv_tokens,
        "--chunked-prefill-size": args.chunked_prefill_size,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    flags = {
        "--no-prefix-cache": args.no_prefix_cache,
        "--no-cuda-graph": args.no_cuda_graph,
        "--no-overlap": args.no_overlap,
        "--no-warmup": args.no_warmup,  # every rank warms up, or none (the forwards hold collectives)
    }
    return argv + [flag for flag, on in flags.items() if on]


class _Terminated(BaseException):
    """SIGTERM in the launcher: stop the ranks (rank 0 shuts down gracefully) and exit 0."""


def _launch(args: argparse.Namespace, model: Path, name: str) -> int:
    from ..runtime.distributed import launch

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, on_term)
    if args.api_key is not None:  # to the ranks through the environment, not their command lines
        os.environ["MINISGL_DECL_API_KEY"] = args.api_key
    try:
        return launch([sys.executable, "-m", "minisgl_decl.cli.main", *_rank_argv(args, model, name)], args.tp)
    except _Terminated:
        return 0


def run(args: argparse.Namespace) -> int:
    from ..runtime.distributed import init_group, rank_env
    from ..runtime.distributed import shutdown as leave_group

    _check_args(args)
    env = rank_env()
    model = resolve_model(args.model)
    name = _served_name(args, model)
    if args.tp > 1 and env is None:
        return _launch(args, model, name)
    if env is not None and env.world_size != args.tp:
        raise UserError(f"--tp {args.tp} does not match WORLD_SIZE={env.world_size} of this launch")
    config = engine_config(args, model)
    from ..engine import run_worker, start_engine

    comm = init_group(env, config.device) if env is not None and args.tp > 1 else None
    if comm is not None and env is not None and env.rank > 0:
        for sig in (signal.SIGTERM, signal.SIGINT):  # rank 0 ends the group when its server stops
            signal.signal(sig, signal.SIG_IGN)
        try:
            run_worker(config, comm)
        finally:
            leave_group()
        return 0
    engine = start_engine(config, comm)
    from ..server.app import build_app
    from ..server.run import serve_app

    app = None
    try:
        app = build_app(engine, engine.tokenizer, name, args.api_key)
        return serve_app(app, args.host, args.port, name, args.api_key, args.log_level)
    finally:
        if app is None or not app.state.engine_stopped:  # the app's lifespan did not get to stop it
            engine.shutdown()
        if comm is not None:
            leave_group()
