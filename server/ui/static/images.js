// Pictures for a model that takes images: attach (button), paste, or drop. Enabled only when the
// server's model card says so; otherwise the button stays hidden and pasted or dropped files are
// ignored. Pictures are scaled down to MAX_SIDE pixels first: the model sees small images anyway,
// and the request must stay under the server's body limit.

import { $ } from "./view.js";

const MAX_SIDE = 1024;

export class Attachments {
  constructor(onError) {
    this.onError = onError;
    this.enabled = false;
    this.urls = [];
    $("attach").addEventListener("click", () => $("attach-file").click());
    $("attach-file").addEventListener("change", (event) => {
      this.add(event.target.files);
      event.target.value = "";
    });
    $("prompt").addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files ?? [])].filter(isImage);
      if (this.enabled && files.length) {
        event.preventDefault();
        this.add(files);
      }
    });
    // A file dropped anywhere would otherwise make the browser leave the page to show it.
    document.addEventListener("dragover", (event) => event.preventDefault());
    document.addEventListener("drop", (event) => {
      event.preventDefault();
      if (this.enabled) this.add(event.dataTransfer.files);
    });
  }

  enable(on) {
    this.enabled = on;
    $("attach").hidden = !on;
    if (!on) this.clear();
  }

  async add(files) {
    for (const file of [...files].filter(isImage)) {
      try {
        this.urls.push(await scaledDataURL(file));
      } catch (error) {
        this.onError(`Cannot read ${file.name}: ${error.message}`);
      }
    }
    this.draw();
  }

  /** The pictures as OpenAI content parts, and forget them. */
  take() {
    const parts = this.urls.map((url) => ({ type: "image_url", image_url: { url } }));
    this.clear();
    return parts;
  }

  clear() {
    this.urls = [];
    this.draw();
  }

  draw() {
    const box = $("attachments");
    box.hidden = this.urls.length === 0;
    box.replaceChildren(
      ...this.urls.map((url, index) => {
        const item = document.createElement("div");
        item.className = "attachment";
        const picture = document.createElement("img");
        picture.src = url;
        picture.alt = `picture ${index + 1}`;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "✕";
        remove.setAttribute("aria-label", `Remove picture ${index + 1}`);
        remove.addEventListener("click", () => {
          this.urls.splice(index, 1);
          this.draw();
        });
        item.append(picture, remove);
        return item;
      }),
    );
  }
}

function isImage(file) {
  return file.type.startsWith("image/");
}

async function scaledDataURL(file) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return canvas.toDataURL("image/jpeg", 0.9);
}
