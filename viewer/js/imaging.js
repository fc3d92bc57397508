// Pure image functions of the viewer: no DOM, no network. Tested in the browser by
// tests/integration/test_viewer_functions.py (page.evaluate importing this module).
//
// Pixel data is always kept as the raw unsigned words of the frame (Uint16Array or Uint8Array),
// exactly as stored: masking to Bits Stored, sign extension, rescale and window are folded into a
// lookup table indexed by the raw word, so a window change costs one table of 65,536 entries plus
// one table look-up per pixel, and no value is ever lost.

/** The stored value of a raw word: bits above Bits Stored masked off, signed values sign-extended. */
export function storedValue(raw, bitsStored, signed) {
  const mask = bitsStored >= 32 ? 0xffffffff : 2 ** bitsStored - 1;
  let v = (raw & mask) >>> 0;
  if (signed && v >= 2 ** (bitsStored - 1)) v -= 2 ** bitsStored;
  return v;
}

/** Modality value (PS3.3 C.11.1): the stored value through Rescale Slope and Intercept. */
export function modalityValue(stored, slope = 1, intercept = 0) {
  return stored * slope + intercept;
}

/** A function raw word -> modality value for one image (closes over its pixel module and rescale). */
export function valueReader(image) {
  const { bitsStored, signed, slope, intercept } = image;
  return (raw) => storedValue(raw, bitsStored, signed) * slope + intercept;
}

/** Round half to even, as numpy's rint (the server renders with it: same pixels on both sides). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * VOI window, PS3.3 C.11.2.1.2, output 0..255 unrounded. `fn`: LINEAR (default), LINEAR_EXACT or
 * SIGMOID. The same formulas as the server's pacs/dicom/render.py window_values.
 */
export function windowValue(x, center, width, fn = "LINEAR") {
  const f = windowFunction(fn);
  if (f === "SIGMOID") return 255 / (1 + Math.exp((-4 * (x - center)) / width));
  if (f === "LINEAR_EXACT") {
    if (x <= center - width / 2) return 0;
    if (x > center + width / 2) return 255;
    return ((x - center) / width + 0.5) * 255;
  }
  const low = center - 0.5 - (width - 1) / 2;
  const high = center - 0.5 + (width - 1) / 2;
  if (x <= low) return 0;
  if (x > high) return 255;
  return width > 1 ? ((x - (center - 0.5)) / (width - 1) + 0.5) * 255 : 0;
}

/** The window function's name as the server spells it: LINEAR, LINEAR_EXACT or SIGMOID. */
export function windowFunction(fn) {
  const f = String(fn || "LINEAR").toUpperCase().replace("-", "_");
  return f === "SIGMOID" || f === "LINEAR_EXACT" ? f : "LINEAR";
}

/**
 * The display table of one image and window: for every raw word (2^bitsAllocated of them, 8 or 16
 * bits) the grey level 0..255, after mask, sign, rescale, window (rounded half to even, as the
 * server does) and inversion. `invert` is true for MONOCHROME1 data or when the user inverts (both:
 * not inverted). One loop with the window's constants hoisted: about a millisecond for 65,536.
 */
export function buildLut({ bitsAllocated, bitsStored, signed, slope = 1, intercept = 0 }, window, invert = false) {
  const size = 2 ** Math.min(bitsAllocated, 16);
  const lut = new Uint8Array(size);
  const bits = Math.min(bitsStored, 16);
  const mask = 2 ** bits - 1;
  const half = 2 ** (bits - 1);
  const full = 2 ** bits;
  const c = Number(window.center);
  const w = Number(window.width);
  const fn = windowFunction(window.fn);
  const low = fn === "LINEAR" ? c - 0.5 - (w - 1) / 2 : c - w / 2;
  const high = fn === "LINEAR" ? c - 0.5 + (w - 1) / 2 : c + w / 2;
  for (let raw = 0; raw < size; raw++) {
    let v = raw & mask;
    if (signed && v >= half) v -= full;
    const x = v * slope + intercept;
    let y;
    if (fn === "SIGMOID") y = 255 / (1 + Math.exp((-4 * (x - c)) / w));
    else if (x <= low) y = 0;
    else if (x > high) y = 255;
    else if (fn === "LINEAR_EXACT") y = ((x - c) / w + 0.5) * 255;
    else y = w > 1 ? ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 : 0;
    let r = Math.round(y);
    if (r - y === 0.5 && r % 2 !== 0) r -= 1; // half to even (y >= 0 here)
    r = r < 0 ? 0 : r > 255 ? 255 : r;
    lut[raw] = invert ? 255 - r : r;
  }
  return lut;
}

/** The grey table as opaque RGBA words (little-endian ABGR), to write ImageData one word a pixel. */
export function rgbaLut(lut) {
  const out = new Uint32Array(lut.length);
  for (let i = 0; i < lut.length; i++) {
    const g = lut[i];
    out[i] = 0xff000000 | (g << 16) | (g << 8) | g;
  }
  return out;
}

/** Window `pixels` (raw words) through a table made by rgbaLut into `out` (a Uint32Array view of
 * ImageData.data). The one loop every window change runs over all pixels. */
export function applyLut(pixels, lut32, out) {
  const n = pixels.length;
  for (let i = 0; i < n; i++) out[i] = lut32[pixels[i]];
  return out;
}

/** applyLut over the rectangle [x0, x1) x [y0, y1) of a `width`-wide image only (the visible part). */
export function applyLutRegion(pixels, width, lut32, out, x0, y0, x1, y1) {
  for (let y = y0; y < y1; y++) {
    const row = y * width;
    for (let i = row + x0, end = row + x1; i < end; i++) out[i] = lut32[pixels[i]];
  }
  return out;
}

/**
 * Half the resolution in each direction: every output raw word holds the mean of the stored values
 * of a 2 x 2 block (rounded, and encoded back as a raw word so the same tables apply). Used only to
 * draw a reduced view (zoom below 50 %); measurements and read-outs use the full-resolution frame.
 */
export function downsample(pixels, width, height, image) {
  const w = width >> 1;
  const h = height >> 1;
  const out = new pixels.constructor(w * h);
  downsampleRows(pixels, width, image, out, 0, h);
  return { pixels: out, width: w, height: h };
}

/** Rows [y0, y1) of downsample's output into `out` (rows 2 y0 .. 2 y1 of `pixels` are all it reads:
 * a frame can be reduced while it arrives). */
export function downsampleRows(pixels, width, { bitsStored, signed }, out, y0, y1) {
  const w = width >> 1;
  const bits = Math.min(bitsStored, 16);
  const mask = 2 ** bits - 1;
  const half = 2 ** (bits - 1);
  const full = 2 ** bits;
  const plain = !signed && bits >= 8 * pixels.BYTES_PER_ELEMENT; // raw word = stored value
  for (let y = y0; y < y1; y++) {
    const a = 2 * y * width;
    const b = a + width;
    const o = y * w;
    for (let x = 0; x < w; x++) {
      const i = 2 * x;
      if (plain) {
        out[o + x] = (pixels[a + i] + pixels[a + i + 1] + pixels[b + i] + pixels[b + i + 1] + 2) >> 2;
      } else {
        let v0 = pixels[a + i] & mask;
        let v1 = pixels[a + i + 1] & mask;
        let v2 = pixels[b + i] & mask;
        let v3 = pixels[b + i + 1] & mask;
        if (signed) {
          if (v0 >= half) v0 -= full;
          if (v1 >= half) v1 -= full;
          if (v2 >= half) v2 -= full;
          if (v3 >= half) v3 -= full;
        }
        out[o + x] = Math.round((v0 + v1 + v2 + v3) / 4) & mask;
      }
    }
  }
  return out;
}

/** Smallest and largest modality value of a frame (for a default window and the W/L drag scale). */
export function valueRange(pixels, image) {
  const size = 2 ** Math.min(image.bitsAllocated, 16);
  const seen = new Uint8Array(size);
  for (let i = 0; i < pixels.length; i++) seen[pixels[i]] = 1;
  const read = valueReader(image);
  let min = Infinity;
  let max = -Infinity;
  for (let raw = 0; raw < size; raw++) {
    if (!seen[raw]) continue;
    const v = read(raw);
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (min === Infinity) return { min: 0, max: 0 };
  return { min, max };
}

/** A window that maps the whole range min..max onto 0..255 (the server's fallback as well). */
export function fullRangeWindow({ min, max }) {
  return { center: (min + max) / 2, width: Math.max(max - min, 1e-6), fn: "LINEAR_EXACT" };
}

/** Window/level by a mouse drag of (dx, dy) screen pixels: right widens, down raises the centre.
 * `scale`: modality units per screen pixel (a fraction of the data range). */
export function dragWindow(window, dx, dy, scale) {
  return {
    center: window.center + dy * scale,
    width: Math.max(1, window.width + dx * scale),
    fn: window.fn,
  };
}

// -- calibration -------------------------------------------------------------------------------

function spacing(pair) {
  if (!Array.isArray(pair) || pair.length < 2) return null;
  const r = Number(pair[0]);
  const c = Number(pair[1]);
  return r > 0 && c > 0 && Number.isFinite(r) && Number.isFinite(c) ? [r, c] : null;
}

/**
 * How long a pixel is. From Pixel Spacing (0028,0030) when present; else Imager Pixel Spacing
 * (0018,1164) divided by Estimated Radiographic Magnification Factor (0018,1114) (at the detector
 * when there is no factor); else uncalibrated: lengths in pixels. Spacing pairs are DICOM's order:
 * [between rows (vertical), between columns (horizontal)], in mm.
 */
export function calibration({ pixelSpacing = null, imagerPixelSpacing = null, magnification = null } = {}) {
  const ps = spacing(pixelSpacing);
  if (ps) {
    return { rowSpacing: ps[0], columnSpacing: ps[1], unit: "mm", source: "PixelSpacing", label: "mm (Pixel Spacing)" };
  }
  const ips = spacing(imagerPixelSpacing);
  if (ips) {
    const m = Number(magnification);
    if (m > 0 && Number.isFinite(m)) {
      return {
        rowSpacing: ips[0] / m,
        columnSpacing: ips[1] / m,
        unit: "mm",
        source: "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
        label: `mm (Imager Pixel Spacing / magnification ${formatNumber(m, 4)})`,
      };
    }
    return {
      rowSpacing: ips[0],
      columnSpacing: ips[1],
      unit: "mm",
      source: "ImagerPixelSpacing",
      label: "mm at the detector (Imager Pixel Spacing, no magnification factor)",
    };
  }
  return { rowSpacing: 1, columnSpacing: 1, unit: "px", source: null, label: "uncalibrated, px" };
}

/** Length between two image points ({x, y} in pixels, x along columns) in the calibration's unit. */
export function distance(p0, p1, cal) {
  const dx = (p1.x - p0.x) * cal.columnSpacing;
  const dy = (p1.y - p0.y) * cal.rowSpacing;
  return Math.hypot(dx, dy);
}

// -- line profile ----------------------------------------------------------------------------------

/** Bilinear value at a continuous image point (pixel centres at i + 0.5), edges clamped. */
export function sampleAt(pixels, width, height, x, y, read) {
  const fx = Math.min(Math.max(x - 0.5, 0), width - 1);
  const fy = Math.min(Math.max(y - 0.5, 0), height - 1);
  const x0 = Math.floor(fx);
  const y0 = Math.floor(fy);
  const x1 = Math.min(x0 + 1, width - 1);
  const y1 = Math.min(y0 + 1, height - 1);
  const tx = fx - x0;
  const ty = fy - y0;
  const v00 = read(pixels[y0 * width + x0]);
  const v01 = read(pixels[y0 * width + x1]);
  const v10 = read(pixels[y1 * width + x0]);
  const v11 = read(pixels[y1 * width + x1]);
  return (v00 * (1 - tx) + v01 * tx) * (1 - ty) + (v10 * (1 - tx) + v11 * tx) * ty;
}

/**
 * Modality values along the segment p0 -> p1, one sample per pixel of length (at least 2 samples),
 * with each sample's distance from p0 in the calibration's unit.
 */
export function lineProfile(pixels, width, height, p0, p1, read, cal = calibration()) {
  const lengthPx = Math.hypot(p1.x - p0.x, p1.y - p0.y);
  const n = Math.max(2, Math.ceil(lengthPx) + 1);
  const total = distance(p0, p1, cal);
  const positions = new Float64Array(n);
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t = i / (n - 1);
    positions[i] = t * total;
    values[i] = sampleAt(pixels, width, height, p0.x + t * (p1.x - p0.x), p0.y + t * (p1.y - p0.y), read);
  }
  return { positions, values, length: total, unit: cal.unit };
}

// -- region of interest --------------------------------------------------------------------------

/** The whole pixels a rectangle between two image points covers, clipped to the image. */
export function roiRect(p0, p1, width, height) {
  const x0 = Math.max(0, Math.floor(Math.min(p0.x, p1.x)));
  const y0 = Math.max(0, Math.floor(Math.min(p0.y, p1.y)));
  const x1 = Math.min(width, Math.ceil(Math.max(p0.x, p1.x)));
  const y1 = Math.min(height, Math.ceil(Math.max(p0.y, p1.y)));
  return { x0, y0, x1: Math.max(x0, x1), y1: Math.max(y0, y1) };
}

/**
 * Statistics of the modality values in a rectangle {x0, y0, x1, y1} (x1, y1 exclusive): pixel count,
 * mean, standard deviation (n - 1), minimum, maximum and SNR = mean / SD (ISO 17636-2, ASTM E2698).
 */
export function roiStats(pixels, width, rect, read) {
  let n = 0;
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let y = rect.y0; y < rect.y1; y++) {
    const row = y * width;
    for (let x = rect.x0; x < rect.x1; x++) {
      const v = read(pixels[row + x]);
      sum += v;
      if (v < min) min = v;
      if (v > max) max = v;
      n++;
    }
  }
  if (n === 0) return { n: 0, mean: NaN, sd: NaN, min: NaN, max: NaN, snr: NaN };
  const mean = sum / n;
  let squares = 0;
  for (let y = rect.y0; y < rect.y1; y++) {
    const row = y * width;
    for (let x = rect.x0; x < rect.x1; x++) {
      const d = read(pixels[row + x]) - mean;
      squares += d * d;
    }
  }
  const sd = n > 1 ? Math.sqrt(squares / (n - 1)) : 0;
  return { n, mean, sd, min, max, snr: sd > 0 ? mean / sd : Infinity };
}

/** Normalised SNR (ISO 17636-2, ASTM E2446): SNR_N = SNR x 88.6 um / SRb; NaN without a valid SRb. */
export function normalisedSnr(snr, srbMicrometres) {
  const srb = Number(srbMicrometres);
  if (!(srb > 0) || !Number.isFinite(srb)) return NaN;
  return (snr * 88.6) / srb;
}

// -- viewport geometry -----------------------------------------------------------------------------

/** Scale and offset that fit an image of w x h into a viewport of vw x vh, centred. */
export function fitTransform(w, h, vw, vh) {
  const scale = Math.min(vw / w, vh / h);
  return { scale, x: (vw - w * scale) / 2, y: (vh - h * scale) / 2 };
}

/** Zoom by `factor` keeping the image point under screen point (sx, sy) in place. */
export function zoomAt(t, factor, sx, sy, minScale = 1 / 64, maxScale = 64) {
  const scale = Math.min(maxScale, Math.max(minScale, t.scale * factor));
  const k = scale / t.scale;
  return { scale, x: sx - (sx - t.x) * k, y: sy - (sy - t.y) * k };
}

export function toImage(t, sx, sy) {
  return { x: (sx - t.x) / t.scale, y: (sy - t.y) / t.scale };
}

export function toScreen(t, ix, iy) {
  return { x: t.x + ix * t.scale, y: t.y + iy * t.scale };
}

// -- formatting ------------------------------------------------------------------------------------

/** A number with at most `digits` significant digits, no exponent for everyday magnitudes. */
export function formatNumber(x, digits = 4) {
  if (!Number.isFinite(x)) return String(x === Infinity ? "∞" : "-");
  if (Number.isInteger(x)) return String(x);
  const abs = Math.abs(x);
  if (abs >= 10 ** digits) return x.toFixed(0);
  return String(Number(x.toPrecision(digits)));
}

/**
 * A window over the lo..hi fraction of the frame's pixels (e.g. 0.01, 0.99: ignore the darkest and
 * brightest 1 %), from a histogram of the raw words.
 */
export function percentileWindow(pixels, image, lo, hi) {
  const size = 2 ** Math.min(image.bitsAllocated, 16);
  const counts = new Uint32Array(size);
  for (let i = 0; i < pixels.length; i++) counts[pixels[i]]++;
  const read = valueReader(image);
  const bins = [];
  for (let raw = 0; raw < size; raw++) if (counts[raw]) bins.push([read(raw), counts[raw]]);
  if (!bins.length) return { center: 0, width: 1, fn: "LINEAR" };
  bins.sort((a, b) => a[0] - b[0]);
  const n = pixels.length;
  let seen = 0;
  let low = bins[0][0];
  let high = bins[bins.length - 1][0];
  let lowFound = false;
  for (const [v, c] of bins) {
    seen += c;
    if (!lowFound && seen > lo * n) {
      low = v;
      lowFound = true;
    }
    if (seen >= hi * n) {
      high = v;
      break;
    }
  }
  return { center: (low + high) / 2, width: Math.max(high - low, 1), fn: "LINEAR" };
}
