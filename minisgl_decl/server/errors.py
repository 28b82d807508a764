"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` for every failure.

FastAPI's own handlers (request validation, HTTPException, unknown routes) are replaced so
that a client never sees FastAPI's `{"detail": ...}` shape or a traceback. Unexpected
exceptions are logged here with their traceback and answered with a plain 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.api import InvalidRequest

log = logging.getLogger("minisgl_decl.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


_NESTED = {"messages": ("role", "content", "name", "text"), "stream_options": ("include_usage",)}


class APIError(Exception):
    """An error the client caused (or, for 5xx, one it should retry): status + OpenAI body fields."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, type_: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "invalid_request_error" if status < 500 else "internal_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def from_invalid_request(exc: InvalidRequest) -> APIError:
    return APIError(400, str(exc), exc.param, "invalid_value")


def _param(loc: Sequence[int | str]) -> str | None:
    """pydantic loc ('body', 'messages', 0, 'content', ...) -> 'messages[0].content' (union member tags dropped)."""
    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    if not parts or not isinstance(parts[0], str):
        return None  # the body itself (not JSON, not an object)
    out = parts[0]
    for i, p in enumerate(parts[1:], start=1):
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in _NESTED.get(str(parts[0]), ()) or (parts[0] == "logit_bias" and i == 1):
            out += f".{p}"
        else:
            break  # a union member tag such as 'str' or 'list[int]', or a validator's name
    return out


def validation_error(errors: Sequence[Any]) -> APIError:
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return APIError(
            400, f"the request body is not valid JSON{': ' + str(detail) if detail else ''}", None, "invalid_json"
        )
    custom = first.get("ctx", {}).get("param")
    if custom:  # a model-level check that names its field itself
        return APIError(400, str(first.get("msg")), str(custom), "invalid_value")
    param = _param(first.get("loc", ()))
    if param is None and first.get("type") == "missing":
        return APIError(400, "the request body is empty: send a JSON object", None, "invalid_json")
    if param is None:
        return APIError(
            400, f"the request body must be a JSON object ({first.get('msg', 'invalid')})", None, "invalid_type"
        )
    messages: list[str] = []
    for e in errors:
        if _param(e.get("loc", ())) == param:
            msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
            if msg not in messages:
                messages.append(msg)
    return APIError(400, f"{param}: {'; '.join(messages)}", param, "invalid_value")


def install(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type.lower():
            return APIError(
                400,
                f"the request body must be JSON sent with `Content-Type: application/json` (got "
                f"{content_type or 'no Content-Type'})",
                None,
                "invalid_content_type",
            ).response()
        return validation_error(exc.errors()).response()

    async def on_invalid(request: Request, exc: InvalidRequest) -> JSONResponse:
        return from_invalid_request(exc).response()

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = (
                f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/completions, "
                "POST /v1/chat/completions, GET /health, GET /metrics"
            )
        else:
            message = str(exc.detail)
        return APIError(exc.status_code, message).response()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(500, "internal server error (logged on the server)", type_="internal_error").response()

    app.add_exception_handler(APIError, on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidRequest, on_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected)
