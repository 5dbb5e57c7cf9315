"""JSON-schema facts shared by the grammar (engine) and tool calling (API): which keywords
llama-cpp-python's schema converter leaves unenforced, where a schema nests sub-schemas, and the
rewrites the converter needs. Pure: no llama_cpp here, so the API layer may import it."""

from __future__ import annotations

import json
from typing import Any

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
# Where a schema holds sub-schemas: maps of them, lists of them, and single ones.
SCHEMA_MAPS = ("properties", "$defs", "definitions")
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_VALUES = ("items", "additionalProperties")


def subschemas(schema: dict[str, Any]) -> list[tuple[str, Any]]:
    """The sub-schemas of `schema`, each with its path below it."""
    found: list[tuple[str, Any]] = []
    for key in SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            found += [(f"{key}/{name}", sub) for name, sub in schema[key].items()]
    for key in SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            found += [(f"{key}/{i}", sub) for i, sub in enumerate(schema[key])]
    found += [(key, schema[key]) for key in SCHEMA_VALUES if key in schema]
    return found


def unenforced_keyword(schema: object, path: str = "#") -> str | None:
    """The first keyword (with its location) in `schema` that the grammar would not enforce."""
    if not isinstance(schema, dict):
        return None
    for key in schema:
        if key in UNENFORCED:
            return f"'{key}' at {path}"
    for child_path, child in subschemas(schema):
        if found := unenforced_keyword(child, f"{path}/{child_path}"):
            return found
    return None


# Keywords whose value maps names to subschemas, and keywords whose value is data, not a schema.
_NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def without_any_items(schema: Any) -> Any:
    """The schema with `"items": {}` / `"items": true` (any item) left out, which means the same:
    llama-cpp-python's converter fails on them (KeyError 'prefixItems') but handles no `items`."""
    if isinstance(schema, list):
        return [without_any_items(part) for part in schema]
    if not isinstance(schema, dict):
        return schema
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "items" and (value is True or value == {}):
            continue
        if key in _DATA_KEYWORDS:
            kept[key] = value
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):
            kept[key] = {name: without_any_items(sub) for name, sub in value.items()}
        else:
            kept[key] = without_any_items(value)
    return kept


# What a schema may cost to compile and enforce: bounded so one request cannot make the grammar
# (built per sequence, checked at every sampling step) arbitrarily large.
MAX_SCHEMA_CHARS = 256 << 10  # the schema as compact JSON
MAX_ENUM_VALUES = 10_000  # values of one enum


def schema_over_limits(schema: dict[str, Any]) -> str | None:
    """Why `schema` is too large to be enforced (naming the limit and where), or None."""
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_CHARS:
        return (
            f"The JSON schema is {size:,} characters long; at most {MAX_SCHEMA_CHARS:,} are "
            "accepted."
        )
    return _enum_over_limit(schema, "#")


def _enum_over_limit(schema: object, path: str) -> str | None:
    if not isinstance(schema, dict):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and len(enum) > MAX_ENUM_VALUES:
        return (
            f"The enum at {path} has {len(enum):,} values; at most {MAX_ENUM_VALUES:,} are "
            "accepted."
        )
    for child_path, child in subschemas(schema):
        if found := _enum_over_limit(child, f"{path}/{child_path}"):
            return found
    return None
