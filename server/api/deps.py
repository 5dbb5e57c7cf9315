"""Request dependencies: the server's runtime state and the ready engine, from `app.state`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from server.api.errors import APIError, unavailable
from server.engine.contract import Engine
from server.progress import Progress
from server.registry import ModelSpec
from server.settings import Settings


@dataclass
class Runtime:
    """What the routes need to know about the server: the model and whether it is loaded."""

    spec: ModelSpec
    aliases: tuple[str, ...] = ()  # other names clients may send for the served model
    engine: Engine | None = None
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    progress: Progress | None = None  # the download, verification or load under way

    def starting(self) -> dict[str, Any]:
        """What /health adds to its 503 before the model is ready: `status` ("downloading",
        "verifying", "loading", "starting" between two steps, "failed") and `progress`."""
        if self.load_error:
            return {"status": "failed", "progress": None}
        step = self.progress.snapshot() if self.progress else None
        return {"status": step["phase"] if step else "starting", "progress": step}

    @property
    def model_id(self) -> str:
        """The id clients send: the loaded model's (it may be the fallback), else the plan's."""
        return self.engine.info.model_id if self.engine else self.spec.id

    def check_model(self, asked: str) -> None:
        """404 `model_not_found` unless `asked` names the served model (its id or an alias):
        never a silent fallback to another model."""
        if asked != self.model_id and asked not in self.aliases:
            raise APIError(
                404,
                f"The model '{asked}' does not exist. This server serves '{self.model_id}'.",
                type="invalid_request_error",
                param="model",
                code="model_not_found",
            )

    def not_ready_error(self) -> APIError:
        if self.load_error:
            return unavailable(f"The model failed to load: {self.load_error}", "model_load_failed")
        step = self.progress.summary() if self.progress else None
        return unavailable(
            f"The model {self.spec.id} is not ready yet ({step or 'loading'}); try again later.",
            "model_loading",
            retry_after=2,
        )


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_engine(runtime: RuntimeDep) -> Engine:
    if runtime.engine is None:
        raise runtime.not_ready_error()
    return runtime.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
