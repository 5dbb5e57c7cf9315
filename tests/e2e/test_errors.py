"""Every error in OpenAI's shape with the right 4xx status, over real HTTP, including FastAPI's
own validation errors (400, never 422 with `detail`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

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


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL_ID}, "messages"),
        ({**GOOD, "messages": []}, "messages"),
        ({**GOOD, "messages": "Hi"}, "messages"),
        ({**GOOD, "messages": [{"role": 1, "content": "Hi"}]}, "messages[0].role"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
        ({**GOOD, "messages": [{"content": "Hi"}]}, "messages[0].role"),
        ({**GOOD, "temperature": 3}, "temperature"),
        ({**GOOD, "temperature": "hot"}, "temperature"),
        ({**GOOD, "top_p": -1}, "top_p"),
        ({**GOOD, "max_tokens": -5}, "max_tokens"),
        ({**GOOD, "stream": "yes please"}, "stream"),
        ({**GOOD, "n": 5}, "n"),  # over the default cap of 4 (--max-choices)
        ({**GOOD, "n": 0}, "n"),
        ({**GOOD, "tool_choice": "required"}, "tool_choice"),  # no tools given
        ({"messages": GOOD["messages"]}, "model"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = assert_error(post(http, body), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert "JSON" in assert_error(response, 400)["message"]


def test_a_body_that_is_not_an_object_is_400(http: httpx.Client) -> None:
    assert_error(post(http, [1, 2, 3]), 400)


def test_images_are_refused_by_a_model_without_projector(http: httpx.Client) -> None:
    from tests.images import picture_url

    image = {"type": "image_url", "image_url": {"url": picture_url(1)}}
    body = {**GOOD, "messages": [{"role": "user", "content": [image]}]}
    error = assert_error(post(http, body), 400, param="messages[0].content[0]")
    assert "does not take images" in error["message"]


def test_unknown_model_is_404_model_not_found(http: httpx.Client) -> None:
    error = assert_error(
        post(http, {**GOOD, "model": "gpt-4o"}), 404, param="model", code="model_not_found"
    )
    assert "gpt-4o" in error["message"]
    assert_error(http.get("/v1/models/gpt-4o"), 404, code="model_not_found")


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


def test_unknown_path_and_wrong_method_are_openai_errors(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


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


def test_unknown_fields_are_ignored(http: httpx.Client) -> None:
    response = post(http, {**GOOD, "some_vendor_extra": {"a": 1}, "user": "me"})
    assert response.status_code == 200, response.text


def test_the_sdk_sees_a_bad_request_error(openai_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=2)
    assert error.value.status_code == 400
    assert error.value.body["param"] == "messages"
