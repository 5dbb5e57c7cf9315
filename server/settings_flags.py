"""The command line's flags, made from `Settings`' fields: each flag is also a `GEMMA_SERVE_*`
environment variable, its help text is the field's description, and its value is validated by
`Settings` itself (argparse only splits the command line)."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from pydantic import BeforeValidator

from server.setting_values import parse_size
from server.settings import Settings


def _flag_type(annotation: Any, metadata: list[Any]) -> dict[str, Any]:
    """argparse keywords for a settings field's type (values are validated by Settings)."""
    if any(isinstance(item, BeforeValidator) for item in metadata):
        return {"type": str}  # parsed by the field's own validator, e.g. "1GiB"
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    base = args[0] if args else annotation
    if base is bool:  # `--require-gpu` alone means true; `--log-prompts false` still parses
        return {"type": str, "nargs": "?", "const": "true"}
    if base is int:
        return {"type": int}
    if base is float:
        return {"type": float}
    if base is Path:
        return {"type": Path}
    return {"type": str}


def _default_text(field: Any) -> str:
    """' [default: 1GiB]' for a field with a plain default its description does not already
    give ("Default: ..."); nothing for a default computed at start (threads, cache directory)."""
    value = field.default
    if value is None or field.default_factory is not None or "Default" in field.description:
        return ""
    if value == () or value == "":
        return " [default: none]"
    if isinstance(value, bool):
        return f" [default: {str(value).lower()}]"
    if isinstance(value, int) and any(
        getattr(item, "func", None) is parse_size for item in field.metadata
    ):
        unit, scale = ("GiB", 1 << 30) if value % (1 << 30) == 0 else ("MiB", 1 << 20)
        return f" [default: {value // scale}{unit}]"
    return f" [default: {value}]"


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field (and `--no-X` for a feature on by default); a flag not given
    leaves the field to the environment and its default."""
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,  # only flags given on the command line override
            metavar=None if typing.get_origin(field.annotation) is typing.Literal else name.upper(),
            help=f"{field.description}{_default_text(field)} [env: GEMMA_SERVE_{name.upper()}]",
            **_flag_type(field.annotation, field.metadata),
        )
        if field.annotation is bool and field.default is True:
            # A feature on by default gets a plain off switch: `--no-ui` for `--ui false`.
            parser.add_argument(
                f"--no-{name.replace('_', '-')}",
                dest=name,
                action="store_const",
                const=False,
                default=argparse.SUPPRESS,
                help=f"Same as --{name.replace('_', '-')} false.",
            )
