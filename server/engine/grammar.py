"""Structured output: a JSON object, or JSON that matches a schema, enforced while sampling.

The schema is compiled to a llama.cpp GBNF grammar (llama-cpp-python's converter) and the grammar
sampler only lets through tokens that keep the output valid. Every grammar is compiled once here
before use: llama.cpp answers a grammar it cannot parse with a NULL sampler, and a NULL sampler in
the chain crashes the process; here it is a 400 instead.
"""

from __future__ import annotations

import json

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from server.engine.json_schema import unenforced_keyword, without_any_items
from server.engine.types import JsonFormat, RequestRejected


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
            source = json_schema_to_gbnf(json.dumps(without_any_items(json_format.schema)))
        except Exception as exc:  # the converter raises many kinds for schemas it cannot handle
            raise _rejected(f"This JSON schema is not supported: {exc!s}".strip()) from exc
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, source.encode(), b"root")
    if not sampler:
        raise _rejected("This JSON schema could not be turned into a grammar.")
    llama_cpp.llama_sampler_free(sampler)
    return source
