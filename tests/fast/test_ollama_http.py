"""Ollama's API (`/api/*`) over a scripted engine: what each field becomes for the engine, the
NDJSON stream and the final object, the official `ollama` client's calls, and every error in
Ollama's `{"error": "..."}` shape with the right status.

The same calls against the real model are in tests/e2e/test_ollama.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import ollama
import pytest

from server.engine.contract import (
    Finished,
    GenerationRequest,
    JsonFormat,
    Refused,
    RequestRejected,
    TextDelta,
    Usage,
)
from tests.fast.conftest import HI, FastServer
from tests.fast.scripted import MODEL_ID, Script
from tests.images import encode, picture

pytestmark = pytest.mark.fast

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL_TEXT = '{"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]}'


def client(server: FastServer) -> ollama.Client:
    return ollama.Client(host=server.base_url)


def ollama_error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


def only_request(server: FastServer) -> GenerationRequest:
    [request] = server.engine.history
    return request


# --- the official client -----------------------------------------------------------------------


def test_list_show_ps_and_version_with_the_client(fast_server: FastServer) -> None:
    api = client(fast_server)
    [model] = api.list().models
    assert model.model == f"{MODEL_ID}:latest"
    assert model.details is not None and model.details.format == "gguf"
    shown = api.show(f"{MODEL_ID}:latest")
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert shown.modelinfo is not None
    assert shown.modelinfo["gemma3.context_length"] == 1024  # the served context
    [loaded] = api.ps().models
    assert loaded.model == f"{MODEL_ID}:latest" and loaded.context_length == 1024
    assert loaded.expires_at is not None
    with fast_server.client() as http:
        assert http.get("/api/version").json()["version"].count(".") == 2


def test_chat_whole_with_the_client(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(
        Script([TextDelta("Hel"), TextDelta("lo"), Finished("stop", Usage(7, 2))])
    )
    answer = client(fast_server).chat(model=MODEL_ID, messages=HI, stream=False)
    assert answer.message.role == "assistant" and answer.message.content == "Hello"
    assert answer.done and answer.done_reason == "stop"
    assert (answer.prompt_eval_count, answer.eval_count) == (7, 2)
    assert answer.total_duration is not None and answer.total_duration > 0
    assert only_request(fast_server).messages[0].content == "Hi"


def test_chat_streams_one_object_a_piece_then_done(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(
        Script([TextDelta("Hel"), TextDelta("lo"), Finished("length", Usage(3, 2))])
    )
    chunks = list(client(fast_server).chat(model=MODEL_ID, messages=HI, stream=True))
    assert [chunk.message.content for chunk in chunks[:-1]] == ["Hel", "lo"]
    assert not any(chunk.done for chunk in chunks[:-1])
    assert chunks[-1].done and chunks[-1].done_reason == "length"
    assert chunks[-1].eval_count == 2


def test_the_stream_is_ndjson_by_default(fast_server: FastServer) -> None:
    with (
        fast_server.client() as http,
        http.stream("POST", "/api/chat", json={"model": MODEL_ID, "messages": HI}) as response,
    ):
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["done"] for line in lines] == [False, True]
    assert lines[0]["message"] == {"role": "assistant", "content": "Hello"}
    final = lines[-1]
    for name in ("total_duration", "prompt_eval_duration", "eval_duration", "load_duration"):
        assert isinstance(final[name], int) and final[name] >= 0
    assert final["prompt_eval_count"] == 3 and final["eval_count"] == 1


def test_generate_with_the_client(fast_server: FastServer) -> None:
    answer = client(fast_server).generate(model=MODEL_ID, prompt="Hi", system="Be brief.")
    assert answer.response == "Hello" and answer.done
    request = only_request(fast_server)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]


def test_raw_generate_sends_the_prompt_as_it_is(fast_server: FastServer) -> None:
    prompt = "<start_of_turn>user\nHi<end_of_turn>\n"
    list(client(fast_server).generate(model=MODEL_ID, prompt=prompt, raw=True, stream=True))
    request = only_request(fast_server)
    assert request.prompt == prompt and request.messages == ()


def test_tools_offered_and_a_call_read_back(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(Script([TextDelta(CALL_TEXT), Finished("stop", Usage(3, 9))]))
    answer = client(fast_server).chat(model=MODEL_ID, messages=HI, tools=[WEATHER], stream=False)
    [call] = answer.message.tool_calls or []
    assert call.function.name == "weather"
    assert call.function.arguments == {"city": "Paris"}
    system = only_request(fast_server).messages[0]
    assert system.role == "system" and '"name": "weather"' in system.content


def test_a_streamed_tool_call_comes_whole_before_done(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(
        Script(
            [TextDelta(CALL_TEXT[:20]), TextDelta(CALL_TEXT[20:]), Finished("stop", Usage(3, 9))]
        )
    )
    chunks = list(
        client(fast_server).chat(model=MODEL_ID, messages=HI, tools=[WEATHER], stream=True)
    )
    calls = [chunk.message.tool_calls for chunk in chunks if chunk.message.tool_calls]
    assert len(calls) == 1 and calls[0][0].function.arguments == {"city": "Paris"}
    assert chunks[-1].done


def test_earlier_tool_calls_and_results_reach_the_prompt(fast_server: FastServer) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "Sunny", "tool_name": "weather"},
    ]
    client(fast_server).chat(model=MODEL_ID, messages=messages, tools=[WEATHER], stream=False)
    texts = [m.content for m in only_request(fast_server).messages]
    assert any('"name": "weather"' in text and "Paris" in text for text in texts[2:3])
    assert texts[-1] == "Tool result for weather:\nSunny"


@pytest.mark.parametrize(
    ("format_", "expected"),
    [("json", JsonFormat()), ({"type": "object"}, JsonFormat(schema={"type": "object"}))],
)
def test_format_becomes_the_json_constraint(
    fast_server: FastServer, format_: Any, expected: JsonFormat
) -> None:
    client(fast_server).chat(model=MODEL_ID, messages=HI, format=format_, stream=False)
    assert only_request(fast_server).json_format == expected


def test_options_map_field_by_field(fast_server: FastServer) -> None:
    options = {
        "num_predict": 5,
        "temperature": 0.2,
        "top_p": 0.5,
        "top_k": 3,
        "min_p": 0.1,
        "seed": 7,
        "stop": ["END"],
        "repeat_penalty": 1.0,
        "num_ctx": 65536,  # accepted: the served context is fixed (documented)
        "num_thread": 4,
    }
    client(fast_server).chat(model=MODEL_ID, messages=HI, options=options, stream=False)
    request = only_request(fast_server)
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.2, 0.5, 3)
    assert (sampling.min_p, sampling.seed) == (0.1, 7)
    assert request.max_tokens == 5 and request.stop == ("END",)


def test_num_predict_minus_one_means_no_limit(fast_server: FastServer) -> None:
    client(fast_server).generate(model=MODEL_ID, prompt="Hi", options={"num_predict": -1})
    assert only_request(fast_server).max_tokens is None


def test_images_go_to_the_engine(fast_server: FastServer) -> None:
    image = base64.b64encode(encode(picture(3))).decode()
    message = {"role": "user", "content": "What is it?", "images": [image]}
    client(fast_server).chat(model=MODEL_ID, messages=[message], stream=False)
    request = only_request(fast_server)
    assert len(request.images) == 1 and request.images[0].param == "messages[0].images[0]"


def test_an_empty_chat_loads_the_model(fast_server: FastServer) -> None:
    answer = client(fast_server).chat(model=MODEL_ID, messages=[], stream=False)
    assert answer.done and answer.done_reason == "load"
    assert fast_server.engine.history == []


# --- errors, in Ollama's shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"options": {"no_such_option": 1}}, "options.no_such_option"),
        ({"options": {"repeat_penalty": 1.3}}, "options.repeat_penalty"),
        ({"options": {"mirostat": 2}}, "options.mirostat"),
        ({"options": {"num_predict": 0}}, "options.num_predict"),
        ({"options": {"temperature": "hot"}}, "options.temperature"),
        ({"think": True}, "think"),
        ({"logprobs": True}, "logprobs"),
        (
            {"messages": [{"role": "user", "content": "x", "images": ["not base64!"]}]},
            "messages[0].images[0]",
        ),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"keep_alive": "soon"}, "keep_alive"),
        ({"format": {"type": "object"}, "tools": [WEATHER]}, "format"),
    ],
)
def test_a_bad_chat_field_is_400_naming_it(
    fast_server: FastServer, body: dict[str, Any], named: str
) -> None:
    with fast_server.client() as http:
        response = http.post("/api/chat", json={"model": MODEL_ID, "messages": HI, **body})
    assert named in ollama_error(response, 400)
    assert fast_server.engine.history == []


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"context": [1, 2]}, "context"),
        ({"raw": True, "system": "x"}, "system"),
    ],
)
def test_a_bad_generate_field_is_400_naming_it(
    fast_server: FastServer, body: dict[str, Any], named: str
) -> None:
    with fast_server.client() as http:
        response = http.post("/api/generate", json={"model": MODEL_ID, "prompt": "Hi", **body})
    assert named in ollama_error(response, 400)


@pytest.mark.parametrize(
    ("cause", "named"),
    [
        (Refused.OUTPUT_FORMAT, "format"),
        (Refused.CONVERSATION, "messages"),
        (Refused.CONTEXT_LENGTH, "messages"),
    ],
)
def test_an_engine_refusal_names_ollamas_field(
    fast_server: FastServer, cause: Refused, named: str
) -> None:
    def refuse(request: GenerationRequest) -> None:
        raise RequestRejected("No.", cause)

    fast_server.engine.on_prepare = refuse
    with fast_server.client() as http:
        response = http.post("/api/chat", json={"model": MODEL_ID, "messages": HI})
    assert ollama_error(response, 400) == f"{named}: No."


def test_an_unknown_model_is_404_with_the_client(fast_server: FastServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(fast_server).chat(model="llama3", messages=HI, stream=False)
    assert caught.value.status_code == 404 and "llama3" in caught.value.error


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/create", 400),
        ("POST", "/api/push", 400),
        ("POST", "/api/copy", 400),
        ("POST", "/api/blobs/sha256:00", 400),
        ("POST", "/api/embed", 400),
        ("GET", "/api/no-such-endpoint", 404),
        ("GET", "/api/chat", 405),
    ],
)
def test_endpoints_not_served_answer_in_ollamas_shape(
    fast_server: FastServer, method: str, path: str, status: int
) -> None:
    with fast_server.client() as http:
        ollama_error(http.request(method, path, json={"model": MODEL_ID}), status)


def test_deleting_the_served_model_is_refused(fast_server: FastServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(fast_server).delete(f"{MODEL_ID}:latest")
    assert caught.value.status_code == 400 and "being served" in caught.value.error


def test_pulling_an_unknown_model_is_404(fast_server: FastServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(fast_server).pull("no-such-model")
    assert caught.value.status_code == 404


def test_malformed_json_is_400(fast_server: FastServer) -> None:
    with fast_server.client() as http:
        response = http.post(
            "/api/chat", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert "not valid JSON" in ollama_error(response, 400)


def test_an_error_mid_stream_is_an_error_line(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(Script([TextDelta("Hel"), RuntimeError("decode failed")]))
    with pytest.raises(ollama.ResponseError):
        list(client(fast_server).chat(model=MODEL_ID, messages=HI, stream=True))
    with fast_server.client() as http:
        fast_server.engine.enqueue(Script([TextDelta("Hel"), RuntimeError("decode failed")]))
        lines = http.post(
            "/api/generate", json={"model": MODEL_ID, "prompt": "Hi"}
        ).text.splitlines()
    assert json.loads(lines[0])["response"] == "Hel"
    assert set(json.loads(lines[-1])) == {"error"}


def test_metrics_count_requests_per_dialect(fast_server: FastServer) -> None:
    with fast_server.client() as http:
        http.get("/api/tags")
        metrics = http.get("/metrics").text
    counts = {
        line.split('"')[1]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("gemma_serve_dialect_requests_total{")
    }
    assert counts["ollama"] >= 1 and set(counts) == {"openai", "ollama", "anthropic"}
