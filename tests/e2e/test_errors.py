"""Errors that need the real engine, in OpenAI's shape with the right 4xx status: images sent
to a model without a projector, prompts longer than the context (before any streaming), a model
alias from the settings. The request checks that never reach the engine (every invalid field,
malformed JSON, unknown model, path or method) run on the scripted engine in
tests/fast/test_http_validation.py. `assert_error` is shared by the e2e tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MODEL_ID, SERVER_CTX


def post(http: httpx.Client, body: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json=body)


def assert_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


GOOD = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_images_are_refused_by_a_model_without_projector(http: httpx.Client) -> None:
    from tests.images import picture_url

    image = {"type": "image_url", "image_url": {"url": picture_url(1)}}
    body = {**GOOD, "messages": [{"role": "user", "content": [image]}]}
    error = assert_error(post(http, body), 400, param="messages[0].content[0]")
    assert "does not take images" in error["message"]


def test_a_model_alias_from_the_settings_is_served(tmp_path: Path) -> None:
    from tests.conftest import start_server, stop_server, wait_healthy

    server = start_server(tmp_path, "--ctx", "1024", "--model-aliases", "gpt-4o-mini,local")
    try:
        wait_healthy(server)
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            for name in ("gpt-4o-mini", "local", MODEL_ID):
                reply = post(http, {**GOOD, "model": name, "max_tokens": 2})
                assert reply.status_code == 200, reply.text
                assert reply.json()["model"] == name  # the name the client sent
            # an alias is not a wildcard: anything else is still 404
            assert_error(post(http, {**GOOD, "model": "gpt-4o"}), 404, code="model_not_found")
            card = http.get("/v1/models/local").json()
            assert card["id"] == MODEL_ID
    finally:
        stop_server(server)


def test_prompt_longer_than_the_context_is_400_before_streaming(http: httpx.Client) -> None:
    long_text = "hello " * (SERVER_CTX + 100)
    for stream in (False, True):
        body = {**GOOD, "messages": [{"role": "user", "content": long_text}], "stream": stream}
        error = assert_error(
            post(http, body), 400, param="messages", code="context_length_exceeded"
        )
        assert f"maximum context length is {SERVER_CTX} tokens" in error["message"]


def test_prompt_plus_max_tokens_over_the_context_is_400(http: httpx.Client) -> None:
    body = {**GOOD, "max_tokens": SERVER_CTX}
    assert_error(post(http, body), 400, code="context_length_exceeded")
