"""Keep-alive durations as --keep-alive and Ollama's `keep_alive` give them (issue 20)."""

from __future__ import annotations

import pytest

from server.api.errors import APIError
from server.api.ollama_routes import keep_alive_of
from server.setting_values import parse_duration
from server.settings import Settings


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1.5m", 90.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("45", 45.0),
        (0, 0.0),
        (600, 600.0),
        ("forever", None),
        ("-1", None),
        (-1, None),
        (None, None),
    ],
)
def test_a_duration_is_seconds_and_forever_is_none(
    given: str | float | None, seconds: float | None
) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("given", ["soon", "5 minutes", "m5", ""])
def test_a_bad_duration_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(given)


def test_the_default_keep_alive_is_five_minutes() -> None:
    assert Settings().keep_alive == 300.0
    assert Settings(keep_alive="forever").keep_alive is None  # type: ignore[arg-type]


def test_ollama_keep_alive_absent_leaves_the_model_as_it_is_and_bad_is_400() -> None:
    assert keep_alive_of(None) == -1.0
    assert keep_alive_of("10m") == 600.0 and keep_alive_of(-5) is None and keep_alive_of(0) == 0
    with pytest.raises(APIError) as refused:
        keep_alive_of("later")
    assert refused.value.status == 400 and refused.value.param == "keep_alive"
