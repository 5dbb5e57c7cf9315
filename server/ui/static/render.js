// Model output -> safe HTML: Markdown (marked), sanitised (DOMPurify), code highlighted
// (highlight.js), a copy button on each code block.
//
// Model output is untrusted. Three layers: raw HTML in the Markdown is shown as text (never
// parsed); the HTML marked produces is sanitised against a short list of tags and attributes
// (no img, no style, no event handlers; links only with safe schemes); and the page's
// Content-Security-Policy forbids inline scripts and other origins anyway.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import hljs from "./vendor/highlight.min.js";

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const markdown = new Marked({
  gfm: true,
  breaks: true, // chat models end lines with a single newline and mean it
  renderer: {
    html: ({ text }) => escapeHtml(text),
    // A picture in a reply would be fetched from wherever the model points: show its alt text.
    image: ({ text }) => escapeHtml(text),
  },
});

const SANITIZE = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "start", "align"],
  ALLOW_DATA_ATTR: false,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

function highlight(code, guess) {
  const language = [...code.classList].find((c) => c.startsWith("language-"))?.slice(9);
  const known = language && hljs.getLanguage(language);
  if (!known && !guess) return;
  const text = code.textContent;
  const result = known
    ? hljs.highlight(text, { language, ignoreIllegals: true })
    : hljs.highlightAuto(text);
  code.innerHTML = result.value; // highlight.js escapes the text it wraps in spans
  code.classList.add("hljs");
}

/**
 * Render Markdown `text` into `element`. `final` is false while a reply streams: then only code
 * blocks that name their language are highlighted (guessing one tries every language, too slow
 * to do on every frame).
 */
export function renderMarkdown(element, text, final = true) {
  element.innerHTML = DOMPurify.sanitize(markdown.parse(text), SANITIZE);
  for (const code of element.querySelectorAll("pre > code")) {
    highlight(code, final);
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    code.parentElement.prepend(copy);
  }
}

/**
 * A reply being streamed into `element`: text arrives token by token, the Markdown is rendered
 * at most once per animation frame (rendering it per token is what makes long replies lag).
 */
export class StreamingView {
  constructor(element, onRendered = () => {}) {
    this.element = element;
    this.onRendered = onRendered;
    this.text = "";
    this.frame = 0;
  }

  append(piece) {
    this.text += piece;
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        renderMarkdown(this.element, this.text, false);
        this.onRendered();
      });
    }
  }

  finish() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    renderMarkdown(this.element, this.text, true);
    this.onRendered();
  }
}

/** Copy text to the clipboard; the Clipboard API exists only on https and localhost. */
export async function copyText(text) {
  if (navigator.clipboard?.writeText) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused to copy");
}
