"""Front ends of the engine: the threaded `AsyncEngine` (server) and the synchronous `LLM` (offline).

`AsyncEngine` runs `EngineCore.step()` in a thread of its own; callers on an asyncio loop
submit through a thread-safe inbox and receive `RequestOutput` deltas on per-request
asyncio queues, so the event loop never waits on a model step. A step's outputs reach each
event loop in one `call_soon_threadsafe` (one wake-up per step, not one per request); a
reader that fell behind gets the deltas waiting in its queue merged into one (as vLLM's
output collector does), so a slow HTTP side sends fewer, larger chunks instead of lagging
further. Closing or cancelling a `generate` iterator before it finished aborts the request
and frees its KV.

Entry points: `start_engine(config, comm)` (rank 0; returns the running `AsyncEngine`),
`run_worker(config, comm)` (ranks > 0 under tensor parallelism), `LLM(config)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..runtime.distributed import GroupComm
from .api import EngineConfig, EngineStats, InvalidRequest, RequestOutput, SamplingParams, TokenLogprob
from .core import EngineCore, build_runner
from .loader import LoadedModel, load_engine_model
from .tp import worker_loop

PING_SECONDS = 30.0  # idle rank 0 pings the workers this often (collective timeout is minutes)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]


class AsyncEngine:
    """An `EngineClient`: thread-safe; the model runs on the engine thread."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.tokenizer = core.tokenizer
        self.model_name = core.loaded.model_name
        self.max_model_len = core.max_model_len
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._stats = core.stats()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="minisgl-engine", daemon=True)
        self._thread.start()

    # ---- EngineClient ----

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Validate now (InvalidRequest for a request that can never fit); stream its deltas when iterated."""
        if self._stopping:
            raise InvalidRequest("the engine is shutting down", None)
        self.core.check(prompt_ids, params)
        with self._lock:
            if request_id in self._streams:
                raise InvalidRequest(f"request id {request_id!r} is already running", "request_id")
        return self._stream(request_id, list(prompt_ids), params)

    async def _stream(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request_id in self._streams:
                raise InvalidRequest(f"request id {request_id!r} is already running", "request_id")
            self._streams[request_id] = stream
        self._send("add", (request_id, prompt_ids, params))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                error = None
                if not item.finished and not stream.queue.empty():  # the reader fell behind: one merged delta
                    parts = [item]
                    while not stream.queue.empty() and not parts[-1].finished:
                        more = stream.queue.get_nowait()
                        if isinstance(more, BaseException):
                            error = more
                            break
                        parts.append(more)
                    item = merge(parts)
                finished = item.finished
                yield item
                if error is not None:
                    raise error
                if finished:
                    return
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._send("abort", request_id)

    def abort(self, request_id: str) -> None:
        self._send("abort", request_id)

    def stats(self) -> EngineStats:
        return self._stats

    def alive(self) -> bool:
        """Whether the engine thread still runs and takes requests (False once it failed or stops)."""
        return self._thread.is_alive() and not self._stopping

    def shutdown(self) -> None:
        """Abort what is in flight, stop the engine thread (and the worker ranks)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()

    # ---- the engine thread ----

    def _send(self, kind: str, value: Any) -> None:
        self._inbox.put((kind, value))
        self._wake.set()

    def _deliver(self, output: RequestOutput | BaseException, request_id: str) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is None:
            return
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody listens
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, output)

    def _deliver_step(self, outputs: list[RequestOutput]) -> None:
        """A step's outputs: one `call_soon_threadsafe` per listening event loop (one wake-up), not one per request."""
        if len(outputs) == 1:
            self._deliver(outputs[0], outputs[0].request_id)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], RequestOutput]]] = {}
        with self._lock:
            streams = self._streams
            for out in outputs:
                stream = streams.get(out.request_id)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody listens
                loop.call_soon_threadsafe(_put_all, items)

    def _drain(self) -> None:
        if self._inbox.empty():
            return
        while True:
            try:
                kind, value = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                request_id, prompt_ids, params = value
                try:
                    self.core.add_request(request_id, prompt_ids, params)
                except InvalidRequest as exc:
                    self._deliver(exc, request_id)
            elif kind == "abort":
                out = self.core.abort(value)
                if out is not None:
                    self._deliver(out, value)

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._drain()
                if self.core.has_work():
                    outputs = self.core.step()
                    if outputs:
                        self._deliver_step(outputs)
                else:
                    self._stats = self.core.stats()
                    if not self._wake.wait(PING_SECONDS):
                        self.core.ping()
                    self._wake.clear()
                    continue
                self._stats = self.core.stats()
        except Exception as exc:  # a bug: fail every open request instead of hanging it
            traceback.print_exc()
            print("internal error in the engine thread: this is a bug in minisgl-decl", file=sys.stderr)
            error = RuntimeError(f"engine failure: {exc}")
            with self._lock:
                ids = list(self._streams)
            for request_id in ids:
                self._deliver(error, request_id)
            self._stopping = True
        finally:
            self._drain()
            for request_id in list(self.core.requests):
                out = self.core.abort(request_id)
                if out is not None:
                    self._deliver(out, request_id)
            self._stats = self.core.stats()
            self.core.close()


def _put_all(items: list[tuple[asyncio.Queue[Any], RequestOutput]]) -> None:
    """On the caller's event loop: hand each output to its request's queue (in step order)."""
    for q, out in items:
        q.put_nowait(out)


def start_engine(
    config: EngineConfig, comm: GroupComm | None = None, *, loaded: LoadedModel | None = None
) -> AsyncEngine:
    """Load the model (rank 0's shard under TP) and start the engine thread."""
    loaded = loaded if loaded is not None else load_engine_model(config, comm)
    return AsyncEngine(EngineCore(config, loaded, comm))


def run_worker(config: EngineConfig, comm: GroupComm) -> None:
    """Ranks > 0: load this rank's shard and run every step rank 0 broadcasts until it stops."""
    loaded = load_engine_model(config, comm, progress=False)
    runner, _ = build_runner(config, loaded, comm)
    worker_loop(runner, comm)


def merge(outputs: Sequence[RequestOutput]) -> RequestOutput:
    """One request's deltas folded into a single output (text and tokens concatenated)."""
    last = outputs[-1]
    logprobs: list[TokenLogprob] = []
    for o in outputs:
        logprobs += o.logprobs or ()
    return replace(
        last,
        text="".join(o.text for o in outputs),
        token_ids=tuple(t for o in outputs for t in o.token_ids),
        logprobs=tuple(logprobs) if any(o.logprobs is not None for o in outputs) else None,
    )


class LLM:
    """Offline, synchronous: `LLM(config).generate(prompts, params)` -> one final output per prompt."""

    def __init__(
        self, config: EngineConfig, comm: GroupComm | None = None, *, loaded: LoadedModel | None = None
    ) -> None:
        self.loaded = loaded if loaded is not None else load_engine_model(config, comm)
        self.core = EngineCore(config, self.loaded, comm)
        self.tokenizer = self.loaded.tokenizer
        self.max_model_len = self.core.max_model_len

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[RequestOutput]:
        per = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(per) != len(prompts):
            raise InvalidRequest(f"{len(prompts)} prompts but {len(per)} sampling params", "params")
        for p, sp in zip(prompts, per, strict=True):
            self.core.check(p, sp)
        ids = [f"offline-{i}" for i in range(len(prompts))]
        for rid, p, sp in zip(ids, prompts, per, strict=True):
            self.core.add_request(rid, p, sp)
        deltas: dict[str, list[RequestOutput]] = {rid: [] for rid in ids}
        while self.core.has_work():
            for out in self.core.step():
                deltas[out.request_id].append(out)
        return [merge(deltas[rid]) for rid in ids]

    def stats(self) -> EngineStats:
        return self.core.stats()

    def close(self) -> None:
        self.core.close()
