"""Legacy text completions, `POST /v1/completions`: pure converters (request and answer).

`to_completion_plan` maps every field onto the engine (a raw `prompt`, no chat template) or
refuses it by name. Choices are numbered as OpenAI numbers them: prompt i's j-th sample (of `n`)
is choice `i * n + j`; all of them are generated together in the batch, and a stream interleaves
their chunks, each naming its `index`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from server.api import validators
from server.api.completions_protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from server.api.protocol import Usage
from server.api.refusals import RefusalFields
from server.api.serving_types import GenerationRequests, ServerEvent, error_event, wire_usage
from server.api.validators import invalid
from server.engine.contract import Event, GenerationRequest, TextDelta, TokenLogprob
from server.engine.contract import Usage as EngineUsage

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint
# Prompts in one request at most (OpenAI takes up to 2048; each is a sequence of the batch here).
MAX_PROMPTS = 32


@dataclass(frozen=True)
class CompletionPlan:
    """What a completions request asks of the engine (prompt-major), and of its answer."""

    generations: GenerationRequests
    n: int  # samples per prompt
    prefixes: tuple[str, ...]  # per choice: its prompt with `echo`, else ""
    include_usage: bool


def _prompts(request: CompletionRequest) -> list[str]:
    """The prompt texts, each checked to be encodable; token-id arrays are refused."""
    given = request.prompt
    prompts = [given] if isinstance(given, str) else given
    if not prompts:
        raise invalid("prompt", "prompt must not be an empty list.")
    if len(prompts) > MAX_PROMPTS:
        raise invalid("prompt", f"At most {MAX_PROMPTS} prompts per request (got {len(prompts)}).")
    texts = []
    for index, prompt in enumerate(prompts):
        param = "prompt" if isinstance(given, str) else f"prompt[{index}]"
        if not isinstance(prompt, str):
            raise invalid(
                param,
                "Prompts given as token ids are not supported; send the prompt as text.",
                code="unsupported_value",
            )
        texts.append(validators.text(prompt, param))
    return texts


def _refuse_unsupported(request: CompletionRequest, n: int) -> None:
    if request.suffix:
        raise validators.unsupported(
            "suffix", "suffix (fill-in-the-middle) is not supported by this model."
        )
    if request.best_of is not None and request.best_of != n:
        raise invalid(
            "best_of",
            f"best_of must equal n ({n}): gemma-serve returns every sample it generates.",
            code="unsupported_value",
        )
    if request.echo and request.logprobs is not None:
        raise validators.unsupported(
            "echo",
            "echo together with logprobs is not supported: gemma-serve does not compute the "
            "prompt's log probabilities.",
        )


def to_completion_plan(request: CompletionRequest, max_choices: int) -> CompletionPlan:
    """One engine request per choice, in choice order (prompt-major). With a seed, sample j of
    every prompt uses seed + j, so a prompt gives the same text alone or within a list."""
    n = validators.choices(request.n, max_choices)
    _refuse_unsupported(request, n)
    include_usage = validators.include_usage(request.stream, request.stream_options)
    prompts = _prompts(request)
    sampling = validators.sampling(request)
    base = GenerationRequest(
        sampling=sampling,
        max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
        stop=validators.stop(request.stop),
        logprobs=request.logprobs,
    )
    seed = request.seed
    requests = tuple(
        replace(
            base,
            prompt=prompt,
            sampling=replace(sampling, seed=None if seed is None else seed + sample),
        )
        for prompt in prompts
        for sample in range(n)
    )
    listed = not isinstance(request.prompt, str)
    refusal_fields = tuple(
        RefusalFields(prompt=f"prompt[{index}]" if listed else "prompt")
        for index in range(len(prompts))
        for _ in range(n)
    )
    return CompletionPlan(
        generations=GenerationRequests(
            requests,
            count_param="n" if n > 1 else "prompt",
            refusal_fields=refusal_fields,
            prompts=len(prompts),
        ),
        n=n,
        prefixes=tuple(prompt for prompt in prompts for _ in range(n))
        if request.echo
        else ("",) * len(requests),
        include_usage=include_usage,
    )


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


def _usage(usages: Sequence[EngineUsage | None], n: int) -> Usage:
    """Each prompt counted once (its first sample), every choice's completion tokens added."""
    finished = [usage for usage in usages if usage is not None]
    firsts = [usage for usage in usages[::n] if usage is not None]
    return wire_usage(
        EngineUsage(
            prompt_tokens=sum(usage.prompt_tokens for usage in firsts),
            completion_tokens=sum(usage.completion_tokens for usage in finished),
            cached_tokens=sum(usage.cached_tokens for usage in firsts),
        )
    )


@dataclass(frozen=True)
class CompletionAnswer:
    """The answer to one completions request: every prompt's `n` choices, whole or streamed."""

    completion_id: str
    created: int
    model: str
    n: int  # samples per prompt
    prefixes: tuple[str, ...]  # per choice: its prompt with `echo`, else ""
    with_logprobs: bool
    include_usage: bool = False
    ends_with_done = True

    async def whole(self, events: AsyncIterator[tuple[int, Event]]) -> Completion:
        """Collect every choice (generated together) into one `text_completion`."""
        texts = [_ChoiceText(prefix, self.with_logprobs) for prefix in self.prefixes]
        choices: list[CompletionChoice | None] = [None] * len(texts)
        usages: list[EngineUsage | None] = [None] * len(texts)
        async for index, event in events:
            text = texts[index]
            if isinstance(event, TextDelta):
                text.add(event)
                continue
            usages[index] = event.usage
            choices[index] = CompletionChoice(
                text="".join(text.parts),
                index=index,
                logprobs=text.logprobs,
                finish_reason=event.reason,
            )
        return Completion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=[choice for choice in choices if choice is not None],
            usage=_usage(usages, self.n),
        )

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        body = Completion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )
        return body.model_dump_json(exclude=None if self.include_usage else {"usage"})

    async def stream(self, events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[ServerEvent]:
        """The `data:` payloads of a legacy completion stream (the serving path adds `[DONE]`).

        Every choice's echoed prompt (if any) comes first; then the choices' chunks interleave
        as they are generated (with each delta's logprobs when asked), each choice ending with
        an empty chunk carrying its `finish_reason`. The usage chunk (empty `choices`) follows
        when asked for.
        """
        texts = [_ChoiceText(prefix, self.with_logprobs) for prefix in self.prefixes]
        usages: list[EngineUsage | None] = [None] * len(texts)
        for index, prefix in enumerate(self.prefixes):
            if prefix:
                yield self._chunk([CompletionChoice(text=prefix, index=index)])
        async for index, event in events:
            if isinstance(event, TextDelta):
                logprobs = texts[index].add(event)
                yield self._chunk(
                    [CompletionChoice(text=event.text, index=index, logprobs=logprobs)]
                )
                continue
            usages[index] = event.usage
            empty = (
                CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
                if self.with_logprobs
                else None
            )
            last = CompletionChoice(
                text="", index=index, logprobs=empty, finish_reason=event.reason
            )
            yield self._chunk([last])
        if self.include_usage:
            yield self._chunk([], usage=_usage(usages, self.n))

    def failed(self, message: str, code: str) -> list[ServerEvent]:
        return [error_event(message, code)]
