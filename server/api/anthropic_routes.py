"""Anthropic's Messages API: a thin router over the one serving path.

`POST /v1/messages` converts its body (`server.api.anthropic`), prepares it (so `message_start`
can report the prompt's tokens) and answers through `serving.Serving` like every other endpoint;
`POST /v1/messages/count_tokens` prepares the same conversion and reports its prompt length
without generating (the unstarted generation gives its place back). Errors come out in
Anthropic's shape (see `errors.dialect_of`); the key may come as `x-api-key`.
"""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Request, Response

from server.api.anthropic import to_anthropic_plan
from server.api.anthropic_answer import AnthropicAnswer
from server.api.anthropic_protocol import CountTokensRequest, Message, MessagesRequest, TokenCount
from server.api.serving import ServingDep

router = APIRouter(prefix="/v1/messages")


@router.post("", response_model=Message)
async def create_message(
    body: MessagesRequest, request: Request, serving: ServingDep
) -> Response | Message:
    await serving.select(body.model)
    # NOTE: in a worker thread: pictures are decoded with Pillow (see routes.py).
    converted = await asyncio.to_thread(to_anthropic_plan, body)
    prepared = await serving.prepare(converted.generations)
    answer = AnthropicAnswer(
        message_id=f"msg_{uuid.uuid4().hex}",
        model=body.model,
        input_tokens=prepared[0].prompt_tokens,
        options=converted.options,
    )
    return await serving.respond(request, prepared, answer, stream=body.stream)


@router.post("/count_tokens", response_model=TokenCount)
async def count_tokens(body: CountTokensRequest, serving: ServingDep) -> TokenCount:
    await serving.select(body.model)
    converted = await asyncio.to_thread(to_anthropic_plan, body)
    prepared = await serving.prepare(converted.generations)
    count = prepared[0].prompt_tokens
    prepared.clear()  # NOTE: dropping the unstarted generation gives its place back
    return TokenCount(input_tokens=count)
