"""Tool calling for a model without tool tokens: the tools go into the prompt as text, and calls
come back as a JSON object in the answer.

Gemma 3's template knows system, user and assistant turns only, so this module turns everything
tool-related into message text the template already handles (the format is in docs/api.md):

- the offered tools become a system message (`tools_instruction`): one JSON line per tool (name,
  description, parameters schema) and the answer format,
  `{"tool_calls": [{"name": ..., "arguments": {...}}]}`;
- an earlier assistant turn with `tool_calls` is rendered as that same JSON object
  (`assistant_text`), so the model sees its own past calls in the format it is asked to use;
- a `tool` message becomes user text headed "Tool result for <name> (call <id>):"
  (`tool_result_text`).

`plan_tools` reads a request's tool fields once into a `ToolPlan`; the chat converter asks that
plan for everything else. When a call is required (`required` or a named function),
`tool_call_schema` builds the JSON schema of the answer, which the engine enforces with a
grammar. The schema bounds the number of calls, so a forced answer always ends: one call for a
named function or when parallel calls are off, at most `MAX_PARALLEL_CALLS` otherwise (a small
model asked for "a call" tends to repeat it until `max_tokens`). The grammar cannot enforce some
keywords (`minimum`, `maximum`, `not`, ...): in a tool's parameters they are removed from the
grammar's copy of the schema (the model still reads them in the prompt), unless the function is
`strict`, where they are refused with a 400 rather than silently not guaranteed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from server.api.chat_protocol import (
    FunctionDefinition,
    NamedToolChoice,
    ToolCallIn,
    ToolDefinition,
)
from server.api.validators import invalid
from server.engine.contract import ChatMessage
from server.engine.json_schema import (
    SCHEMA_LISTS,
    SCHEMA_MAPS,
    SCHEMA_VALUES,
    UNENFORCED,
    unenforced_keyword,
)

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
# Calls in one answer at most when parallel calls are allowed and a call is required.
MAX_PARALLEL_CALLS = 4


@dataclass(frozen=True)
class ToolPlan:
    """The tools a request offers and how it wants them used (`tool_choice` other than none)."""

    functions: tuple[FunctionDefinition, ...]
    required: bool  # a call must be made: `required`, or a named function
    forced_name: str | None  # the named function of `tool_choice`, if any
    parallel: bool

    @property
    def names(self) -> frozenset[str]:
        return frozenset(function.name for function in self.functions)

    @property
    def max_calls(self) -> int:
        """Calls one answer may hold: one for a named function or without parallel calls."""
        return MAX_PARALLEL_CALLS if self.parallel and self.forced_name is None else 1


class ToolFields(Protocol):
    """The tool fields of a request: a chat request's, or another dialect's converted to them."""

    @property
    def tools(self) -> Sequence[ToolDefinition] | None: ...
    @property
    def tool_choice(self) -> Literal["none", "auto", "required"] | NamedToolChoice | None: ...
    @property
    def parallel_tool_calls(self) -> bool | None: ...


def plan_tools(request: ToolFields) -> ToolPlan | None:
    """Check `tools`, `tool_choice` and `parallel_tool_calls`; None when no tools are offered to
    the model (none given, or `tool_choice: "none"`)."""
    functions = tuple(tool.function for tool in request.tools or ())
    choice = request.tool_choice
    if not functions:
        if choice in (None, "none", "auto"):
            return None
        raise invalid("tool_choice", "tool_choice needs a list of tools to choose from.")
    seen: set[str] = set()
    for index, function in enumerate(functions):
        if function.name in seen:
            raise invalid(
                f"tools[{index}].function.name", f"Two tools are named '{function.name}'."
            )
        seen.add(function.name)
        _check_parameters(function, f"tools[{index}].function.parameters")
    if choice == "none":
        return None
    forced_name = None
    if isinstance(choice, NamedToolChoice):
        forced_name = choice.function.name
        if forced_name not in seen:
            raise invalid(
                "tool_choice",
                f"tool_choice names the function '{forced_name}', which is not in tools.",
            )
    return ToolPlan(
        functions=functions,
        required=choice == "required" or forced_name is not None,
        forced_name=forced_name,
        parallel=request.parallel_tool_calls is not False,
    )


def _check_parameters(function: FunctionDefinition, param: str) -> None:
    parameters = function.parameters
    if parameters is None:
        return
    if parameters.get("type", "object") != "object":
        raise invalid(param, "A function's parameters must be a JSON schema of type 'object'.")
    if function.strict and (found := unenforced_keyword(parameters)):
        raise invalid(
            param,
            f"The JSON schema keyword {found} cannot be enforced by gemma-serve's grammar, so a "
            "strict function cannot use it; remove it, or leave the function non-strict.",
        )


def grammar_schema(schema: object, ref_base: str) -> object:
    """A copy of a parameters schema for the grammar: keywords it cannot enforce removed, and
    local `$ref`s ("#/...") moved under `ref_base`, where the schema will live in the answer's
    schema."""
    if isinstance(schema, list):
        return [grammar_schema(item, ref_base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy: dict[str, Any] = {}
    for key, value in schema.items():
        if key in UNENFORCED:
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            copy[key] = ref_base + value[1:]
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            copy[key] = {name: grammar_schema(sub, ref_base) for name, sub in value.items()}
        elif key in (*SCHEMA_LISTS, *SCHEMA_VALUES):
            copy[key] = grammar_schema(value, ref_base)
        else:
            copy[key] = value  # `enum`, `const`, `default`, ...: values, not schemas
    return copy


def tool_call_schema(plan: ToolPlan) -> dict[str, Any]:
    """The JSON schema of an answer that calls tools: `{"tool_calls": [call, ...]}`, each call
    `{"name": <a tool's name>, "arguments": <that tool's parameters>}`; exactly one call unless
    parallel calls are allowed, then `MAX_PARALLEL_CALLS` at most; only the named function when
    `tool_choice` names one.

    Each tool's parameters sit under `$defs/tool_<i>` (its own `$defs` with it), so `$ref`s of
    different tools cannot collide.
    """
    defs: dict[str, Any] = {}
    variants = []
    for index, function in enumerate(plan.functions):
        if plan.forced_name is not None and function.name != plan.forced_name:
            continue
        key = f"tool_{index}"
        defs[key] = grammar_schema(function.parameters or NO_ARGUMENTS, f"#/$defs/{key}")
        variants.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": function.name},
                    "arguments": {"$ref": f"#/$defs/{key}"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    calls: dict[str, Any] = {
        "type": "array",
        "items": variants[0] if len(variants) == 1 else {"anyOf": variants},
        "minItems": 1,
        "maxItems": plan.max_calls,
    }
    return {
        "type": "object",
        "properties": {"tool_calls": calls},
        "required": ["tool_calls"],
        "additionalProperties": False,
        "$defs": defs,
    }


def tools_instruction(plan: ToolPlan) -> str:
    """The system text that offers the tools and says how to call them."""
    lines = [
        "You can call tools. Each line below is one tool as JSON: its name, what it does, and "
        "the JSON schema of its arguments.",
        "",
    ]
    for function in plan.functions:
        tool: dict[str, Any] = {"name": function.name}
        if function.description:
            tool["description"] = function.description
        tool["parameters"] = function.parameters or NO_ARGUMENTS
        lines.append(json.dumps(tool, ensure_ascii=False))
    lines += [
        "",
        "To call tools, reply with only a JSON object of this form and nothing else:",
        '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}',
        f"List several calls (at most {plan.max_calls}) to call several tools at once."
        if plan.max_calls > 1
        else "Call one tool at a time: list exactly one call.",
    ]
    if plan.forced_name is not None:
        lines.append(f'You must call the tool "{plan.forced_name}" in this reply.')
    elif plan.required:
        lines.append("You must call a tool in this reply.")
    else:
        lines.append("If no tool is needed, reply in plain text instead.")
    lines.append('Tool results come back in a message that starts with "Tool result".')
    return "\n".join(lines)


def with_tools_instruction(
    messages: list[ChatMessage], plan: ToolPlan | None
) -> tuple[ChatMessage, ...]:
    """The offered tools as a system message after the client's own leading system messages
    (Ollama's and Anthropic's converters; chat's also counts `developer` messages)."""
    if plan is not None:
        leading = 0
        while leading < len(messages) and messages[leading].role == "system":
            leading += 1
        messages.insert(leading, ChatMessage("system", tools_instruction(plan)))
    return tuple(messages)


def _arguments_value(arguments: str) -> Any:
    """The arguments as JSON when they parse, else the string as it was sent."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def assistant_text(content: str, tool_calls: Sequence[ToolCallIn]) -> str:
    """An earlier assistant turn that called tools, in the format the model is asked to use."""
    calls = [
        {"name": call.function.name, "arguments": _arguments_value(call.function.arguments)}
        for call in tool_calls
    ]
    block = json.dumps({"tool_calls": calls}, ensure_ascii=False)
    return f"{content.strip()}\n\n{block}" if content.strip() else block


def tool_result_text(name: str, call_id: str, content: str) -> str:
    return f"Tool result for {name} (call {call_id}):\n{content}"
