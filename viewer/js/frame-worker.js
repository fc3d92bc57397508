// Fetches raw frames off the main thread: an 18 MB frame arrives in a few hundred milliseconds of
// reading that would otherwise hold up everything else on the page (metadata, the preview, input).
// Each frame comes back in an ArrayBuffer of its own (transferred, not copied), aligned for 16-bit
// views. Messages: {id, url, token, accept} -> {id, frames: [ArrayBuffer]} | {id, error}; {cancel: id}.

import { parseMultipart } from "./dicom.js";

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
    const bytes = new Uint8Array(await response.arrayBuffer());
    const parts = parseMultipart(bytes, response.headers.get("Content-Type") || "");
    const frames = parts.map((part) => part.body.slice().buffer);
    self.postMessage({ id, frames }, frames);
  } catch (exc) {
    if (!(exc && exc.name === "AbortError")) self.postMessage({ id, error: { message: String(exc && exc.message ? exc.message : exc) } });
  } finally {
    running.delete(id);
  }
};
