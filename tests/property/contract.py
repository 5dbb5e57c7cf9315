"""What every response must look like, whatever the request: the contract both property suites
(hypothesis over hand-written strategies, schemathesis over /openapi.json) assert.

- Never a 5xx. The only documented 5xx answers are 503s (model loading, load failed, shutting
  down, busy); none of them may happen against the ready, sequentially used test server.
- A 4xx is JSON in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}` and
  nothing else, `message` and `type` non-empty strings, `param` and `code` strings or null; on
  Ollama's paths (`/api/*`) `{"error": "..."}`, on Anthropic's (`/v1/messages`)
  `{"type": "error", "error": {"type", "message"}}`.
- A 200 has the shape of its endpoint (`SUCCESS_CHECKS`), streamed or not; a chat stream is
  `text/event-stream` whose last event is `data: [DONE]`, an Ollama stream one JSON object a
  line ending with `done: true` (or an error line), a Messages stream Anthropic's events from
  `message_start` to `message_stop` (or an `error` event).

Endpoints without an entry in `SUCCESS_CHECKS` still get the status and error checks (and
schemathesis' response-schema check), so a new endpoint is covered before anyone writes its entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from server.api.errors import dialect_of

DONE = "[DONE]"
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def assert_not_a_server_error(status: int, text: str) -> None:
    assert status < 500, f"{status} (a server error) for a client's request: {text[:500]}"


def assert_openai_error(status: int, text: str) -> dict[str, Any]:
    """A 4xx body: exactly `{"error": {message, type, param, code}}`; returns the inner object."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise AssertionError(f"{status} body is not JSON: {text[:300]!r}") from exc
    assert isinstance(body, dict) and set(body) == {"error"}, (
        f"{status}: not OpenAI's shape: {body}"
    )
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == {"message", "type", "param", "code"}, f"{status}: {error}"
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    return error


def _assert_usage(usage: Any) -> None:
    assert isinstance(usage, dict), usage
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert isinstance(usage[key], int) and usage[key] >= 0, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage


def assert_chat_completion(body: Any) -> None:
    assert isinstance(body, dict), body
    assert body["object"] == "chat.completion", body
    assert isinstance(body["id"], str) and body["id"], body
    assert isinstance(body["created"], int) and isinstance(body["model"], str), body
    choices = body["choices"]
    assert isinstance(choices, list) and choices, body
    assert [choice["index"] for choice in choices] == list(range(len(choices))), body
    for choice in choices:
        message = choice["message"]
        assert message["role"] == "assistant", choice
        assert message.get("content") is None or isinstance(message["content"], str), choice
        assert choice["finish_reason"] in FINISH_REASONS, choice
    _assert_usage(body["usage"])


def assert_chat_chunk(chunk: Any) -> None:
    assert isinstance(chunk, dict), chunk
    if "error" in chunk:  # an error after the stream started: one error event, then [DONE]
        assert_openai_error(200, json.dumps(chunk))
        return
    assert chunk["object"] == "chat.completion.chunk", chunk
    assert isinstance(chunk["id"], str) and chunk["id"], chunk
    assert isinstance(chunk["choices"], list), chunk
    for choice in chunk["choices"]:
        assert isinstance(choice["index"], int) and isinstance(choice["delta"], dict), choice
        assert choice.get("finish_reason") in FINISH_REASONS | {None}, choice
    if not chunk["choices"]:
        _assert_usage(chunk["usage"])


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an event stream, in order (comments and pings skipped)."""
    payloads = []
    for line in text.splitlines():
        if line.startswith("data:"):
            payloads.append(line[len("data:") :].strip())
    return payloads


def assert_chat_stream(text: str) -> None:
    payloads = sse_data(text)
    assert payloads and payloads[-1] == DONE, f"stream does not end with [DONE]: {text[-300:]!r}"
    assert DONE not in payloads[:-1], text
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        assert_chat_chunk(chunk)
    ids = {chunk["id"] for chunk in chunks if "id" in chunk}
    assert len(ids) <= 1, f"one id per stream, got {ids}"


def assert_ollama_error(status: int, text: str) -> None:
    body = json.loads(text)
    assert isinstance(body, dict) and set(body) == {"error"}, (
        f"{status}: not Ollama's shape: {body}"
    )
    assert isinstance(body["error"], str) and body["error"].strip(), body


def assert_anthropic_error(status: int, text: str) -> None:
    body = json.loads(text)
    assert isinstance(body, dict) and set(body) == {"type", "error"}, f"{status}: {body}"
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] and body["error"]["message"].strip(), body


ERROR_CHECKS: Mapping[str, Callable[[int, str], Any]] = {
    "openai": assert_openai_error,
    "ollama": assert_ollama_error,
    "anthropic": assert_anthropic_error,
}


def assert_ollama_done(body: Any) -> None:
    assert isinstance(body, dict) and body["done"] is True, body
    # "load" and "unload": an empty prompt only loads the model, or with keep_alive 0 unloads it
    assert body["done_reason"] in ("stop", "length", "load", "unload"), body
    assert isinstance(body["model"], str) and isinstance(body["created_at"], str), body


def assert_ollama_stream(text: str) -> None:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "an empty NDJSON stream"
    if "error" in lines[-1]:  # an error after the stream started
        assert_ollama_error(200, json.dumps(lines[-1]))
    else:
        assert_ollama_done(lines[-1])
    assert all(line.get("done") is False for line in lines[:-1]), lines


def assert_anthropic_message(body: Any) -> None:
    assert isinstance(body, dict) and body["type"] == "message", body
    assert body["role"] == "assistant" and isinstance(body["content"], list), body
    assert body["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence", "tool_use"), body
    assert isinstance(body["usage"]["input_tokens"], int), body


def assert_anthropic_stream(text: str) -> None:
    types = [json.loads(payload)["type"] for payload in sse_data(text)]
    assert types and types[0] == "message_start", types
    assert types[-1] in ("message_stop", "error"), types


# path -> (check of a JSON 200 body, check of a streamed 200 body's text)
SuccessCheck = tuple[Callable[[Any], None], Callable[[str], None]]
SUCCESS_CHECKS: Mapping[str, SuccessCheck] = {
    "/v1/chat/completions": (assert_chat_completion, assert_chat_stream),
    "/api/chat": (assert_ollama_done, assert_ollama_stream),
    "/api/generate": (assert_ollama_done, assert_ollama_stream),
    "/v1/messages": (assert_anthropic_message, assert_anthropic_stream),
}


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").startswith("text/event-stream")


def is_stream(headers: Mapping[str, str]) -> bool:
    """SSE, or Ollama's NDJSON: answers OpenAPI cannot describe."""
    return is_event_stream(headers) or headers.get("content-type", "").startswith(
        "application/x-ndjson"
    )


def check_response(path: str, status: int, headers: Mapping[str, str], text: str) -> None:
    """The whole contract for one response to a request on `path`."""
    assert_not_a_server_error(status, text)
    if 400 <= status < 500:
        ERROR_CHECKS[dialect_of(path)](status, text)
        return
    assert status == 200, f"unexpected status {status}: {text[:300]}"
    json_check, stream_check = SUCCESS_CHECKS.get(path, (lambda body: None, lambda text: None))
    if is_stream(headers):
        stream_check(text)
    else:
        json_check(json.loads(text))


def check_httpx_response(response: httpx.Response) -> None:
    check_response(response.request.url.path, response.status_code, response.headers, response.text)
