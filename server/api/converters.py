"""Pure conversions between OpenAI wire types and engine types.

`to_generation_request` is where every request field is either mapped onto the engine or refused
by name; nothing is dropped silently. The stream converter turns engine events into OpenAI chunks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import replace

from server.api.errors import APIError, error_body
from server.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageIn,
    Choice,
    ChunkChoice,
    Delta,
    TextPart,
    Usage,
)
from server.engine.types import (
    ChatMessage,
    Event,
    Finished,
    GenerationRequest,
    JsonFormat,
    SamplingParams,
    TextDelta,
)
from server.engine.types import Usage as EngineUsage

log = logging.getLogger("gemma_serve.api")

DONE = "[DONE]"


def _unsupported(param: str, what: str) -> APIError:
    return APIError(
        400,
        f"{what} is not supported by gemma-serve yet.",
        param=param,
        code="unsupported_parameter",
    )


def _message_text(message: ChatMessageIn, index: int) -> str:
    text = _message_parts(message, index)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON allows lone surrogates ("\ud800"); UTF-8 does not
        raise APIError(
            400,
            "The message content is not valid Unicode (a lone surrogate).",
            param=f"messages[{index}].content",
            code="invalid_value",
        ) from exc
    return text


def _message_parts(message: ChatMessageIn, index: int) -> str:
    param = f"messages[{index}].content"
    if message.content is None:
        if message.role == "assistant":
            return ""
        raise APIError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part_index, part in enumerate(message.content):
        if not isinstance(part, TextPart):
            kind = {"image_url": "images", "input_audio": "audio", "file": "files"}[part.type]
            raise APIError(
                400,
                f"This model does not accept {kind}; send text parts only.",
                param=f"{param}[{part_index}]",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _messages(request: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    messages = []
    for index, message in enumerate(request.messages):
        role = message.role
        if role == "tool" or role == "function":
            raise _unsupported(f"messages[{index}].role", f"The '{role}' role")
        if message.tool_calls:
            raise _unsupported(f"messages[{index}].tool_calls", "Tool calling")
        messages.append(ChatMessage(role, _message_text(message, index)))
    return tuple(messages)


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.logprobs or request.top_logprobs:
        raise _unsupported("logprobs", "Returning log probabilities")
    if request.logit_bias:
        raise _unsupported("logit_bias", "logit_bias")
    if request.tools or request.functions:
        raise _unsupported("tools", "Tool calling")
    if request.tool_choice not in (None, "none", "auto") or request.function_call not in (
        None,
        "none",
        "auto",
    ):
        raise _unsupported("tool_choice", "Tool calling")


def _json_format(request: ChatCompletionRequest) -> JsonFormat | None:
    """`response_format` -> the engine's JSON constraint (None for plain text)."""
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JsonFormat()
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise APIError(
            400,
            "response_format of type 'json_schema' needs json_schema.schema.",
            param="response_format.json_schema.schema",
            code="missing_required_parameter",
        )
    return JsonFormat(schema=spec.schema_)


def to_generation_request(request: ChatCompletionRequest) -> GenerationRequest:
    """Map a chat request onto the engine, or raise `APIError` naming the field it cannot honour."""
    _refuse_unsupported(request)
    defaults = SamplingParams()
    sampling = SamplingParams(
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
        top_k=defaults.top_k if request.top_k is None else request.top_k,
        min_p=defaults.min_p if request.min_p is None else request.min_p,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        seed=request.seed,
    )
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    return GenerationRequest(
        messages=_messages(request),
        sampling=sampling,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=tuple(s for s in stop if s),
        json_format=_json_format(request),
    )


def to_generation_requests(
    request: ChatCompletionRequest, max_choices: int
) -> list[GenerationRequest]:
    """One engine request per choice (`n`). With a seed, choice i samples with seed + i, so the
    choices differ from each other and the whole answer is reproducible."""
    n = request.n or 1
    if n > max_choices:
        raise APIError(
            400,
            f"n must be at most {max_choices} on this server (got {n}).",
            param="n",
            code="invalid_value",
        )
    first = to_generation_request(request)
    seed = first.sampling.seed
    return [first] + [
        replace(first, sampling=replace(first.sampling, seed=None if seed is None else seed + i))
        for i in range(1, n)
    ]


def _usage(usage: EngineUsage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _total_usage(usages: Sequence[EngineUsage]) -> Usage:
    """The prompt is counted once, the completions of every choice added up (as OpenAI does)."""
    return _usage(EngineUsage(usages[0].prompt_tokens, sum(u.completion_tokens for u in usages)))


async def to_chat_completion(
    generations: Sequence[AsyncGenerator[Event, None]],
    *,
    completion_id: str,
    created: int,
    model: str,
) -> ChatCompletion:
    """Collect whole generations (one per choice) into one `chat.completion`."""
    choices = []
    usages = []
    for index, events in enumerate(generations):
        parts: list[str] = []
        finished: Finished | None = None
        async with aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                else:
                    finished = event
        if finished is None:
            raise RuntimeError("the engine ended a generation without finishing it")
        message = AssistantMessage(content="".join(parts))
        choices.append(Choice(index=index, message=message, finish_reason=finished.reason))
        usages.append(finished.usage)
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=model,
        choices=choices,
        usage=_total_usage(usages),
    )


async def to_stream_chunks(
    generations: Sequence[AsyncGenerator[Event, None]],
    *,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Engine events -> the `data:` payloads of an OpenAI chat stream, `[DONE]` always last.

    Choices (`n`) stream one after another, each chunk naming its `index`: a choice's first chunk
    carries the role, its last the `finish_reason`; the usage chunk (empty `choices`) follows
    them all when asked for. An error after the stream has started
    cannot change the HTTP status any more, so it is sent as one `error` event before `[DONE]`.
    """

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(
            id=completion_id, created=created, model=model, choices=choices, usage=usage
        )
        return body.model_dump_json(exclude=None if include_usage else {"usage"})

    try:
        usages = []
        for index, events in enumerate(generations):
            yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        yield chunk([ChunkChoice(index=index, delta=Delta(content=event.text))])
                        continue
                    usages.append(event.usage)
                    yield chunk(
                        [ChunkChoice(index=index, delta=Delta(), finish_reason=event.reason)]
                    )
        if include_usage:
            yield chunk([], usage=_total_usage(usages))
    except Exception:
        log.exception("generation failed after the stream started")
        yield json.dumps(
            error_body(
                "The server had an error while generating the response.",
                type="server_error",
                code="internal_error",
            )
        )
    yield DONE
