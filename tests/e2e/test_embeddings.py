"""/v1/embeddings and Ollama's /api/embed end to end: the real server serving the bundled
Gemma 3 270M for chat and the tiny EmbeddingGemma (tests/embedding_model.py) beside it, through
the official OpenAI SDK, LangChain's OpenAIEmbeddings, the `ollama` client and raw HTTP."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import pytest

from tests.conftest import (
    MODEL_ID,
    RunningServer,
    serving,
    start_server,
    stop_server,
    wait_healthy,
)
from tests.embedding_model import WIDTH

EMBEDDER = "embeddinggemma-300m"
NOISE = 1e-4


@pytest.fixture(scope="module")
def embedding_server(
    tmp_path_factory: pytest.TempPathFactory, embedding_model_path: Path
) -> Iterator[RunningServer]:
    with serving(
        tmp_path_factory.mktemp("embeddings"),
        "--ctx",
        "1024",
        "--embedding-model",
        EMBEDDER,
        "--embedding-model-file",
        str(embedding_model_path),
    ) as running:
        yield running


@pytest.fixture
def url(embedding_server: RunningServer) -> str:
    return embedding_server.base_url


@pytest.fixture
def sdk(url: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def post(url: str, path: str, body: dict[str, object]) -> httpx.Response:
    for _ in range(100):  # the embedding model loads beside the chat model: wait for it
        answer = httpx.post(f"{url}{path}", json=body, timeout=120)
        if answer.status_code != 503:
            return answer
        time.sleep(0.2)
    return answer


def long_request() -> list[str]:
    """2048 inputs of ~150 tokens: embedding them takes ~25 times as long as a short chat stream
    on the same CPU (~5 s here), whatever that CPU's speed (short inputs took 0.75 s, close enough
    to a chat's 0.2 s for a fast machine to finish the embedding first)."""
    return [f"sentence number {i} " + "about nothing in particular " * 30 for i in range(2048)]


def test_sdk_float_and_base64_single_and_batched(url: str, sdk) -> None:  # type: ignore[no-untyped-def]
    post(url, "/v1/embeddings", {"model": EMBEDDER, "input": "warm"})
    texts = ["hello world", "a second, longer sentence", "three"]
    one = sdk.embeddings.create(model=EMBEDDER, input=texts[0])
    assert len(one.data) == 1 and len(one.data[0].embedding) == WIDTH
    assert one.usage.prompt_tokens == 3 and one.model == EMBEDDER
    batched = sdk.embeddings.create(model=EMBEDDER, input=texts)
    assert [item.index for item in batched.data] == [0, 1, 2]
    vectors = np.array([item.embedding for item in batched.data])
    assert np.allclose(vectors[0], one.data[0].embedding, atol=NOISE)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Unasked, the SDK sends encoding_format=base64 and decodes (the calls above); asked for
    # floats or base64, it hands over what came.
    floats = sdk.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    assert np.allclose([item.embedding for item in floats.data], vectors, atol=1e-6)
    packed = sdk.embeddings.create(model=EMBEDDER, input=texts, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in packed.data]
    assert np.allclose(decoded, vectors, atol=1e-6)


def test_token_ids_and_arrays_of_them(url: str, sdk) -> None:  # type: ignore[no-untyped-def]
    text = sdk.embeddings.create(model=EMBEDDER, input="hello world").data[0].embedding
    ids = sdk.embeddings.create(model=EMBEDDER, input=[2, 23391, 1902]).data[0].embedding
    lists = sdk.embeddings.create(model=EMBEDDER, input=[[2, 23391, 1902], [2, 1902]])
    assert np.allclose(ids, text, atol=NOISE)
    assert np.allclose(lists.data[0].embedding, text, atol=NOISE)
    assert lists.usage.prompt_tokens == 5


def test_dimensions_cut_and_renormalise(sdk) -> None:  # type: ignore[no-untyped-def]
    full = np.array(sdk.embeddings.create(model=EMBEDDER, input="cut me").data[0].embedding)
    short = np.array(
        sdk.embeddings.create(model=EMBEDDER, input="cut me", dimensions=128).data[0].embedding
    )
    assert short.shape == (128,)
    assert np.allclose(short, full[:128] / np.linalg.norm(full[:128]), atol=NOISE)


def test_a_task_puts_the_model_cards_prompt_before_the_text(sdk) -> None:  # type: ignore[no-untyped-def]
    prefixed = sdk.embeddings.create(model=EMBEDDER, input="task: search result | query: Paris")
    by_field = sdk.embeddings.create(model=EMBEDDER, input="Paris", extra_body={"task": "query"})
    by_suffix = sdk.embeddings.create(model=f"{EMBEDDER}:query", input="Paris")
    plain = sdk.embeddings.create(model=EMBEDDER, input="Paris")
    want = np.array(prefixed.data[0].embedding)
    assert np.allclose(by_field.data[0].embedding, want, atol=NOISE)
    assert np.allclose(by_suffix.data[0].embedding, want, atol=NOISE)
    assert not np.allclose(plain.data[0].embedding, want, atol=1e-2)
    assert by_field.usage.prompt_tokens > plain.usage.prompt_tokens


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": []}, "input", "must not be empty"),
        ({"input": ""}, "input", "empty string"),
        ({"input": ["a", ""]}, "input[1]", "empty string"),
        ({"input": [[2, 5], [2, 262144]]}, "input[1]", "vocabulary"),
        ({"input": ["a", "word " * 2100]}, "input[1]", "at most 2048"),
        ({"input": ["a"] * 2049}, "input", "at most 2048"),
        ({"input": "a", "dimensions": 100}, "dimensions", "256, 128"),
        ({"input": "a", "dimensions": 512}, "dimensions", "256, 128"),
        ({"input": [2, 5], "task": "query"}, "task", "not token ids"),
        ({"input": "a", "model": f"{EMBEDDER}:poem"}, "model", "Unknown task"),
        ({"input": "a", "model": MODEL_ID}, "model", EMBEDDER),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    url: str, body: dict[str, object], param: str, words: str
) -> None:
    answer = post(url, "/v1/embeddings", {"model": EMBEDDER, **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_the_embedding_model_is_refused_for_chat(sdk) -> None:  # type: ignore[no-untyped-def]
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as refused:
        sdk.chat.completions.create(
            model=EMBEDDER, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
    assert "embedding model" in str(refused.value) and MODEL_ID in str(refused.value)
    chat = sdk.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert chat.choices[0].message.content is not None  # chat is served beside it


def test_langchain_embed_documents(url: str) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    embedder = langchain_openai.OpenAIEmbeddings(
        model=EMBEDDER,
        base_url=f"{url}/v1",
        api_key="not-needed",
        check_embedding_ctx_length=False,  # send texts, not tiktoken ids of another vocabulary
    )
    vectors = embedder.embed_documents(["first document", "second document"])
    query = embedder.embed_query("first document")
    assert len(vectors) == 2 and all(len(v) == WIDTH for v in vectors)
    assert np.allclose(vectors[0], query, atol=NOISE)


def test_ollama_embed_and_the_older_embeddings(url: str) -> None:
    client = ollama.Client(host=url, timeout=120)
    post(url, "/api/embed", {"model": EMBEDDER, "input": "warm"})
    many = client.embed(model=EMBEDDER, input=["hello world", "three"])
    assert len(many.embeddings) == 2 and len(many.embeddings[0]) == WIDTH
    assert many.prompt_eval_count == 5
    one = client.embeddings(model=f"{EMBEDDER}:latest", prompt="hello world")
    assert np.allclose(one.embedding, many.embeddings[0], atol=NOISE)
    openai_way = post(url, "/v1/embeddings", {"model": EMBEDDER, "input": "hello world"})
    assert np.allclose(openai_way.json()["data"][0]["embedding"], one.embedding, atol=NOISE)


def test_ollama_truncates_unless_told_not_to(url: str) -> None:
    long = "word " * 2100
    cut = post(url, "/api/embed", {"model": EMBEDDER, "input": long})
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 2048
    refused = post(url, "/api/embed", {"model": EMBEDDER, "input": long, "truncate": False})
    assert refused.status_code == 400 and "at most 2048" in refused.json()["error"]
    chat_model = post(url, "/api/embed", {"model": MODEL_ID, "input": "a"})
    assert chat_model.status_code == 400 and EMBEDDER in chat_model.json()["error"]


def test_a_client_that_hangs_up_frees_its_batches(url: str) -> None:
    """2048 long inputs are 128 batches; the client leaves after a moment, and the server stops
    after the batch in flight (/metrics counts a 499 for it, not a 200) and serves the next."""
    many = long_request()
    post(url, "/v1/embeddings", {"model": EMBEDDER, "input": "warm"})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/embeddings", json={"model": EMBEDDER, "input": many}, timeout=0.5)
    gone = 'gemma_serve_requests_total{method="POST",path="/v1/embeddings",status="499"} 1.0'
    deadline = time.monotonic() + 60  # a guard against a hang, not a bound on speed
    while time.monotonic() < deadline and gone not in httpx.get(f"{url}/metrics").text:
        time.sleep(0.2)
    assert gone in httpx.get(f"{url}/metrics").text
    after = post(url, "/v1/embeddings", {"model": EMBEDDER, "input": "next"})
    assert after.status_code == 200


def test_chat_streams_while_a_large_embedding_request_runs(url: str, sdk) -> None:  # type: ignore[no-untyped-def]
    """The embedding model has its own llama.cpp context: a chat stream started during a
    2048-input request flows and ends while that request is still being embedded (a chat that
    waited for the embedding would end after it)."""
    import threading

    many = long_request()
    answers: list[httpx.Response] = []
    embedding = threading.Thread(
        target=lambda: answers.append(
            post(url, "/v1/embeddings", {"model": EMBEDDER, "input": many})
        )
    )
    embedding.start()
    time.sleep(0.5)  # let it start its batches
    stream = sdk.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    finish = [chunk.choices[0].finish_reason for chunk in stream if chunk.choices]
    chat_ended_during_embedding = embedding.is_alive()
    embedding.join()
    assert finish[-1] == "length"
    assert answers[0].status_code == 200 and len(answers[0].json()["data"]) == 2048
    assert chat_ended_during_embedding


def test_the_embedding_model_unloads_when_idle_and_the_next_request_reloads_it(
    tmp_path: Path, embedding_model_path: Path
) -> None:
    """It is an installed model like the chat models: loaded at start by --embedding-model,
    unloaded after --keep-alive idle (its state in /v1/models), loaded again by a request."""
    running = start_server(
        tmp_path, "--ctx", "1024", "--keep-alive", "3s",
        "--embedding-model", EMBEDDER, "--embedding-model-file", str(embedding_model_path),
    )  # fmt: skip
    try:
        wait_healthy(running)
        url = running.base_url

        def state() -> object:
            cards = httpx.get(f"{url}/v1/models").json()["data"]
            return next(card["state"] for card in cards if card["id"] == EMBEDDER)

        first = post(url, "/v1/embeddings", {"model": EMBEDDER, "input": "before"})
        assert first.status_code == 200, first.text
        deadline = time.monotonic() + 60  # a guard against a hang, not a bound on speed
        while state() != "unloaded":
            assert time.monotonic() < deadline, "the embedding model never unloaded"
            time.sleep(0.2)
        assert f"{EMBEDDER} unloaded (idle for 3 s)" in running.log()
        tags = [m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]]
        assert f"{EMBEDDER}:latest" not in tags and f"{MODEL_ID}:latest" in tags  # chat only

        again = httpx.post(
            f"{url}/v1/embeddings", json={"model": EMBEDDER, "input": "after"}, timeout=120
        )
        assert again.status_code == 200, again.text
        assert len(again.json()["data"][0]["embedding"]) == WIDTH
        assert f"{EMBEDDER} loaded in" in running.log()  # on demand, the request waiting
    finally:
        stop_server(running)
