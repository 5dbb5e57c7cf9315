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
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from server.engine.types import JsonFormat, RequestRejected

# Keywords llama-cpp-python's schema converter ignores: output could break them, so a schema that
# uses one is refused by name rather than answered with JSON that does not validate.
UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "contains",
        "minContains",
        "maxContains",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties")


def unenforced_keyword(schema: object, path: str = "#") -> str | None:
    """The first keyword (with its location) in `schema` that the grammar would not enforce."""
    if not isinstance(schema, dict):
        return None
    for key in schema:
        if key in UNENFORCED:
            return f"'{key}' at {path}"
    children: list[tuple[object, str]] = []
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            children += [(sub, f"{path}/{key}/{name}") for name, sub in schema[key].items()]
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            children += [(sub, f"{path}/{key}/{i}") for i, sub in enumerate(schema[key])]
    children += [(schema[key], f"{path}/{key}") for key in _SCHEMA_VALUES if key in schema]
    for child, child_path in children:
        found = unenforced_keyword(child, child_path)
        if found:
            return found
    return None


# Keywords whose value maps names to subschemas, and keywords whose value is data, not a schema.
_NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def _without_any_items(schema: Any) -> Any:
    """The schema with `"items": {}` / `"items": true` (any item) left out, which means the same:
    llama-cpp-python's converter fails on them (KeyError 'prefixItems') but handles no `items`."""
    if isinstance(schema, list):
        return [_without_any_items(part) for part in schema]
    if not isinstance(schema, dict):
        return schema
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "items" and (value is True or value == {}):
            continue
        if key in _DATA_KEYWORDS:
            kept[key] = value
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):
            kept[key] = {name: _without_any_items(sub) for name, sub in value.items()}
        else:
            kept[key] = _without_any_items(value)
    return kept


def _rejected(message: str) -> RequestRejected:
    return RequestRejected(message, code="invalid_value", param="response_format")


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
            source = json_schema_to_gbnf(json.dumps(_without_any_items(json_format.schema)))
        except Exception as exc:  # the converter raises many kinds for schemas it cannot handle
            raise _rejected(f"This JSON schema is not supported: {exc!s}".strip()) from exc
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, source.encode(), b"root")
    if not sampler:
        raise _rejected("This JSON schema could not be turned into a grammar.")
    llama_cpp.llama_sampler_free(sampler)
    return source
