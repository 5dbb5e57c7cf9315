"""Large JSON-schema enums on the real model: a 5,000-value enum is enforced (as a trie of shared
prefixes, checked against the sampled token first) and answers a valid value; an enum over the
limit is a 400 naming the field and the limit. How long the other streams wait meanwhile is
measured by bench/grammar_gap.py, not asserted here."""

from __future__ import annotations

import json
from typing import Any

import httpx

from server.engine.json_schema import MAX_ENUM_VALUES
from tests.conftest import MODEL_ID


def enum_request(values: list[str], **extra: Any) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"v": {"type": "string", "enum": values}},
        "required": ["v"],
        "additionalProperties": False,
    }
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Pick a value."}],
        "max_tokens": 40,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": schema},
        },
        **extra,
    }


def test_a_5000_value_enum_answers_one_of_its_values(http: httpx.Client) -> None:
    values = [f"value-{i}" for i in range(5000)]
    for extra in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}):
        answer = http.post("/v1/chat/completions", json=enum_request(values, **extra))
        assert answer.status_code == 200, answer.text
        content = answer.json()["choices"][0]["message"]["content"]
        assert json.loads(content)["v"] in values


def test_an_enum_over_the_limit_is_a_400_naming_it(http: httpx.Client) -> None:
    values = [f"v{i}" for i in range(MAX_ENUM_VALUES + 1)]
    answer = http.post("/v1/chat/completions", json=enum_request(values))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"].startswith("response_format")
    assert f"at most {MAX_ENUM_VALUES:,}" in error["message"]
    assert "#/properties/v" in error["message"]
