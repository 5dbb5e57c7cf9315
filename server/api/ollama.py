"""Ollama's `/api/chat` and `/api/generate`: pure converters onto the one serving path.

Request side: `to_ollama_chat_plan` and `to_ollama_generate_plan` map a request onto the
engine's `GenerationRequest`, refuse by name what cannot be honoured, and ignore for a documented
reason what changes nothing here (the field table is in docs/api.md). Tools go through the same
`ToolPlan` as chat completions (the tools in the prompt, calls read back by `ChoiceBuilder`), so
Ollama's and OpenAI's tool calls cannot disagree.

Answer side: `OllamaAnswer` writes the engine's events as Ollama's objects: one JSON object per
piece of text with `done: false`, then a last one with `done: true`, `done_reason`, the token
counts and the durations in nanoseconds; or that last object alone with the whole text when
`stream` is false. Tool calls come whole, in one object before the last, as Ollama sends them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from server.api import validators
from server.api.chat_choices import ChoiceBuilder, DialectPlan, OutputOptions
from server.api.chat_protocol import FunctionCallIn, ToolCallIn, ToolDefinition
from server.api.images import ImageCollector, clean_text
from server.api.ollama_protocol import (
    ChatChunk,
    ChatDone,
    Format,
    GenerateChunk,
    GenerateDone,
    OllamaChatRequest,
    OllamaFunction,
    OllamaGenerateRequest,
    OllamaGeneration,
    OllamaMessage,
    OllamaOptions,
    OllamaToolCall,
    Timings,
)
from server.api.refusals import RefusalFields
from server.api.serving_types import GenerationRequests, ServerEvent
from server.api.tool_prompt import (
    ToolPlan,
    assistant_text,
    plan_tools,
    with_tools_instruction,
)
from server.api.validators import invalid, unsupported
from server.engine.contract import (
    ChatMessage,
    Event,
    Finished,
    GenerationRequest,
    JsonFormat,
    SamplingParams,
    TextDelta,
)

# Options with no sampler here: accepted at the value that turns them off, refused otherwise.
_NEUTRAL_OPTIONS = {"repeat_penalty": 1.0, "typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0}


@dataclass(frozen=True)
class _ChatTools:
    """An Ollama request's tools as chat's tool fields (Ollama has no `tool_choice`: auto)."""

    tools: Sequence[ToolDefinition] | None
    tool_choice: None = None
    parallel_tool_calls: None = None


def now_text() -> str:
    """Ollama's `created_at`/`modified_at`: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def refusal_fields(*, generate: bool) -> RefusalFields:
    """Where an Ollama request holds what the engine may refuse: the conversation (`messages`,
    or `prompt` for /api/generate) and the JSON constraint (`format`); images are named where
    this converter found them (`messages[0].images[1]`, `images[0]`)."""
    return RefusalFields(prompt="prompt" if generate else "messages", output_format="format")


def _sampling(options: OllamaOptions | None) -> tuple[SamplingParams, int | None, tuple[str, ...]]:
    """`options` -> (sampling, max_tokens, stop). Load-time options (num_ctx, num_gpu, ...) are
    fixed when the server starts and change nothing per request; samplers this server does not
    run are refused unless set to their neutral value."""
    given = options or OllamaOptions.model_validate({})
    for name, neutral in _NEUTRAL_OPTIONS.items():
        value = getattr(given, name)
        if value is not None and value != neutral:
            raise unsupported(
                f"options.{name}",
                f"options.{name} is not supported by gemma-serve (only {neutral}, which turns it "
                "off); use presence_penalty or frequency_penalty against repetition.",
            )
    if given.num_predict == 0:
        raise invalid(
            "options.num_predict",
            "options.num_predict must be positive, or -1 (no limit) or -2 (fill the context).",
        )
    max_tokens = given.num_predict if given.num_predict and given.num_predict > 0 else None
    sampling = SamplingParams.given(
        temperature=given.temperature,
        top_p=given.top_p,
        top_k=given.top_k,
        min_p=given.min_p,
        presence_penalty=given.presence_penalty,
        frequency_penalty=given.frequency_penalty,
        seed=given.seed,
    )
    stop = tuple(
        validators.text(text, f"options.stop[{index}]")
        for index, text in enumerate(given.stop or ())
        if text
    )
    return sampling, max_tokens, stop


def _refuse_unsupported(request: OllamaGeneration) -> None:
    if request.think not in (None, False):
        raise unsupported("think", f'"{request.model}" does not support thinking.')
    if request.logprobs or request.top_logprobs:
        param = "logprobs" if request.logprobs else "top_logprobs"
        raise unsupported(param, "Log probabilities are served on /v1/chat/completions only.")


def _json_format(value: Format | None, plan: ToolPlan | None) -> JsonFormat | None:
    if value is None or value == "":
        return None
    if value == "json":
        return JsonFormat()  # a tool-call object is a JSON object too
    if plan is not None:
        raise unsupported(
            "format",
            "A JSON schema format cannot be combined with tools here (the answer could be "
            'neither); send format "json", or no tools.',
        )
    assert isinstance(value, dict)
    return JsonFormat(schema=value)


def image_markers(images: ImageCollector, pictures: Sequence[str], param: str, role: str) -> str:
    """Ollama's base64 pictures (no `data:` prefix) -> their markers, one a line."""
    return "\n".join(
        images.add(f"data:;base64,{''.join(picture.split())}", f"{param}[{index}]", role)
        for index, picture in enumerate(pictures)
    )


def _chat_messages(
    request: OllamaChatRequest, plan: ToolPlan | None, images: ImageCollector
) -> tuple[ChatMessage, ...]:
    messages: list[ChatMessage] = []
    for index, message in enumerate(request.messages):
        param = f"messages[{index}]"
        text = clean_text(validators.text(message.content, f"{param}.content"))
        if message.images:
            markers = image_markers(images, message.images, f"{param}.images", message.role)
            text = f"{markers}\n{text}" if text else markers
        if message.tool_calls and message.role != "assistant":
            raise invalid(f"{param}.tool_calls", "Only assistant messages can have tool_calls.")
        if message.role == "tool":
            name = validators.text(message.tool_name or "", f"{param}.tool_name")
            heading = f"Tool result for {name}:" if name else "Tool result:"
            messages.append(ChatMessage("user", f"{heading}\n{text}"))
        elif message.role == "assistant" and message.tool_calls:
            calls = [
                ToolCallIn(
                    id=f"call_{index}_{position}",
                    function=FunctionCallIn(
                        name=call.function.name,
                        arguments=json.dumps(call.function.arguments, ensure_ascii=False),
                    ),
                )
                for position, call in enumerate(message.tool_calls)
            ]
            messages.append(ChatMessage("assistant", assistant_text(text, calls)))
        else:
            messages.append(ChatMessage(message.role, text))
    return with_tools_instruction(messages, plan)


def to_ollama_chat_plan(request: OllamaChatRequest) -> DialectPlan:
    """Map `/api/chat` onto the engine, or raise `APIError` naming the field."""
    _refuse_unsupported(request)
    plan = plan_tools(_ChatTools(tools=request.tools))
    sampling, max_tokens, stop = _sampling(request.options)
    images = ImageCollector()
    generation = GenerationRequest(
        messages=_chat_messages(request, plan, images),
        images=tuple(images.images),
        sampling=sampling,
        max_tokens=max_tokens,
        stop=stop,
        json_format=_json_format(request.format, plan),
    )
    generations = GenerationRequests((generation,), "messages", (refusal_fields(generate=False),))
    return DialectPlan(generations, OutputOptions(tools=plan))


def to_ollama_generate_plan(request: OllamaGenerateRequest) -> DialectPlan:
    """Map `/api/generate` onto the engine: the prompt as a user turn of the chat template (with
    `system` before it), or as it is with `raw: true`."""
    _refuse_unsupported(request)
    if request.suffix:
        raise unsupported("suffix", "Fill-in-the-middle is not supported by Gemma 3.")
    if request.template:
        raise unsupported(
            "template",
            "The prompt template cannot be replaced per request; send raw: true with a prompt "
            "that is already templated.",
        )
    if request.context:
        raise unsupported(
            "context",
            "context (an earlier answer's token ids) is not supported; send the conversation "
            "to /api/chat instead.",
        )
    sampling, max_tokens, stop = _sampling(request.options)
    prompt = clean_text(validators.text(request.prompt, "prompt"))
    images = ImageCollector()
    if request.raw:
        for name, value in (("images", request.images), ("system", request.system)):
            if value:
                raise unsupported(name, f"raw: true takes the prompt as it is, without {name}.")
        generation = GenerationRequest(
            prompt=prompt, sampling=sampling, max_tokens=max_tokens, stop=stop
        )
    else:
        messages = []
        if request.system:
            messages.append(
                ChatMessage("system", clean_text(validators.text(request.system, "system")))
            )
        if request.images:
            markers = image_markers(images, request.images, "images", "user")
            prompt = f"{markers}\n{prompt}" if prompt else markers
        messages.append(ChatMessage("user", prompt))
        generation = GenerationRequest(
            messages=tuple(messages),
            images=tuple(images.images),
            sampling=sampling,
            max_tokens=max_tokens,
            stop=stop,
            json_format=_json_format(request.format, None),
        )
    generations = GenerationRequests((generation,), "prompt", (refusal_fields(generate=True),))
    return DialectPlan(generations, OutputOptions())


@dataclass
class OllamaAnswer:
    """The answer to one `/api/chat` (`kind` "chat") or `/api/generate` request."""

    ends_with_done = False  # NDJSON: the last object says `done: true`

    model: str
    kind: Literal["chat", "generate"]
    options: OutputOptions = field(default_factory=OutputOptions)
    started: int = field(default_factory=time.monotonic_ns)
    _first: int | None = field(default=None, init=False)

    def _piece(self, text: str, calls: list[OllamaToolCall] | None = None) -> str:
        if self.kind == "generate":
            chunk = GenerateChunk(
                model=self.model, created_at=now_text(), response=text, done=False
            )
            return chunk.model_dump_json(exclude_none=True)
        message = OllamaMessage(content=text, tool_calls=calls)
        return ChatChunk(
            model=self.model, created_at=now_text(), message=message, done=False
        ).model_dump_json(exclude_none=True)

    def _timings(self, builder: ChoiceBuilder, finished: Finished) -> Timings:
        end = time.monotonic_ns()
        first = self._first if self._first is not None else end
        reason = "length" if builder.finish_reason == "length" else "stop"
        return Timings(
            done_reason=reason,
            total_duration=end - self.started,
            prompt_eval_count=finished.usage.prompt_tokens,
            prompt_eval_duration=first - self.started,
            eval_count=finished.usage.completion_tokens,
            eval_duration=end - first,
        )

    def _done(
        self, builder: ChoiceBuilder, finished: Finished, text: str, calls: list[OllamaToolCall]
    ) -> ChatDone | GenerateDone:
        timings = self._timings(builder, finished).model_dump()
        if self.kind == "generate":
            return GenerateDone(
                model=self.model, created_at=now_text(), response=text, done=True, **timings
            )
        message = OllamaMessage(content=text, tool_calls=calls or None)
        return ChatDone(
            model=self.model, created_at=now_text(), message=message, done=True, **timings
        )

    def _feed(self, builder: ChoiceBuilder, event: Event) -> list[str]:
        """The content pieces `event` completes."""
        if isinstance(event, TextDelta):
            if self._first is None:
                self._first = time.monotonic_ns()
            ready = builder.text(event)
        else:
            ready = builder.finish(event)
        return [part.delta.content for part in ready if part.delta.content]

    async def whole(self, events: AsyncIterator[tuple[int, Event]]) -> ChatDone | GenerateDone:
        builder = ChoiceBuilder(self.options)
        texts: list[str] = []
        async for _, event in events:
            texts += self._feed(builder, event)
            if isinstance(event, Finished):
                return self._done(builder, event, "".join(texts), _calls(builder))
        raise AssertionError("interleave ends every generation with Finished")

    async def stream(self, events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[ServerEvent]:
        builder = ChoiceBuilder(self.options)
        async for _, event in events:
            for text in self._feed(builder, event):
                yield self._piece(text)
            if isinstance(event, Finished):
                calls = _calls(builder)
                if calls:
                    yield self._piece("", calls)
                yield self._done(builder, event, "", []).model_dump_json(exclude_none=True)

    def failed(self, message: str, code: str) -> list[ServerEvent]:
        return [json.dumps({"error": message})]


def _calls(builder: ChoiceBuilder) -> list[OllamaToolCall]:
    """The tool calls of the answer, arguments as objects (the parser checked they are)."""
    calls = builder.message().tool_calls or []
    return [
        OllamaToolCall(
            function=OllamaFunction(
                name=call.function.name, arguments=json.loads(call.function.arguments)
            )
        )
        for call in calls
    ]
