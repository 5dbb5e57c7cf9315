"""Images in the batching engine (real llama.cpp, bundled 270M, the tiny random projector of
tests/projector.py): the picture reaches the model, the prefix cache keeps it, prompt tokens count
its positions, text streams keep flowing beside an image step, and a consumer leaving during one
frees the slot.

The projector's weights are random, so its answers are noise; what holds is that they are a
deterministic function of the picture at temperature 0.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Iterator
from contextlib import aclosing, suppress
from pathlib import Path

import pytest

from server.api.images import decode_image
from server.engine.contract import (
    ChatMessage,
    Finished,
    GenerationRequest,
    ImageInput,
    SamplingParams,
    TextDelta,
)
from server.engine.image_marker import marker as image_marker
from server.engine.llama_engine import LlamaEngine
from tests.conftest import NEVER_END_BIAS
from tests.images import encode, picture
from tests.projector import IMAGE_TOKENS, write_tiny_projector

# Seeded: the prompt's last token is then decoded alone, so a repeated request gives the same
# text whether its prefix (the picture too) is prefilled cold or comes from the cache.
GREEDY = SamplingParams(temperature=0.0, seed=1)


@pytest.fixture(scope="session")
def projector_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_projector(tmp_path_factory.mktemp("projector") / "mmproj-tiny.gguf")


@pytest.fixture(scope="module")
def engine(model_path: Path, projector_path: Path) -> Iterator[LlamaEngine]:
    running = LlamaEngine(
        model_path=model_path,
        model_id="gemma-3-270m",
        n_ctx=2048,
        n_threads=2,
        parallel=2,
        mmproj_path=projector_path,
    )
    yield running
    running.close()


def image(seed: int, fmt: str = "PNG") -> ImageInput:
    return decode_image(encode(picture(seed), fmt), "messages[0].content[1]")


def ask(*images: ImageInput, max_tokens: int = 12) -> GenerationRequest:
    markers = "\n".join(image_marker(i) for i in range(len(images)))
    return GenerationRequest(
        messages=(ChatMessage("user", f"Describe the picture.\n{markers}"),),
        images=images,
        sampling=GREEDY,
        max_tokens=max_tokens,
    )


async def run(engine: LlamaEngine, request: GenerationRequest) -> tuple[str, Finished]:
    job = await engine.prepare(request)
    text, finished = "", None
    async with aclosing(job.events()) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                text += event.text
            else:
                finished = event
    assert finished is not None
    return text, finished


def test_the_picture_reaches_the_model(engine: LlamaEngine) -> None:
    first, _ = asyncio.run(run(engine, ask(image(1))))
    again, _ = asyncio.run(run(engine, ask(image(1))))
    other, _ = asyncio.run(run(engine, ask(image(2))))
    plain, _ = asyncio.run(
        run(
            engine,
            GenerationRequest(
                messages=(ChatMessage("user", "Describe the picture."),),
                sampling=GREEDY,
                max_tokens=12,
            ),
        )
    )
    assert first == again  # the same picture, cold then from the prefix cache
    assert first != other
    assert first != plain


def test_image_positions_are_prompt_tokens(engine: LlamaEngine) -> None:
    text_only = asyncio.run(
        engine.prepare(
            GenerationRequest(
                messages=(ChatMessage("user", "Describe the picture.\n"),), max_tokens=1
            )
        )
    )
    with_image = asyncio.run(engine.prepare(ask(image(3), max_tokens=1)))
    # 256 positions, <start_of_image> and <end_of_image> (mtmd puts them around the image), and
    # the newline between the text and the image (a trailing one is trimmed from text alone).
    assert with_image.prompt_tokens - text_only.prompt_tokens == IMAGE_TOKENS + 3


def test_a_follow_up_turn_reuses_the_cached_image(engine: LlamaEngine) -> None:
    picture_of = image(4)
    first_answer, _ = asyncio.run(run(engine, ask(picture_of, max_tokens=8)))
    before = engine.reused_prompt_tokens()
    history = (
        ChatMessage("user", f"Describe the picture.\n{image_marker(0)}"),
        ChatMessage("assistant", first_answer),
    )
    follow_up = GenerationRequest(
        messages=(*history, ChatMessage("user", "And its colours?")),
        images=(picture_of,),
        sampling=GREEDY,
        max_tokens=8,
    )
    asyncio.run(run(engine, follow_up))
    assert engine.reused_prompt_tokens() - before > IMAGE_TOKENS


def test_text_streams_keep_flowing_beside_images(engine: LlamaEngine) -> None:
    async def scenario() -> tuple[list[float], int, float]:
        stream = await engine.prepare(
            GenerationRequest(
                messages=(ChatMessage("user", "Count from one to one hundred."),),
                # <eos> and <end_of_turn> banned: the stream outlasts the pictures.
                sampling=SamplingParams(temperature=0.0, logit_bias=NEVER_END_BIAS),
                max_tokens=1000,
            )
        )
        arrivals: list[float] = []
        image_window: list[float] = []

        async def consume() -> None:
            async with aclosing(stream.events()) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        arrivals.append(time.perf_counter())

        async def pictures() -> None:
            while len(arrivals) < 10:
                await asyncio.sleep(0.01)
            request = ask(image(5), image(6), image(7), image(8), max_tokens=1)
            job = await engine.prepare(request)
            image_window.append(time.perf_counter())
            async with aclosing(job.events()) as events:
                async for _ in events:
                    pass
            image_window.append(time.perf_counter())

        consumer = asyncio.ensure_future(consume())
        await pictures()
        consumer.cancel()  # the stream has done its part
        with suppress(asyncio.CancelledError):
            await consumer
        start, end = image_window
        during = [t for t in arrivals if start <= t <= end]
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        return gaps, len(during), end - start

    gaps, tokens_during, window = asyncio.run(scenario())
    # Four image steps, each followed by a text step while the stream runs: the stream gets
    # tokens while the pictures are decoded, not after all of them.
    assert tokens_during >= 3, (tokens_during, window)
    print(
        f"\nstream beside 4 images: median gap {statistics.median(gaps) * 1000:.0f} ms, "
        f"max gap {max(gaps) * 1000:.0f} ms; 4-image prefill {window * 1000:.0f} ms"
    )


def test_leaving_during_an_image_step_frees_the_slot(engine: LlamaEngine) -> None:
    async def scenario() -> None:
        job = await engine.prepare(ask(image(9), image(10), image(11), max_tokens=50))
        received = []

        async def consume() -> None:
            async with aclosing(job.events()) as events:
                async for event in events:
                    received.append(event)

        consumer = asyncio.ensure_future(consume())
        while not engine.stats().active:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the engine is in the first of the three image steps
        assert not received  # still in the prompt: no text yet
        consumer.cancel()  # what the server does when the client hangs up
        with suppress(asyncio.CancelledError):
            await consumer
        deadline = time.monotonic() + 30  # freed after the image step under way
        while engine.stats().active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert engine.stats().active == 0

    asyncio.run(scenario())
    _, finished = asyncio.run(run(engine, ask(image(9), max_tokens=4)))
    assert finished.usage.completion_tokens >= 1


def test_the_time_limit_ends_a_request_in_its_images(
    model_path: Path, projector_path: Path
) -> None:
    limited = LlamaEngine(
        model_path=model_path,
        model_id="gemma-3-270m",
        n_ctx=2048,
        n_threads=2,
        parallel=1,
        request_timeout=0.2,
        mmproj_path=projector_path,
    )
    try:
        _, finished = asyncio.run(
            run(limited, ask(*(image(seed) for seed in range(60, 66)), max_tokens=50))
        )
        assert finished.reason == "length"
        assert finished.usage.completion_tokens <= 1
        assert limited.stats().active == 0
    finally:
        limited.close()
