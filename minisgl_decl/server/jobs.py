"""Run one HTTP request's jobs (n choices x prompts) on the engine and merge their deltas.

Each job's engine iterator is drained by its own task into one queue, so the HTTP side
only ever awaits (the model runs in the engine's thread); a request of one job (n=1, one
prompt: the common case) reads its engine iterator directly, without the task and the
second queue (one wake-up per token instead of two). `start()` waits until every job
has produced its first delta or failed, so that a request the engine refuses
(`InvalidRequest`) becomes a 400 before any byte of a stream is sent. `close()` cancels
what is still running: the engine iterators are closed and the requests aborted, which
frees their KV slots (a client that disconnects ends up here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..engine.api import EngineClient, RequestOutput
from .metrics import ServerMetrics
from .prepare import Job

log = logging.getLogger("minisgl_decl.server")
_DONE = object()


class JobGroup:
    def __init__(self, engine: EngineClient, jobs: list[Job], metrics: ServerMetrics, arrived: float) -> None:
        self.engine = engine
        self.jobs = jobs
        self.metrics = metrics
        self.arrived = arrived
        self.base_id = uuid.uuid4().hex
        self.queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.first: list[asyncio.Future[None]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.finished = [False] * len(jobs)
        self._single: tuple[str, AsyncIterator[RequestOutput]] | None = None  # one job: (request id, its stream)
        self._first_out: RequestOutput | None = None  # the single job's first delta, read by start()
        self._last = arrived

    @property
    def request_id(self) -> str:
        return self.base_id

    async def start(self) -> None:
        """Submit every job; raise the first job's error (InvalidRequest -> 400) after aborting the others."""
        if len(self.jobs) == 1:  # one job: its engine stream is read directly (no pump task, no second queue)
            await self._start_single()
            return
        loop = asyncio.get_running_loop()
        self.first = [loop.create_future() for _ in self.jobs]
        self.tasks = [asyncio.create_task(self._pump(i, job)) for i, job in enumerate(self.jobs)]
        await asyncio.wait(self.first)
        for fut in self.first:
            exc = fut.exception()
            if exc is not None:
                await self.close()
                raise exc

    async def _start_single(self) -> None:
        rid = f"{self.base_id}-0"
        iterator = self.engine.generate(rid, self.jobs[0].prompt_ids, self.jobs[0].params)
        self._single = (rid, iterator)
        try:
            first = await anext(aiter(iterator))
        except StopAsyncIteration:
            self.finished[0] = True
            self._first_out = None
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            self.finished[0] = True  # the engine ended it (e.g. InvalidRequest): nothing to abort
            raise
        self._last = self._observe(0, first, self.arrived)
        self._first_out = first

    def _observe(self, i: int, out: RequestOutput, last: float) -> float:
        """Metrics for one delta of job `i` (TTFT, inter-token latency, finished counts); the new `last`."""
        now = time.perf_counter()
        if out.token_ids:
            if out.completion_tokens == len(out.token_ids):
                self.metrics.ttft.observe(now - self.arrived)
            else:
                for _ in out.token_ids:
                    self.metrics.itl.observe((now - last) / len(out.token_ids))
            last = now
        if out.finished:
            self.finished[i] = True
            self._count_finished(out, now)
        return last

    async def _pump(self, i: int, job: Job) -> None:
        rid = f"{self.base_id}-{i}"
        iterator: AsyncIterator[RequestOutput] | None = None
        last = self.arrived
        try:
            iterator = self.engine.generate(rid, job.prompt_ids, job.params)
            async for out in iterator:
                last = self._observe(i, out, last)
                if not self.first[i].done():
                    self.first[i].set_result(None)
                await self.queue.put((i, out))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.finished[i] = True  # the engine ended it (e.g. InvalidRequest): nothing to abort
            if not self.first[i].done():
                self.first[i].set_exception(exc)
            await self.queue.put((i, exc))
        finally:
            if not self.first[i].done():
                self.first[i].set_result(None)
            if iterator is not None and not self.finished[i]:
                await self._abort(rid, iterator)
            self.queue.put_nowait((i, _DONE))

    async def _abort(self, rid: str, iterator: AsyncIterator[RequestOutput]) -> None:
        self.metrics.aborted.inc()
        aclose = getattr(iterator, "aclose", None)
        with contextlib.suppress(Exception):
            if aclose is not None:
                await aclose()
        try:
            self.engine.abort(rid)
        except Exception:
            log.exception("engine.abort(%s) failed", rid)

    def _count_finished(self, out: RequestOutput, now: float) -> None:
        m = self.metrics
        m.prompt_tokens.inc(out.prompt_tokens)
        m.cached_tokens.inc(out.cached_tokens)
        m.generated_tokens.inc(out.completion_tokens)
        m.finished.labels(out.finish_reason or "unknown").inc()
        m.e2e.observe(now - self.arrived)

    async def outputs(self) -> AsyncIterator[tuple[Job, RequestOutput]]:
        """(job, delta) in arrival order until every job has finished; a job's error is raised here."""
        if self._single is not None:
            job, (_, iterator) = self.jobs[0], self._single
            if self._first_out is None:
                return
            first, self._first_out = self._first_out, None
            yield job, first
            if first.finished:
                return
            last = self._last
            try:
                async for out in iterator:
                    last = self._observe(0, out, last)
                    yield job, out
                    if out.finished:
                        return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.finished[0] = True  # the engine ended it: nothing to abort
                raise
            return
        remaining = len(self.jobs)
        while remaining:
            i, item = await self.queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield self.jobs[i], item

    async def close(self) -> None:
        """Cancel unfinished jobs (aborting them in the engine) and wait for their tasks."""
        if self._single is not None:
            rid, iterator = self._single
            self._single = None
            if not self.finished[0]:
                await self._abort(rid, iterator)
            return
        for task in self.tasks:
            if not task.done():
                task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
