// One image on a canvas: loads metadata and raw frames over DICOMweb, windows them on the client
// (imaging.js tables), zooms and pans, and carries the evaluation tools (measure, profile, ROI).
//
// Rendering: the frame's raw words go through a 65,536-entry RGBA table into ImageData on an
// off-screen canvas, only for the part of the image in view (with a margin, so a small pan draws
// without windowing again); zoomed out below 50 %, from a 2 x 2-averaged copy of the frame (one
// level of a pyramid per halving), so a window change costs about as many table look-ups as the
// screen has pixels, whatever the image size. The visible canvas draws that canvas with the view
// transform and then the annotations. Read-outs, measurements, profiles and ROI statistics always
// use the full-resolution frame.
//
// The first image: metadata and frame 1 are asked for together (by index.html when the page opens
// on an image), the frame read on the page into one buffer as it arrives, its pyramid level made
// from the rows already in, the window's table from the metadata; the server's rendering at the
// viewport's size is asked for only when the frame's pace says it will take long.
//
// Events (CustomEvent on the Viewport): "transform" (zoom/pan by the user, for synchronised
// viewports), "change" (window, frame, tool results), "cursor" (pixel under the pointer),
// "activate" (the user interacts with this viewport).

import * as api from "./api.js";
import { framePixels, imageInfo } from "./dicom.js";
import * as im from "./imaging.js";
import { h } from "./ui.js";

const CACHE_BYTES = 512 * 2 ** 20; // frames kept per viewport
const PREFETCH = 8; // frames asked ahead, in one request
const PREVIEW_ABOVE_BYTES = 4 * 2 ** 20; // frames larger than this may get the server's preview first,
const PREVIEW_IF_DUE_AFTER_MS = 500; // when they would take longer than this to come
const PACE_OVER_MS = 100; // how a frame's arrival time is estimated: from its pace over this long,
const PACE_OVER_BYTES = 4 * 2 ** 20; // or over this many bytes
let firstImageMarked = false;
let firstPreviewMarked = false;

/** The unit of modality values to show: Rescale Type, except "US" (unspecified) and empty. */
export function unitOf(rescaleType) {
  const t = String(rescaleType || "").trim();
  return t && t !== "US" ? t : "";
}

/** An off-screen canvas of a pyramid level with its ImageData, which windowing writes word by word. */
function newSurface(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { alpha: false });
  const imageData = ctx.createImageData(width, height);
  return { canvas, ctx, imageData, out32: new Uint32Array(imageData.data.buffer) };
}

export const TOOLS = {
  wl: "Window/level",
  pan: "Pan",
  zoom: "Zoom",
  measure: "Measure",
  profile: "Line profile",
  roi: "ROI statistics",
};

export class Viewport extends EventTarget {
  /** `options.preview` false: no server-rendered preview before the raw frame (bench/viewer.py
   * compares both ways; the view passes it from `preview=0` in its address). */
  constructor(index, options = {}) {
    super();
    this.index = index;
    this.usePreview = options.preview !== false;
    this.canvas = h("canvas", { class: "vp-canvas", "data-testid": `canvas-${index}` });
    this.message = h("div", { class: "vp-message", "data-testid": `viewport-message-${index}`, role: "alert", hidden: true });
    this.cornerTL = h("div", { class: "vp-corner tl", "data-testid": `viewport-title-${index}` });
    this.cornerTR = h("div", { class: "vp-corner tr", "data-testid": `viewport-frame-${index}` });
    this.cornerBL = h("div", { class: "vp-corner bl", "data-testid": `viewport-wl-${index}` });
    this.cornerBR = h("div", { class: "vp-corner br", "data-testid": `viewport-calibration-${index}` });
    this.root = h(
      "div",
      { class: "viewport", "data-testid": `viewport-${index}`, "data-state": "loading", tabindex: "0", role: "img", "aria-label": `Image ${index + 1}` },
      this.canvas,
      this.cornerTL,
      this.cornerTR,
      this.cornerBL,
      this.cornerBR,
      this.message,
    );
    this.ctx = this.canvas.getContext("2d", { alpha: false });
    this.t = { scale: 1, x: 0, y: 0 };
    this.fitted = true;
    this.tool = "wl";
    this.invert = false;
    this.frame = 1;
    this.cache = new Map(); // frame number -> raw words
    this.pending = new Map(); // frame number -> Promise of raw words
    this.annotations = { measure: null, profile: null, roi: null };
    this.controller = new AbortController();
    this.renderScheduled = false;
    this.lastRenderMs = 0;
    this.wire();
  }

  // -- loading -----------------------------------------------------------------------------------

  async load(ref, title = "") {
    this.ref = ref;
    this.setState("loading", "Loading image…");
    const signal = this.controller.signal;
    // The first frame is asked for at once, beside the metadata (its address needs only the
    // reference; index.html may have asked for both before the modules loaded, see api.takeOver),
    // and read on the page as it comes: the 18 MB of a 3000 x 3000 radiograph are the longest part
    // of the first image, so nothing waits for them that need not.
    const loading = new AbortController();
    const stop = () => loading.abort();
    signal.addEventListener("abort", stop, { once: true });
    try {
      const started = performance.now();
      this.timings = { startedAt: started };
      const arrival = (this.arrival = { samples: [] });
      const progress = (p) => {
        arrival.samples.push(p);
        if (p.partial && this.info) this.reduceSoFar(p.partial);
      };
      this.reducing = null;
      const frame = api.frames(ref, [1], { signal: loading.signal, onPage: true, progress });
      frame.catch(() => {}); // a failure is reported below, once the metadata is in
      this.meta = await api.metadata(ref, { signal });
      this.timings.metadataMs = performance.now() - started;
      if (!this.meta) throw new api.ApiError("notfound", "Not found in the archive.");
      this.info = imageInfo(this.meta, 1);
      this.check(this.info);
      this.cal = im.calibration(this.info);
      if (this.info.frames > 1) api.warmFrames();
      const { rows, columns, samplesPerPixel, bitsAllocated } = this.info;
      if (this.usePreview && rows * columns * samplesPerPixel * (bitsAllocated / 8) > PREVIEW_ABOVE_BYTES) {
        this.previewIfSlow(ref, loading.signal, started);
      }
      if (!this.rgb && this.info.windows[0]) {
        this.window = { ...this.info.windows[0] };
        this.table(); // made while the frame travels, for its first draw
      }
      const [body] = await frame;
      loading.abort(); // a preview still on its way is not needed any more
      this.timings.frameMs = performance.now() - started;
      const pixels = framePixels(body, this.info);
      this.cache.set(1, pixels);
      this.setPixels(pixels);
      this.defaultWindow = this.info.windows[0] || im.fullRangeWindow(this.range);
      this.window = { ...this.defaultWindow };
      const reduced = this.reducing;
      if (reduced && reduced.source === body.buffer) {
        im.downsampleRows(pixels, this.info.columns, this.info, reduced.pixels, reduced.rows, reduced.height);
        this.windowSoFar(reduced.rows, reduced.height);
        this.levels[1] = { pixels: reduced.pixels, width: reduced.width, height: reduced.height };
        if (reduced.surface) {
          this.surfaces[1] = reduced.surface;
          this.windowed = { level: 1, key: reduced.key, x0: 0, y0: 0, x1: reduced.width, y1: reduced.height };
        }
      }
      this.reducing = null;
      this.cornerTL.textContent = title;
      const drawing = performance.now();
      this.resize(false);
      this.fit(true); // the first draw: windows what is in view
      this.timings.renderMs = performance.now() - drawing;
      this.timings.totalMs = performance.now() - started;
      this.setState("ready");
      if (!firstImageMarked) {
        // The first full-resolution image of the page: marked at the next frame, when it is painted
        // (bench/viewer.py reads this mark).
        firstImageMarked = true;
        const timings = this.timings;
        requestAnimationFrame(() => performance.mark("viewer:first-image", { detail: timings }));
      }
      this.prefetch(2);
      this.emit("change");
    } catch (error) {
      loading.abort();
      if (error.name === "AbortError") return;
      this.fail(error);
    } finally {
      signal.removeEventListener("abort", stop);
    }
  }

  /** While the first frame arrives after its metadata: average the rows that are in into pyramid
   * level 1 when the fitted view will be drawn from it (a frame over twice the viewport's size), and
   * window them, so that the first draw is left with the last rows only (a 3000 x 3000 frame: 25 to
   * 35 ms less). `partial`: the frame's bytes so far, at the start of the buffer the whole frame
   * will have. */
  reduceSoFar(partial) {
    const { rows, columns, bitsAllocated, samplesPerPixel } = this.info;
    if (!this.reducing) {
      const fit = im.fitTransform(columns, rows, Math.max(1, this.root.clientWidth - 16), Math.max(1, this.root.clientHeight - 16));
      const coarse = fit.scale * (window.devicePixelRatio || 1) <= 0.5 && rows >= 128 && columns >= 128;
      if (!coarse || samplesPerPixel !== 1 || ![8, 16].includes(bitsAllocated) || partial.byteOffset % 2 !== 0) return;
      const height = rows >> 1;
      const width = columns >> 1;
      const words = bitsAllocated === 16 ? Uint16Array : Uint8Array;
      this.reducing = { source: partial.buffer, words, pixels: new words(width * height), width, height, rows: 0 };
    }
    const r = this.reducing;
    if (r.source !== partial.buffer) return;
    const pairs = Math.min(r.height, Math.floor(partial.byteLength / (2 * columns * r.words.BYTES_PER_ELEMENT)));
    if (pairs <= r.rows) return;
    const words = new r.words(partial.buffer, partial.byteOffset, pairs * 2 * columns);
    im.downsampleRows(words, columns, this.info, r.pixels, r.rows, pairs);
    this.windowSoFar(r.rows, pairs);
    r.rows = pairs;
  }

  /** Rows [y0, y1) of the level being reduced, windowed into its surface when the window is known
   * (the metadata's): the first draw then only scales the surface onto the canvas. */
  windowSoFar(y0, y1) {
    const r = this.reducing;
    if (!this.window || r.surface === null || y1 <= y0) return;
    const key = this.windowKey();
    if (!r.surface) {
      if (y0 > 0) return void (r.surface = null); // the window came late: windowed at the first draw
      r.surface = newSurface(r.width, r.height);
      r.key = key;
    }
    if (r.key !== key) return void (r.surface = null);
    im.applyLutRegion(r.pixels, r.width, this.table(), r.surface.out32, 0, y0, r.width, y1);
    r.surface.ctx.putImageData(r.surface.imageData, 0, 0, 0, y0, r.width, y1 - y0);
  }

  /** When will the raw frame be in? Milliseconds from now, from the pace of its body so far;
   * Infinity until that pace means something (PACE_OVER_MS or PACE_OVER_BYTES of it: the first
   * report is the part's headers, and the first chunks come slowly while both ends start). */
  frameDueIn() {
    const s = this.arrival.samples;
    if (s.length < 2 || !s[0].expected) return Infinity;
    const [first, last] = [s[0], s[s.length - 1]];
    const ms = last.at - first.at;
    const bytes = last.received - first.received;
    if (ms < PACE_OVER_MS && bytes < PACE_OVER_BYTES) return Infinity;
    return (last.expected - last.received) / (bytes / ms) - (performance.now() - last.at);
  }

  /** The server's rendering at the viewport's size goes on screen first only when the raw frame
   * is more than PREVIEW_IF_DUE_AFTER_MS away (by the pace of its arrival, or because none of it
   * came in that time): then it shows the image early while the 16-bit data travel. When the frame
   * comes sooner (loopback, a fast network), a preview would only compete with it for the server
   * and the CPU, and be replaced at once. */
  async previewIfSlow(ref, signal, started) {
    const since = performance.now();
    while (!this.pixels && !signal.aborted && this.root.dataset.state === "loading") {
      const due = this.frameDueIn();
      const waited = performance.now() - since;
      if (Number.isFinite(due) ? due > PREVIEW_IF_DUE_AFTER_MS : waited > PREVIEW_IF_DUE_AFTER_MS) {
        this.timings.previewAskedMs = performance.now() - started;
        return this.preview(ref, signal, started);
      }
      if (due < PREVIEW_IF_DUE_AFTER_MS / 2) return; // nearly in: no preview
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** The server-rendered image at the viewport's size (PNG: lossless for 8-bit display), shown
   * until the raw frame is windowed here. Optional: any failure is left to the raw path to report. */
  async preview(ref, signal, started) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(Math.max(1, this.root.clientWidth - 16) * dpr);
    const hgt = Math.round(Math.max(1, this.root.clientHeight - 16) * dpr);
    if (w < 32 || hgt < 32) return;
    try {
      const url = `${api.DICOMWEB}${api.instancePath(ref)}/rendered?viewport=${w},${hgt}`;
      const response = await api.request(url, { signal, quiet: true, headers: { Accept: "image/png" } });
      const bitmap = await createImageBitmap(await response.blob());
      if (this.pixels || this.root.dataset.state !== "loading") {
        bitmap.close();
        return;
      }
      this.resize(false);
      const ctx = this.ctx;
      const scale = Math.min(w / bitmap.width, hgt / bitmap.height);
      const bw = bitmap.width * scale;
      const bh = bitmap.height * scale;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      ctx.imageSmoothingEnabled = scale < 1;
      ctx.drawImage(bitmap, (this.canvas.width - bw) / 2, (this.canvas.height - bh) / 2, bw, bh);
      bitmap.close();
      this.timings.previewMs = performance.now() - started;
      this.setState("preview");
      this.cornerTR.textContent = "loading the 16-bit data…";
      if (!firstPreviewMarked) {
        firstPreviewMarked = true;
        const timings = this.timings;
        requestAnimationFrame(() => performance.mark("viewer:first-paint", { detail: timings }));
      }
    } catch {
      // no preview: the raw frame will be drawn, or its failure reported
    }
  }

  check(info) {
    this.rgb = info.samplesPerPixel === 3;
    if (this.rgb && (info.bitsAllocated !== 8 || info.planarConfiguration !== 0)) {
      throw new api.ApiError("bad", "This colour image layout (planar or more than 8 bits) cannot be shown.");
    }
    if (!this.rgb && info.samplesPerPixel !== 1) throw new api.ApiError("bad", `${info.samplesPerPixel} samples per pixel cannot be shown.`);
    if (![8, 16].includes(info.bitsAllocated)) {
      throw new api.ApiError("bad", `${info.bitsAllocated}-bit pixel data cannot be shown (8 and 16 bits can).`);
    }
    if (!info.rows || !info.columns) throw new api.ApiError("bad", "This instance has no image.");
  }

  fail(error) {
    const text =
      error.kind === "notfound"
        ? "This image is not in the archive (it may have been removed). Go back to the part and pick another one."
        : error.kind === "down"
          ? "The archive does not answer: the image could not be loaded."
          : error.message || String(error);
    this.setState("error", text);
    this.emit("change");
  }

  setState(state, text = "") {
    this.root.dataset.state = state;
    this.message.hidden = !text;
    this.message.textContent = text;
    this.message.className = `vp-message ${state}`;
  }

  async fetchFrame(n) {
    if (this.cache.has(n)) return this.cache.get(n);
    if (this.pending.has(n)) return this.pending.get(n);
    return this.fetchFrames([n]).then(() => this.cache.get(n));
  }

  fetchFrames(numbers) {
    const wanted = numbers.filter((n) => n >= 1 && n <= this.info.frames && !this.cache.has(n) && !this.pending.has(n));
    if (!wanted.length) return Promise.all(numbers.map((n) => this.pending.get(n)).filter(Boolean));
    const request = api.frames(this.ref, wanted, { signal: this.controller.signal }).then((bodies) => {
      bodies.forEach((body, i) => {
        this.cache.set(wanted[i], framePixels(body, this.info));
        this.pending.delete(wanted[i]);
      });
      this.evict();
    });
    request.catch(() => wanted.forEach((n) => this.pending.delete(n)));
    for (const n of wanted) this.pending.set(n, request.then(() => this.cache.get(n)));
    return request;
  }

  prefetch(from) {
    if (!this.info || this.info.frames <= 1) return;
    const list = [];
    for (let n = from; n < from + PREFETCH && n <= this.info.frames; n++) list.push(n);
    this.fetchFrames(list).catch(() => {});
  }

  evict() {
    let bytes = 0;
    for (const px of this.cache.values()) bytes += px.byteLength;
    if (bytes <= CACHE_BYTES) return;
    const far = [...this.cache.keys()].sort((a, b) => Math.abs(b - this.frame) - Math.abs(a - this.frame));
    for (const n of far) {
      if (bytes <= CACHE_BYTES || n === this.frame) break;
      bytes -= this.cache.get(n).byteLength;
      this.cache.delete(n);
    }
  }

  get frames() {
    return this.info ? this.info.frames : 1;
  }

  async setFrame(n) {
    if (!this.info) return;
    n = Math.min(Math.max(1, Math.round(n)), this.info.frames);
    if (n === this.frame && this.pixels) return;
    this.frame = n;
    this.root.dataset.frame = String(n);
    try {
      const pixels = await this.fetchFrame(n);
      if (this.frame !== n) return; // the user moved on while it loaded
      const info = imageInfo(this.meta, n);
      this.info = { ...info, frames: this.info.frames };
      this.setPixels(pixels);
      this.render();
      this.emit("change");
      this.prefetch(n + 1);
    } catch (error) {
      if (error.name !== "AbortError") this.fail(error);
    }
  }

  // -- rendering ---------------------------------------------------------------------------------

  /** A new frame: the pyramid and what was windowed belong to the old one. */
  setPixels(pixels) {
    this.pixels = pixels;
    this.levels = [{ pixels, width: this.info.columns, height: this.info.rows }];
    this.surfaces = [];
    this.windowed = null;
    this._range = null;
  }

  /** Smallest and largest modality value of the frame, computed when first needed. */
  get range() {
    if (!this._range && this.pixels) this._range = this.rgb ? { min: 0, max: 255 } : im.valueRange(this.pixels, this.info);
    return this._range || { min: 0, max: 0 };
  }

  /** The pyramid level to draw at a zoom: the coarsest whose pixels are still no larger than the
   * screen's (level L has 2^-L of the resolution), made when first needed. Averaging 2 x 2 blocks
   * of the finer level costs less than windowing and painting four times the pixels (a 3000 x 3000
   * frame at fit: about 20 ms against 60), so even the first image is drawn from it. */
  levelFor(scale) {
    if (this.rgb) return 0;
    const wanted = Math.max(0, Math.floor(Math.log2(1 / (scale * (this.dpr || 1)))));
    let level = 0;
    while (level < wanted) {
      const finer = this.levels[level];
      if (!this.levels[level + 1]) {
        if (finer.width < 128 || finer.height < 128) break;
        const down = im.downsample(finer.pixels, finer.width, finer.height, this.info);
        this.levels[level + 1] = { pixels: down.pixels, width: down.width, height: down.height };
      }
      level++;
    }
    return level;
  }

  surface(level) {
    if (!this.surfaces[level]) this.surfaces[level] = newSurface(this.levels[level].width, this.levels[level].height);
    return this.surfaces[level];
  }

  /** The rectangle of level `level` in view (level pixels, clipped), or null when none is. */
  inView(level) {
    const k = 2 ** level;
    const s = this.t.scale * k;
    const { width, height } = this.levels[level];
    const x0 = Math.max(0, Math.floor(-this.t.x / s));
    const y0 = Math.max(0, Math.floor(-this.t.y / s));
    const x1 = Math.min(width, Math.ceil((this.cssWidth - this.t.x) / s));
    const y1 = Math.min(height, Math.ceil((this.cssHeight - this.t.y) / s));
    return x1 > x0 && y1 > y0 ? { x0, y0, x1, y1 } : null;
  }

  windowKey() {
    return `${this.window.center}|${this.window.width}|${this.window.fn}|${this.invert}`;
  }

  /** The RGBA table of the current window, inversion and pixel module (made when they change). */
  table() {
    const key = this.windowKey();
    if (!this.lut || this.lut.key !== key) {
      const mono1 = this.info.photometric === "MONOCHROME1";
      this.lut = { key, table: im.rgbaLut(im.buildLut(this.info, this.window, this.invert !== mono1)) };
    }
    return this.lut.table;
  }

  /** Window the part of `level` in view (and a margin of half its size) into its surface. */
  windowRegion(level, view) {
    const { pixels, width, height } = this.levels[level];
    const mx = (view.x1 - view.x0) >> 1;
    const my = (view.y1 - view.y0) >> 1;
    const r = { x0: Math.max(0, view.x0 - mx), y0: Math.max(0, view.y0 - my), x1: Math.min(width, view.x1 + mx), y1: Math.min(height, view.y1 + my) };
    const surface = this.surface(level);
    if (this.rgb) {
      const out = surface.imageData.data;
      const inv = this.invert;
      for (let i = 0, j = 0; i < pixels.length; i += 3, j += 4) {
        out[j] = inv ? 255 - pixels[i] : pixels[i];
        out[j + 1] = inv ? 255 - pixels[i + 1] : pixels[i + 1];
        out[j + 2] = inv ? 255 - pixels[i + 2] : pixels[i + 2];
        out[j + 3] = 255;
      }
      r.x0 = 0;
      r.y0 = 0;
      r.x1 = width;
      r.y1 = height;
    } else {
      im.applyLutRegion(pixels, width, this.table(), surface.out32, r.x0, r.y0, r.x1, r.y1);
    }
    surface.ctx.putImageData(surface.imageData, 0, 0, r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0);
    this.windowed = { level, key: this.windowKey(), ...r };
  }

  /** A window or frame change: window what is in view again, then draw. */
  render() {
    if (!this.pixels) return;
    const started = performance.now();
    this.windowed = null;
    this.draw();
    const ended = performance.now();
    this.lastRenderMs = ended - started;
    performance.measure("viewer:render", { start: started, end: ended });
    if (performance.getEntriesByName("viewer:render").length > 1000) performance.clearMeasures("viewer:render");
    this.root.dataset.renderMs = this.lastRenderMs.toFixed(1);
    this.root.dataset.windowCenter = String(this.window.center);
    this.root.dataset.windowWidth = String(this.window.width);
  }

  scheduleRender() {
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    requestAnimationFrame(() => {
      this.renderScheduled = false;
      this.render();
      this.emit("change");
    });
  }

  /** Follow the element's size; `redraw` false: only size the canvas (the caller draws). */
  resize(redraw = true) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, this.root.clientWidth);
    const hgt = Math.max(1, this.root.clientHeight);
    this.dpr = dpr;
    this.cssWidth = w;
    this.cssHeight = hgt;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(hgt * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(hgt * dpr);
    }
    if (!redraw) return;
    if (this.info && this.fitted) this.fit(true);
    else this.draw();
  }

  draw() {
    const ctx = this.ctx;
    const dpr = this.dpr || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.info || !this.pixels) return;
    const t = this.t;
    const level = this.levelFor(t.scale);
    const view = this.inView(level);
    if (view) {
      const w = this.windowed;
      const stale = !w || w.level !== level || w.key !== this.windowKey();
      if (stale || view.x0 < w.x0 || view.y0 < w.y0 || view.x1 > w.x1 || view.y1 > w.y1) this.windowRegion(level, view);
      const r = this.windowed;
      const s = t.scale * 2 ** level;
      ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * t.x, dpr * t.y);
      ctx.imageSmoothingEnabled = s * dpr < 1; // magnified: crisp pixels; reduced: filtered
      ctx.imageSmoothingQuality = "low";
      ctx.drawImage(this.surface(level).canvas, r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0, r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0);
    }
    this.root.dataset.level = String(level);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.drawAnnotations(ctx);
    const r = this.root.dataset;
    r.scale = String(t.scale);
    r.tx = String(t.x);
    r.ty = String(t.y);
    r.frame = String(this.frame);
    this.cornerTR.textContent = this.info.frames > 1 ? `Frame ${this.frame} / ${this.info.frames}` : "";
    this.cornerBL.textContent = `W ${im.formatNumber(this.window.width, 5)}  C ${im.formatNumber(this.window.center, 5)}  ·  ${Math.round(t.scale * 100)} %${this.invert ? "  ·  inverted" : ""}`;
    this.cornerBR.textContent = this.cal.unit === "px" ? "uncalibrated, px" : `${im.formatNumber(this.cal.columnSpacing, 4)} × ${im.formatNumber(this.cal.rowSpacing, 4)} mm/px`;
  }

  drawAnnotations(ctx) {
    const s = (p) => im.toScreen(this.t, p.x, p.y);
    ctx.lineWidth = 1.5;
    ctx.font = "12px system-ui, sans-serif";
    const label = (text, x, y, color) => {
      const w = ctx.measureText(text).width + 8;
      ctx.fillStyle = "rgba(0,0,0,0.7)";
      ctx.fillRect(x, y - 14, w, 18);
      ctx.fillStyle = color;
      ctx.fillText(text, x + 4, y);
    };
    const m = this.annotations.measure;
    if (m) {
      const a = s(m.p0);
      const b = s(m.p1);
      ctx.strokeStyle = "#ffd23f";
      ctx.beginPath();
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
      for (const p of [a, b]) {
        ctx.beginPath();
        ctx.arc(p.x, p.y, 3, 0, 2 * Math.PI);
        ctx.stroke();
      }
      const r = this.measurement();
      label(`${im.formatNumber(r.length, 5)} ${r.unit}`, (a.x + b.x) / 2 + 8, (a.y + b.y) / 2 - 6, "#ffd23f");
    }
    const p = this.annotations.profile;
    if (p) {
      const a = s(p.p0);
      const b = s(p.p1);
      ctx.strokeStyle = "#3fd0ff";
      ctx.setLineDash([6, 3]);
      ctx.beginPath();
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
      ctx.setLineDash([]);
      label("A", a.x - 18, a.y - 4, "#3fd0ff");
      label("B", b.x + 6, b.y - 4, "#3fd0ff");
    }
    const roi = this.annotations.roi;
    if (roi) {
      const rect = im.roiRect(roi.p0, roi.p1, this.info.columns, this.info.rows);
      const a = im.toScreen(this.t, rect.x0, rect.y0);
      const b = im.toScreen(this.t, rect.x1, rect.y1);
      ctx.strokeStyle = "#7dff7a";
      ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
      if (roi.stats) label(`SNR ${im.formatNumber(roi.stats.snr, 4)}`, a.x, a.y - 6, "#7dff7a");
    }
  }

  // -- view state --------------------------------------------------------------------------------

  fit(silent = false) {
    if (!this.info) return;
    const margin = 8;
    const t = im.fitTransform(this.info.columns, this.info.rows, Math.max(1, this.cssWidth - 2 * margin), Math.max(1, this.cssHeight - 2 * margin));
    this.setTransform({ scale: t.scale, x: t.x + margin, y: t.y + margin }, silent);
    this.fitted = true;
  }

  /** One image pixel on one device pixel, keeping the centre of the view in place. */
  oneToOne() {
    const cx = this.cssWidth / 2;
    const cy = this.cssHeight / 2;
    this.setTransform(im.zoomAt(this.t, 1 / (this.dpr || 1) / this.t.scale, cx, cy));
  }

  zoomBy(factor) {
    this.setTransform(im.zoomAt(this.t, factor, this.cssWidth / 2, this.cssHeight / 2));
  }

  setTransform(t, silent = false) {
    this.t = { ...t };
    this.fitted = false;
    this.draw();
    if (!silent) this.emit("transform", { ...t });
  }

  setWindow(w) {
    if (!this.info || this.rgb) return;
    const width = Number(w.width);
    const center = Number(w.center);
    if (!Number.isFinite(width) || !Number.isFinite(center) || width <= 0) return;
    this.window = { center, width: Math.max(width, this.window.fn === "LINEAR" ? 1 : 1e-6), fn: w.fn || this.window.fn || "LINEAR" };
    this.render();
    this.emit("change");
  }

  setInvert(on) {
    this.invert = Boolean(on);
    this.render();
    this.emit("change");
  }

  setTool(tool) {
    this.tool = tool;
    this.root.dataset.tool = tool;
  }

  clearAnnotations() {
    this.annotations = { measure: null, profile: null, roi: null };
    this.draw();
    this.emit("change");
  }

  /** The length of the measurement line, in the calibration's unit (mm or px). */
  measurement() {
    const m = this.annotations.measure;
    if (!m) return null;
    return { length: im.distance(m.p0, m.p1, this.cal), lengthPx: Math.hypot(m.p1.x - m.p0.x, m.p1.y - m.p0.y), unit: this.cal.unit, label: this.cal.label };
  }

  profile() {
    const p = this.annotations.profile;
    if (!p || !this.pixels || this.rgb) return null;
    return im.lineProfile(this.pixels, this.info.columns, this.info.rows, p.p0, p.p1, im.valueReader(this.info), this.cal);
  }

  roiStats() {
    const r = this.annotations.roi;
    if (!r || !this.pixels || this.rgb) return null;
    const rect = im.roiRect(r.p0, r.p1, this.info.columns, this.info.rows);
    const stats = im.roiStats(this.pixels, this.info.columns, rect, im.valueReader(this.info));
    return { ...stats, rect, widthMm: (rect.x1 - rect.x0) * this.cal.columnSpacing, heightMm: (rect.y1 - rect.y0) * this.cal.rowSpacing, unit: this.cal.unit };
  }

  /** Stored and modality value at an image point; null outside the image. */
  pixelAt(p) {
    if (!this.pixels || !this.info) return null;
    const x = Math.floor(p.x);
    const y = Math.floor(p.y);
    if (x < 0 || y < 0 || x >= this.info.columns || y >= this.info.rows) return null;
    if (this.rgb) {
      const i = (y * this.info.columns + x) * 3;
      return { x, y, rgb: [this.pixels[i], this.pixels[i + 1], this.pixels[i + 2]] };
    }
    const raw = this.pixels[y * this.info.columns + x];
    const stored = im.storedValue(raw, this.info.bitsStored, this.info.signed);
    return { x, y, stored, value: stored * this.info.slope + this.info.intercept, unit: unitOf(this.info.rescaleType) };
  }

  presets() {
    if (!this.info || this.rgb) return [];
    const list = this.info.windows.map((w) => ({ name: w.name, window: w }));
    list.push({ name: "Full range", window: im.fullRangeWindow(this.range) });
    list.push({ name: "Auto (1–99 %)", window: im.percentileWindow(this.pixels, this.info, 0.01, 0.99) });
    list.push({ name: "Contrast (5–95 %)", window: im.percentileWindow(this.pixels, this.info, 0.05, 0.95) });
    return list;
  }

  // -- input -------------------------------------------------------------------------------------

  local(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  emit(type, detail = null) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  wire() {
    const c = this.canvas;
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerdown", (e) => {
      this.emit("activate");
      this.root.focus({ preventScroll: true });
      if (!this.pixels) return;
      const p = this.local(e);
      const tool = e.button === 1 ? "pan" : e.button === 2 ? "wl" : this.tool;
      const at = im.toImage(this.t, p.x, p.y);
      this.drag = { tool, start: p, startWindow: { ...this.window }, startT: { ...this.t }, at };
      if (tool === "measure" || tool === "profile" || tool === "roi") this.annotations[tool] = { p0: at, p1: at };
      c.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    c.addEventListener("pointermove", (e) => {
      const p = this.local(e);
      const at = im.toImage(this.t, p.x, p.y);
      this.emit("cursor", this.pixelAt(at));
      const d = this.drag;
      if (!d) return;
      const dx = p.x - d.start.x;
      const dy = p.y - d.start.y;
      if (d.tool === "wl") {
        const span = Math.max(this.range.max - this.range.min, 1);
        this.window = im.dragWindow(d.startWindow, dx, dy, span / 400);
        this.scheduleRender();
      } else if (d.tool === "pan") {
        this.setTransform({ scale: d.startT.scale, x: d.startT.x + dx, y: d.startT.y + dy });
      } else if (d.tool === "zoom") {
        this.setTransform(im.zoomAt(d.startT, Math.exp(-dy * 0.01), d.start.x, d.start.y));
      } else {
        this.annotations[d.tool].p1 = at;
        this.draw();
        if (d.tool === "measure") this.emit("change");
      }
    });
    const end = (e) => {
      const d = this.drag;
      if (!d) return;
      this.drag = null;
      if (c.hasPointerCapture(e.pointerId)) c.releasePointerCapture(e.pointerId);
      if (d.tool === "roi" && this.annotations.roi) {
        this.annotations.roi.stats = this.roiStats();
        this.draw();
      }
      this.emit("change");
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener(
      "wheel",
      (e) => {
        if (!this.pixels) return;
        e.preventDefault();
        const p = this.local(e);
        this.setTransform(im.zoomAt(this.t, Math.exp(-e.deltaY * 0.0015), p.x, p.y));
      },
      { passive: false },
    );
    c.addEventListener("dblclick", () => this.fit());
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.root);
  }

  destroy() {
    this.controller.abort();
    this.resizer.disconnect();
    this.cache.clear();
    this.pending.clear();
    this.pixels = null;
  }
}
