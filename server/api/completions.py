"""Legacy text completions, `POST /v1/completions`: pure converters and a thin router.

`to_generation_requests` maps every field onto the engine (a raw `prompt`, no chat template) or
refuses it by name. Choices are numbered as OpenAI numbers them: prompt i's j-th sample (of `n`)
is choice `i * n + j`; they are generated one after another, and streamed in that order.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from server.api.completions_protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from server.api.converters import DONE
from server.api.deps import EngineDep, RuntimeDep, SettingsDep
from server.api.errors import APIError, error_body, stream_failure
from server.api.protocol import Usage
from server.api.routes import _PING_SECONDS, _ClientGone, _unless_disconnected
from server.engine.types import (
    Event,
    Finished,
    GenerationRequest,
    RequestRejected,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from server.engine.types import Usage as EngineUsage

log = logging.getLogger("gemma_serve.api")

router = APIRouter()

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint
# Prompts of a list are generated one after another; a longer list would hold the engine for
# minutes while other clients wait.
MAX_PROMPTS = 32
_TOKEN_ID = re.compile(r"[0-9]{1,10}")


def _invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _prompts(request: CompletionRequest) -> list[str]:
    """The prompt texts, each checked to be encodable; token-id arrays are refused."""
    given = request.prompt
    prompts = [given] if isinstance(given, str) else given
    if not prompts:
        raise _invalid("prompt", "prompt must not be an empty list.")
    if len(prompts) > MAX_PROMPTS:
        raise _invalid("prompt", f"At most {MAX_PROMPTS} prompts per request (got {len(prompts)}).")
    texts = []
    for index, prompt in enumerate(prompts):
        param = "prompt" if isinstance(given, str) else f"prompt[{index}]"
        if not isinstance(prompt, str):
            raise _invalid(
                param,
                "Prompts given as token ids are not supported; send the prompt as text.",
                code="unsupported_value",
            )
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _invalid(param, "The prompt is not valid Unicode (a lone surrogate).") from exc
        texts.append(prompt)
    return texts


def _logit_bias(request: CompletionRequest) -> tuple[tuple[int, float], ...]:
    biases: dict[int, float] = {}
    for key, bias in (request.logit_bias or {}).items():
        if not _TOKEN_ID.fullmatch(key):
            raise _invalid("logit_bias", f"logit_bias keys must be token ids, got {key!r}.")
        biases[int(key)] = bias
    return tuple(biases.items())


def _refuse_unsupported(request: CompletionRequest, n: int, max_choices: int) -> None:
    if request.suffix:
        raise _invalid(
            "suffix",
            "suffix (fill-in-the-middle) is not supported by this model.",
            code="unsupported_parameter",
        )
    if n > max_choices:
        raise _invalid("n", f"n must be at most {max_choices} on this server (got {n}).")
    if request.best_of is not None and request.best_of != n:
        raise _invalid(
            "best_of",
            f"best_of must equal n ({n}): gemma-serve returns every sample it generates.",
            code="unsupported_value",
        )
    if request.echo and request.logprobs is not None:
        raise _invalid(
            "echo",
            "echo together with logprobs is not supported: gemma-serve does not compute the "
            "prompt's log probabilities.",
            code="unsupported_parameter",
        )


def to_generation_requests(request: CompletionRequest, max_choices: int) -> list[GenerationRequest]:
    """One engine request per choice, in choice order (prompt-major). With a seed, sample j of
    every prompt uses seed + j, so a prompt gives the same text alone or within a list."""
    n = request.n or 1
    _refuse_unsupported(request, n, max_choices)
    prompts = _prompts(request)
    sampling = SamplingParams.given(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        seed=request.seed,
        logit_bias=_logit_bias(request),
    )
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    base = GenerationRequest(
        sampling=sampling,
        max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
        stop=tuple(s for s in stop if s),
        logprobs=request.logprobs,
    )
    seed = request.seed
    return [
        replace(
            base,
            prompt=prompt,
            sampling=replace(sampling, seed=None if seed is None else seed + sample),
        )
        for prompt in prompts
        for sample in range(n)
    ]


def to_legacy_logprobs(tokens: Sequence[TokenLogprob], text: str, start: int) -> CompletionLogprobs:
    """The legacy shape of the logprobs of one piece of text that starts at character `start`
    of its choice. `top_logprobs` maps each alternative's text to its logprob and always holds
    the sampled token too (as OpenAI's, up to logprobs + 1 entries); `text_offset` is where the
    token's text starts in the choice (clamped to the piece: a token holding half of a
    character has no text of its own yet)."""
    result = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    consumed = 0
    for token in tokens:
        result.tokens.append(token.token)
        result.token_logprobs.append(token.logprob)
        top: dict[str, float] = {}
        for alternative in token.top:
            top.setdefault(alternative.token, alternative.logprob)
        top.setdefault(token.token, token.logprob)
        result.top_logprobs.append(top)
        result.text_offset.append(start + min(consumed, len(text)))
        consumed += len(token.token)
    return result


class _ChoiceText:
    """One choice's text and logprobs as its deltas arrive."""

    def __init__(self, prefix: str, with_logprobs: bool) -> None:
        self.parts = [prefix]
        self.length = len(prefix)
        self.logprobs = (
            CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
            if with_logprobs
            else None
        )

    def add(self, delta: TextDelta) -> CompletionLogprobs | None:
        """Append a delta; return the logprobs of just this delta (None when not asked for)."""
        piece = None
        if self.logprobs is not None:
            piece = to_legacy_logprobs(delta.logprobs, delta.text, self.length)
            for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(self.logprobs, name).extend(getattr(piece, name))
        self.parts.append(delta.text)
        self.length += len(delta.text)
        return piece


def _usage(usages: Sequence[EngineUsage], n: int) -> Usage:
    """Each prompt counted once (its first sample), every choice's completion tokens added."""
    prompt_tokens = sum(usage.prompt_tokens for usage in usages[::n])
    completion_tokens = sum(usage.completion_tokens for usage in usages)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@dataclass(frozen=True)
class CompletionFrame:
    """What every choice and chunk of one completion shares."""

    completion_id: str
    created: int
    model: str
    n: int  # samples per prompt
    prefixes: tuple[str, ...]  # per choice: its prompt with `echo`, else ""
    with_logprobs: bool


async def to_completion(
    generations: Sequence[AsyncGenerator[Event, None]], frame: CompletionFrame
) -> Completion:
    """Collect whole generations (one per choice) into one `text_completion`."""
    choices = []
    usages = []
    for index, events in enumerate(generations):
        text = _ChoiceText(frame.prefixes[index], frame.with_logprobs)
        finished: Finished | None = None
        async with aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    text.add(event)
                else:
                    finished = event
        if finished is None:
            raise RuntimeError("the engine ended a generation without finishing it")
        usages.append(finished.usage)
        choices.append(
            CompletionChoice(
                text="".join(text.parts),
                index=index,
                logprobs=text.logprobs,
                finish_reason=finished.reason,
            )
        )
    return Completion(
        id=frame.completion_id,
        created=frame.created,
        model=frame.model,
        choices=choices,
        usage=_usage(usages, frame.n),
    )


async def to_completion_chunks(
    generations: Sequence[AsyncGenerator[Event, None]],
    frame: CompletionFrame,
    *,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Engine events -> the `data:` payloads of a legacy completion stream, `[DONE]` last.

    Each choice streams in turn: its echoed prompt (if any) first, then a chunk per delta (with
    that delta's logprobs when asked), then an empty chunk with its `finish_reason`. The usage
    chunk (empty `choices`) follows when asked for. An error after the stream has started is
    sent as one `error` event before `[DONE]`, as in chat streams.
    """

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        body = Completion(
            id=frame.completion_id,
            created=frame.created,
            model=frame.model,
            choices=choices,
            usage=usage,
        )
        return body.model_dump_json(exclude=None if include_usage else {"usage"})

    def empty_logprobs() -> CompletionLogprobs | None:
        if not frame.with_logprobs:
            return None
        return CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])

    try:
        usages = []
        for index, events in enumerate(generations):
            prefix = frame.prefixes[index]
            text = _ChoiceText(prefix, frame.with_logprobs)
            if prefix:
                yield chunk([CompletionChoice(text=prefix, index=index)])
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        logprobs = text.add(event)
                        yield chunk(
                            [CompletionChoice(text=event.text, index=index, logprobs=logprobs)]
                        )
                        continue
                    usages.append(event.usage)
                    last = CompletionChoice(
                        text="", index=index, logprobs=empty_logprobs(), finish_reason=event.reason
                    )
                    yield chunk([last])
        if include_usage:
            yield chunk([], usage=_usage(usages, frame.n))
    except Exception as exc:
        message, code = stream_failure(exc)
        yield json.dumps(error_body(message, type="server_error", code=code))
    yield DONE


@router.post("/v1/completions", response_model=Completion)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    runtime: RuntimeDep,
    engine: EngineDep,
    settings: SettingsDep,
) -> Response | Completion:
    runtime.check_model(body.model)
    generations = to_generation_requests(body, settings.max_choices)
    n = body.n or 1
    prepared = []
    for index, generation in enumerate(generations):
        try:
            prepared.append(await engine.prepare(generation))
        except RequestRejected as exc:
            param = exc.param
            if param == "prompt" and not isinstance(body.prompt, str):
                param = f"prompt[{index // n}]"
            raise APIError(400, exc.message, param=param, code=exc.code) from exc
    events = [job.events() for job in prepared]
    frame = CompletionFrame(
        completion_id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model,
        n=n,
        prefixes=tuple((g.prompt or "") if body.echo else "" for g in generations),
        with_logprobs=body.logprobs is not None,
    )
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = to_completion_chunks(events, frame, include_usage=include_usage)
        return EventSourceResponse(chunks, sep="\n", ping=_PING_SECONDS)
    try:
        return await _unless_disconnected(request, to_completion(events, frame))
    except _ClientGone:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
