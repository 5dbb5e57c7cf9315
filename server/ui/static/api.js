// The page's only way to the server: its own OpenAI-compatible API, same origin.

/** An error answer from the API: its HTTP status and OpenAI error message. */
export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(apiKey, extra = {}) {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    message = body.error?.message ?? message;
    code = body.error?.code ?? null;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

async function getJSON(path, apiKey) {
  const response = await fetch(path, { headers: headers(apiKey) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** Every installed model's card, the one picked at start first (/v1/models). */
export async function modelCards(apiKey) {
  const list = await getJSON("/v1/models", apiKey);
  if (!list.data?.length) throw new ApiError(0, "the server lists no model");
  return list.data;
}

/** True once the model is loaded (/health answers 200; it needs no key). */
export async function isReady() {
  const response = await fetch("/health");
  return response.ok;
}

/**
 * Stream a chat completion: yields each parsed `data:` chunk, ends at `[DONE]`. Aborting
 * `signal` closes the connection, which makes the server end the generation and free the
 * sequence. An error event in the stream, or its end without `[DONE]`, is thrown as ApiError.
 */
export async function* streamChat(body, apiKey, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(apiKey, { "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError(0, "The connection closed before the reply ended.");
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") {
        await reader.cancel();
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(200, chunk.error.message, chunk.error.code);
      yield chunk;
    }
  }
}
