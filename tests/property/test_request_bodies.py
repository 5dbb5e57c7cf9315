"""Property-based tests over request bodies (hypothesis): whatever a client sends, the server
answers with a 4xx in OpenAI's error shape or a well-formed success, never a 5xx or a hang.

Bodies come from the per-endpoint strategies in `strategies.py` (valid, invalid and odd values
for every field), from whole-body mutations (not an object, not JSON, NaN/Infinity, lone
surrogates, wrong content types), and are sent to the real server with the bundled model.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.property.contract import assert_openai_error, check_httpx_response, check_response
from tests.property.strategies import ENDPOINTS, Endpoint, one_broken_field, request_bodies

# Bounded for time: the three tests together take about a minute here (2 cores, shared).
PROPERTY_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # nothing written into the work tree; a failure prints its example
    print_blob=True,  # ... and a blob that replays it (@reproduce_failure)
)
# `param` names a field the way OpenAI does: `messages[0].content`, `response_format.type`,
# `logit_bias.50256`; never pydantic's internal labels (`list[tagged-union[...]]`, `str`).
PARAM_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[^.\[\]\s]+|\[\d+\])*$")


def post_json(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    # allow_nan: NaN and Infinity go out as the bare tokens Python's JSON parser accepts.
    content = json.dumps(body, allow_nan=True)
    return client.post(path, content=content, headers={"content-type": "application/json"})


ENDPOINT_PARAMS = [pytest.param(endpoint, id=path) for path, endpoint in ENDPOINTS.items()]


@pytest.mark.parametrize("endpoint", ENDPOINT_PARAMS)
def test_no_request_body_yields_a_server_error(client: httpx.Client, endpoint: Endpoint) -> None:
    statuses: Counter[tuple[str, int]] = Counter()

    @settings(PROPERTY_SETTINGS, max_examples=50)
    @given(generated=request_bodies(endpoint))
    def check(generated: tuple[str, dict[str, Any]]) -> None:
        kind, body = generated
        response = post_json(client, endpoint.path, body)
        statuses[kind, response.status_code] += 1
        check_httpx_response(response)
        if kind == "valid" and response.status_code != 200:
            # Valid input is honoured, or a field the server does not support is refused by name.
            error = assert_openai_error(response.status_code, response.text)
            assert response.status_code == 400 and error["param"], (body, error)

    check()
    # The mix shows that bodies reach generation (not all refused at the door) and broken ones
    # are refused: a run where every body failed validation would have tested very little.
    assert statuses["valid", 200] >= 3, statuses
    assert sum(n for (kind, status), n in statuses.items() if status >= 400) >= 3, statuses


@pytest.mark.parametrize("endpoint", ENDPOINT_PARAMS)
def test_an_invalid_field_is_refused_naming_it(client: httpx.Client, endpoint: Endpoint) -> None:
    @settings(PROPERTY_SETTINGS, max_examples=60)
    @given(broken=one_broken_field(endpoint))
    def check(broken: tuple[str, dict[str, Any]]) -> None:
        name, body = broken
        response = post_json(client, endpoint.path, body)
        assert 400 <= response.status_code < 500, (name, body, response.status_code, response.text)
        error = assert_openai_error(response.status_code, response.text)
        param = error["param"]
        assert isinstance(param, str) and PARAM_PATH.match(param), (name, body, error)
        if error["code"] == "context_length_exceeded":  # a token limit over the context
            assert name in endpoint.token_limits and param == "messages", (name, body, error)
            return
        assert param == name or param.startswith((f"{name}.", f"{name}[")), (name, body, error)

    check()


# --- whole bodies that are not what the endpoint expects ----------------------------------------

JSON_TYPES = "application/json"
NOT_OBJECTS = st.one_of(
    st.lists(st.integers(), max_size=3),
    st.text(max_size=10),
    st.integers(),
    st.none(),
    st.booleans(),
)


@st.composite
def raw_requests(draw: st.DrawFn, endpoint: Endpoint) -> tuple[bytes, str]:
    """(body bytes, content type) that are wrong as a whole rather than field by field."""
    body = json.dumps(dict(endpoint.minimal)).encode()
    kind = draw(
        st.sampled_from(
            ["not_object", "bytes", "truncated", "surrogate", "non_finite", "content_type", "deep"]
        )
    )
    if kind == "not_object":
        return json.dumps(draw(NOT_OBJECTS)).encode(), JSON_TYPES
    if kind == "bytes":
        return draw(st.binary(max_size=64)), JSON_TYPES
    if kind == "truncated":
        return body[: draw(st.integers(0, len(body) - 1))], JSON_TYPES
    if kind == "surrogate":
        # JSON text may escape a lone surrogate; UTF-8 (and so the model's tokenizer) cannot.
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\udc00\\ud800"]))
        text = json.dumps(endpoint.minimal).replace('"Hi"', f'"a{escape}b"')
        return text.encode(), JSON_TYPES
    if kind == "non_finite":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]))
        field = draw(st.sampled_from(["temperature", "top_p", "seed", "max_tokens", "n", "model"]))
        return body[:-1] + f', "{field}": {token}}}'.encode(), JSON_TYPES
    if kind == "content_type":
        content_type = draw(
            st.sampled_from(
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "application/json; charset=latin-1",
                    "application/xml",
                    "",
                ]
            )
        )
        return body, content_type
    depth = draw(st.sampled_from([100, 1_000, 100_000]))
    return (b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"), JSON_TYPES


@pytest.mark.parametrize("endpoint", ENDPOINT_PARAMS)
def test_malformed_bodies_are_refused_in_openai_shape(
    client: httpx.Client, endpoint: Endpoint
) -> None:
    @settings(PROPERTY_SETTINGS, max_examples=40)
    @given(raw=raw_requests(endpoint))
    def check(raw: tuple[bytes, str]) -> None:
        content, content_type = raw
        headers = {"content-type": content_type} if content_type else {}
        response = client.post(endpoint.path, content=content, headers=headers)
        check_response(endpoint.path, response.status_code, response.headers, response.text)

    check()
