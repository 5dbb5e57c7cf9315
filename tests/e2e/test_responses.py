"""The Responses API (`POST /v1/responses`) end to end: the real server and engine with the
bundled Gemma 3 270M, through the official SDK (`responses.create`, `responses.stream`,
`create(stream=True)`) and raw HTTP: each field, each error, and the stream's event order."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL_ID, SERVER_CTX
from tests.e2e.test_errors import assert_error

# Small on purpose: grammar-constrained sampling over Gemma's 262,144-token vocabulary is slow on
# a loaded CPU, and this schema completes (status "completed") in about ten tokens.
SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {"format": {"type": "json_schema", "name": "person", "schema": SCHEMA}}
EVENT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING_ORDER = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def respond(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/v1/responses", json={"model": MODEL_ID, **fields})


def test_create_with_the_sdk(openai_client) -> None:  # type: ignore[no-untyped-def]
    response = openai_client.responses.create(
        model=MODEL_ID, input="Hi", max_output_tokens=8, temperature=0
    )
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.model == MODEL_ID
    assert response.status == "incomplete"  # the base model does not stop within 8 tokens
    assert response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert response.output_text == message.content[0].text
    assert response.output_text
    assert response.usage.input_tokens == 10  # the same prompt as chat's "Hi"
    assert response.usage.output_tokens == 8
    assert response.usage.total_tokens == 18
    assert response.max_output_tokens == 8
    assert response.temperature == 0


def test_the_same_text_as_chat_for_the_same_conversation(openai_client) -> None:  # type: ignore[no-untyped-def]
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    chat = openai_client.chat.completions.create(
        model=MODEL_ID, messages=conversation, max_tokens=10, temperature=0
    )
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Blue.", "annotations": []}],
        },
        {"role": "user", "content": "Another one?"},
    ]
    response = openai_client.responses.create(
        model=MODEL_ID,
        instructions="Answer briefly.",
        input=items,
        max_output_tokens=10,
        temperature=0,
    )
    assert response.instructions == "Answer briefly."
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.output_text == chat.choices[0].message.content


def test_json_object_output_starts_as_json(http: httpx.Client) -> None:
    body = respond(
        http,
        input="Give me JSON.",
        max_output_tokens=5,
        temperature=0,
        text={"format": {"type": "json_object"}},
    ).json()
    assert body["output"][0]["content"][0]["text"].lstrip().startswith("{")


def test_seed_reproducibility(http: httpx.Client) -> None:
    args = {"input": "Tell me a story.", "max_output_tokens": 12, "temperature": 1.0}
    first = respond(http, **args, seed=99).json()["output"][0]["content"][0]["text"]
    assert respond(http, **args, seed=99).json()["output"][0]["content"][0]["text"] == first


def test_accepted_fields_are_echoed_and_nothing_is_stored(http: httpx.Client) -> None:
    body = respond(
        http,
        input="Hi",
        max_output_tokens=2,
        top_p=0.5,
        store=True,
        metadata={"run": "7"},
        user="someone",
        parallel_tool_calls=False,
        tool_choice="none",
        truncation="disabled",
        include=[],
        vendor_extra={"x": 1},
    ).json()
    assert body["store"] is False
    assert body["metadata"] == {"run": "7"}
    assert body["user"] == "someone"
    assert body["top_p"] == 0.5
    assert body["parallel_tool_calls"] is False
    assert body["tool_choice"] == "none"
    assert body["previous_response_id"] is None
    # stateless: there is no endpoint to fetch a stored response
    assert http.get(f"/v1/responses/{body['id']}").status_code == 404


# --- streaming ------------------------------------------------------------------------------


def test_stream_helper_reaches_the_final_response(openai_client) -> None:  # type: ignore[no-untyped-def]
    with openai_client.responses.stream(
        model=MODEL_ID,
        input="Describe the sky as JSON.",
        max_output_tokens=30,
        temperature=0,
        text=JSON_SCHEMA_FORMAT,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[:4] == EVENT_ORDER
    assert types[-4:] == [*CLOSING_ORDER, "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert final.output_text == deltas
    assert final.status == "completed"
    assert final.incomplete_details is None
    assert final.text.format.type == "json_schema"
    jsonschema.validate(json.loads(final.output_text), SCHEMA)


def test_create_stream_true_matches_the_whole_response(openai_client) -> None:  # type: ignore[no-untyped-def]
    args = {"model": MODEL_ID, "input": "Hi", "max_output_tokens": 6, "temperature": 0}
    whole = openai_client.responses.create(**args)
    events = list(openai_client.responses.create(**args, stream=True))
    types = [event.type for event in events]
    assert types[:4] == EVENT_ORDER
    assert types[-4:] == [*CLOSING_ORDER, "response.incomplete"]
    assert types.count("response.output_text.delta") >= 1
    final = events[-1].response
    assert final.status == "incomplete"
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == whole.output_text
    assert final.usage.output_tokens == 6
    ids = {event.response.id for event in events if hasattr(event, "response")}
    assert len(ids) == 1


def test_sse_wire_format(http: httpx.Client) -> None:
    body = {"model": MODEL_ID, "input": "Hi", "max_output_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if not line.startswith(":")]
    events = []
    pending_event = None
    for line in lines:
        if line.startswith("event: "):
            assert pending_event is None, lines
            pending_event = line[len("event: ") :]
        elif line.startswith("data: "):
            payload = json.loads(line[len("data: ") :])
            assert payload["type"] == pending_event  # every data line is named by its event line
            events.append(payload)
            pending_event = None
        else:
            assert line == "", line
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.incomplete"  # no [DONE] in Responses streams


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id", "unsupported_parameter"),
        ({"tools": [{"type": "function", "name": "f"}]}, "tools", "unsupported_parameter"),
        ({"reasoning": {"effort": "low"}}, "reasoning.effort", "unsupported_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"truncation": "auto"}, "truncation", "unsupported_parameter"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": 7}, "input", "invalid_value"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role", "invalid_value"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
            "input[0].type",
            "unsupported_parameter",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is this?"},
                            {"type": "input_image", "image_url": "https://example.com/a.png"},
                        ],
                    }
                ]
            },
            "input[0].content[1]",
            # this model takes no images: said before the URL is looked at (test_vision.py
            # has the vision server's refusal of a remote URL, unsupported_image_url)
            "image_input_not_supported",
        ),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"top_p": 1.5}, "top_p", "invalid_value"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x"}}},
            "text.format.schema",
            "missing_required_parameter",
        ),
        (  # refused by the engine's grammar, named in Responses' own terms
            {
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "x",
                        "schema": {"properties": {"a": {"$ref": "#/definitions/missing"}}},
                    }
                }
            },
            "text.format",
            "invalid_value",
        ),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    http: httpx.Client, fields: dict[str, Any], param: str, code: str
) -> None:
    body = {"input": "Hi", "max_output_tokens": 2, **fields}
    error = assert_error(respond(http, **body), 400, param=param, code=code)
    assert error["type"] == "invalid_request_error"


def test_a_missing_input_is_400(http: httpx.Client) -> None:
    assert_error(respond(http, max_output_tokens=2), 400, param="input")


def test_previous_response_id_is_refused_through_the_sdk(openai_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(
            model=MODEL_ID, input="Hi", previous_response_id="resp_1", max_output_tokens=2
        )
    assert caught.value.body["param"] == "previous_response_id"


def test_an_unknown_model_is_404(openai_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.create(model="gpt-4o", input="Hi", max_output_tokens=2)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_before_any_byte(http: httpx.Client, stream: bool) -> None:
    body = {"model": MODEL_ID, "input": "word " * SERVER_CTX, "stream": stream}
    with http.stream("POST", "/v1/responses", json=body) as response:
        response.read()
    assert response.headers["content-type"].startswith("application/json")
    assert_error(response, 400, param="input", code="context_length_exceeded")
