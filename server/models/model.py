"""What the model manager deals in: an installed model (`Installed`, what a kind of engine
registers), what it loads (`Loadable`), and a model's state as the API shows it (`ModelState`).
See server/models/manager.py for the lifecycle."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

State = Literal["loaded", "loading", "unloading", "unloaded"]

KeepAlive = float | None  # seconds a model stays loaded once idle; None: until the server stops


class Loadable(Protocol):
    """What a loaded model must offer the manager."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Installed:
    """A model that can be served without a download. How a kind of engine fills it in and
    registers it: the docstring of server/models/manager.py."""

    model_id: str
    load: Callable[[threading.Event, int | None], Loadable] = field(repr=False)
    need: int  # bytes of the managed memory it holds once loaded
    file_size: int = 0
    kind: str = "chat"
    source: str = "registry"  # "registry", or the user registry file that brought it
    about: Any = field(default=None, compare=False)  # what the API shows (a chat model's spec)


class NotInstalled(LookupError):
    """No installed model has this id."""


class ModelBusy(RuntimeError):
    """Too many requests already wait for this model's load (the queue limit)."""


@dataclass(frozen=True)
class ModelState:
    """One installed model as the API, the metrics and the doctor show it."""

    model_id: str
    kind: str
    state: State
    file_size: int
    holds: int  # bytes held while loaded (the plan's figure), else 0
    busy: bool
    requests: int
    last_used: float | None  # wall-clock seconds, None: never used
    expires_at: float | None  # wall-clock seconds it unloads if still idle; None: never/busy
    loads: int
    unloads: int
    load_seconds: float
    unload_seconds: float
    error: str | None
    source: str
    model: Any = field(default=None, repr=False)  # the loaded object while loaded
    about: Any = field(default=None, repr=False)  # `Installed.about`
