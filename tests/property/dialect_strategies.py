"""Hypothesis tables for Ollama's `/api/chat` and `/api/generate` and Anthropic's `/v1/messages`,
in the shape of `strategies.py` (valid, invalid and odd values per field), built from its blocks.

Ollama's token limit is `options.num_predict`, so `options` is the guarded field: its valid
values always carry a small `num_predict`.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.conftest import MODEL_ID
from tests.property.cost import TOKEN_CAP
from tests.property.strategies import (
    ABSENT,
    ANY_JSON,
    FUNCTION,
    NOT_A_NUMBER,
    SMALL_SCHEMAS,
    TEXT,
    TOOLS,
    Endpoint,
    FieldValues,
    number_field,
)

MODEL = FieldValues(
    st.just(MODEL_ID),
    st.one_of(st.just(ABSENT), st.just(""), st.integers(), st.none(), st.just("llama3:8b")),
    required=True,
)
STREAM = FieldValues(st.booleans(), st.text(max_size=3) | st.integers(min_value=2), st.none())

# --- Ollama ------------------------------------------------------------------------------------

OPTIONS = FieldValues(
    valid=st.fixed_dictionaries(
        {"num_predict": st.integers(1, TOKEN_CAP)},
        optional={
            "temperature": st.floats(0, 2),
            "top_p": st.floats(0, 1),
            "top_k": st.integers(0, 100),
            "min_p": st.floats(0, 1),
            "seed": st.integers(-(2**31), 2**31),
            "stop": st.lists(TEXT, max_size=3),
            "num_ctx": st.integers(1, 2**20),
            "repeat_penalty": st.just(1.0),
            "num_thread": st.integers(1, 64),
        },
    ),
    invalid=st.one_of(
        st.fixed_dictionaries({"num_predict": st.just(1), "nonsense_option": ANY_JSON}),
        st.fixed_dictionaries({"num_predict": st.just(1), "repeat_penalty": st.floats(1.1, 2)}),
        st.fixed_dictionaries({"num_predict": st.just(1), "temperature": NOT_A_NUMBER}),
        st.fixed_dictionaries({"num_predict": st.integers(max_value=-3) | st.just(0)}),
        st.text(max_size=5) | st.integers() | st.lists(st.integers(), max_size=2),
    ),
)
FORMAT = FieldValues(
    st.sampled_from(["", "json"]) | SMALL_SCHEMAS,
    st.sampled_from(["yaml", "JSON"]) | st.integers() | st.lists(st.integers(), max_size=2),
    ANY_JSON,
)
OLLAMA_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}
)
OLLAMA_ODD_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.just("tool"), "content": TEXT}, optional={"tool_name": st.text(max_size=8)}
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": TEXT,
            "tool_calls": st.lists(
                st.fixed_dictionaries(
                    {
                        "function": st.fixed_dictionaries(
                            {"name": FUNCTION.map(lambda f: f["name"]), "arguments": ANY_JSON}
                        )
                    }
                ),
                max_size=2,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": TEXT,
            "images": st.lists(st.text(max_size=12), min_size=1, max_size=2),
        }
    ),
)
OLLAMA_MESSAGES = FieldValues(
    valid=st.lists(OLLAMA_MESSAGE, max_size=3).map(
        lambda messages: [*messages, {"role": "user", "content": "Hi"}]
    ),
    invalid=st.one_of(
        st.text(max_size=5) | st.integers(),
        st.just([{"role": "wizard", "content": "x"}]),
        st.just([{"role": "user", "content": 3}]),
        st.just([{"content": "x"}]),
    ),
    odd=st.lists(OLLAMA_MESSAGE | OLLAMA_ODD_MESSAGE, max_size=3),
)
OLLAMA_COMMON = {
    "model": MODEL,
    "stream": STREAM,
    "options": OPTIONS,
    "format": FORMAT,
    "keep_alive": FieldValues(
        st.sampled_from(["5m", "1h", -1, 300]), st.lists(st.integers(), max_size=1)
    ),
    "think": FieldValues(st.just(False), st.just(True) | st.sampled_from(["high"]), st.none()),
}
OLLAMA_CHAT = Endpoint(
    path="/api/chat",
    fields={**OLLAMA_COMMON, "messages": OLLAMA_MESSAGES, "tools": TOOLS},
    token_limits=("options",),
    minimal={
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Hi"}],
        "options": {"num_predict": 2},
    },
)
OLLAMA_GENERATE = Endpoint(
    path="/api/generate",
    fields={
        **OLLAMA_COMMON,
        "prompt": FieldValues(TEXT.filter(bool), st.integers() | st.lists(TEXT, max_size=1)),
        "system": FieldValues(TEXT, st.integers() | st.lists(TEXT, max_size=1)),
        "raw": FieldValues(st.booleans(), st.text(max_size=3) | st.integers(min_value=2)),
        "suffix": FieldValues(st.just(""), st.text(min_size=1, max_size=5)),
        "images": FieldValues(st.just([]), st.lists(st.text(max_size=8), min_size=1, max_size=2)),
    },
    token_limits=("options",),
    minimal={"model": MODEL_ID, "prompt": "Hi", "options": {"num_predict": 2}},
)

# --- Anthropic -----------------------------------------------------------------------------------

TEXT_BLOCK = st.fixed_dictionaries(
    {"type": st.just("text"), "text": TEXT},
    optional={"cache_control": st.just({"type": "ephemeral"})},
)
ANTHROPIC_MESSAGES = FieldValues(
    valid=st.one_of(
        st.just([{"role": "user", "content": "Hi"}]),
        st.lists(TEXT_BLOCK, min_size=1, max_size=3).map(
            lambda blocks: [{"role": "user", "content": blocks}]
        ),
        st.tuples(TEXT, TEXT).map(
            lambda texts: [
                {"role": "user", "content": texts[0]},
                {"role": "assistant", "content": texts[1]},
                {"role": "user", "content": "Go on."},
            ]
        ),
    ),
    invalid=st.one_of(
        st.just(ABSENT),
        st.just([]),
        st.just([{"role": "system", "content": "x"}]),
        st.just([{"role": "user", "content": 5}]),
        st.just([{"role": "user", "content": [{"type": "document", "source": {}}]}]),
        st.just([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]),
        st.just([{"role": "user", "content": [{"type": "thinking", "thinking": "hm"}]}]),
        st.just([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "So"}]),
    ),
    odd=st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant"]),
                "content": st.lists(ANY_JSON, max_size=2),
            }
        ),
        min_size=1,
        max_size=2,
    ),
    required=True,
)
ANTHROPIC_TOOL = FUNCTION.map(
    lambda f: {"name": f["name"], "input_schema": f.get("parameters") or {"type": "object"}}
)
ANTHROPIC_FIELDS = {
    "model": MODEL,
    "messages": ANTHROPIC_MESSAGES,
    "max_tokens": FieldValues(
        st.integers(1, TOKEN_CAP), st.just(ABSENT) | st.integers(max_value=0) | NOT_A_NUMBER
    ),
    "system": FieldValues(
        TEXT | st.lists(TEXT_BLOCK, max_size=2),
        st.integers() | st.just([{"type": "image", "source": {}}]),
    ),
    "temperature": number_field(0, 1),
    "top_p": number_field(0, 1),
    "top_k": FieldValues(st.integers(0, 100), st.integers(max_value=-1) | NOT_A_NUMBER),
    "stop_sequences": FieldValues(
        st.lists(TEXT, max_size=3), st.text(max_size=3) | st.lists(st.integers(), min_size=1)
    ),
    "stream": STREAM,
    "tools": FieldValues(
        st.lists(ANTHROPIC_TOOL, min_size=1, max_size=2),
        st.just([{"type": "web_search_20250305", "name": "web_search"}]) | st.integers(),
        st.lists(ANY_JSON, min_size=1, max_size=2),
    ),
    "tool_choice": FieldValues(
        st.sampled_from([{"type": "auto"}, {"type": "none"}]),
        st.just({"type": "sometimes"}) | st.integers(),
        ANY_JSON,
    ),
    "thinking": FieldValues(
        st.just({"type": "disabled"}), st.just({"type": "enabled", "budget_tokens": 1024})
    ),
    "metadata": FieldValues(
        st.fixed_dictionaries({"user_id": st.text(max_size=8)}), st.integers() | st.text()
    ),
}
MESSAGES = Endpoint(
    path="/v1/messages",
    fields=ANTHROPIC_FIELDS,
    token_limits=("max_tokens",),
    minimal={"model": MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
)

DIALECT_ENDPOINTS = {
    endpoint.path: endpoint for endpoint in (OLLAMA_CHAT, OLLAMA_GENERATE, MESSAGES)
}
