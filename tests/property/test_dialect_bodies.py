"""Property-based tests over Ollama's and Anthropic's request bodies (hypothesis), as
test_request_bodies.py does for OpenAI's: whatever a client sends, the answer is a 4xx in the
dialect's error shape naming what it refused, or a well-formed success (NDJSON, SSE or JSON),
never a 5xx or a hang."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import given, settings

from tests.property.contract import check_httpx_response
from tests.property.cost import cap_generation_cost
from tests.property.dialect_strategies import DIALECT_ENDPOINTS
from tests.property.strategies import Endpoint, one_broken_field, request_bodies
from tests.property.test_request_bodies import PROPERTY_SETTINGS, post_json, raw_requests

ENDPOINT_PARAMS = [pytest.param(endpoint, id=path) for path, endpoint in DIALECT_ENDPOINTS.items()]


def error_message(response: httpx.Response) -> str:
    body = response.json()
    error = body["error"]
    return str(error if isinstance(error, str) else error["message"])


@pytest.mark.parametrize("endpoint", ENDPOINT_PARAMS)
def test_no_request_body_yields_a_server_error(client: httpx.Client, endpoint: Endpoint) -> None:
    statuses: Counter[tuple[str, int]] = Counter()

    @settings(PROPERTY_SETTINGS, max_examples=40)
    @given(generated=request_bodies(endpoint))
    def check(generated: tuple[str, dict[str, Any]]) -> None:
        kind, body = generated
        cap_generation_cost(body)  # an extra `options` without num_predict is capped too
        response = post_json(client, endpoint.path, body)
        statuses[kind, response.status_code] += 1
        check_httpx_response(response)
        if kind == "valid":  # honoured, or a field it cannot honour refused by name
            assert response.status_code in (200, 400), (body, response.text)

    check()
    assert statuses["valid", 200] >= 3, statuses
    assert sum(n for (kind, status), n in statuses.items() if status >= 400) >= 3, statuses


@pytest.mark.parametrize("endpoint", ENDPOINT_PARAMS)
def test_an_invalid_field_is_refused_naming_it(client: httpx.Client, endpoint: Endpoint) -> None:
    @settings(PROPERTY_SETTINGS, max_examples=40)
    @given(broken=one_broken_field(endpoint))
    def check(broken: tuple[str, dict[str, Any]]) -> None:
        name, body = broken
        response = post_json(client, endpoint.path, body)
        assert 400 <= response.status_code < 500, (name, body, response.status_code, response.text)
        check_httpx_response(response)
        message = error_message(response)
        named = name in message or (name == "messages" and "prompt" in message)
        assert named or name == "model", (name, body, message)  # another model: 404 names it

    check()


@pytest.mark.parametrize("endpoint", ENDPOINT_PARAMS)
def test_malformed_bodies_are_refused_in_the_dialects_shape(
    client: httpx.Client, endpoint: Endpoint
) -> None:
    @settings(PROPERTY_SETTINGS, max_examples=30)
    @given(raw=raw_requests(endpoint))
    def check(raw: tuple[bytes, str]) -> None:
        content, content_type = raw
        headers = {"content-type": content_type} if content_type else {}
        check_httpx_response(client.post(endpoint.path, content=content, headers=headers))

    check()
