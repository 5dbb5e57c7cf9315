"""Structured output end to end: `response_format` json_schema and json_object enforced by a
grammar on the real model, through the official SDK; unsupported schemas are a 400, not a crash.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import MODEL_ID

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "integer"},
    },
    "required": ["ok", "color", "size"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe the sky as JSON."}]


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(openai_client, stream: bool) -> None:  # type: ignore[no-untyped-def]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "sky", "schema": SCHEMA, "strict": True},
    }
    args = {
        "model": MODEL_ID,
        "messages": ASK,
        "max_tokens": 60,
        "temperature": 0,
        "response_format": response_format,
    }
    if stream:
        chunks = list(openai_client.chat.completions.create(**args, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        choice = openai_client.chat.completions.create(**args).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert finish == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_sampled_json_schema_output_validates_for_several_seeds(openai_client) -> None:  # type: ignore[no-untyped-def]
    for seed in range(3):
        content = (
            openai_client.chat.completions.create(
                model=MODEL_ID,
                messages=ASK,
                max_tokens=60,
                temperature=1.0,
                seed=seed,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "sky", "schema": SCHEMA},
                },
            )
            .choices[0]
            .message.content
        )
        jsonschema.validate(json.loads(content), SCHEMA)


class Sky(BaseModel):
    clear: bool
    clouds: int


def test_the_sdks_parse_helper_gets_a_typed_object(openai_client) -> None:  # type: ignore[no-untyped-def]
    # The SDK turns the pydantic model into a strict json_schema and parses the answer back.
    completion = openai_client.chat.completions.parse(
        model=MODEL_ID, messages=ASK, max_tokens=40, temperature=0, response_format=Sky
    )
    sky = completion.choices[0].message.parsed
    assert isinstance(sky, Sky)


def test_json_object_output_is_json_from_the_first_character(openai_client) -> None:  # type: ignore[no-untyped-def]
    # The base model rambles inside the object until max_tokens, so the text is a JSON prefix;
    # without the grammar this prompt starts with plain words.
    args = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 20,
        "temperature": 0,
    }
    plain = openai_client.chat.completions.create(**args).choices[0].message.content
    constrained = (
        openai_client.chat.completions.create(**args, response_format={"type": "json_object"})
        .choices[0]
        .message.content
    )
    assert not plain.lstrip().startswith("{")
    assert constrained.startswith("{")


def post_schema(http: httpx.Client, schema: dict[str, object]) -> httpx.Response:
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = {"model": MODEL_ID, "messages": ASK, "max_tokens": 5, "response_format": response_format}
    return http.post("/v1/chat/completions", json=body)


def test_a_schema_keyword_the_grammar_cannot_enforce_is_refused_by_name(http: httpx.Client) -> None:
    response = post_schema(http, {"type": "object", "properties": {"n": {"maximum": 9}}})
    assert response.status_code == 400, response.text
    assert "'maximum' at #/properties/n" in response.json()["error"]["message"]


def test_an_unsupported_schema_is_a_400_and_the_server_survives(
    http: httpx.Client, openai_client
) -> None:  # type: ignore[no-untyped-def]
    response = post_schema(http, {"properties": {"a": {"$ref": "#/definitions/missing"}}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format"
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(
            model=MODEL_ID,
            messages=ASK,
            max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x"}},
        )
    assert http.get("/health").status_code == 200


# Gemma's "\n", "\n\n" and "\t" tokens pushed to the top: wherever the grammar lets a raw control
# character through, the model writes one, and the output is not JSON any more.
CONTROL_BIAS = {"107": 100, "108": 100, "255968": 100}
NOTE = {
    "type": "object",
    "properties": {"note": {"type": "string", "maxLength": 8}},
    "required": ["note"],
    "additionalProperties": False,
}


def ask_for_a_note(openai_client, **constraint):  # type: ignore[no-untyped-def]
    """A note on two lines, with newline and tab tokens favoured, under `constraint`."""
    return openai_client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Write a note on two lines."}],
        max_tokens=60,
        temperature=0,
        logit_bias=CONTROL_BIAS,
        **constraint,
    ).choices[0]


def test_json_schema_strings_never_hold_raw_control_characters(openai_client) -> None:  # type: ignore[no-untyped-def]
    schema = {"name": "note", "schema": NOTE, "strict": True}
    choice = ask_for_a_note(
        openai_client, response_format={"type": "json_schema", "json_schema": schema}
    )
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), NOTE)  # strict: no raw \n or \t


def test_forced_tool_call_arguments_never_hold_raw_control_characters(openai_client) -> None:  # type: ignore[no-untyped-def]
    tool = {"type": "function", "function": {"name": "write_note", "parameters": NOTE}}
    named = {"type": "function", "function": {"name": "write_note"}}
    choice = ask_for_a_note(openai_client, tools=[tool], tool_choice=named)
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), NOTE)
