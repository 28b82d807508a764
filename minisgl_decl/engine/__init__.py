"""Stage 6: the serving engine (schedule -> run -> postprocess) over the runtime.

Public entry points: `start_engine(config, comm=None) -> AsyncEngine` (an `EngineClient`),
`run_worker(config, comm)` for ranks > 0 under tensor parallelism, and the offline
`LLM(config).generate(prompts, params)`. The contract types live in `engine.api`.
"""

from .api import (
    EngineClient,
    EngineConfig,
    EngineStats,
    InvalidRequest,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)
from .client import LLM, AsyncEngine, run_worker, start_engine

__all__ = [
    "LLM",
    "AsyncEngine",
    "EngineClient",
    "EngineConfig",
    "EngineStats",
    "InvalidRequest",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
    "run_worker",
    "start_engine",
]
