"""`gemma-serve`: the command line. Flags are generated from `Settings`, so each one is also a
`GEMMA_SERVE_*` environment variable and its help text is the field's description.

Start-up errors a user can hit (bad settings, broken registry, busy port, unloadable model) print
one line saying what happened and what to do, and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from server import __version__
from server.api.security import SecurityConfigError, is_loopback
from server.api.shutdown import Drain
from server.app import create_app
from server.build_record import missing_instructions
from server.capability import ASSUMED_CUDA_BUILD, LlamaBuild
from server.fetch import FetchError, ensure_model_file, ensure_projector_file, unwritable_cache
from server.hardware import GpuProbe, Hardware, as_cuda_sees_them, hide_from_cuda, simulated
from server.memory import flash_attn_needed_for
from server.planner import Plan, plan
from server.progress import Progress
from server.registry import RegistryError, load_registry
from server.report import as_json, describe, no_gpu_line, plan_options
from server.settings import Settings, unknown_variable
from server.settings_flags import add_settings_flags

log = logging.getLogger("gemma_serve")

COMMANDS = ("serve", "plan", "pull", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma-serve",
        description="A local, OpenAI-compatible server for Gemma 3 models.",
    )
    parser.add_argument("--version", action="version", version=f"gemma-serve {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="Serve the OpenAI API (the default command).")
    add_settings_flags(serve)
    planner = commands.add_parser(
        "plan", help="Show which model and context this machine would serve, and why."
    )
    add_settings_flags(planner)
    planner.add_argument(
        "--gpu-memory",
        action="append",
        metavar="SIZE",
        default=argparse.SUPPRESS,
        help="Plan for a GPU of this much free memory instead of the GPUs present, e.g. 24GiB; "
        "repeat for several GPUs.",
    )
    planner.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="Print the plan as JSON."
    )
    pull = commands.add_parser("pull", help="Download and verify a model ahead of time.")
    pull.add_argument("pull_model", metavar="MODEL", help="Registry id, e.g. gemma-3-27b-it-qat.")
    add_settings_flags(pull)
    doctor = commands.add_parser(
        "doctor",
        help="Print versions, GPUs, the llama.cpp build, the model cache and the plan: one "
        "screen to paste into a bug report.",
    )
    add_settings_flags(doctor)
    return parser


def _configure_logging(level: str, fmt: str) -> None:
    logging.basicConfig(level=level.upper(), format=fmt)
    # Per-request HTTP logs and retry chatter from the download libraries: our own messages say
    # what happened in one line; `--log-level debug` shows theirs too.
    quiet = logging.DEBUG if level == "debug" else logging.ERROR
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger().level))
    # huggingface_hub sets its logger's level from this variable when it is imported (later).
    os.environ.setdefault("HF_HUB_VERBOSITY", "debug" if level == "debug" else "error")


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


class DrainingServer(uvicorn.Server):
    """uvicorn, with a graceful shutdown on the first SIGTERM or SIGINT (see `Drain`): requests
    in flight may finish within the grace period, new ones get 503, then uvicorn stops. A second
    signal stops at once. The process exits 0 either way (uvicorn would re-raise the signal after
    its shutdown, which makes the exit status 143, read by systemd as a failure)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is None and not self.should_exit and self._loop is not None:
            # NOTE: a signal handler runs between two bytecodes of the event loop's thread;
            # call_soon_threadsafe is the safe way to start work on the loop from there.
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    def _start_drain(self) -> None:
        async def drain_then_exit() -> None:
            try:
                await self._drain.run()
            finally:
                self.should_exit = True

        if self._draining is None:
            self._draining = asyncio.ensure_future(drain_then_exit())


class WrongCpu(RuntimeError):
    """The installed llama.cpp build uses instructions this CPU lacks; one line for the user."""


def machine_and_build(
    settings: Settings, probe: GpuProbe | None = None
) -> tuple[Hardware, LlamaBuild]:
    """The GPUs NVML reports and what the installed llama.cpp can offload to. Raises WrongCpu,
    before llama.cpp is loaded, when the build uses instructions this CPU lacks (SIGILL).

    A CUDA_VISIBLE_DEVICES the user set narrows the GPUs to those CUDA will show. Otherwise cards
    below the build's CUDA architectures are hidden from CUDA (CUDA_VISIBLE_DEVICES) before
    llama.cpp is imported and initialises CUDA, so llama.cpp never runs a kernel on a card it has
    no code for.
    """
    machine = as_cuda_sees_them(
        (probe or GpuProbe()).hardware(), os.environ.get("CUDA_VISIBLE_DEVICES")
    )
    hide_from_cuda(machine.devices, settings.cuda_architectures)
    if (wrong_cpu := missing_instructions()) is not None:
        raise WrongCpu(wrong_cpu)
    from server.engine.backends import llama_build  # loads llama.cpp (and CUDA, if built with it)

    return machine, llama_build()


def _plan(settings: Settings, machine: Hardware, build: LlamaBuild) -> Plan:
    """Plan and log the decision as one block: devices, every model, the pick and why; as a
    warning when a GPU was found but is not used."""
    chosen = plan(
        machine.devices, load_registry(settings.registry_file), plan_options(settings), build
    )
    failing = machine.failing is not None
    level = logging.WARNING if (machine.devices or failing) and not chosen.on_gpu else logging.INFO
    log.log(level, "plan:\n%s", "\n".join(describe(machine, chosen)))
    if failing and not chosen.on_gpu:
        # A GPU that is there and failing (a driver upgraded without a reboot) is not a laptop
        # without one: never a quiet start on the CPU.
        log.warning("%s; serving on the CPU meanwhile", machine.failing)
    return chosen


def show_plan(settings: Settings, gpu_memory: list[str] | None, as_json_output: bool) -> int:
    try:
        # Simulated cards imply a CUDA build: the preview of a machine that is not this one,
        # made without loading llama.cpp.
        machine, build = (
            (simulated(gpu_memory), ASSUMED_CUDA_BUILD)
            if gpu_memory
            else machine_and_build(settings)
        )
        chosen = plan(
            machine.devices, load_registry(settings.registry_file), plan_options(settings), build
        )
    except (RegistryError, ValueError, WrongCpu) as exc:
        return _fail(str(exc))
    if as_json_output:
        print(json.dumps(as_json(machine, chosen), indent=2))  # noqa: T201 - the command's output
    else:
        print("\n".join(describe(machine, chosen)))  # noqa: T201 - the command's output
    return 0


def show_doctor(settings: Settings, set_here: frozenset[str] = frozenset()) -> int:
    """`set_here`: the environment variables `main` set, not the user (doctor says which)."""
    from server.doctor import gather, render, running_states

    try:
        machine, build = machine_and_build(settings)
        facts = gather(settings, machine, build, set_here, running_states(settings))
    except (RegistryError, WrongCpu) as exc:
        return _fail(str(exc))
    print("\n".join(render(facts)))  # noqa: T201 - the command's output
    return 0


def pull(settings: Settings, model_id: str) -> int:
    _configure_logging(settings.log_level, "%(levelname)s: %(message)s")
    if (unwritable := unwritable_cache(settings.cache_dir)) is not None:
        return _fail(unwritable, 1)
    progress = Progress(settings.progress_interval, terminal=sys.stderr.isatty())
    try:
        spec = load_registry(settings.registry_file).get(model_id)
        paths = [ensure_model_file(spec, settings.cache_dir, progress=progress)]
        if spec.has_vision and not settings.no_vision:
            paths.append(ensure_projector_file(spec, settings.cache_dir, progress=progress))
    except RegistryError as exc:
        return _fail(str(exc))
    except FetchError as exc:
        return _fail(str(exc), 1)
    finally:
        progress.close()
    print("\n".join(str(path) for path in paths))  # noqa: T201 - the command's output
    return 0


def flash_attn_refusal(settings: Settings, chosen: Plan) -> str | None:
    """Why --no-flash-attn cannot be honoured for this plan (None if it can, or is not set), in
    the loader's own terms (`memory.flash_attn_needed_for`)."""
    needed = flash_attn_needed_for(settings.kv_cache_type, chosen.on_gpu)
    if settings.flash_attn or needed is None:
        return None
    if needed == "kv_cache":
        return (
            f"--no-flash-attn needs --kv-cache-type f16: llama.cpp's {settings.kv_cache_type} "
            "KV cache needs flash attention; drop one of the two"
        )
    return (
        "--no-flash-attn is for serving on the CPU (on a GPU the memory plan counts on flash "
        "attention); drop it, or add --gpu-layers 0 to serve on the CPU"
    )


def serve(settings: Settings) -> int:
    _configure_logging(settings.log_level, "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if (unwritable := unwritable_cache(settings.cache_dir)) is not None:
        return _fail(unwritable, 1)
    try:
        machine, build = machine_and_build(settings)
        chosen = _plan(settings, machine, build)
    except (RegistryError, WrongCpu) as exc:
        return _fail(str(exc))
    if settings.require_gpu and not chosen.on_gpu:
        return _fail(f"--require-gpu is set: {no_gpu_line(machine, chosen)}", 1)
    if (refusal := flash_attn_refusal(settings, chosen)) is not None:
        return _fail(refusal)
    spec = chosen.model
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

    try:
        app = create_app(settings, chosen, on_fatal=on_fatal)
    except SecurityConfigError as exc:
        sock.close()
        return _fail(str(exc))
    if not (settings.api_keys or settings.api_keys_file) and not is_loopback(settings.host):
        log.warning(
            "no API key is set and the server listens on %s, not on loopback only: any client "
            "that reaches this host or container on port %d can use the API (from other machines "
            "too, unless a firewall or a container port published on 127.0.0.1 only keeps them "
            "out); set GEMMA_SERVE_API_KEYS or --api-keys-file",
            settings.host,
            settings.port,
        )
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,  # gemma-serve's own access log has the tokens and escapes the path
        # Drain has already waited for the requests; this only bounds closing the connections.
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(config, app.state.drain)
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


def parse_command(argv: Sequence[str]) -> tuple[str, Settings, dict[str, Any]]:
    """(command, settings, command-only options) from the command line.

    Settings come from flags over `GEMMA_SERVE_*` variables over defaults. Raises
    `ValidationError` for a bad value; `SystemExit` for bad usage (argparse).
    """
    args = list(argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "serve")  # `gemma-serve --port 9000` means `gemma-serve serve --port 9000`
    values = vars(build_parser().parse_args(args))
    command = str(values.pop("command"))
    extras: dict[str, Any] = {
        key: values.pop(key) for key in ("gpu_memory", "json", "pull_model") if key in values
    }
    return command, Settings(**values), extras


def parse_settings(argv: Sequence[str]) -> Settings:
    return parse_command(argv)[1]


def main(argv: Sequence[str] | None = None) -> int:
    # The planner splits the model over the GPUs in NVML's order, the PCI bus order; llama.cpp
    # applies the split in CUDA's order, which is fastest-first unless this is set before CUDA
    # initialises (when llama.cpp is imported, later): on a mixed box the shares would land on
    # the wrong cards.
    user_set = "CUDA_DEVICE_ORDER" in os.environ
    set_here = frozenset() if user_set else frozenset({"CUDA_DEVICE_ORDER"})
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    try:
        command, settings, extras = parse_command(sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        return _fail(
            f"invalid --{name.replace('_', '-')} (GEMMA_SERVE_{name.upper()}): {first['msg']}"
        )
    # After parsing, so that --help still works; before anything starts.
    if (unknown := unknown_variable(os.environ)) is not None:
        return _fail(unknown)
    if command == "plan":
        return show_plan(settings, extras.get("gpu_memory"), bool(extras.get("json")))
    if command == "pull":
        return pull(settings, extras["pull_model"])
    if command == "doctor":
        return show_doctor(settings, set_here)
    return serve(settings)
