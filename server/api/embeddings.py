"""Embeddings beside chat: OpenAI's /v1/embeddings, and the one path Ollama's /api/embed and
/api/embeddings share (server/api/ollama_routes.py).

A request names the embedding model (its registry id), optionally with a task: the model card's
prompt for it is put before each text (server/engine/embedding_contract.TASK_PROMPTS). OpenAI's
fields have no place for a task, so it is chosen either by a `task` field beside them (the
OpenAI SDK's `extra_body`, LangChain's `model_kwargs`) or by a suffix on the model id
(`embeddinggemma-300m:query`, for clients that only let a user choose the model name); without
one the text is embedded as sent. Token-id inputs are embedded as sent and take no task.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Sequence
from typing import Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from server.api.deps import Runtime, RuntimeDep
from server.api.errors import APIError
from server.api.protocol import WireModel
from server.api.serving import ClientGone, lease_model, unless_disconnected
from server.engine.embedding_contract import (
    TASK_PROMPTS,
    EmbeddingEngine,
    EmbeddingRejected,
    allowed_dimensions,
    shorten,
    with_task,
)
from server.models.manager import KeepAlive, Lease

Task = Literal[
    "query",
    "document",
    "question_answering",
    "fact_checking",
    "classification",
    "clustering",
    "similarity",
    "code_retrieval",
]

router = APIRouter()
T = TypeVar("T", bound=BaseModel)


class EmbeddingRequest(WireModel):
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, texts, a token-id list, or token-id lists."
    )
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Cut each vector to this length.")
    user: str | None = None
    task: Task | None = Field(
        None, description="The model card's task prompt put before each text (gemma-serve)."
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def split_model(model: str, task: str | None, field: str = "model") -> tuple[str, str | None]:
    """(model id, task) from `model` ("id" or "id:task") and an explicit `task`."""
    name, colon, suffix = model.partition(":")
    if not colon:
        return model, task
    if suffix not in TASK_PROMPTS:
        known = ", ".join(TASK_PROMPTS)
        raise APIError(400, f"Unknown task '{suffix}' in '{model}'; tasks: {known}.", param=field)
    if task is not None and task != suffix:
        raise APIError(
            400, f"'{model}' asks for task '{suffix}' but `task` is '{task}'.", param="task"
        )
    return name, suffix


def to_token_lists(
    engine: EmbeddingEngine,
    given: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
    task: str | None,
    field: str = "input",
) -> list[list[int]]:
    """The request's inputs as token lists, refusing (400 naming `field` and the index) an empty
    one, too many, or a task for token ids."""
    inputs: Sequence[str | Sequence[int]]
    if isinstance(given, str):
        inputs = [given]
    elif given and all(isinstance(item, int) for item in given):
        inputs = [[int(item) for item in given]]  # type: ignore[arg-type]
    else:
        inputs = given  # type: ignore[assignment]
    if not inputs:
        raise APIError(400, f"`{field}` must not be empty.", param=field)
    limit = engine.info.max_inputs
    if len(inputs) > limit:
        raise APIError(
            400, f"`{field}` has {len(inputs)} inputs; at most {limit} a request.", param=field
        )
    lists: list[list[int]] = []
    for index, item in enumerate(inputs):
        where = f"{field}[{index}]" if not isinstance(given, str) else field
        if isinstance(item, str):
            if not item:
                raise APIError(400, f"`{where}` is an empty string.", param=where)
            lists.append(engine.tokenize(with_task(item, task)))
        else:
            if task is not None:
                raise APIError(400, "A task applies to texts, not token ids.", param="task")
            lists.append(list(item))
    return lists


def check_dimensions(engine: EmbeddingEngine, dimensions: int | None) -> int:
    allowed = allowed_dimensions(engine.info)
    if dimensions is None:
        return engine.info.width
    if dimensions not in allowed:
        choices = ", ".join(str(d) for d in allowed)
        raise APIError(
            400,
            f"`dimensions` {dimensions} is not offered by {engine.info.model_id}; "
            f"choose one of {choices}.",
            param="dimensions",
        )
    return dimensions


async def embed_lists(
    engine: EmbeddingEngine, lists: list[list[int]], dimensions: int, field: str = "input"
) -> list[list[float]]:
    """The vectors, cut to `dimensions`; an input the engine refuses is a 400 naming it."""
    try:
        vectors = await engine.embed(lists)
    except EmbeddingRejected as exc:
        where = f"{field}[{exc.index}]" if len(lists) > 1 else field
        raise APIError(
            400,
            f"`{where}`: {exc}.",
            param=where,
            code="context_length_exceeded" if "tokens" in str(exc) else None,
        ) from exc
    if dimensions == engine.info.width:
        return vectors
    return [shorten(vector, dimensions) for vector in vectors]


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    """base64: the little-endian float32 bytes, as OpenAI's API sends them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def lease_embedder(
    runtime: Runtime, model: str, keep_alive: KeepAlive | float = -1.0
) -> Lease:
    """A lease on the installed embedding model `model` names, loaded first if needed (the
    manager unloads it once idle for its keep-alive; `keep_alive` as `ModelManager.acquire`).
    The route releases it when its work ends, a client that hangs up included."""
    runtime.check_embedding_model(model)
    return await lease_model(runtime, model, keep_alive)


async def answer_unless_gone(request: Request, work: Awaitable[T]) -> T | Response:
    """`work`'s answer; a client that hangs up first cancels it (its remaining batches are
    never decoded) and gets 499, which nobody reads."""
    try:
        return await unless_disconnected(request, work)
    except ClientGone:
        return Response(status_code=499)


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, runtime: RuntimeDep
) -> EmbeddingList | Response:
    model, task = split_model(body.model, body.task)
    lease = await lease_embedder(runtime, model)
    try:
        return await _create_embeddings(body, request, lease.model, task)
    finally:
        lease.release()


async def _create_embeddings(
    body: EmbeddingRequest, request: Request, embedder: EmbeddingEngine, task: str | None
) -> EmbeddingList | Response:
    dimensions = check_dimensions(embedder, body.dimensions)
    lists = to_token_lists(embedder, body.input, task)

    async def answer() -> EmbeddingList:
        vectors = await embed_lists(embedder, lists, dimensions)
        used = sum(len(tokens) for tokens in lists)
        return EmbeddingList(
            data=[
                Embedding(index=i, embedding=encode(vector, body.encoding_format))
                for i, vector in enumerate(vectors)
            ],
            model=body.model,
            usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used),
        )

    return await answer_unless_gone(request, answer())
