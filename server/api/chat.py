"""Chat completions, request side: a `ChatCompletionRequest` -> the engine's sequences.

`to_chat_plan` is where every request field is mapped onto the engine, refused by name, or
ignored for a documented reason (docs/api.md); nothing is dropped silently. The body passes
through once: the tools module reads the tool fields into one `ToolPlan`, and everything
tool-related (the offer in the prompt, the answer's schema, how to read the answer) comes from
that plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from server.api import validators
from server.api.chat_choices import OutputOptions
from server.api.chat_protocol import ChatCompletionRequest, ChatMessageIn, ImagePart, TextPart
from server.api.error_shape import APIError
from server.api.images import ImageCollector, clean_text
from server.api.refusals import RefusalFields
from server.api.serving_types import GenerationRequests
from server.api.tool_prompt import (
    ToolPlan,
    assistant_text,
    plan_tools,
    tool_call_schema,
    tool_result_text,
    tools_instruction,
)
from server.api.validators import invalid, unsupported
from server.engine.contract import ChatMessage, GenerationRequest, JsonFormat

_REFUSED_PARTS = {"input_audio": "audio", "file": "files"}


@dataclass(frozen=True)
class ChatPlan:
    """What a chat request asks of the engine (one sequence per choice), and of its answer."""

    generations: GenerationRequests
    options: OutputOptions
    include_usage: bool


def _message_text(message: ChatMessageIn, index: int, images: ImageCollector) -> str:
    param = f"messages[{index}].content"
    if message.content is None:
        if message.role == "assistant":
            return validators.text(message.refusal or "", f"messages[{index}].refusal")
        raise APIError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if isinstance(message.content, str):
        return clean_text(validators.text(message.content, param))
    texts = []
    for part_index, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            part_param = f"{param}[{part_index}]"
            texts.append(images.add_image_url(part.image_url, part_param, message.role))
            continue
        if not isinstance(part, TextPart):
            raise APIError(
                400,
                f"This model does not accept {_REFUSED_PARTS[part.type]}; send text parts only.",
                param=f"{param}[{part_index}]",
                code="unsupported_content",
            )
        texts.append(clean_text(validators.text(part.text, f"{param}[{part_index}].text")))
    return "\n".join(texts)


def _named(message: ChatMessageIn, index: int, text: str) -> str:
    """A participant's `name` goes before its text: how a template without names tells two
    users (or two assistants) apart."""
    if not message.name:
        return text
    return f"{validators.text(message.name, f'messages[{index}].name')}: {text}"


def _messages(
    request: ChatCompletionRequest, plan: ToolPlan | None, images: ImageCollector
) -> tuple[ChatMessage, ...]:
    """Wire messages -> engine messages. Tool calls of assistant turns and `tool` results are
    rendered as text (see `server.api.tool_prompt`); the offered tools go in a system message
    after the client's own leading system messages."""
    messages: list[ChatMessage] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for index, message in enumerate(request.messages):
        role = message.role
        if role == "function":
            raise unsupported(
                f"messages[{index}].role",
                "The deprecated 'function' role is not supported; send 'tool' messages.",
            )
        if message.audio is not None:
            raise unsupported(f"messages[{index}].audio", "This model does not produce audio.")
        if message.tool_calls and role != "assistant":
            raise invalid(
                f"messages[{index}].tool_calls", "Only assistant messages can have tool_calls."
            )
        text = _message_text(message, index, images)
        if role == "tool":
            name, call_id = _answered_call(message, index, call_names)
            messages.append(ChatMessage("user", tool_result_text(name, call_id, text)))
        elif role == "assistant" and message.tool_calls:
            call_names.update((call.id, call.function.name) for call in message.tool_calls)
            text = assistant_text(text, message.tool_calls)
            messages.append(ChatMessage("assistant", _named(message, index, text)))
        else:
            messages.append(ChatMessage(role, _named(message, index, text)))
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
        raise invalid(
            param,
            f"The tool message answers '{call_id}', which is not a tool call of an earlier "
            "assistant message.",
        )
    return call_names[call_id], call_id


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    """Fields asking for what this server cannot do: a 400 naming each, as OpenAI refuses what a
    model cannot do."""
    if request.functions:
        raise unsupported("functions", "The deprecated 'functions' is not supported; send 'tools'.")
    if request.function_call not in (None, "none", "auto"):
        raise unsupported(
            "function_call", "The deprecated 'function_call' is not supported; send 'tool_choice'."
        )
    if request.audio is not None or "audio" in (request.modalities or ()):
        param = "audio" if request.audio is not None else "modalities"
        raise unsupported(param, "This model answers in text only; it cannot produce audio.")
    if any(modality != "text" for modality in request.modalities or ()):
        raise invalid("modalities", "modalities may only list 'text'.")
    if request.web_search_options is not None:
        raise unsupported("web_search_options", "gemma-serve cannot search the web.")
    if request.moderation is not None:
        raise unsupported("moderation", "gemma-serve runs no moderation model.")
    if request.reasoning_effort not in (None, "none"):
        raise unsupported("reasoning_effort", "Gemma 3 is not a reasoning model.")
    if request.verbosity not in (None, "medium"):
        raise unsupported("verbosity", "Only verbosity 'medium' is supported.")


def _logprobs(request: ChatCompletionRequest) -> int | None:
    """None, or how many alternatives to report per token (`top_logprobs`)."""
    if request.top_logprobs is not None and not request.logprobs:
        raise invalid("top_logprobs", "top_logprobs needs logprobs: true.")
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
        raise unsupported(
            "response_format",
            "response_format json_schema cannot be combined with tool_choice 'auto' here: the "
            "answer could be neither; use tool_choice 'required' or 'none'.",
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


def to_chat_plan(
    request: ChatCompletionRequest, max_choices: int, images: ImageCollector | None = None
) -> ChatPlan:
    """Map a chat request onto the engine, or raise `APIError` naming the field it cannot honour.
    One sequence per choice (`n`); with a seed, choice i samples with seed + i, so the choices
    differ from each other and the whole answer is reproducible. `images` decodes the request's
    pictures (default: limits of a model that takes images, nothing fetched)."""
    _refuse_unsupported(request)
    n = validators.choices(request.n, max_choices)
    include_usage = validators.include_usage(request.stream, request.stream_options)
    plan = plan_tools(request)
    sampling = validators.sampling(request)
    images = ImageCollector() if images is None else images
    first = GenerationRequest(
        messages=_messages(request, plan, images),
        images=tuple(images.images),
        sampling=sampling,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=validators.stop(request.stop),
        json_format=_json_format(request, plan),
        logprobs=_logprobs(request),
    )
    seed = sampling.seed
    requests = [first] + [
        replace(first, sampling=replace(sampling, seed=None if seed is None else seed + i))
        for i in range(1, n)
    ]
    required = plan is not None and plan.required
    # With a required tool call, the grammar the engine could not build was the tools' schema.
    fields = RefusalFields(
        prompt="messages", output_format="tools" if required else "response_format"
    )
    return ChatPlan(
        generations=GenerationRequests(
            tuple(requests), count_param="n", refusal_fields=(fields,) * n
        ),
        options=OutputOptions(tools=plan, logprobs=bool(request.logprobs)),
        include_usage=include_usage,
    )
