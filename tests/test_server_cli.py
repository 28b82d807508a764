"""`serve` pieces that need no engine: argument and --model errors, the demo-model cache, the
OpenAI error mapping (pydantic locations -> `param`, engine InvalidRequest -> 400)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from server_proc import ROOT, demo_model

from minisgl_decl.cli.main import main
from minisgl_decl.demo_model import is_prepared, prepare
from minisgl_decl.engine.api import InvalidRequest
from minisgl_decl.errors import UserError
from minisgl_decl.server.errors import _param, from_invalid_request, validation_error
from minisgl_decl.server.run import query_hint


def test_bad_serve_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cases = [
        (["serve", "--model", str(tmp_path / "nope")], "no such directory"),
        (["serve", "--model", str(tmp_path)], "has no config.json"),
        (["serve", "--tp", "0", "--model", str(tmp_path)], "--tp 0: expected an integer from 1 to 1024"),
        (["serve", "--port", "70000"], "--port must be in 0..65535"),
        (["serve", "--mem-fraction", "1.5"], "--mem-fraction must be in (0, 1]"),
        (["serve", "--api-key", " "], "--api-key must not be empty"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_hub_id_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "serve", "--model", "no-such-org/no-such-model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert "Hugging Face hub did not provide it" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_prepare_reuses_a_prepared_directory_and_refuses_a_foreign_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = demo_model()
    assert is_prepared(demo) and prepare(demo) == demo  # no download: nothing to do
    foreign = tmp_path / "not-a-model"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    monkeypatch.setenv("MINISGL_DECL_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="is not a prepared model"):
        prepare(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_prepare_links_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = demo_model()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "smollm2-135m-instruct").symlink_to(demo.resolve(), target_is_directory=True)
    monkeypatch.setenv("MINISGL_DECL_CACHE", str(cache))
    out = prepare(tmp_path / "models" / "demo")
    assert is_prepared(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in demo.iterdir())
    assert (out / "config.json").read_bytes() == (demo / "config.json").read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_pydantic_locations_become_params() -> None:
    assert _param(("body", "temperature")) == "temperature"
    assert _param(("body", "messages", 2, "content", "str")) == "messages[2].content"
    assert _param(("body", "stop", "list[str]", 0)) == "stop"
    assert _param(("body", "logit_bias", "50256")) == "logit_bias.50256"
    assert _param(("body",)) is None
    err = validation_error(
        [{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error", "ctx": {"error": "Expecting value"}}]
    )
    assert err.status == 400 and err.param is None and err.code == "invalid_json"


def test_engine_invalid_request_is_a_400_with_its_param() -> None:
    err = from_invalid_request(
        InvalidRequest("prompt + max_tokens needs 9000 KV slots; the pool has 4096", "max_tokens")
    )
    assert err.status == 400
    assert err.body() == {
        "error": {
            "message": "prompt + max_tokens needs 9000 KV slots; the pool has 4096",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "invalid_value",
        }
    }


def test_query_hint() -> None:
    hint = query_hint("http://127.0.0.1:8000", "m", "secret")
    assert "curl http://127.0.0.1:8000/v1/chat/completions" in hint and "Authorization: Bearer" in hint
    assert "OpenAI(base_url='http://127.0.0.1:8000/v1'" in hint and "secret" not in hint
