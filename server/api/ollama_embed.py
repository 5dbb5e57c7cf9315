"""Ollama's embeddings: `/api/embed` (many inputs, `embeddings`) and the older
`/api/embeddings` (one `prompt`, `embedding`), over the same path as /v1/embeddings
(server/api/embeddings.py): the same model check, task choice and engine. Errors come out in
Ollama's `{"error": "..."}` shape (the path is under /api/).

Ollama's `truncate` (default true) cuts an input longer than the context to fit; false makes it
an error, as in Ollama.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from server.api.deps import RuntimeDep
from server.api.embeddings import (
    Task,
    answer_unless_gone,
    check_dimensions,
    embed_lists,
    lease_embedder,
    split_model,
    to_token_lists,
)
from server.api.errors import OllamaErrorResponse
from server.api.ollama_protocol import OllamaOptions
from server.api.ollama_routes import keep_alive_of
from server.api.protocol import WireModel
from server.engine.embedding_contract import EmbeddingEngine

router = APIRouter(prefix="/api")
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OllamaErrorResponse},
    404: {"model": OllamaErrorResponse},
}


class OllamaEmbedRequest(WireModel):
    model: str
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = None
    options: OllamaOptions | None = Field(None, description="Accepted; nothing in it applies.")
    keep_alive: str | int | float | None = Field(
        None, description="How long the model stays loaded once idle, as on /api/generate."
    )
    task: Task | None = None


class OllamaEmbedAnswer(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int = 0
    prompt_eval_count: int


class OllamaEmbeddingsRequest(WireModel):
    model: str
    prompt: str
    options: OllamaOptions | None = None
    keep_alive: str | int | float | None = None  # as on /api/embed
    task: Task | None = None


class OllamaEmbeddingsAnswer(BaseModel):
    embedding: list[float]


@router.post("/embed", response_model=OllamaEmbedAnswer, responses=ERRORS)
async def embed(
    body: OllamaEmbedRequest, request: Request, runtime: RuntimeDep
) -> OllamaEmbedAnswer | Response:
    started = time.perf_counter_ns()
    model, task = split_model(body.model.removesuffix(":latest"), body.task)
    lease = await lease_embedder(runtime, model, keep_alive_of(body.keep_alive))
    try:
        return await _embed(body, request, lease.model, task, started)
    finally:
        lease.release()


async def _embed(
    body: OllamaEmbedRequest,
    request: Request,
    embedder: EmbeddingEngine,
    task: str | None,
    started: int,
) -> OllamaEmbedAnswer | Response:
    dimensions = check_dimensions(embedder, body.dimensions)
    lists = to_token_lists(embedder, body.input, task)
    if body.truncate:
        lists = [tokens[: embedder.info.n_ctx] for tokens in lists]

    async def answer() -> OllamaEmbedAnswer:
        vectors = await embed_lists(embedder, lists, dimensions)
        return OllamaEmbedAnswer(
            model=body.model,
            embeddings=vectors,
            total_duration=time.perf_counter_ns() - started,
            prompt_eval_count=sum(len(tokens) for tokens in lists),
        )

    return await answer_unless_gone(request, answer())


@router.post("/embeddings", response_model=OllamaEmbeddingsAnswer, responses=ERRORS)
async def embeddings(body: OllamaEmbeddingsRequest, runtime: RuntimeDep) -> OllamaEmbeddingsAnswer:
    model, task = split_model(body.model.removesuffix(":latest"), body.task)
    lease = await lease_embedder(runtime, model, keep_alive_of(body.keep_alive))
    try:
        embedder: EmbeddingEngine = lease.model
        lists = to_token_lists(embedder, body.prompt, task, field="prompt")
        [vector] = await embed_lists(embedder, lists, embedder.info.width, field="prompt")
        return OllamaEmbeddingsAnswer(embedding=vector)
    finally:
        lease.release()
