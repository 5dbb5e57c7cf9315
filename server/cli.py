"""`gemma-serve`: the command line. Flags are generated from `Settings`, so each one is also a
`GEMMA_SERVE_*` environment variable and its help text is the field's description.

Start-up errors a user can hit (bad settings, broken registry, busy port, unloadable model) print
one line saying what happened and what to do, and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from server import __version__
from server.app import create_app
from server.registry import RegistryError, load_registry
from server.settings import Settings

log = logging.getLogger("gemma_serve")

COMMANDS = ("serve",)


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a settings field's type (values are validated by Settings)."""
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    base = args[0] if args else annotation
    if base is int:
        return {"type": int}
    if base is float:
        return {"type": float}
    if base is Path:
        return {"type": Path}
    return {"type": str}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,  # only flags given on the command line override
            metavar=None if typing.get_origin(field.annotation) is typing.Literal else name.upper(),
            help=f"{field.description} [env: GEMMA_SERVE_{name.upper()}]",
            **_flag_type(field.annotation),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma-serve",
        description="A local, OpenAI-compatible server for Gemma 3 models.",
    )
    parser.add_argument("--version", action="version", version=f"gemma-serve {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="Serve the OpenAI API (the default command).")
    _add_settings_flags(serve)
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"gemma-serve: error: {message}", file=sys.stderr)  # noqa: T201 - the user's one line
    return code


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a busy port is one clear line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        spec = load_registry(settings.registry_file).get(settings.model)
    except RegistryError as exc:
        return _fail(str(exc))
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _fail(
                f"port {settings.port} on {settings.host} is already in use; stop the "
                "program using it or choose another with --port",
                1,
            )
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}", 1)

    failure: list[str] = []

    def on_fatal(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    app = create_app(settings, spec, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=settings.log_level,
        access_log=True,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    log.info(
        "gemma-serve %s: serving %s on http://%s:%d/v1 (loading the model...)",
        __version__,
        spec.id,
        settings.host,
        settings.port,
    )
    server.run(sockets=[sock])
    if failure:
        return _fail(failure[0], 1)
    return 0


def parse_settings(argv: Sequence[str]) -> Settings:
    """Settings from command-line flags over `GEMMA_SERVE_*` variables over defaults.

    Raises `ValidationError` for a bad value; `SystemExit` for bad usage (argparse).
    """
    args = list(argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "serve")  # `gemma-serve --port 9000` means `gemma-serve serve --port 9000`
    namespace = build_parser().parse_args(args)
    overrides = {key: value for key, value in vars(namespace).items() if key != "command"}
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        return _fail(
            f"invalid --{name.replace('_', '-')} (GEMMA_SERVE_{name.upper()}): {first['msg']}"
        )
    return serve(settings)
