"""Structured output: a JSON object, or JSON that matches a schema, enforced while sampling.

The schema is compiled to a llama.cpp GBNF grammar (llama-cpp-python's converter) and the grammar
sampler only lets through tokens that keep the output valid. Every grammar is compiled once here
before use: llama.cpp answers a grammar it cannot parse with a NULL sampler, and a NULL sampler in
the chain crashes the process; here it is a 400 instead.
"""

from __future__ import annotations

import json
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import (
    DOT,
    DOTALL,
    JSON_GBNF,
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    SchemaConverter,
)

from server.engine.contract import JsonFormat, Refused, RequestRejected
from server.engine.json_schema import schema_over_limits, unenforced_keyword, without_any_items


def _rejected(message: str) -> RequestRejected:
    return RequestRejected(message, Refused.OUTPUT_FORMAT)


# What a character of a JSON string may be unescaped (RFC 8259: not '"', not '\\', no control
# character), as the converter's generic JSON grammar (JSON_GBNF) already says.
_STRING_CHAR = r'[^"\\\x7F\x00-\x1F]'
# The converter's own string character: its first alternative is rewritten to the above.
_CONVERTER_CHAR = PRIMITIVE_RULES["char"].content
_CONVERTER_CHAR_CLASS = r'[^"\\]'
assert _CONVERTER_CHAR.startswith(_CONVERTER_CHAR_CLASS), "the converter's string rule changed"
_SAFE_CHAR = _STRING_CHAR + _CONVERTER_CHAR.removeprefix(_CONVERTER_CHAR_CLASS)


def json_string_safe(grammar: str) -> str:
    """The converter's schema grammar with raw control characters kept out of strings.

    llama-cpp-python's converter writes a string's character as `[^"\\]` and a pattern's `.` as
    "anything but a line break", so a model could put a raw newline or tab inside a string: not
    JSON (strict parsers such as json.loads and pydantic refuse it), though the grammar accepted
    it. Those two rules are rewritten by their bodies (their names can carry a suffix); a
    pattern's `.` then also leaves out '"' and '\\', which a JSON string cannot hold unescaped.
    """
    lines = []
    for line in grammar.splitlines():
        name, sep, body = line.partition(" ::= ")
        if sep and body == _CONVERTER_CHAR:
            line = f"{name} ::= {_SAFE_CHAR}"
        elif sep and body in (DOT, DOTALL):
            line = f"{name} ::= {_STRING_CHAR}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def compile_json_format(json_format: JsonFormat, vocab: object) -> str:
    """The GBNF grammar (root rule `root`) for `json_format`, checked against llama.cpp's own
    grammar parser; each sequence builds its own sampler from it."""
    if json_format.schema is None:
        source = JSON_GBNF
    elif problem := schema_over_limits(json_format.schema):
        raise _rejected(problem)
    elif found := unenforced_keyword(json_format.schema):
        raise _rejected(
            f"The JSON schema keyword {found} cannot be enforced by gemma-serve's grammar; "
            "remove it from the schema."
        )
    else:
        try:
            source = json_string_safe(schema_grammar(without_any_items(json_format.schema)))
        except Exception as exc:  # the converter raises many kinds for schemas it cannot handle
            raise _rejected(f"This JSON schema is not supported: {exc!s}".strip()) from exc
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, source.encode(), b"root")
    if not sampler:
        raise _rejected("This JSON schema could not be turned into a grammar.")
    llama_cpp.llama_sampler_free(sampler)
    return source


# Below this many branches in a row of an enum's trie, its remaining values are listed whole:
# llama.cpp parses (and recurses into) one nested group per branch.
_TRIE_DEPTH = 64


def _literal(text: str) -> str:
    """A GBNF string literal: quotes, backslashes and control characters escaped."""
    escaped = "".join(
        f"\\{char}" if char in '"\\' else f"\\x{ord(char):02X}" if ord(char) < 0x20 else char
        for char in text
    )
    return f'"{escaped}"'


def _common_prefix(words: list[str]) -> str:
    first, last = min(words), max(words)
    pairs = enumerate(zip(first, last, strict=False))
    length = next((i for i, (a, b) in pairs if a != b), len(first))
    return first[:length]


def literal_trie(words: list[str], depth: int = 0) -> str:
    """A GBNF expression matching exactly `words` (none empty), their shared prefixes factored
    out: `"value-" ("1" ("0" | "1")? | "2")`.

    A flat alternation of an enum's 5,000 values puts 5,000 parse stacks in llama.cpp's grammar
    sampler, each checked against every one of the vocabulary's 262,144 tokens at every step
    inside the enum (seconds a token, stalling every other sequence's step); the trie holds one
    stack per distinct next character."""
    ends = "" in words
    rest = sorted({word for word in words if word})
    if depth >= _TRIE_DEPTH:
        branches = [_literal(word) for word in rest]
    else:
        branches = []
        for first in sorted({word[0] for word in rest}):
            group = [word for word in rest if word[0] == first]
            prefix = _common_prefix(group)
            tails = [word[len(prefix) :] for word in group]
            if tails == [""]:
                branches.append(_literal(prefix))
            else:
                branches.append(f"{_literal(prefix)} {literal_trie(tails, depth + 1)}")
    body = " | ".join(branches)
    if ends:
        return f"({body})?"
    return f"({body})" if len(branches) > 1 else body


# llama-cpp-python's converter has no type annotations.
_Converter: Any = SchemaConverter


class _TrieConverter(_Converter):  # type: ignore[misc]
    """llama-cpp-python's converter, with an enum written as a trie (`literal_trie`)."""

    def visit(self, schema: dict[str, Any], name: str) -> Any:
        # The converter's own precedence: $ref, anyOf/oneOf, a list of types and const first.
        enum = schema.get("enum")
        if (
            not isinstance(enum, list)
            or not enum
            or {"$ref", "oneOf", "anyOf", "const"} & schema.keys()
            or isinstance(schema.get("type"), list)
        ):
            return super().visit(schema, name)
        rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
        return self._add_rule(rule_name, literal_trie([json.dumps(value) for value in enum]))


def schema_grammar(schema: dict[str, Any]) -> str:
    """The GBNF grammar of a JSON schema (as llama-cpp-python's `json_schema_to_gbnf`, with
    enums as tries)."""
    converter: Any = _TrieConverter(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    resolved = converter.resolve_refs(schema, "stdin")
    converter.visit(resolved, "")
    return str(converter.format_grammar())
