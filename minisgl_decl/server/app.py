"""The FastAPI app: OpenAI-compatible routes over an `EngineClient`.

`build_app(engine, ...)` wires the routes, the OpenAI-style error handlers, the API-key
check, request counting and the engine's shutdown at the end of the app's lifespan
(uvicorn's graceful shutdown on SIGTERM: stop accepting, let in-flight requests finish,
then stop the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..engine.api import EngineClient, InvalidRequest
from . import errors
from .errors import APIError
from .jobs import JobGroup
from .metrics import ServerMetrics
from .prepare import Job, chat_jobs, completion_jobs
from .protocol import ChatCompletionRequest, CompletionRequest
from .responses import SSE_DONE, Choices, Kind, sse

DISCONNECT_POLL_S = 0.25


class _CountRequests:
    """Pure ASGI middleware (streams pass through untouched): requests_total by endpoint and status."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.count_request(scope.get("path", ""), status[0])


def build_app(engine: EngineClient, tokenizer: Any, model_name: str, api_key: str | None = None) -> FastAPI:
    metrics = ServerMetrics(engine.stats)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if not app.state.engine_stopped:
            app.state.engine_stopped = True
            await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="minisgl-decl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine_stopped = False
    errors.install(app)
    app.add_middleware(_CountRequests, metrics=metrics)  # type: ignore[arg-type]

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            what = "missing" if not header else "wrong"
            raise APIError(
                401,
                f"{what} API key: send `Authorization: Bearer <key>` with the key given to --api-key",
                None,
                "invalid_api_key",
            )

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(
                404, f"the model `{name}` does not exist; this server serves `{model_name}`", "model", "model_not_found"
            )

    def check_engine() -> None:
        if not engine.alive():  # a failed engine thread (or TP rank) must not look healthy to a load balancer
            raise APIError(
                503,
                "the engine is not running (it stopped or failed; see the server log): restart the server",
                None,
                "engine_unavailable",
                "service_unavailable_error",
            )

    @app.get("/health")
    async def health() -> PlainTextResponse:
        check_engine()
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "minisgl-decl",
                    "max_model_len": engine.max_model_len,
                }
            ],
        }

    async def serve(
        request: Request, kind: Kind, jobs_fn: Callable[[], Awaitable[list[Job]]], stream: bool, include_usage: bool
    ) -> Any:
        arrived = time.perf_counter()
        check_engine()
        jobs = await jobs_fn()
        group = JobGroup(engine, jobs, metrics, arrived)
        await group.start()
        choices = Choices(kind, model_name, group.request_id, jobs, tokenizer)
        if stream:
            return StreamingResponse(
                _stream(group, choices, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _collect(request, group, choices)

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        usage = body.stream_options is not None and body.stream_options.include_usage
        return await serve(
            request, "completion", lambda: completion_jobs(body, tokenizer, engine.max_model_len), body.stream, usage
        )

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        usage = body.stream_options is not None and body.stream_options.include_usage
        kv_tokens = engine.stats().kv_total
        return await serve(
            request, "chat", lambda: chat_jobs(body, tokenizer, engine.max_model_len, kv_tokens), body.stream, usage
        )

    return app


async def _collect(request: Request, group: JobGroup, choices: Choices) -> JSONResponse:
    """Wait for every choice; a client that goes away meanwhile aborts the request."""

    async def drain() -> None:
        async for job, out in group.outputs():
            choices.add(job, out)

    task = asyncio.create_task(drain())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                await group.close()
                return JSONResponse({}, status_code=499)  # nobody reads it
        task.result()  # a job's error (e.g. InvalidRequest raised late) goes to the handlers
        return JSONResponse(choices.final())
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await group.close()


async def _stream(group: JobGroup, choices: Choices, include_usage: bool) -> AsyncIterator[str]:
    """SSE events; cancelled by Starlette when the client disconnects, which aborts every unfinished choice."""
    try:
        async for job, out in group.outputs():
            choices.add(job, out)
            event = choices.chunk(job, out, include_usage)
            if event is not None:
                yield event
        if include_usage:
            yield choices.usage_chunk()
    except APIError as exc:
        yield sse(exc.body())
    except InvalidRequest as exc:
        yield sse(errors.from_invalid_request(exc).body())
    except Exception as exc:
        errors.log.exception("error while streaming", exc_info=exc)
        yield sse(APIError(500, "internal server error (logged on the server)").body())
    finally:
        await group.close()
    yield SSE_DONE
