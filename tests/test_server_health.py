"""`GET /health` follows the engine: 200 while its thread runs, 503 with an OpenAI-style body
once it was stopped or died (so a load balancer stops sending traffic to a dead replica)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from _helpers import DEMO, require_demo
from fastapi.testclient import TestClient

from minisgl_decl.engine import EngineConfig
from minisgl_decl.engine.client import AsyncEngine
from minisgl_decl.engine.core import EngineCore
from minisgl_decl.engine.loader import LoadedModel, load_engine_model
from minisgl_decl.server.app import build_app

CONFIG = EngineConfig(model=DEMO, max_kv_tokens=512)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    require_demo()
    return load_engine_model(CONFIG, progress=False)


@pytest.fixture
def core(loaded: LoadedModel) -> Iterator[EngineCore]:
    yield EngineCore(CONFIG, loaded)


def _health(engine: AsyncEngine, loaded: LoadedModel) -> tuple[int, object]:
    client = TestClient(build_app(engine, loaded.tokenizer, "m"))
    r = client.get("/health")
    return r.status_code, (r.text if r.status_code == 200 else r.json())


def _complete(engine: AsyncEngine, loaded: LoadedModel) -> tuple[int, object]:
    client = TestClient(build_app(engine, loaded.tokenizer, "m"))
    r = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2, "temperature": 0})
    return r.status_code, r.json()


def _wait_dead(engine: AsyncEngine) -> None:
    deadline = time.monotonic() + 30
    while engine.alive() and time.monotonic() < deadline:
        time.sleep(0.05)


UNAVAILABLE = {
    "error": {
        "message": "the engine is not running (it stopped or failed; see the server log): restart the server",
        "type": "service_unavailable_error",
        "param": None,
        "code": "engine_unavailable",
    }
}


def test_health_is_503_after_the_engine_stopped(core: EngineCore, loaded: LoadedModel) -> None:
    engine = AsyncEngine(core)
    assert _health(engine, loaded) == (200, "ok")
    assert _complete(engine, loaded)[0] == 200
    engine.shutdown()
    assert not engine.alive()
    assert _health(engine, loaded) == (503, UNAVAILABLE)
    assert _complete(engine, loaded) == (503, UNAVAILABLE)  # not a 400: the request was fine


def test_health_is_503_after_the_engine_thread_died(
    core: EngineCore, loaded: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> bool:
        raise RuntimeError("simulated engine bug")

    core.has_work = broken  # type: ignore[method-assign]  # the engine thread's first call fails
    engine = AsyncEngine(core)
    _wait_dead(engine)
    assert "simulated engine bug" in capsys.readouterr().err  # the thread reported it and ended
    assert _health(engine, loaded) == (503, UNAVAILABLE)
    assert _complete(engine, loaded) == (503, UNAVAILABLE)
