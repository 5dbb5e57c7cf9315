// Drawing the page's state: the conversation list, the messages, the model line, notices.
// Only textContent and DOM nodes here; the one HTML string is renderMarkdown's sanitised output.

import { renderMarkdown } from "./render.js";

export const $ = (id) => document.getElementById(id);

export function showNotice(text) {
  const notice = $("notice");
  notice.textContent = text ?? "";
  notice.hidden = !text;
}

export function drawConversationList(conversations, currentId, onSelect) {
  const list = $("conversations");
  list.replaceChildren(
    ...[...conversations]
      .sort((a, b) => b.updated - a.updated)
      .map((conversation) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "conversation";
        button.textContent = conversation.title;
        button.dataset.id = conversation.id;
        if (conversation.id === currentId) button.setAttribute("aria-current", "true");
        button.addEventListener("click", () => onSelect(conversation.id));
        item.append(button);
        return item;
      }),
  );
}

function textOf(content) {
  if (typeof content === "string") return content;
  return content
    .filter((part) => part.type === "text")
    .map((part) => part.text)
    .join("\n");
}

function usageLine(usage, seconds) {
  if (!usage) return "";
  const parts = [`${usage.prompt_tokens} prompt tokens`];
  const cached = usage.prompt_tokens_details?.cached_tokens;
  if (cached) parts[0] += ` (${cached} cached)`;
  parts.push(`${usage.completion_tokens} completion tokens`);
  // A rate measured over a blink (a reply that came all at once) would be noise.
  if (seconds >= 0.25) parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tokens/s`);
  return parts.join(" · ");
}

/** A message's element; an assistant's body is filled by renderMarkdown or a StreamingView. */
export function messageElement(message) {
  const article = document.createElement("article");
  article.className = `message ${message.role}`;
  const body = document.createElement("div");
  body.className = "body";
  article.append(body);
  if (message.role === "user") {
    body.textContent = textOf(message.content);
    if (Array.isArray(message.content)) {
      for (const part of message.content.filter((p) => p.type === "image_url")) {
        const picture = document.createElement("img");
        picture.src = part.image_url.url;
        picture.alt = "attached picture";
        picture.className = "attached";
        article.append(picture);
      }
    }
  } else {
    renderMarkdown(body, textOf(message.content));
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  article.append(meta);
  drawMeta(article, message);
  return article;
}

export function drawMeta(article, message) {
  const meta = article.querySelector(".meta");
  const notes = [];
  if (message.stopped) notes.push("stopped");
  if (message.usage) notes.push(usageLine(message.usage, message.seconds));
  meta.textContent = notes.join(" · ");
  let error = article.querySelector(".error");
  if (message.error && !error) {
    error = document.createElement("div");
    error.className = "error";
    error.setAttribute("role", "alert");
    article.insertBefore(error, meta);
  }
  if (error) error.textContent = message.error ?? "";
}

export function drawMessages(conversation) {
  const container = $("messages");
  container.replaceChildren(...conversation.messages.map(messageElement));
  if (!conversation.messages.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Ask anything. The whole conversation is sent with each message.";
    container.append(empty);
  }
  container.scrollTop = container.scrollHeight;
}

/** The model picker: every installed model, with whether it is in memory now. */
export function drawPicker(cards, chosen) {
  const picker = $("model-picker");
  picker.replaceChildren(
    ...cards.map((card) => {
      const option = document.createElement("option");
      option.value = card.id;
      option.textContent = card.state === "loaded" ? card.id : `${card.id} (${card.state})`;
      return option;
    }),
  );
  picker.value = chosen;
  picker.hidden = cards.length < 2;
}

export function drawModel(card) {
  const facts = [card.id];
  if (card.parameters) facts.push(`${card.parameters} parameters`);
  if (card.quantization) facts.push(card.quantization);
  if (card.context_length) facts.push(`context ${card.context_length} tokens`);
  else facts.push(card.state === "unloaded" ? "not loaded: sending loads it" : "loading the model…");
  if (card.device) facts.push(`on the ${card.device.toUpperCase()}`);
  $("model-info").textContent = facts.join(" · ");
}

/** Keep the newest text in view, unless the user scrolled up to read. */
export function followBottom(container, wasAtBottom) {
  if (wasAtBottom) container.scrollTop = container.scrollHeight;
}

export function isAtBottom(container) {
  return container.scrollHeight - container.scrollTop - container.clientHeight < 40;
}
