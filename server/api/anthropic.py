"""Anthropic's Messages API, request side: a `MessagesRequest` -> the engine's one sequence.

`to_anthropic_plan` maps every field onto the engine, refuses by name what cannot be honoured
(extended thinking, server tools, documents, citations, image URLs and files) and ignores what
changes nothing here (`metadata`, `cache_control`, `service_tier`); the field table is in
docs/api.md. Tools go through chat's `ToolPlan`: `input_schema` is a function's parameters,
`tool_choice` any/tool are chat's required/named function (enforced by a grammar), and
`tool_use`/`tool_result` blocks are rendered as chat renders tool calls and results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from server.api import validators
from server.api.anthropic_protocol import (
    ContentBlock,
    CountTokensRequest,
    MessagesRequest,
    ToolChoice,
)
from server.api.chat_choices import DialectPlan, OutputOptions
from server.api.chat_protocol import (
    FUNCTION_NAME,
    FunctionCallIn,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    ToolCallIn,
    ToolDefinition,
)
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
    with_tools_instruction,
)
from server.api.validators import invalid, unsupported
from server.engine.contract import ChatMessage, GenerationRequest, JsonFormat, Role, SamplingParams

_REFUSED_BLOCKS = {
    "document": "Documents are not supported; send their text in a text block.",
    "search_result": "Search results are not supported; send their text in a text block.",
    "thinking": "Extended thinking is not supported: Gemma 3 does not think aloud.",
    "redacted_thinking": "Extended thinking is not supported: Gemma 3 does not think aloud.",
    "container_upload": "Containers are not supported.",
}
ChatChoice = Literal["none", "auto", "required"]
_CHOICES: dict[str, ChatChoice] = {"auto": "auto", "any": "required", "none": "none"}


@dataclass(frozen=True)
class _ChatTools:
    """Anthropic's tool fields as chat's (`plan_tools` reads these)."""

    tools: Sequence[ToolDefinition] | None
    tool_choice: ChatChoice | NamedToolChoice | None
    parallel_tool_calls: bool | None


def refusal_fields(*, forced_call: bool) -> RefusalFields:
    """Where a Messages request holds what the engine may refuse: the conversation (`messages`)
    and the JSON constraint (a forced call's `tools`, or `output_config.format`); images are
    named where this converter found them (`messages[0].content[1]`)."""
    return RefusalFields(
        prompt="messages", output_format="tools" if forced_call else "output_config.format"
    )


def tool_field(param: str | None) -> str | None:
    """The Messages API field behind one that chat's tool checks name (`tools[0].function.name`
    is `tools[0].name`, `...function.parameters` is `...input_schema`)."""
    if param is None:
        return None
    return param.replace(".function.parameters", ".input_schema").replace(".function.", ".")


def _refuse_unsupported(request: CountTokensRequest) -> None:
    thinking = request.thinking
    if thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") == "disabled"
    ):
        raise unsupported(
            "thinking", "Extended thinking is not supported: Gemma 3 does not think aloud."
        )
    for name in ("mcp_servers", "container", "context_management"):
        if getattr(request, name) is not None:
            raise unsupported(name, f"{name} is not supported by gemma-serve.")
    for index, tool in enumerate(request.tools or ()):
        if tool.type not in (None, "custom"):
            raise unsupported(
                f"tools[{index}].type",
                f"Server tools ({tool.type!r}) are not supported; only custom tools, which the "
                "client runs.",
            )


def _plan(request: CountTokensRequest) -> ToolPlan | None:
    tools = [
        ToolDefinition(
            type="function",
            function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            ),
        )
        for tool in request.tools or ()
    ]
    choice: ToolChoice | None = request.tool_choice
    wanted: ChatChoice | NamedToolChoice | None = None
    if choice is not None and choice.type == "tool":
        if not choice.name:
            raise APIError(
                400, "Missing required parameter: 'tool_choice.name'.", param="tool_choice.name"
            )
        wanted = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    elif choice is not None:
        wanted = _CHOICES[choice.type]
    parallel = None if choice is None else not choice.disable_parallel_tool_use
    try:
        return plan_tools(_ChatTools(tools or None, wanted, parallel))
    except APIError as exc:
        exc.param = tool_field(exc.param)
        raise


def _text(block: ContentBlock, param: str) -> str:
    if block.citations:
        raise unsupported(f"{param}.citations", "Citations are not supported.")
    if block.text is None:
        raise APIError(400, f"Missing required parameter: '{param}.text'.", param=f"{param}.text")
    return clean_text(validators.text(block.text, f"{param}.text"))


def _image(block: ContentBlock, param: str, role: Role, images: ImageCollector) -> str:
    source = block.source
    if source is None:
        raise APIError(
            400, f"Missing required parameter: '{param}.source'.", param=f"{param}.source"
        )
    if source.type == "base64" and source.data is not None:
        url = f"data:{source.media_type or ''};base64,{source.data}"
    elif source.type == "url" and source.url is not None:
        url = source.url  # refused by the image reader: this server fetches no URLs
    else:
        raise unsupported(
            f"{param}.source", "Send the image as a base64 source (file ids are not supported)."
        )
    return images.add(url, param, role)


def _result_text(block: ContentBlock, param: str, images: ImageCollector) -> str:
    """A tool_result's content (a string, or text and image blocks) as the result's text."""
    content = block.content
    if content is None or isinstance(content, str):
        text = clean_text(validators.text(content or "", f"{param}.content"))
    else:
        parts = []
        for index, inner in enumerate(content):
            inner_param = f"{param}.content[{index}]"
            if inner.type == "text":
                parts.append(_text(inner, inner_param))
            elif inner.type == "image":
                parts.append(_image(inner, inner_param, "user", images))
            else:
                raise unsupported(
                    f"{inner_param}.type", "A tool_result holds text and image blocks only."
                )
        text = "\n".join(parts)
    return f"(error) {text}" if block.is_error else text


def _tool_call(block: ContentBlock, param: str) -> ToolCallIn:
    if not block.id:
        raise APIError(400, f"Missing required parameter: '{param}.id'.", param=f"{param}.id")
    if not block.name or not re.fullmatch(FUNCTION_NAME, block.name):
        raise invalid(f"{param}.name", f"{param}.name must match {FUNCTION_NAME}.")
    arguments = json.dumps(block.input or {}, ensure_ascii=False)
    return ToolCallIn(id=block.id, function=FunctionCallIn(name=block.name, arguments=arguments))


def _blocks_text(
    blocks: list[ContentBlock],
    param: str,
    role: Role,
    images: ImageCollector,
    call_names: dict[str, str],
) -> str:
    parts: list[str] = []
    calls: list[ToolCallIn] = []
    for index, block in enumerate(blocks):
        block_param = f"{param}[{index}]"
        kind = block.type
        if kind == "text":
            parts.append(_text(block, block_param))
        elif kind == "image":
            parts.append(_image(block, block_param, role, images))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, block_param))
            call_names[calls[-1].id] = calls[-1].function.name
        elif kind == "tool_result" and role == "user":
            call_id = block.tool_use_id or ""
            if call_id not in call_names:
                raise invalid(
                    f"{block_param}.tool_use_id",
                    f"The tool_result answers '{call_id}', which is not the id of a tool_use "
                    "block in an earlier assistant message.",
                )
            result = _result_text(block, block_param, images)
            parts.append(tool_result_text(call_names[call_id], call_id, result))
        elif kind in ("tool_use", "tool_result"):
            who = "assistant" if kind == "tool_use" else "user"
            raise invalid(f"{block_param}.type", f"{kind} blocks belong in {who} messages.")
        elif kind in _REFUSED_BLOCKS:
            raise unsupported(block_param, _REFUSED_BLOCKS[kind])
        else:
            raise unsupported(
                f"{block_param}.type",
                f"Content blocks of type {kind!r} are not supported (server tools, documents "
                "and thinking are not served here).",
            )
    text = "\n".join(parts)
    return assistant_text(text, calls) if calls else text


def _messages(
    request: CountTokensRequest, plan: ToolPlan | None, images: ImageCollector
) -> tuple[ChatMessage, ...]:
    messages: list[ChatMessage] = []
    if isinstance(request.system, str):
        messages.append(
            ChatMessage("system", clean_text(validators.text(request.system, "system")))
        )
    elif request.system:
        for index, block in enumerate(request.system):
            if block.type != "text":
                raise unsupported(f"system[{index}].type", "system blocks may only be text.")
        texts = [_text(block, f"system[{index}]") for index, block in enumerate(request.system)]
        messages.append(ChatMessage("system", "\n".join(texts)))
    call_names: dict[str, str] = {}  # tool_use id -> tool name, from earlier assistant turns
    for index, message in enumerate(request.messages):
        param = f"messages[{index}].content"
        if isinstance(message.content, str):
            text = clean_text(validators.text(message.content, param))
        else:
            text = _blocks_text(message.content, param, message.role, images, call_names)
        messages.append(ChatMessage(message.role, text))
    if request.messages[-1].role == "assistant":
        raise unsupported(
            f"messages[{len(request.messages) - 1}]",
            "A final assistant message (a prefill to continue) is not supported; end with a "
            "user message.",
        )
    return with_tools_instruction(messages, plan)


def _json_format(request: MessagesRequest, plan: ToolPlan | None) -> JsonFormat | None:
    """A forced tool call's schema, or `output_config.format`'s (structured outputs)."""
    if plan is not None and plan.required:
        return JsonFormat(schema=tool_call_schema(plan))
    output = request.output_config.format if request.output_config else None
    if output is None:
        return None
    if plan is not None:
        raise unsupported(
            "output_config.format",
            "output_config.format cannot be combined with tool_choice auto here (the answer "
            "could be neither); use tool_choice any, tool or none.",
        )
    return JsonFormat(schema=output.schema_)


def to_anthropic_plan(request: CountTokensRequest) -> DialectPlan:
    """Map a Messages (or count_tokens) request onto the engine, or raise `APIError` naming the
    field."""
    _refuse_unsupported(request)
    plan = _plan(request)
    images = ImageCollector()
    messages = _messages(request, plan, images)
    generation = GenerationRequest(messages=messages, images=tuple(images.images))
    if isinstance(request, MessagesRequest):
        stop = tuple(
            validators.text(text, f"stop_sequences[{index}]")
            for index, text in enumerate(request.stop_sequences or ())
            if text
        )
        sampling = SamplingParams.given(
            temperature=request.temperature, top_p=request.top_p, top_k=request.top_k
        )
        generation = replace(
            generation,
            sampling=sampling,
            max_tokens=request.max_tokens,
            stop=stop,
            json_format=_json_format(request, plan),
        )
    forced = plan is not None and plan.required
    generations = GenerationRequests(
        (generation,), "messages", (refusal_fields(forced_call=forced),)
    )
    return DialectPlan(generations, OutputOptions(tools=plan))
