"""Structured output: a JSON object, or JSON that matches a schema, enforced while sampling.

The schema is compiled to a llama.cpp GBNF grammar (llama-cpp-python's converter) and the grammar
sampler only lets through tokens that keep the output valid. Every grammar is compiled once here
before use: llama.cpp answers a grammar it cannot parse with a NULL sampler, and a NULL sampler in
the chain crashes the process; here it is a 400 instead.
"""

from __future__ import annotations

import json

import llama_cpp
from llama_cpp.llama_grammar import DOT, DOTALL, JSON_GBNF, PRIMITIVE_RULES, json_schema_to_gbnf

from server.engine.contract import JsonFormat, Refused, RequestRejected
from server.engine.json_schema import unenforced_keyword, without_any_items


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
    elif found := unenforced_keyword(json_format.schema):
        raise _rejected(
            f"The JSON schema keyword {found} cannot be enforced by gemma-serve's grammar; "
            "remove it from the schema."
        )
    else:
        try:
            source = json_schema_to_gbnf(json.dumps(without_any_items(json_format.schema)))
            source = json_string_safe(source)
        except Exception as exc:  # the converter raises many kinds for schemas it cannot handle
            raise _rejected(f"This JSON schema is not supported: {exc!s}".strip()) from exc
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, source.encode(), b"root")
    if not sampler:
        raise _rejected("This JSON schema could not be turned into a grammar.")
    llama_cpp.llama_sampler_free(sampler)
    return source
