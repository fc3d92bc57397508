// Fetches raw frames off the main thread: an 18 MB frame arrives in a few hundred milliseconds of
// reading that would otherwise hold up everything else on the page (metadata, the preview, input).
// The response is read as a stream straight into one ArrayBuffer per frame (MultipartReader: the
// part's Content-Length sizes it), which is transferred, not copied, and aligned for 16-bit views.
// Messages: {id, url, token, accept} -> {id, frames: [ArrayBuffer]} | {id, error}; {cancel: id}.

import { MultipartReader } from "./dicom.js";

const running = new Map();

self.onmessage = async (event) => {
  const { id, url, token, accept, cancel } = event.data;
  if (cancel !== undefined) {
    running.get(cancel)?.abort();
    return;
  }
  const controller = new AbortController();
  running.set(id, controller);
  try {
    let response;
    try {
      response = await fetch(url, { headers: { Authorization: `Bearer ${token}`, Accept: accept }, cache: "no-store", signal: controller.signal });
    } catch (exc) {
      if (exc && exc.name === "AbortError") throw exc;
      self.postMessage({ id, error: { down: true } });
      return;
    }
    if (!response.ok) {
      const detail = await response.text().catch(() => "");
      self.postMessage({ id, error: { status: response.status, body: detail, retryAfter: response.headers.get("Retry-After") } });
      return;
    }
    const parts = new MultipartReader(response.headers.get("Content-Type") || "");
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
    }
    const frames = parts.finish().map((part) => (part.body.byteLength === part.body.buffer.byteLength ? part.body.buffer : part.body.slice().buffer));
    self.postMessage({ id, frames }, frames);
  } catch (exc) {
    if (!(exc && exc.name === "AbortError")) self.postMessage({ id, error: { message: String(exc && exc.message ? exc.message : exc) } });
  } finally {
    running.delete(id);
  }
};
