"""Request validation over real HTTP, on the scripted engine: every malformed or unservable
chat request is a 400 in OpenAI's shape naming the field (FastAPI's own validation errors
included: never a 422 with `detail`), an unknown model or URL a 404, a wrong method a 405, and
unknown fields are ignored. None of it reaches the engine, so no model is needed; what does
(context lengths, images on a text model, aliases) stays in tests/e2e/test_errors.py."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fast.conftest import FastServer, error_of
from tests.fast.scripted import MODEL_ID

GOOD = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
PATH = "/v1/chat/completions"

pytestmark = pytest.mark.fast


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
    fast_server: FastServer, body: dict[str, Any], param: str
) -> None:
    with fast_server.client() as client:
        error = error_of(client.post(PATH, json=body), 400)
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert fast_server.engine.history == []


def test_malformed_json_is_400(fast_server: FastServer) -> None:
    with fast_server.client() as client:
        response = client.post(
            PATH, content=b'{"model": ', headers={"content-type": "application/json"}
        )
    assert "JSON" in error_of(response, 400)["message"]


def test_a_body_that_is_not_an_object_is_400(fast_server: FastServer) -> None:
    with fast_server.client() as client:
        error_of(client.post(PATH, json=[1, 2, 3]), 400)


def test_unknown_model_is_404_model_not_found(fast_server: FastServer) -> None:
    with fast_server.client() as client:
        error = error_of(client.post(PATH, json={**GOOD, "model": "gpt-4o"}), 404)
        assert (error["param"], error["code"]) == ("model", "model_not_found")
        assert "gpt-4o" in error["message"]
        assert error_of(client.get("/v1/models/gpt-4o"), 404)["code"] == "model_not_found"


def test_unknown_path_and_wrong_method_are_openai_errors(fast_server: FastServer) -> None:
    with fast_server.client() as client:
        error_of(client.get("/v1/nothing-here"), 404)
        error_of(client.get(PATH), 405)


def test_unknown_fields_are_ignored(fast_server: FastServer) -> None:
    with fast_server.client() as client:
        response = client.post(PATH, json={**GOOD, "some_vendor_extra": {"a": 1}, "user": "me"})
    assert response.status_code == 200, response.text


def test_the_sdk_sees_a_bad_request_error(fast_server: FastServer) -> None:
    client = openai.OpenAI(
        base_url=f"{fast_server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=10
    )
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=2)
    assert error.value.status_code == 400
    assert error.value.body["param"] == "messages"  # type: ignore[index]
