"""Request dependencies: the server's runtime state and the ready engine, from `app.state`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from server.api.errors import APIError, unavailable
from server.engine.contract import Engine, EngineStats
from server.models.manager import ModelManager, ModelState
from server.progress import Progress
from server.registry import ModelSpec
from server.settings import Settings


@dataclass
class Runtime:
    """What the routes need to know about the server: the model picked at start (`spec`, listed
    first and loaded at start), every installed model (`models`, the manager that loads them on
    demand), and whether the start is over (`ready`: the model picked at start loaded once)."""

    spec: ModelSpec
    models: ModelManager
    aliases: tuple[str, ...] = ()  # other names clients may send for the model picked at start
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    progress: Progress | None = None  # the download, verification or load under way
    # The embedding model named by --embedding-model (loaded at start; others load on demand).
    embedding_id: str | None = None
    ready: bool = False
    start_id: str = ""  # the manager's id of the model picked at start (the plan's)

    def __post_init__(self) -> None:
        self.start_id = self.start_id or self.spec.id

    @property
    def engine(self) -> Engine | None:
        """The start model's engine while it is loaded."""
        engine: Engine | None = self.models.loaded(self.start_id)
        return engine

    def stats(self) -> EngineStats | None:
        """Every loaded chat engine's load, summed (None while none is loaded)."""
        engines = [
            state.model for state in self.models.states() if state.kind == "chat" and state.model
        ]
        if not engines:
            return None
        each = [engine.stats() for engine in engines]
        return EngineStats(
            active=sum(stats.active for stats in each),
            queued=sum(stats.queued for stats in each),
            parallel=sum(stats.parallel for stats in each),
            prompt_cache=each[0].prompt_cache if len(each) == 1 else None,
        )

    def starting(self) -> dict[str, Any]:
        """What /health adds to its 503 before the model is ready: `status` ("downloading",
        "verifying", "loading", "starting" between two steps, "failed") and `progress`."""
        if self.load_error:
            return {"status": "failed", "progress": None}
        step = self.progress.snapshot() if self.progress else None
        return {"status": step["phase"] if step else "starting", "progress": step}

    @property
    def model_id(self) -> str:
        """The id clients send for the start model: the loaded one's (it may be the fallback),
        else the plan's."""
        engine = self.engine
        return engine.info.model_id if engine else self.spec.id

    def resolve(self, asked: str) -> str:
        """The installed model `asked` names (an id, or an alias of the start model); 404
        `model_not_found` otherwise, naming how to install it: never a silent other model. A
        model of any kind: the chat routes refuse other kinds (`Serving.select`)."""
        if asked == self.model_id or asked in self.aliases:
            return self.start_id
        if self.models.installed(asked):
            return asked
        served = ", ".join(self.models.ids())
        raise APIError(
            404,
            f"The model '{asked}' is not installed (installed: {served}). A registry model is "
            f"installed with `gemma-serve pull {asked}`; a file of your own through --models-file.",
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )

    def spec_of(self, state: ModelState) -> ModelSpec | None:
        """The registry description of an installed model (the start model's may be the
        fallback's); None for a model of another kind registered without one."""
        if state.model_id == self.start_id:
            return self.spec
        return state.about if isinstance(state.about, ModelSpec) else None

    def public_id(self, state: ModelState) -> str:
        """The id clients send for it (the start model's: what is loaded)."""
        return self.model_id if state.model_id == self.start_id else state.model_id

    def check_model(self, asked: str) -> None:
        """404 unless `asked` names an installed model (see `resolve`)."""
        self.resolve(asked)

    def embedding_ids(self) -> list[str]:
        """The installed embedding models (--embedding-model's, then those in the cache)."""
        return [state.model_id for state in self.models.states() if state.kind == "embedding"]

    def check_embedding_model(self, asked: str) -> None:
        """400 unless `asked` names an installed embedding model: a chat model is named as such,
        and so is the lack of any embedding model; 404 for a name nothing has."""
        served = ", ".join(self.embedding_ids())
        if asked in self.embedding_ids():
            return
        if asked == self.model_id or asked in self.aliases or self.models.installed(asked):
            now = (
                f"the embedding models are {served}"
                if served
                else "this server serves no embedding model (start it with --embedding-model)"
            )
            raise APIError(
                400,
                f"'{asked}' is a chat model and makes no embeddings; {now}.",
                param="model",
                code="model_not_embedding",
            )
        raise APIError(
            404,
            f"The model '{asked}' does not exist. This server's embedding models: "
            f"{served or 'none (start it with --embedding-model)'}.",
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


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
