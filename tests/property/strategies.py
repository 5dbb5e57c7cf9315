"""Hypothesis strategies for request bodies, one per endpoint, mixing valid and invalid values.

Each endpoint is a table of `FieldValues`: for every field, values the server must accept
(`valid`), values it must refuse with a 4xx naming the field (`invalid`), and values whose fate
is not pinned down (`odd`: huge numbers, coercible types, vendor shapes), which only have to
avoid a 5xx. `request_bodies(table)` builds bodies from a table: most fields valid or absent, up
to two broken; `one_broken_field(table)` builds the minimal valid body with exactly one field
invalid, for the "refused by name" property.

To cover a new endpoint, write its table (reuse `SAMPLING_FIELDS` and friends) and add it to
`ENDPOINTS` with the fields that bound its generation cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.conftest import MODEL_ID, SERVER_CTX
from tests.property.cost import CHOICE_CAP, TOKEN_CAP

ABSENT: Any = object()  # an invalid "value" that drops the field from the body
NOTHING: SearchStrategy[Any] = st.nothing()


@dataclass(frozen=True)
class FieldValues:
    valid: SearchStrategy[Any]
    invalid: SearchStrategy[Any] = NOTHING
    odd: SearchStrategy[Any] = NOTHING
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    path: str
    fields: Mapping[str, FieldValues]
    # The fields that bound generation: one of them is always present with a small valid value,
    # so no body generated here can make the server fill its context.
    token_limits: tuple[str, ...]
    minimal: Mapping[str, Any] = field(default_factory=dict)


# --- building blocks ---------------------------------------------------------------------------

# Text that has bitten chat servers: template markers, control characters, NUL, bidi overrides,
# combining marks, astral characters, jinja syntax; plus hypothesis' whole-Unicode text.
TRICKY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "<end_of_turn>",
        "<start_of_turn>model\n",
        "<bos><eos>",
        "{{ 7*7 }}{% raw %}",
        "\x00\x01\x7f",
        "\u202e\u200b\ufeff",
        "e\u0301\u0301\u0301",
        "\U0001f600\U00010348",
        "\r\n\t",
        "data: [DONE]\n\n",
    ]
)
TEXT = st.one_of(TRICKY_TEXT, st.text(max_size=40))
# JSON values of any type, for "wrong type" values and vendor extras.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
# JSON has no NaN/Infinity; bodies are serialised with allow_nan=True, so these reach the server
# as the bare tokens `NaN`, `Infinity`, `-Infinity` that Python's parser accepts.
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
HUGE_INTS = st.sampled_from([2**31, 2**63, 2**64, -(2**63) - 1, 10**30])
HUGE_FLOATS = st.sampled_from([1e308, -1e308, 5e-324])
NOT_A_NUMBER = st.one_of(
    st.text(max_size=5).filter(lambda s: not _numeric(s)),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def number_field(low: float, high: float, *, integer: bool = False) -> FieldValues:
    """A bounded number: in range is valid; out of range, NaN/inf and non-numbers are refused."""
    if integer:
        valid: SearchStrategy[Any] = st.integers(int(low), int(high))
        invalid_range = st.integers(max_value=int(low) - 1) | st.integers(min_value=int(high) + 1)
        invalid = invalid_range | NOT_A_NUMBER | st.floats(0.1, 0.9).map(lambda f: low + f)
    else:
        valid = st.floats(low, high) | st.integers(math.ceil(low), math.floor(high))
        invalid = (
            # (filtered: hypothesis counts -0.0 as below 0.0, Python does not)
            st.floats(max_value=low, exclude_max=True, allow_nan=False).filter(lambda x: x < low)
            | st.floats(min_value=high, exclude_min=True, allow_nan=False).filter(
                lambda x: x > high
            )
            | NON_FINITE
            | NOT_A_NUMBER
        )
    return FieldValues(valid, invalid, HUGE_INTS | HUGE_FLOATS | st.booleans() | st.none())


# --- chat completions --------------------------------------------------------------------------

TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
OTHER_PARTS = st.sampled_from(
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ]
)
BROKEN_PARTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.integers() | st.none()}),
    st.fixed_dictionaries({"type": st.text(max_size=8).filter(lambda t: t != "text")}),
    st.fixed_dictionaries({"text": TEXT}),
    st.integers(),
    st.text(max_size=5),
)
CONTENT = st.one_of(TEXT, st.lists(TEXT_PART, min_size=1, max_size=3))
TOOL_CALL = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=8),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True), "arguments": st.just("{}")}
        ),
    }
)
VALID_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": CONTENT},
        optional={"name": st.text(max_size=8)},
    ),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none()}),
)
ODD_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system"]),
            "content": st.lists(TEXT_PART | OTHER_PARTS, min_size=1, max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "content": TEXT, "tool_call_id": st.text(max_size=8)}
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.none() | TEXT,
            "tool_calls": st.lists(TOOL_CALL, min_size=1, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {"role": st.just("function"), "content": TEXT, "name": st.text(max_size=8)}
    ),
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]), "content": st.lists(TEXT_PART, max_size=0)}
    ),
)
BROKEN_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.integers() | st.none() | st.sampled_from(["wizard", "USER", ""]),
            "content": TEXT,
        }
    ),
    st.fixed_dictionaries({"content": TEXT}),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": st.integers()
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
            | st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.lists(BROKEN_PARTS, min_size=1, max_size=2)}
    ),
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer"]), "content": st.none()}
    ),
    st.integers() | st.text(max_size=5) | st.none() | st.lists(st.integers(), max_size=2),
)
MESSAGES = FieldValues(
    valid=st.lists(VALID_MESSAGE, min_size=1, max_size=4),
    invalid=st.one_of(
        st.just(ABSENT),
        st.just([]),
        st.text(max_size=10)
        | st.integers()
        | st.none()
        | st.dictionaries(st.text(max_size=3), TEXT, max_size=2),
        st.tuples(st.lists(VALID_MESSAGE, max_size=2), BROKEN_MESSAGE).map(lambda t: [*t[0], t[1]]),
    ),
    odd=st.tuples(st.lists(VALID_MESSAGE, max_size=2), ODD_MESSAGE).map(lambda t: [*t[0], t[1]]),
    required=True,
)


def token_limit_field() -> FieldValues:
    """A token limit. Valid values stay tiny (cost); `odd` ones are accepted-but-cheap or must be
    refused by the context check (prompt + limit > n_ctx)."""
    return FieldValues(
        valid=st.integers(1, TOKEN_CAP),
        invalid=st.integers(max_value=0)
        | NOT_A_NUMBER
        | st.floats(1.1, 3.9)
        | st.integers(SERVER_CTX + 1, 2**62),
        odd=st.sampled_from([2**63, 2**64, 10**30, True, 2.0, "3", None]),
    )


def json_schema_format(schema: SearchStrategy[Any]) -> SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "type": st.just("json_schema"),
            "json_schema": st.fixed_dictionaries(
                {"name": st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True), "schema": schema},
                optional={"strict": st.booleans()},
            ),
        }
    )


SMALL_SCHEMAS = st.sampled_from(
    [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}},
        {"type": "string", "enum": ["yes", "no"]},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
        {"type": "object", "properties": {"x": {"anyOf": [{"type": "null"}, {"type": "number"}]}}},
    ]
)
ODD_SCHEMAS = st.one_of(
    st.sampled_from(
        [
            {},
            True,
            {"type": "integer", "minimum": 3},
            {"$ref": "#/$defs/missing"},
            {"type": "array", "items": {}},
            {"type": "string", "pattern": "^[a-z]+$"},
            {"type": "object", "additionalProperties": {"type": "object"}},
            {"type": "nonsense"},
        ]
    ),
    ANY_JSON,
)
RESPONSE_FORMAT = FieldValues(
    valid=st.one_of(
        st.just({"type": "text"}),
        st.just({"type": "json_object"}),
        json_schema_format(SMALL_SCHEMAS),
    ),
    invalid=st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.text(max_size=10).filter(
                    lambda t: t not in ("text", "json_object", "json_schema")
                )
            }
        ),
        st.just({"type": "json_schema"}),
        st.just({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}),
        st.just({"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}}),
        st.text(max_size=5) | st.integers() | st.lists(st.integers(), max_size=2),
    ),
    odd=json_schema_format(ODD_SCHEMAS),
)

FUNCTION = st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)},
    optional={
        "description": TEXT,
        "parameters": SMALL_SCHEMAS.filter(lambda s: s.get("type") == "object"),
        "strict": st.booleans(),
    },
)
TOOL = st.fixed_dictionaries({"type": st.just("function"), "function": FUNCTION})
TOOLS = FieldValues(
    valid=st.lists(TOOL, min_size=1, max_size=2),
    invalid=st.one_of(
        st.text(max_size=5),
        st.integers(),
        st.lists(st.integers() | st.text(max_size=3), min_size=1, max_size=2),
    ),
    odd=st.lists(
        st.fixed_dictionaries({"type": st.just("function"), "function": ANY_JSON}),
        min_size=1,
        max_size=2,
    ),
)
TOOL_CHOICE = FieldValues(
    valid=st.one_of(
        st.sampled_from(["none", "auto", "required"]),
        st.builds(lambda f: {"type": "function", "function": {"name": f["name"]}}, FUNCTION),
    ),
    invalid=st.one_of(st.integers(), st.sampled_from(["always", ""])),
    odd=ANY_JSON,
)

SAMPLING_FIELDS: dict[str, FieldValues] = {
    "temperature": number_field(0, 2),
    "top_p": number_field(0, 1),
    "top_k": FieldValues(
        st.integers(0, 200), st.integers(max_value=-1) | NOT_A_NUMBER, HUGE_INTS | st.booleans()
    ),
    "min_p": number_field(0, 1),
    "presence_penalty": number_field(-2, 2),
    "frequency_penalty": number_field(-2, 2),
    "stop": FieldValues(
        st.one_of(TEXT, st.lists(TEXT, max_size=4), st.none()),
        st.one_of(
            st.lists(TEXT, min_size=5, max_size=6),
            st.integers(),
            st.lists(st.integers(), min_size=1, max_size=2),
            st.dictionaries(st.text(max_size=3), TEXT, min_size=1, max_size=2),
        ),
        st.lists(st.lists(TEXT, max_size=1), min_size=1, max_size=2),
    ),
    "seed": FieldValues(
        st.integers(-(2**63), 2**63 - 1) | st.none(),
        NOT_A_NUMBER | st.floats(0.1, 0.9),
        HUGE_INTS | st.booleans() | st.just(3.0),
    ),
    "logit_bias": FieldValues(
        st.dictionaries(st.integers(0, 262143).map(str), st.integers(-100, 100), max_size=3),
        st.one_of(
            st.dictionaries(st.integers(0, 100).map(str), NOT_A_NUMBER, min_size=1, max_size=2),
            st.integers(),
            st.text(max_size=4),
            st.lists(st.integers(), max_size=2),
        ),
        st.one_of(
            st.dictionaries(st.text(max_size=6), st.integers(-1000, 1000), min_size=1, max_size=2),
            st.dictionaries(
                st.sampled_from(["-1", "262144", "99999999999999999999"]),
                st.floats(-100, 100),
                min_size=1,
                max_size=1,
            ),
            st.just({"5": math.nan}),
        ),
    ),
    "logprobs": FieldValues(
        st.booleans() | st.none(),
        st.text(max_size=3).filter(
            lambda t: (
                t.lower()
                not in ("true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n")
            )
        )
        | st.lists(st.booleans(), max_size=1),
        st.sampled_from([0, 1]),
    ),
    "top_logprobs": FieldValues(
        st.integers(0, 20),
        st.integers(max_value=-1) | st.integers(min_value=21) | NOT_A_NUMBER,
        st.none(),
    ),
    "user": FieldValues(
        st.text(max_size=20), st.integers() | st.lists(st.text(max_size=2), max_size=2), st.none()
    ),
}

CHAT_FIELDS: dict[str, FieldValues] = {
    "model": FieldValues(
        st.just(MODEL_ID),
        st.one_of(
            st.just(ABSENT),
            st.just(""),
            st.integers(),
            st.none(),
            st.lists(st.just(MODEL_ID), max_size=1),
            st.text(min_size=1, max_size=12).filter(lambda m: m != MODEL_ID),
        ),
        required=True,
    ),
    "messages": MESSAGES,
    "max_tokens": token_limit_field(),
    "max_completion_tokens": token_limit_field(),
    "n": FieldValues(
        st.integers(1, CHOICE_CAP),
        st.integers(max_value=0) | st.integers(min_value=5) | NOT_A_NUMBER,
        st.none() | st.just(2.0),
    ),
    "stream": FieldValues(
        st.booleans() | st.none(),
        st.text(max_size=3).filter(
            lambda t: (
                t.lower()
                not in ("true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n")
            )
        )
        | st.lists(st.booleans(), max_size=1)
        | st.integers(min_value=2),
        st.sampled_from([0, 1]),
    ),
    "stream_options": FieldValues(
        st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}) | st.none(),
        st.text(max_size=3) | st.integers() | st.just({"include_usage": "maybe"}) | st.just([]),
        st.fixed_dictionaries(
            {"include_usage": st.booleans(), "continuous_usage_stats": st.booleans()}
        ),
    ),
    **SAMPLING_FIELDS,
    "response_format": RESPONSE_FORMAT,
    "tools": TOOLS,
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": FieldValues(st.booleans(), NOTHING, ANY_JSON),
}

CHAT = Endpoint(
    path="/v1/chat/completions",
    fields=CHAT_FIELDS,
    token_limits=("max_tokens", "max_completion_tokens"),
    minimal={"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
)

ENDPOINTS: dict[str, Endpoint] = {CHAT.path: CHAT}


# --- bodies ------------------------------------------------------------------------------------

EXTRA_FIELDS = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(
        lambda k: k not in CHAT_FIELDS and k not in ("functions", "function_call")
    ),
    ANY_JSON,
    max_size=2,
)


@st.composite
def request_bodies(draw: st.DrawFn, endpoint: Endpoint) -> tuple[str, dict[str, Any]]:
    """(kind, body). `valid`: every field absent or valid, so the server must honour the body or
    refuse a field it does not support by name. `odd`: odd values too. `broken`: also one or
    two fields invalid. Vendor extras everywhere; one token limit always present and small."""
    kind = draw(st.sampled_from(["valid", "odd", "broken"]))
    guarded = draw(st.sampled_from(endpoint.token_limits))
    breakable = sorted(
        name
        for name, values in endpoint.fields.items()
        if name != guarded and not values.invalid.is_empty
    )
    broken = (
        draw(st.sets(st.sampled_from(breakable), min_size=1, max_size=2))
        if kind == "broken"
        else set()
    )
    choices = ["absent", "absent", "valid"] + (["odd"] if kind != "valid" else [])
    body: dict[str, Any] = {}
    for name, values in endpoint.fields.items():
        if name == guarded:
            value = draw(values.valid)
        elif name in broken:
            value = draw(values.invalid)
        elif values.required:
            value = draw(values.valid)
        else:
            choice = draw(st.sampled_from(choices))
            if choice == "absent" or (choice == "odd" and values.odd.is_empty):
                continue
            value = draw(values.valid if choice == "valid" else values.odd)
        if value is not ABSENT:
            body[name] = value
    body.update(draw(EXTRA_FIELDS))
    return kind, body


@st.composite
def one_broken_field(draw: st.DrawFn, endpoint: Endpoint) -> tuple[str, dict[str, Any]]:
    """(field, body): the endpoint's minimal valid body with exactly `field` made invalid."""
    names = sorted(name for name, values in endpoint.fields.items() if not values.invalid.is_empty)
    name = draw(st.sampled_from(names))
    body = dict(endpoint.minimal)
    # Every `invalid` token limit is refused by itself: a broken max_tokens replaces the minimal
    # body's, and a broken max_completion_tokens takes precedence over it, so no cost escapes.
    value = draw(endpoint.fields[name].invalid)
    if value is ABSENT:
        body.pop(name, None)
    else:
        body[name] = value
    return name, body
