// The viewer's only way to the archive: DICOMweb under /dicom-web and the REST API under /api,
// each request with the session's bearer token. Failures become an ApiError whose `kind` the
// views turn into something a user can act on.

import { MultipartReader } from "./dicom.js";

const TOKEN_KEY = "ndt-viewer.token";
const USER_KEY = "ndt-viewer.user";

export const DICOMWEB = "../dicom-web";
export const REST = "../api";

/** kind: "invalid" (unknown or revoked token), "expired", "forbidden", "notfound", "throttled",
 * "down" (no answer at all), "server" (5xx), "bad" (other 4xx). */
export class ApiError extends Error {
  constructor(kind, message, status = 0, detail = "") {
    super(message);
    this.kind = kind;
    this.status = status;
    this.detail = detail;
  }
}

// -- the session (sessionStorage: gone when the browser tab closes) -----------------------------

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function user() {
  try {
    return JSON.parse(sessionStorage.getItem(USER_KEY) || "null");
  } catch {
    return null;
  }
}

export function can(permission) {
  const me = user();
  return Boolean(me && Array.isArray(me.permissions) && me.permissions.includes(permission));
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
}

const listeners = new Set();
/** `fn(error)` is called for every 401 (the session ended) and every request the server did not answer. */
export function onSessionProblem(fn) {
  listeners.add(fn);
}

async function errorOf(response) {
  return errorFrom(response.status, await response.text().catch(() => ""), response.headers.get("Retry-After"));
}

/** The ApiError of an HTTP answer (status, body text as the server sent it). */
export function errorFrom(s, text, retryAfter = null) {
  let detail = "";
  try {
    const body = JSON.parse(text);
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? "");
  } catch {
    detail = String(text || "").slice(0, 300);
  }
  if (s === 401) {
    if (/^the API token expired/i.test(detail)) {
      return new ApiError("expired", "Your token expired: ask an administrator for a new one.", s, detail);
    }
    return new ApiError("invalid", "This token is not valid.", s, detail);
  }
  if (s === 403) return new ApiError("forbidden", "Your role does not allow this.", s, detail);
  if (s === 404) return new ApiError("notfound", "Not found in the archive.", s, detail);
  if (s === 429) {
    const wait = retryAfter;
    return new ApiError("throttled", `Too many failed sign-ins from this computer: try again in ${wait || "a minute"} s.`, s, detail);
  }
  if (s >= 500) return new ApiError("server", `The archive could not answer (${s}): ${detail || "server error"}.`, s, detail);
  return new ApiError("bad", detail || `The archive refused the request (${s}).`, s, detail);
}

/**
 * fetch with the bearer token; throws ApiError. `opts.token` overrides the session's (sign-in);
 * `opts.quiet` keeps 401s from ending the session (sign-in handles its own).
 */
export async function request(url, opts = {}) {
  const headers = new Headers(opts.headers || {});
  const bearer = opts.token ?? token();
  if (bearer) headers.set("Authorization", `Bearer ${bearer}`);
  let response;
  try {
    response = await fetch(url, { headers, signal: opts.signal, cache: "no-store" });
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    const error = new ApiError("down", "The archive does not answer.");
    listeners.forEach((fn) => fn(error));
    throw error;
  }
  if (!response.ok) {
    const error = await errorOf(response);
    // Given up meanwhile (the view was left: another request of it ended the session, say): its
    // body is gone, and the answer concerns nobody.
    if (opts.signal && opts.signal.aborted) throw new DOMException("aborted", "AbortError");
    if (!opts.quiet && (error.kind === "invalid" || error.kind === "expired")) listeners.forEach((fn) => fn(error));
    throw error;
  }
  return response;
}

export async function json(url, opts = {}) {
  const response = await request(url, { ...opts, headers: { Accept: "application/json", ...(opts.headers || {}) } });
  return { body: await response.json(), response };
}

/** Sign in: who the token belongs to. Keeps token and user in sessionStorage on success. */
export async function signIn(candidate) {
  const { body } = await json(`${REST}/me`, { token: candidate, quiet: true });
  sessionStorage.setItem(TOKEN_KEY, candidate);
  sessionStorage.setItem(USER_KEY, JSON.stringify(body));
  return body;
}

// -- REST ------------------------------------------------------------------------------------

export async function part(partId, opts) {
  return (await json(`${REST}/parts/${encodeURIComponent(partId)}`, opts)).body;
}

/** Every decision on every inspection of a part, oldest first. */
export async function decisions(partId, opts) {
  const response = await request(`${REST}/parts/${encodeURIComponent(partId)}/decisions`, opts);
  return response.json();
}

/** The evidence package of a part (a signed ZIP): for roles with the audit permission. */
export async function evidence(partId, opts) {
  return request(`${REST}/parts/${encodeURIComponent(partId)}/evidence`, opts);
}

// -- DICOMweb ------------------------------------------------------------------------------------

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) q.append(k, String(one));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** QIDO-RS; returns {results, more} where `more` says the server has results beyond the limit. */
export async function qido(path, params = {}, opts) {
  const { body, response } = await json(`${DICOMWEB}${path}${query(params)}`, {
    ...opts,
    headers: { Accept: "application/dicom+json" },
  });
  const warning = response.headers.get("Warning") || "";
  return { results: Array.isArray(body) ? body : [], more: /exceeded the limit/i.test(warning) };
}

export function instancePath(ref) {
  return `/studies/${ref.study}/series/${ref.series}/instances/${ref.instance}`;
}

export async function metadata(ref, opts = {}) {
  const url = `${DICOMWEB}${instancePath(ref)}/metadata`;
  const asked = takeEarly(url, opts);
  const body = (asked && (await asked)) || (await json(url, { ...opts, headers: { Accept: "application/dicom+json" } })).body;
  return body[0];
}

const FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"';
let worker = null;
let workerFailed = false;
let nextId = 1;
const waiting = new Map();

function frameWorker() {
  if (!worker && !workerFailed) {
    try {
      worker = new Worker(new URL("./frame-worker.js", import.meta.url), { type: "module" });
      worker.onmessage = (event) => {
        const { id } = event.data;
        const pending = waiting.get(id);
        waiting.delete(id);
        if (pending) pending(event.data);
      };
    } catch {
      workerFailed = true;
    }
  }
  return worker;
}

/** Start the frame worker (its module loads while the first frame comes; later frames use it). */
export function warmFrames() {
  frameWorker();
}

/** Frames through the worker: [Uint8Array], or the ApiError the page would have had. */
function framesInWorker(url, signal) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const abort = () => {
      waiting.delete(id);
      worker.postMessage({ cancel: id });
      reject(new DOMException("aborted", "AbortError"));
    };
    if (signal) {
      if (signal.aborted) return abort();
      signal.addEventListener("abort", abort, { once: true });
    }
    waiting.set(id, (answer) => {
      if (signal) signal.removeEventListener("abort", abort);
      if (answer.frames) return resolve(answer.frames.map((buffer) => new Uint8Array(buffer)));
      const e = answer.error || {};
      let error;
      if (e.down) error = new ApiError("down", "The archive does not answer.");
      else if (e.status) error = errorFrom(e.status, e.body, e.retryAfter);
      else error = new ApiError("server", e.message || "the frame could not be read");
      if (error.kind === "down" || error.kind === "invalid" || error.kind === "expired") listeners.forEach((fn) => fn(error));
      reject(error);
    });
    worker.postMessage({ id, url: new URL(url, location.href).href, token: token(), accept: FRAME_ACCEPT });
  });
}

/** Frames read on the page, as the worker reads them (the body streamed into one buffer a frame). */
async function framesOnPage(url, opts) {
  const response = await request(url, { signal: opts.signal, headers: { Accept: FRAME_ACCEPT } });
  return readFrames(response, opts.progress);
}

async function readFrames(response, progress) {
  const parts = new MultipartReader(response.headers.get("Content-Type") || "");
  const reader = response.body.getReader();
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (exc) {
      if (exc && exc.name === "AbortError") throw exc;
      throw new ApiError("server", `the frame could not be read: ${exc && exc.message ? exc.message : exc}`);
    }
    if (chunk.done) break;
    parts.push(chunk.value);
    if (progress) progress({ received: parts.received, expected: parts.expected, at: performance.now(), partial: parts.partial });
  }
  try {
    return parts.finish().map((p) => p.body);
  } catch (exc) {
    throw new ApiError("server", exc.message);
  }
}

/** Native pixels of frames (1-based numbers) in one request: [Uint8Array] in the order asked.
 * Fetched and parsed in a worker (the page stays responsive while many frames come), or on the
 * page when `opts.onPage`: a frame wanted at once (the worker takes longer to start, its module and
 * dicom.js fetched first, than reading one frame costs the page), or when workers fail. On the
 * page, `opts.progress({received, expected, at, partial})`, when given, is told how the body comes
 * in: `expected`, bytes up to the end of the part being read (0 before its headers); `at`,
 * performance.now(); `partial`, the bytes of that part in so far. */
export async function frames(ref, numbers, opts = {}) {
  const url = `${DICOMWEB}${instancePath(ref)}/frames/${numbers.join(",")}`;
  const asked = takeEarly(url, opts);
  let bodies = asked && (await asked);
  if (!bodies) bodies = !opts.onPage && frameWorker() ? await framesInWorker(url, opts.signal) : await framesOnPage(url, opts);
  if (bodies.length !== numbers.length) throw new ApiError("server", `asked for ${numbers.length} frames, got ${bodies.length}`);
  return bodies;
}

/** A thumbnail or rendered image as an object URL (an <img> cannot send the bearer token). */
export async function imageUrl(path, params = {}, opts) {
  const response = await request(`${DICOMWEB}${path}${query(params)}`, { ...opts, headers: { Accept: "image/jpeg, image/png" } });
  return URL.createObjectURL(await response.blob());
}

// -- the first image, asked for before the modules are loaded -------------------------------------

const early = new Map(); // URL -> {answer: Promise, samples: [progress], listener, controller}
const EARLY_KEPT_MS = 30000; // an answer nobody took is dropped after this

/**
 * The first image's metadata and first frame, asked for by index.html before any module was in
 * (`sent`: {ref, metadata, frame}, each {response: Promise of a Response or null, controller}):
 * index.html calls this as soon as this module is loaded, and the frame's body is read from then
 * on, while the views' modules still load. `metadata` and `frames(ref, [1])` take these answers
 * over, once: an error answer as the ApiError `request` would have thrown (a 401 ends the session
 * then, when the views listen), a request the server did not answer is asked again.
 */
export function takeOver(sent) {
  const keep = (url, entry) => {
    entry.answer.catch(() => {});
    early.set(url, entry);
    setTimeout(() => {
      if (early.get(url) !== entry) return;
      early.delete(url);
      entry.controller.abort();
    }, EARLY_KEPT_MS);
  };
  const ok = async (response) => {
    if (!response) throw new Error("no answer: to be asked again");
    if (!response.ok) throw await errorOf(response);
    return response;
  };
  const base = `${DICOMWEB}${instancePath(sent.ref)}`;
  const meta = { controller: sent.metadata.controller, samples: [] };
  meta.answer = sent.metadata.response.then(ok).then((r) => r.json());
  keep(`${base}/metadata`, meta);
  const frame = { controller: sent.frame.controller, samples: [], listener: null };
  const progress = (p) => {
    frame.samples.push(p);
    if (frame.listener) frame.listener(p);
  };
  frame.answer = sent.frame.response.then(ok).then((r) => readFrames(r, progress));
  keep(`${base}/frames/1`, frame);
}

/** The early answer for `url` (a Promise of it, or of null when it is to be asked again), or null
 * when none was asked. */
function takeEarly(url, opts) {
  const entry = early.get(url);
  if (!entry) return null;
  early.delete(url);
  if (opts.progress) {
    entry.samples.forEach(opts.progress);
    entry.listener = opts.progress;
  }
  if (opts.signal) {
    if (opts.signal.aborted) entry.controller.abort();
    else opts.signal.addEventListener("abort", () => entry.controller.abort(), { once: true });
  }
  return entry.answer.catch((error) => {
    if (opts.signal && opts.signal.aborted) throw new DOMException("aborted", "AbortError");
    if (!(error instanceof ApiError)) return null;
    if (!opts.quiet && (error.kind === "invalid" || error.kind === "expired")) listeners.forEach((fn) => fn(error));
    throw error;
  });
}
