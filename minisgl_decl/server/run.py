"""Run the app under uvicorn: print where it listens and how to query it once the socket is bound."""

from __future__ import annotations

import json
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

GRACEFUL_SHUTDOWN_S = 30  # SIGTERM: in-flight requests get this long to finish, then they are aborted


def query_hint(url: str, model: str, api_key: str | None) -> str:
    """The curl line and openai snippet printed at start-up."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 32,
            "temperature": 0,
        }
    )
    auth = " -H 'Authorization: Bearer <your --api-key>'" if api_key else ""
    key = "'<your --api-key>'" if api_key else "'unused'"
    return "\n".join(
        [
            f"minisgl-decl: serving `{model}` at {url}/v1",
            "query it with curl:",
            f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'",
            "or with the openai client (pip install openai):",
            "  from openai import OpenAI",
            f"  client = OpenAI(base_url='{url}/v1', api_key={key})",
            f"  reply = client.chat.completions.create(model='{model}', "
            "messages=[{'role': 'user', 'content': 'What is the capital of France?'}], max_tokens=32, temperature=0)",
            "  print(reply.choices[0].message.content)",
            "stop with Ctrl-C or SIGTERM (in-flight requests finish first)",
        ]
    )


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, model: str, api_key: str | None) -> None:
        super().__init__(config)
        self._model = model
        self._api_key = api_key

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after its graceful shutdown (exit status 143 for SIGTERM);
        # a clean SIGTERM shutdown is a success here: exit 0.
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    async def startup(self, sockets: Sequence[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if ":" in shown:
            shown = f"[{shown}]"
        print(query_hint(f"http://{shown}:{port}", self._model, self._api_key), flush=True)


def serve_app(app: FastAPI, host: str, port: int, model: str, api_key: str | None, log_level: str = "info") -> int:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    server = _Server(config, model, api_key)
    server.run()
    if not server.started:
        print(f"error: could not listen on {host}:{port} (see the message above)", file=sys.stderr)
        return 1
    return 0
