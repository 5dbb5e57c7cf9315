"""Keep generated requests cheap: the bundled model makes ~40 tokens/s on 2 cores, and a request
without a token limit may fill the 4096-token context (about 100 s).

`cap_generation_cost` rewrites, in place, the fields that set how much a request generates, for
whatever endpoint declares them: present or absent, a token limit ends up at most `TOKEN_CAP`
(or the schema's own minimum, if higher), and a choice count at most `CHOICE_CAP`. Values that
are already invalid (0, negative, fractional, objects, ...) are left alone, so a request generated
to be rejected still is; only values the server would accept and honour are lowered, keeping
their JSON type (an integral float stays a float, a numeric string a string).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

TOKEN_CAP = 4
CHOICE_CAP = 2

# The request fields that bound the number of generated tokens, by endpoint family:
# chat (max_tokens, max_completion_tokens), legacy completions (max_tokens), responses
# (max_output_tokens). Absent, each means "up to the rest of the context".
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CHOICE_FIELDS = ("n", "best_of")
# Ollama's token limit is `options.num_predict`, where -1 and -2 mean "no limit".
OPTIONS_FIELD = "options"
UNLIMITED_NUM_PREDICT = (-1, -2)


def _minimum(schema: Mapping[str, Any] | None) -> float | None:
    """The `minimum` of a field's schema, also inside anyOf/oneOf (pydantic's Optional)."""
    if not isinstance(schema, Mapping):
        return None
    if isinstance(schema.get("minimum"), int | float):
        return float(schema["minimum"])
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, ()):
            found = _minimum(branch)
            if found is not None:
                return found
    return None


def _lowered(value: Any, limit: int) -> Any:
    """`value` lowered to `limit` if the server could read it as an integer above it, else as is."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return min(value, limit)
    if isinstance(value, float) and value.is_integer() and value > limit:
        return float(limit)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        if number == number and number > limit:  # NaN compares false; leave it
            return str(limit)
    return value


def cap_generation_cost(
    body: Any,
    declared: Mapping[str, Any] | None = None,
) -> Any:
    """Lower the cost fields of `body` (a JSON object; anything else is returned as is).

    `declared` maps the endpoint's body properties to their JSON schemas (from /openapi.json):
    only the token limits it declares are added when absent. Without it, only fields already
    present are lowered (hand-written strategies always set a small limit themselves).
    """
    if not isinstance(body, MutableMapping):
        return body
    for field in TOKEN_LIMIT_FIELDS:
        floor = _minimum(declared.get(field)) if declared else None
        limit = max(TOKEN_CAP, int(floor or 1))
        if field in body and body[field] is not None:
            body[field] = _lowered(body[field], limit)
        elif declared is not None and field in declared:
            body[field] = limit  # absent or null means "the rest of the context"
    for field in CHOICE_FIELDS:
        if field in body:
            body[field] = _lowered(body[field], CHOICE_CAP)
    _cap_num_predict(body, declared)
    return body


def _cap_num_predict(body: MutableMapping[str, Any], declared: Mapping[str, Any] | None) -> None:
    """Ollama's `options.num_predict`: set when absent (or "no limit"), lowered when higher."""
    options = body.get(OPTIONS_FIELD)
    if options is None and declared is not None and OPTIONS_FIELD in declared:
        body[OPTIONS_FIELD] = options = {}
    if not isinstance(options, MutableMapping):
        return  # absent from an endpoint without it, or invalid: left as generated
    value = options.get("num_predict")
    if value is None or (isinstance(value, int) and value in UNLIMITED_NUM_PREDICT):
        options["num_predict"] = TOKEN_CAP
    else:
        options["num_predict"] = _lowered(value, TOKEN_CAP)
