"""The checks every endpoint makes on what a client sends, one rule each.

Chat, completions and responses call these instead of keeping their own copies: the same input
gets the same 400, with the endpoint's own field named in `param`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from server.api.error_shape import APIError
from server.api.protocol import StreamOptions
from server.engine.contract import SamplingParams


def invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, message: str) -> APIError:
    """A field gemma-serve cannot honour: refused by name, never silently dropped."""
    return invalid(param, message, code="unsupported_parameter")


def text(value: str, param: str) -> str:
    """`value`, if it can be encoded: JSON allows lone surrogates ("\\ud800"), UTF-8 does not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(param, f"{param} is not valid Unicode (a lone surrogate).") from exc
    return value


def stop(value: str | list[str] | None) -> tuple[str, ...]:
    """`stop` as the engine takes it: a tuple of non-empty strings (OpenAI ignores empty ones)."""
    given = [value] if isinstance(value, str) else list(value or ())
    return tuple(
        text(string, "stop" if isinstance(value, str) else f"stop[{index}]")
        for index, string in enumerate(given)
        if string
    )


def logit_bias(value: Mapping[str, float] | None) -> tuple[tuple[int, float], ...]:
    """`logit_bias` -> (token id, bias) pairs sorted by id. Keys must be token ids (decimal
    strings) and biases within -100..100; the engine checks the ids against its vocabulary."""
    biases = []
    for key, bias in (value or {}).items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise invalid(
                "logit_bias", f"logit_bias keys must be token ids (integers); got {key!r}."
            )
        if not -100 <= bias <= 100:
            raise invalid(
                "logit_bias",
                f"logit_bias values must be between -100 and 100; got {bias} for token {key}.",
            )
        biases.append((int(key), float(bias)))
    return tuple(sorted(biases))


def choices(n: int | None, max_choices: int) -> int:
    """How many choices (`n`) to generate per prompt, within the server's `--max-choices`."""
    count = n or 1
    if count > max_choices:
        raise invalid("n", f"n must be at most {max_choices} on this server (got {count}).")
    return count


def include_usage(stream: bool | None, options: StreamOptions | None) -> bool:
    """Whether a stream ends with a usage chunk. `stream_options` without `stream: true` is a 400,
    as OpenAI answers it."""
    if options is not None and not stream:
        raise invalid("stream_options", "stream_options is only allowed when stream is true.")
    return bool(options and options.include_usage)


class SamplingFields(Protocol):
    """The sampling fields chat and completions requests share."""

    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def top_k(self) -> int | None: ...
    @property
    def min_p(self) -> float | None: ...
    @property
    def presence_penalty(self) -> float | None: ...
    @property
    def frequency_penalty(self) -> float | None: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def logit_bias(self) -> Mapping[str, float] | None: ...


def sampling(request: SamplingFields) -> SamplingParams:
    """What the engine samples with: Gemma 3's defaults, overridden by what the client set."""
    return SamplingParams.given(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        seed=request.seed,
        logit_bias=logit_bias(request.logit_bias),
    )
