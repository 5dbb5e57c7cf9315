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

from server.api.choices import ChoiceBuilder, OutputOptions
from server.api.errors import APIError, error_body, stream_failure
from server.api.images import ImageCollector, clean_text
from server.api.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageIn,
    Choice,
    ChunkChoice,
    Delta,
    ImagePart,
    TextPart,
    Usage,
)
from server.api.streams import interleave
from server.api.tools import (
    ToolPlan,
    assistant_text,
    plan_tools,
    tool_call_schema,
    tool_result_text,
    tools_instruction,
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


def _message_text(message: ChatMessageIn, index: int, images: ImageCollector) -> str:
    text = _message_parts(message, index, images)
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


def _message_parts(message: ChatMessageIn, index: int, images: ImageCollector) -> str:
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
        return clean_text(message.content)
    texts = []
    for part_index, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            texts.append(
                images.add_image_url(part.image_url, f"{param}[{part_index}]", message.role)
            )
            continue
        if not isinstance(part, TextPart):
            kind = {"input_audio": "audio", "file": "files"}[part.type]
            raise APIError(
                400,
                f"This model does not accept {kind}; send text parts only.",
                param=f"{param}[{part_index}]",
                code="unsupported_content",
            )
        texts.append(clean_text(part.text))
    return "\n".join(texts)


def _messages(
    request: ChatCompletionRequest, plan: ToolPlan | None, images: ImageCollector
) -> tuple[ChatMessage, ...]:
    """Wire messages -> engine messages. Tool calls of assistant turns and `tool` results are
    rendered as text (see `server.api.tools`); the offered tools go in a system message after
    the client's own leading system messages."""
    messages: list[ChatMessage] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for index, message in enumerate(request.messages):
        role = message.role
        if role == "function":
            raise _unsupported(
                f"messages[{index}].role", "The deprecated 'function' role (send 'tool' messages)"
            )
        if message.tool_calls and role != "assistant":
            raise APIError(
                400,
                "Only assistant messages can have tool_calls.",
                param=f"messages[{index}].tool_calls",
                code="invalid_value",
            )
        if role == "tool":
            name, call_id = _answered_call(message, index, call_names)
            text = tool_result_text(name, call_id, _message_text(message, index, images))
            messages.append(ChatMessage("user", text))
        elif role == "assistant" and message.tool_calls:
            call_names.update((call.id, call.function.name) for call in message.tool_calls)
            text = assistant_text(_message_text(message, index, images), message.tool_calls)
            messages.append(ChatMessage("assistant", text))
        else:
            messages.append(ChatMessage(role, _message_text(message, index, images)))
    if plan is not None:
        leading = 0
        while leading < len(messages) and messages[leading].role in ("system", "developer"):
            leading += 1
        messages.insert(leading, ChatMessage("system", tools_instruction(plan)))
    return tuple(messages)


def _answered_call(
    message: ChatMessageIn, index: int, call_names: dict[str, str]
) -> tuple[str, str]:
    """The (function name, call id) a `tool` message answers."""
    param = f"messages[{index}].tool_call_id"
    call_id = message.tool_call_id
    if not call_id:
        raise APIError(
            400,
            f"Missing required parameter: '{param}' (a tool message answers a tool call).",
            param=param,
            code="missing_required_parameter",
        )
    if call_id not in call_names:
        raise APIError(
            400,
            f"The tool message answers '{call_id}', which is not a tool call of an earlier "
            "assistant message.",
            param=param,
            code="invalid_value",
        )
    return call_names[call_id], call_id


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.functions:
        raise _unsupported("functions", "The deprecated 'functions' (send 'tools')")
    if request.function_call not in (None, "none", "auto"):
        raise _unsupported("function_call", "The deprecated 'function_call' (send 'tool_choice')")


def _invalid(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _logit_bias(
    request: ChatCompletionRequest, vocab_size: int | None
) -> tuple[tuple[int, float], ...]:
    """`logit_bias` -> (token id, bias) pairs, ids checked against the vocabulary when known."""
    biases = []
    for key, bias in (request.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise _invalid(
                f"logit_bias keys must be token ids (integers); got {key!r}.", "logit_bias"
            )
        token = int(key)
        if vocab_size is not None and token >= vocab_size:
            raise _invalid(
                f"logit_bias names token {token}, outside the vocabulary (0..{vocab_size - 1}).",
                "logit_bias",
            )
        if not -100 <= bias <= 100:
            raise _invalid(
                f"logit_bias values must be between -100 and 100; got {bias} for token {token}.",
                "logit_bias",
            )
        biases.append((token, float(bias)))
    return tuple(sorted(biases))


def _logprobs(request: ChatCompletionRequest) -> int | None:
    """None, or how many alternatives to report per token (`top_logprobs`)."""
    if request.top_logprobs is not None and not request.logprobs:
        raise _invalid("top_logprobs needs logprobs: true.", "top_logprobs")
    return (request.top_logprobs or 0) if request.logprobs else None


def _json_format(request: ChatCompletionRequest, plan: ToolPlan | None) -> JsonFormat | None:
    """`response_format`, or the tool-call schema when a call is required -> the engine's JSON
    constraint (None for plain text)."""
    if plan is not None and plan.required:
        # The answer is a tool call; response_format shapes text answers, and there is none.
        return JsonFormat(schema=tool_call_schema(plan))
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JsonFormat()  # a tool-call object is a JSON object too: auto still works
    if plan is not None:
        raise APIError(
            400,
            "response_format json_schema cannot be combined with tool_choice 'auto' here: the "
            "answer could be neither; use tool_choice 'required' or 'none'.",
            param="response_format",
            code="unsupported_parameter",
        )
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise APIError(
            400,
            "response_format of type 'json_schema' needs json_schema.schema.",
            param="response_format.json_schema.schema",
            code="missing_required_parameter",
        )
    return JsonFormat(schema=spec.schema_)


def output_options(request: ChatCompletionRequest) -> OutputOptions:
    """What the answer converters need to know of the request (tools offered, logprobs)."""
    return OutputOptions(tools=plan_tools(request), logprobs=bool(request.logprobs))


def to_generation_request(
    request: ChatCompletionRequest, *, vocab_size: int | None = None
) -> GenerationRequest:
    """Map a chat request onto the engine, or raise `APIError` naming the field it cannot honour.
    `vocab_size` (the model's) bounds the token ids of `logit_bias`."""
    _refuse_unsupported(request)
    plan = plan_tools(request)
    sampling = SamplingParams.given(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        seed=request.seed,
        logit_bias=_logit_bias(request, vocab_size),
    )
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    images = ImageCollector()
    return GenerationRequest(
        messages=_messages(request, plan, images),
        images=tuple(images.images),
        sampling=sampling,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=tuple(s for s in stop if s),
        json_format=_json_format(request, plan),
        logprobs=_logprobs(request),
    )


def to_generation_requests(
    request: ChatCompletionRequest, max_choices: int, *, vocab_size: int | None = None
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
    first = to_generation_request(request, vocab_size=vocab_size)
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
    options: OutputOptions = OutputOptions(),  # noqa: B008 (frozen, never mutated)
) -> ChatCompletion:
    """Collect whole generations (one per choice, generated together) into one
    `chat.completion`."""
    builders = [ChoiceBuilder(options) for _ in generations]
    async with aclosing(interleave(generations)) as events:
        async for index, event in events:
            if isinstance(event, TextDelta):
                builders[index].text(event)
            else:
                builders[index].finish(event)
    choices = []
    usages = []
    for index, builder in enumerate(builders):
        if builder.finish_reason is None or builder.usage is None:
            raise RuntimeError("the engine ended a generation without finishing it")
        choices.append(
            Choice(
                index=index,
                message=builder.message(),
                logprobs=builder.logprobs(),
                finish_reason=builder.finish_reason,
            )
        )
        usages.append(builder.usage)
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
    options: OutputOptions = OutputOptions(),  # noqa: B008 (frozen, never mutated)
) -> AsyncIterator[str]:
    """Engine events -> the `data:` payloads of an OpenAI chat stream, `[DONE]` always last.

    Choices (`n`) are generated together (the engine batches them) and their chunks interleave,
    each naming its `index`: every choice's role chunk comes first, its last chunk carries the
    `finish_reason`; the usage chunk (empty `choices`) follows
    them all when asked for. Tool calls stream as `delta.tool_calls` fragments (see
    `server.api.choices`). An error after the stream has started
    cannot change the HTTP status any more, so it is sent as one `error` event before `[DONE]`.
    """

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(
            id=completion_id, created=created, model=model, choices=choices, usage=usage
        )
        return body.model_dump_json(exclude=None if include_usage else {"usage"})

    try:
        usages = []
        builders = [ChoiceBuilder(options) for _ in generations]
        for index in range(len(generations)):
            yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        async with aclosing(interleave(generations)) as events:
            async for index, event in events:
                builder = builders[index]
                if isinstance(event, TextDelta):
                    ready = builder.text(event)
                else:
                    ready = builder.finish(event)
                    usages.append(event.usage)
                for position, part in enumerate(ready):
                    last = isinstance(event, Finished) and position == len(ready) - 1
                    choice = ChunkChoice(
                        index=index,
                        delta=part.delta,
                        logprobs=part.logprobs,
                        finish_reason=builder.finish_reason if last else None,
                    )
                    yield chunk([choice])
        if include_usage:
            yield chunk([], usage=_total_usage(usages))
    except Exception as exc:
        message, code = stream_failure(exc)
        yield json.dumps(error_body(message, type="server_error", code=code))
    yield DONE
