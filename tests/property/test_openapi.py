"""schemathesis against the server's own /openapi.json: every operation it documents, with
bodies generated from its schemas, valid (positive) and invalid (negative).

Checks: never a 5xx; 4xx bodies in the error shape of the path's dialect (OpenAI's, Ollama's,
Anthropic's); successes conform to the documented response schema (streams: the SSE or NDJSON
contract instead, since OpenAPI cannot describe them); and negative data -- a body that breaks
the documented schema -- is rejected with a 4xx, not silently accepted. New endpoints are picked
up from /openapi.json with nothing to add here; the fields that bound generation cost are capped
wherever an operation declares them (`cost.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import MODEL_ID, RunningServer
from tests.property.conftest import REQUEST_TIMEOUT_S
from tests.property.contract import check_response, is_stream
from tests.property.cost import cap_generation_cost

# Statuses that reject negative data: 400 (validation), 404 (unknown model or path parameter),
# 413/415 (body too large, wrong media type). Never FastAPI's 422.
REJECTION_STATUSES = [400, 404, 413, 415]
EXAMPLES_PER_OPERATION = 25


def _resolve(schema: Any, document: Mapping[str, Any]) -> Any:
    while isinstance(schema, Mapping) and "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def body_properties(document: Mapping[str, Any], path: str, method: str) -> dict[str, Any]:
    """The JSON request body's top-level properties (name -> schema) of one operation."""
    operation = document["paths"].get(path, {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    schema = _resolve(content.get("application/json", {}).get("schema"), document)
    if not isinstance(schema, Mapping):
        return {}
    return {name: _resolve(prop, document) for name, prop in schema.get("properties", {}).items()}


@pytest.fixture(scope="module")
def openapi_document(server: RunningServer) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    return document


@pytest.fixture(scope="module")
def api_schema(server: RunningServer) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all"},
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTION_STATUSES}},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", config=config)


def prepare(case: Any, document: Mapping[str, Any]) -> None:
    """Cap the generation cost and name the served model, leaving negative values alone."""
    body = case.body
    if not isinstance(body, dict):
        return
    cap_generation_cost(body, body_properties(document, case.path, case.method))
    if isinstance(body.get("model"), str) and body["model"]:
        body["model"] = MODEL_ID  # a random model id is a 404 before anything else is checked
    keep_alive = body.get("keep_alive")
    if isinstance(keep_alive, int | float) and not isinstance(keep_alive, bool) and keep_alive >= 0:
        # Ollama's keep_alive applies to the shared server from then on: 0 or a few seconds
        # would unload the model between cases (a reload each, ~2.5 s). Forever is as valid.
        body["keep_alive"] = -1


def run_cases(operation: Any, mode: GenerationMode, document: Mapping[str, Any]) -> None:
    """Generate `mode` cases for one operation, send each, and check the response."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        note(f"{operation.label} ({mode.value})")
        prepare(case, document)
        response = case.call(timeout=REQUEST_TIMEOUT_S)
        headers = {name: values[-1] for name, values in response.headers.items()}
        checks = [not_a_server_error, status_code_conformance, negative_data_rejection]
        if not is_stream(headers):  # OpenAPI documents the JSON answer only
            checks += [content_type_conformance, response_schema_conformance]
        case.validate_response(response, checks=checks)
        check_response(case.path, response.status_code, headers, response.text)

    check()


# NOTE: schemathesis' own pytest integration (`from_fixture` + `parametrize`) breaks on pytest 9
# (it rewrites `node._nodeid`), so each operation's case strategy is driven by hypothesis here.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_documented_operation(
    api_schema: Any, openapi_document: dict[str, Any], mode: GenerationMode
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert any(op.path == "/v1/chat/completions" for op in operations), "schema not loaded?"
    for operation in operations:
        documented = openapi_document["paths"][operation.path][operation.method.lower()]
        if mode == GenerationMode.NEGATIVE and "requestBody" not in documented:
            continue  # path parameters here are free strings: nothing in them can be invalid
        run_cases(operation, mode, openapi_document)
