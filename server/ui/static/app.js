// The chat page's controller: conversations, sending and streaming, settings, import/export.

import { ApiError, isReady, modelCards, streamChat } from "./api.js";
import { Attachments } from "./images.js";
import { copyText, StreamingView } from "./render.js";
import * as store from "./store.js";
import {
  $,
  drawConversationList,
  drawMessages,
  drawMeta,
  drawModel,
  drawPicker,
  isAtBottom,
  showNotice,
} from "./view.js";

const state = {
  conversations: [],
  currentId: null,
  settings: store.loadSettings(),
  model: null, // the current conversation's model's card, from /v1/models
  cards: [], // every installed model's card
  streaming: null, // {controller, conversation, reply} while a reply streams
  storageFull: false,
};
const attachments = new Attachments(showNotice);

const current = () => state.conversations.find((c) => c.id === state.currentId);
const newest = () => [...state.conversations].sort((a, b) => b.updated - a.updated)[0];

function save() {
  try {
    store.saveConversations(state.conversations, state.currentId);
    if (state.storageFull) showNotice(null);
    state.storageFull = false;
  } catch (error) {
    if (!(error instanceof store.StorageFull)) throw error;
    state.storageFull = true;
    showNotice(
      "The browser's storage is full: your latest messages stay on this page but are not saved. " +
        "Export your conversations, then delete old ones.",
    );
  }
}

function drawAll() {
  drawConversationList(state.conversations, state.currentId, select);
  $("title").value = current().title;
  drawMessages(current());
}

function select(id) {
  if (state.streaming) return;
  state.currentId = id;
  save();
  drawAll();
  showModel();
  document.body.classList.remove("sidebar-open");
}

/** The model a conversation uses: its own pick if still installed, else the first listed. */
function modelOf(conversation) {
  return state.cards.find((card) => card.id === conversation.model) ?? state.cards[0] ?? null;
}

function showModel() {
  state.model = modelOf(current());
  if (!state.model) return;
  drawPicker(state.cards, state.model.id);
  drawModel(state.model);
  attachments.enable(state.model.capabilities?.vision === true);
}

function pickModel() {
  const conversation = current();
  conversation.model = $("model-picker").value;
  save();
  showModel();
}

function newChat() {
  if (state.streaming) return;
  if (current().messages.length) {
    const conversation = store.newConversation();
    if (current().model) conversation.model = current().model; // the model picked last
    state.conversations.push(conversation);
    state.currentId = conversation.id;
    save();
    drawAll();
    showModel();
  }
  document.body.classList.remove("sidebar-open");
  $("prompt").focus();
}

function deleteChat() {
  if (state.streaming) return;
  const doomed = current();
  if (doomed.messages.length && !confirm(`Delete the conversation "${doomed.title}"?`)) return;
  state.conversations = state.conversations.filter((c) => c !== doomed);
  if (!state.conversations.length) state.conversations.push(store.newConversation());
  state.currentId = newest().id;
  save();
  drawAll();
  showModel();
}

function rename() {
  const conversation = current();
  const title = $("title").value.trim() || store.DEFAULT_TITLE;
  $("title").value = title;
  if (title === conversation.title) return;
  conversation.title = title;
  save();
  drawConversationList(state.conversations, state.currentId, select);
}

async function refreshModel() {
  try {
    state.cards = await modelCards(state.settings.api_key);
    showModel();
    if (!state.model.context_length && state.model.state !== "unloaded") {
      setTimeout(waitUntilLoaded, 2000);
    }
  } catch (error) {
    state.model = null;
    attachments.enable(false);
    $("model-info").textContent = explain(error);
  }
}

async function waitUntilLoaded() {
  try {
    if (await isReady()) return refreshModel();
  } catch {
    // the server is restarting: keep asking
  }
  setTimeout(waitUntilLoaded, 2000);
}

function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    return state.settings.api_key
      ? `The server refused the API key (${error.message}): check it in Settings.`
      : "This server needs an API key: open Settings and enter it.";
  }
  if (error instanceof ApiError) return error.message;
  return `Cannot reach the server (${error.message}).`;
}

/** What is sent each turn: the system prompt, then the whole conversation so far. */
function requestBody(conversation) {
  const messages = conversation.messages
    .filter((m) => !m.error && (m.role === "user" || m.content))
    .map((m) => ({ role: m.role, content: m.content }));
  const { system, temperature, top_p, max_tokens } = state.settings;
  if (system) messages.unshift({ role: "system", content: system });
  const body = { model: state.model.id, messages };
  if (temperature !== undefined) body.temperature = temperature;
  if (top_p !== undefined) body.top_p = top_p;
  if (max_tokens !== undefined) body.max_tokens = max_tokens;
  return body;
}

async function send() {
  const text = $("prompt").value.trim();
  if (state.streaming || (!text && !attachments.urls.length)) return;
  if (!state.model) await refreshModel();
  if (!state.model) return;
  const conversation = current();
  const pictures = attachments.take();
  conversation.messages.push({ role: "user", content: pictures.length ? [{ type: "text", text }, ...pictures] : text });
  if (conversation.title === store.DEFAULT_TITLE) {
    conversation.title = text.slice(0, 60) || "Picture";
  }
  const body = requestBody(conversation);
  const reply = { role: "assistant", content: "" };
  conversation.messages.push(reply);
  conversation.updated = Date.now();
  $("prompt").value = "";
  save();
  drawAll();
  await stream(conversation, reply, body, $("messages").lastElementChild);
}

async function stream(conversation, reply, body, article) {
  const container = $("messages");
  let stick = true;
  const onScroll = () => (stick = isAtBottom(container));
  container.addEventListener("scroll", onScroll);
  const view = new StreamingView(article.querySelector(".body"), () => {
    if (stick) container.scrollTop = container.scrollHeight;
  });
  const controller = new AbortController();
  state.streaming = { controller, conversation, reply };
  setBusy(true);
  $("stats").textContent = "Waiting for the model…";
  let first = null;
  let pieces = 0;
  try {
    for await (const chunk of streamChat(body, state.settings.api_key, controller.signal)) {
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        first ??= performance.now();
        pieces += 1;
        reply.content += delta;
        view.append(delta);
        const seconds = (performance.now() - first) / 1000;
        const rate = seconds > 0.2 ? `${((pieces - 1) / seconds).toFixed(1)} tokens/s` : "…";
        $("stats").textContent = `${pieces} tokens · ${rate}`;
      }
      if (chunk.usage) reply.usage = chunk.usage;
    }
  } catch (error) {
    if (error.name === "AbortError") reply.stopped = true;
    else reply.error = explain(error);
  } finally {
    container.removeEventListener("scroll", onScroll);
    view.finish();
    if (first !== null) reply.seconds = (performance.now() - first) / 1000;
    state.streaming = null;
    setBusy(false);
    refreshModel(); // the model is loaded now (and another may have been unloaded for it)
    conversation.updated = Date.now();
    save();
    drawMeta(article, reply);
    drawConversationList(state.conversations, state.currentId, select);
    $("stats").textContent = ""; // the usage is now under the reply
  }
}

function stop() {
  state.streaming?.controller.abort();
}

function setBusy(busy) {
  document.body.classList.toggle("busy", busy);
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  for (const id of ["new-chat", "delete-chat", "import-file", "title", "model-picker"]) {
    $(id).disabled = busy;
  }
}

function openSettings() {
  const form = $("settings-form");
  for (const name of ["system", "temperature", "top_p", "max_tokens", "api_key"]) {
    form.elements[name].value = state.settings[name] ?? "";
  }
  // Escape closes the dialog; browsers that keep the last returnValue then would save again.
  $("settings").returnValue = "";
  $("settings").showModal();
}

function closeSettings() {
  if ($("settings").returnValue !== "save") return;
  const fields = $("settings-form").elements;
  const number = (name) => (fields[name].value === "" ? undefined : Number(fields[name].value));
  const keyChanged = fields.api_key.value !== (state.settings.api_key ?? "");
  state.settings = {
    system: fields.system.value.trim() || undefined,
    temperature: number("temperature"),
    top_p: number("top_p"),
    max_tokens: number("max_tokens"),
    api_key: fields.api_key.value.trim() || undefined,
  };
  try {
    store.saveSettings(state.settings);
  } catch (error) {
    if (!(error instanceof store.StorageFull)) throw error;
    showNotice("The browser's storage is full: the settings apply to this page only.");
  }
  if (keyChanged || !state.model) refreshModel();
}

function exportAll() {
  const blob = new Blob([store.exportText(state.conversations)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `gemma-serve-chats-${new Date().toISOString().slice(0, 10)}.json`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

async function importFile(file) {
  try {
    const imported = store.parseExport(await file.text());
    for (const conversation of imported) {
      const index = state.conversations.findIndex((c) => c.id === conversation.id);
      if (index >= 0) state.conversations[index] = conversation;
      else state.conversations.push(conversation);
    }
    if (imported.length) state.currentId = imported[0].id;
    save();
    drawAll();
    if (!state.storageFull) showNotice(null);
  } catch (error) {
    showNotice(`Cannot import ${file.name}: ${error.message}`);
  }
}

async function copyCode(button) {
  try {
    await copyText(button.parentElement.querySelector("code").textContent);
    button.textContent = "Copied";
  } catch (error) {
    button.textContent = "Copy failed";
  }
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

function start() {
  const loaded = store.loadConversations();
  state.conversations = loaded.conversations;
  state.currentId = loaded.currentId;
  if (!state.conversations.length) state.conversations.push(store.newConversation());
  if (!current()) state.currentId = newest().id;
  drawAll();
  if (loaded.problem) showNotice(loaded.problem);

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.streaming && !$("settings").open) stop();
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("delete-chat").addEventListener("click", deleteChat);
  $("title").addEventListener("change", rename);
  $("model-picker").addEventListener("change", pickModel);
  $("open-settings").addEventListener("click", openSettings);
  $("settings").addEventListener("close", closeSettings);
  $("export").addEventListener("click", exportAll);
  $("import-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    event.target.value = "";
    if (file) importFile(file);
  });
  $("open-sidebar").addEventListener("click", () => document.body.classList.add("sidebar-open"));
  $("close-sidebar").addEventListener("click", () => document.body.classList.remove("sidebar-open"));
  $("messages").addEventListener("click", (event) => {
    if (event.target.matches("button.copy-code")) copyCode(event.target);
  });
  // Leaving mid-reply: keep what has arrived.
  window.addEventListener("pagehide", () => {
    if (!state.streaming) return;
    state.streaming.reply.stopped = true;
    save();
  });

  refreshModel();
  $("prompt").focus();
}

start();
