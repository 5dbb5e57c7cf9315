"""The embedding engine's contract, free of llama_cpp and HTTP types.

An embedding model is served beside the chat model, as an installed model of its own: the API
asks an `EmbeddingEngine` for one vector per token list and never sees llama.cpp. What a vector
means (the model card's task prompts, Matryoshka truncation) is decided here, in pure functions
the API layer calls, so each dialect (OpenAI's /v1/embeddings, Ollama's /api/embed) applies the
same rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# EmbeddingGemma's model card ("Prompt instructions"): each text is prefixed with the prompt of
# the task the vector is for. A client names the task (server/api/embeddings.py: the `task`
# field, or a `model` suffix such as "embeddinggemma-300m:query"); without one the text is
# embedded as sent, so a client that adds the prefix itself is not prefixed twice.
TASK_PROMPTS: dict[str, str] = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "question_answering": "task: question answering | query: ",
    "fact_checking": "task: fact checking | query: ",
    "classification": "task: classification | query: ",
    "clustering": "task: clustering | query: ",
    "similarity": "task: sentence similarity | query: ",
    "code_retrieval": "task: code retrieval | query: ",
}


@dataclass(frozen=True)
class EmbeddingInfo:
    """What the API needs to know about the loaded embedding model."""

    model_id: str
    n_ctx: int  # the most tokens one input may have
    width: int  # the vector's full length
    vocab_size: int
    # Shorter lengths the model was trained to be cut to (Matryoshka), full width excluded.
    matryoshka: tuple[int, ...] = ()
    max_inputs: int = 2048  # inputs one request may carry (OpenAI's own limit)


class EmbeddingRejected(ValueError):
    """An input the model cannot embed; `index` is its place in the request."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class EmbeddingEngine(Protocol):
    """Embeds token lists: one L2-normalised vector of `info.width` floats for each."""

    info: EmbeddingInfo

    def tokenize(self, text: str) -> list[int]:
        """The tokens of `text` as the model reads it (BOS and EOS as the model file says)."""
        ...

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One vector per input, in order. Raises EmbeddingRejected for an input too long for
        the context or holding a token outside the vocabulary, before any work. Cancelling the
        awaiting task stops after the batch in flight (the rest is never decoded)."""
        ...

    def close(self) -> None: ...


def with_task(text: str, task: str | None) -> str:
    """`text` prefixed with the model card's prompt for `task` (None: as sent)."""
    return text if task is None else TASK_PROMPTS[task] + text


def allowed_dimensions(info: EmbeddingInfo) -> tuple[int, ...]:
    """The `dimensions` a client may ask for, largest first."""
    return (info.width, *sorted((d for d in info.matryoshka if d < info.width), reverse=True))


def shorten(vector: Sequence[float], dimensions: int) -> list[float]:
    """The first `dimensions` numbers, re-normalised to length 1 (Matryoshka truncation, as the
    model card prescribes)."""
    head = list(vector[:dimensions])
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head
