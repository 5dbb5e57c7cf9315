"""Ollama's API end to end: the real server and engine with the bundled Gemma 3 270M, through
the official `ollama` Python client (list, show, ps, chat plain and streamed, generate, tools,
structured output) and raw HTTP (one NDJSON object a line, each with `done`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from tests.conftest import MODEL_ID, SERVER_CTX

SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}
HI = [{"role": "user", "content": "Hi"}]
GREEDY = {"temperature": 0, "seed": 1}


@pytest.fixture
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=120)


def test_list_show_and_ps(client: ollama.Client) -> None:
    [model] = client.list().models
    assert model.model == f"{MODEL_ID}:latest"
    assert model.size is not None and model.size > 0
    shown = client.show(MODEL_ID)
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.context_length"] == SERVER_CTX
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert shown.details is not None and shown.details.family == "gemma3"
    [loaded] = client.ps().models
    assert loaded.context_length == SERVER_CTX and loaded.expires_at is not None


def test_chat_matches_the_openai_endpoint(client: ollama.Client, openai_client) -> None:  # type: ignore[no-untyped-def]
    answer = client.chat(
        model=MODEL_ID, messages=HI, stream=False, options={**GREEDY, "num_predict": 8}
    )
    assert answer.done and answer.done_reason == "length"
    assert answer.eval_count == 8
    assert answer.prompt_eval_count == 10  # the same prompt as chat's "Hi"
    assert answer.total_duration is not None and answer.eval_duration is not None
    assert 0 < answer.eval_duration <= answer.total_duration
    chat = openai_client.chat.completions.create(
        model=MODEL_ID, messages=HI, max_tokens=8, temperature=0, seed=1
    )
    assert answer.message.content == chat.choices[0].message.content


def test_streamed_chat_adds_up_to_the_whole(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 6}
    whole = client.chat(model=MODEL_ID, messages=HI, stream=False, options=options)
    chunks = list(client.chat(model=MODEL_ID, messages=HI, stream=True, options=options))
    assert all(not chunk.done for chunk in chunks[:-1]) and chunks[-1].done
    assert "".join(chunk.message.content or "" for chunk in chunks) == whole.message.content
    assert chunks[-1].eval_count == 6


def test_generate_and_a_stop_string(client: ollama.Client) -> None:
    answer = client.generate(
        model=MODEL_ID, prompt="Count: 1, 2, 3,", options={**GREEDY, "num_predict": 12}
    )
    assert answer.done and answer.response
    assert answer.prompt_eval_count is not None and answer.prompt_eval_count > 5
    stopped = client.generate(
        model=MODEL_ID,
        prompt="Count: 1, 2, 3,",
        options={**GREEDY, "num_predict": 12, "stop": [answer.response[:2]]},
    )
    assert stopped.done_reason == "stop" and stopped.response == ""


def test_structured_output_through_format(client: ollama.Client) -> None:
    answer = client.chat(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Pick a colour."}],
        format=SCHEMA,
        stream=False,
        options={**GREEDY, "num_predict": 40},
    )
    jsonschema.validate(json.loads(answer.message.content or ""), SCHEMA)


def test_tools_are_offered_and_a_tool_turn_is_taken(client: ollama.Client) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    plain = client.chat(model=MODEL_ID, messages=HI, stream=False, options={"num_predict": 1})
    offered = client.chat(
        model=MODEL_ID, messages=HI, tools=[weather], stream=False, options={"num_predict": 1}
    )
    assert offered.prompt_eval_count and plain.prompt_eval_count
    assert offered.prompt_eval_count > plain.prompt_eval_count + 20  # the tool is in the prompt
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "Sunny, 24 C", "tool_name": "weather"},
    ]
    answer = client.chat(
        model=MODEL_ID, messages=history, tools=[weather], stream=False, options={"num_predict": 8}
    )
    assert answer.done


def test_every_ndjson_line_is_an_object_with_done(http: httpx.Client) -> None:
    body: dict[str, Any] = {"model": MODEL_ID, "prompt": "Hi", "options": {"num_predict": 5}}
    with http.stream("POST", "/api/generate", json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines()]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert all(line["model"] == MODEL_ID and "created_at" in line for line in lines)
    assert lines[-1]["eval_count"] == 5 and lines[-1]["done_reason"] == "length"


def test_a_prompt_too_long_is_400_in_ollamas_shape(http: httpx.Client) -> None:
    body = {"model": MODEL_ID, "prompt": "word " * (SERVER_CTX + 100), "stream": False}
    response = http.post("/api/generate", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"} and "prompt" in response.json()["error"]


def test_pull_reports_progress_and_success(client: ollama.Client) -> None:
    """The served model is in the cache already: the pull checks it and succeeds."""
    statuses = [progress.status for progress in client.pull(MODEL_ID, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull(f"{MODEL_ID}:latest", stream=False).status == "success"
    with pytest.raises(ollama.ResponseError) as unknown:
        client.pull("no-such-model")
    assert unknown.value.status_code == 404
