// Conversations and settings, kept in this browser's localStorage under versioned keys.
//
// A conversation: {id, title, created, updated, messages: [{role, content, usage?, seconds?,
// stopped?, error?}]}, where content is a string or OpenAI content parts (text and image_url). Pictures
// are kept in saved history only up to MAX_SAVED_IMAGE_CHARS each (a data: URL's length):
// localStorage holds about 5 MB per origin, and a few photos would fill it.

export const STORAGE_KEY = "gemma-serve.conversations.v1";
export const SETTINGS_KEY = "gemma-serve.settings.v1";
export const EXPORT_FORMAT = "gemma-serve.conversations";
export const EXPORT_VERSION = 1;
export const MAX_SAVED_IMAGE_CHARS = 256 * 1024;
export const DEFAULT_TITLE = "New chat";

/** Saving failed because the browser's storage quota is used up; nothing already saved is lost. */
export class StorageFull extends Error {}

// crypto.randomUUID exists only on https or localhost; a LAN address over http is neither.
function newId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function newConversation() {
  const now = Date.now();
  return { id: newId(), title: DEFAULT_TITLE, created: now, updated: now, messages: [] };
}

/** {conversations, currentId, problem}: problem is a message when the saved data was unreadable
 * (kept aside under a ".unreadable" key, never overwritten silently). */
export function loadConversations() {
  const raw = localStorage.getItem(STORAGE_KEY);
  if (raw === null) return { conversations: [], currentId: null, problem: null };
  try {
    const saved = JSON.parse(raw);
    return {
      conversations: validConversations(saved.conversations),
      currentId: typeof saved.currentId === "string" ? saved.currentId : null,
      problem: null,
    };
  } catch (error) {
    localStorage.setItem(`${STORAGE_KEY}.unreadable`, raw);
    return {
      conversations: [],
      currentId: null,
      problem: `Saved conversations could not be read (${error.message}); the data is kept under "${STORAGE_KEY}.unreadable".`,
    };
  }
}

/** Save everything; throws StorageFull when the quota is used up. */
export function saveConversations(conversations, currentId) {
  const data = JSON.stringify({
    version: EXPORT_VERSION,
    currentId,
    conversations: conversations.map(withCappedImages),
  });
  writeItem(STORAGE_KEY, data);
}

export function loadSettings() {
  try {
    return { ...JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}") };
  } catch {
    return {};
  }
}

export function saveSettings(settings) {
  writeItem(SETTINGS_KEY, JSON.stringify(settings));
}

function writeItem(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (error) {
    if (error?.name === "QuotaExceededError" || error?.code === 22) throw new StorageFull();
    throw error;
  }
}

function withCappedImages(conversation) {
  const messages = conversation.messages.map((message) => {
    if (!Array.isArray(message.content)) return message;
    const content = message.content.map((part) =>
      part.type === "image_url" && part.image_url.url.length > MAX_SAVED_IMAGE_CHARS
        ? { type: "text", text: "[picture not saved: too large for the browser's storage]" }
        : part,
    );
    return { ...message, content };
  });
  return { ...conversation, messages };
}

/** The export file's text: every conversation, as saved (pictures capped). */
export function exportText(conversations) {
  return JSON.stringify(
    {
      format: EXPORT_FORMAT,
      version: EXPORT_VERSION,
      exported: new Date().toISOString(),
      conversations: conversations.map(withCappedImages),
    },
    null,
    2,
  );
}

/** The conversations in an export file; throws an Error saying what is wrong with it. */
export function parseExport(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new Error(`not JSON (${error.message})`);
  }
  if (data?.format !== EXPORT_FORMAT || data.version !== EXPORT_VERSION) {
    throw new Error(`not a gemma-serve export (format "${EXPORT_FORMAT}", version ${EXPORT_VERSION})`);
  }
  const conversations = validConversations(data.conversations);
  if (conversations.length !== (data.conversations?.length ?? 0)) {
    throw new Error("some conversations in the file are malformed");
  }
  return conversations;
}

// Only known fields are copied, so nothing unexpected from a file reaches the page's state.
function validConversations(list) {
  if (!Array.isArray(list)) return [];
  return list.filter(isConversation).map((c) => ({
    id: c.id,
    title: c.title,
    created: c.created,
    updated: c.updated,
    messages: c.messages.map(copyMessage),
    ...(typeof c.model === "string" ? { model: c.model } : {}),
  }));
}

function isConversation(c) {
  return (
    typeof c?.id === "string" &&
    typeof c.title === "string" &&
    Number.isFinite(c.created) &&
    Number.isFinite(c.updated) &&
    Array.isArray(c.messages) &&
    c.messages.every(isMessage)
  );
}

function isMessage(m) {
  if (!["user", "assistant"].includes(m?.role)) return false;
  if (typeof m.content === "string") return true;
  return (
    Array.isArray(m.content) &&
    m.content.every(
      (p) =>
        (p?.type === "text" && typeof p.text === "string") ||
        (p?.type === "image_url" && typeof p.image_url?.url === "string" && p.image_url.url.startsWith("data:image/")),
    )
  );
}

function copyMessage(m) {
  const message = {
    role: m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((p) => ({ ...p })),
  };
  if (m.usage && typeof m.usage === "object") message.usage = { ...m.usage };
  if (Number.isFinite(m.seconds)) message.seconds = m.seconds;
  if (m.stopped === true) message.stopped = true;
  if (typeof m.error === "string") message.error = m.error;
  return message;
}
