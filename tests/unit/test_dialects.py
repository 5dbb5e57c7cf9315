"""The Ollama and Anthropic converters as pure functions: which dialect a path speaks, an error
in each dialect's shape, every engine refusal cause named by each dialect's own field, and the
Messages API's stop reasons and cache-read usage."""

from __future__ import annotations

import base64

import pytest

from server.api.anthropic import to_anthropic_plan
from server.api.anthropic_answer import stop_reason, usage_of
from server.api.anthropic_protocol import MessagesRequest
from server.api.chat_choices import ChoiceBuilder, OutputOptions
from server.api.errors import APIError, dialect_of
from server.api.ollama import to_ollama_chat_plan, to_ollama_generate_plan
from server.api.ollama_protocol import OllamaChatRequest, OllamaGenerateRequest, Status
from server.api.ollama_pull import progress_line
from server.api.refusals import refused_field
from server.api.serving_types import GenerationRequests
from server.engine.contract import Finished, Refused, RequestRejected, Usage
from server.progress import Progress
from server.registry import load_registry
from tests.images import encode, picture

PNG = base64.b64encode(encode(picture(1))).decode()


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/api/chat", "ollama"),
        ("/api/blobs/sha256:00", "ollama"),
        ("/apiary", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/v1/messagesx", "openai"),
        ("/v1/chat/completions", "openai"),
        ("/health", "openai"),
    ],
)
def test_the_dialect_of_a_path(path: str, dialect: str) -> None:
    assert dialect_of(path) == dialect


def test_one_error_in_each_dialects_shape() -> None:
    error = APIError(400, "must be positive.", param="options.num_predict", code="invalid_value")
    assert error.body_for("ollama") == {"error": "options.num_predict: must be positive."}
    assert error.body_for("anthropic") == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "options.num_predict: must be positive.",
        },
    }
    assert error.body_for("openai")["error"]["param"] == "options.num_predict"
    busy = APIError(503, "The server is busy.", code="server_busy")
    assert busy.body_for("anthropic")["error"]["type"] == "overloaded_error"
    crash = APIError(500, "The server had an internal error.")
    assert crash.body_for("anthropic")["error"]["type"] == "api_error"


def names(generations: GenerationRequests, cause: Refused, index: int | None = None) -> str:
    [request], [fields] = generations.requests, generations.refusal_fields
    return refused_field(RequestRejected("no", cause, index=index), request, fields)


@pytest.mark.parametrize(
    ("cause", "index", "chat", "generate", "messages"),
    [
        (Refused.CONVERSATION, None, "messages", "prompt", "messages"),
        (Refused.CONTEXT_LENGTH, None, "messages", "prompt", "messages"),
        (Refused.OUTPUT_FORMAT, None, "format", "format", "output_config.format"),
        (Refused.NO_IMAGE_INPUT, 0, "messages[0].images[0]", "images[0]", "messages[0].content[1]"),
        (Refused.IMAGE, 0, "messages[0].images[0]", "images[0]", "messages[0].content[1]"),
    ],
)
def test_every_engine_refusal_names_the_dialects_field(
    cause: Refused, index: int | None, chat: str, generate: str, messages: str
) -> None:
    """Neither dialect sends a logit bias, so the engine cannot refuse one of theirs."""
    ollama_chat = OllamaChatRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "Hi", "images": [PNG]}],
            "format": "json",
        }
    )
    ollama_generate = OllamaGenerateRequest.model_validate(
        {"model": "m", "prompt": "Hi", "images": [PNG], "format": "json"}
    )
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    anthropic = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, image]}],
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        }
    )
    assert names(to_ollama_chat_plan(ollama_chat).generations, cause, index) == chat
    assert names(to_ollama_generate_plan(ollama_generate).generations, cause, index) == generate
    assert names(to_anthropic_plan(anthropic).generations, cause, index) == messages


def test_a_forced_tool_calls_grammar_is_named_tools() -> None:
    request = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        }
    )
    assert names(to_anthropic_plan(request).generations, Refused.OUTPUT_FORMAT) == "tools"


@pytest.mark.parametrize(
    ("num_predict", "max_tokens"), [(None, None), (-1, None), (-2, None), (7, 7)]
)
def test_num_predict(num_predict: int | None, max_tokens: int | None) -> None:
    options = {} if num_predict is None else {"num_predict": num_predict}
    request = OllamaGenerateRequest.model_validate(
        {"model": "m", "prompt": "Hi", "options": options}
    )
    [generation] = to_ollama_generate_plan(request).generations.requests
    assert generation.max_tokens == max_tokens


@pytest.mark.parametrize(
    ("finished", "reason"),
    [
        (Finished("stop", Usage(5, 1)), "end_turn"),
        (Finished("stop", Usage(5, 1), stop_sequence="##"), "stop_sequence"),
        (Finished("length", Usage(5, 1)), "max_tokens"),
    ],
)
def test_stop_reasons(finished: Finished, reason: str) -> None:
    builder = ChoiceBuilder(OutputOptions())
    builder.finish(finished)
    assert stop_reason(builder, finished) == reason


def test_pull_progress_in_ollamas_lines() -> None:
    """What the download reports (server.progress), as Ollama's pull objects."""
    spec = load_registry().models[0]
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    try:
        assert progress_line(spec, progress.snapshot()) == Status(status=f"pulling {spec.id}")
        progress.begin("downloading", "model.gguf", total=1000, start_at=200)
        progress.advance(300)
        line = progress_line(spec, progress.snapshot())
        assert line == Status(status="pulling model.gguf", total=1000, completed=500)
        progress.begin("verifying", "model.gguf", total=1000)
        progress.advance(1000)
        line = progress_line(spec, progress.snapshot())
        assert line == Status(status="verifying sha256 digest", total=1000, completed=1000)
    finally:
        progress.close()


def test_cache_reads_are_counted_apart_from_input() -> None:
    usage = usage_of(
        Finished("stop", Usage(prompt_tokens=100, completion_tokens=4, cached_tokens=64))
    )
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (36, 64, 4)
