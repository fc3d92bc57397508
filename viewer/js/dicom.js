// DICOM JSON (PS3.18 F) and DICOMweb bodies as the viewer reads them. Pure functions: no DOM,
// no network. Tested by tests/integration/test_viewer_functions.py.

export const T = {
  PatientName: "00100010",
  PatientID: "00100020",
  StudyDate: "00080020",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  Modality: "00080060",
  ModalitiesInStudy: "00080061",
  StudyDescription: "00081030",
  SeriesDescription: "0008103E",
  SOPClassUID: "00080016",
  SOPInstanceUID: "00080018",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  StudyID: "00200010",
  SeriesNumber: "00200011",
  InstanceNumber: "00200013",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  NumberOfSeriesRelatedInstances: "00201209",
  SamplesPerPixel: "00280002",
  PhotometricInterpretation: "00280004",
  PlanarConfiguration: "00280006",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  PixelSpacing: "00280030",
  BitsAllocated: "00280100",
  BitsStored: "00280101",
  PixelRepresentation: "00280103",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  RescaleType: "00281054",
  WindowCenterWidthExplanation: "00281055",
  VOILUTFunction: "00281056",
  ImagerPixelSpacing: "00181164",
  EstimatedRadiographicMagnificationFactor: "00181114",
  FrameTime: "00181063",
  CineRate: "00180040",
  RecommendedDisplayFrameRate: "00082144",
  SharedFunctionalGroupsSequence: "52009229",
  PerFrameFunctionalGroupsSequence: "52009230",
  PixelMeasuresSequence: "00289110",
  PixelValueTransformationSequence: "00289145",
  FrameVOILUTSequence: "00289132",
};

/** Every value of an attribute ([] when absent or empty). */
export function values(ds, tag) {
  const element = ds && ds[tag];
  return element && Array.isArray(element.Value) ? element.Value : [];
}

/** The first (or index-th) value of an attribute, undefined when absent. */
export function value(ds, tag, index = 0) {
  return values(ds, tag)[index];
}

/** A numeric value (IS, DS, US...) as a number, undefined when absent or not a number. */
export function number(ds, tag, index = 0) {
  const v = value(ds, tag, index);
  if (v === undefined || v === null || v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** All numeric values; null when absent or when any is not a number. */
export function numbers(ds, tag) {
  const found = values(ds, tag).map(Number);
  return found.length && found.every(Number.isFinite) ? found : null;
}

/** A person name value (PN, {"Alphabetic": "Turbine^Blade"}) as display text: "Turbine Blade". */
export function personName(v) {
  const text = v && typeof v === "object" ? v.Alphabetic || v.Ideographic || v.Phonetic || "" : String(v ?? "");
  return text
    .split("^")
    .map((s) => s.trim())
    .filter(Boolean)
    .join(" ");
}

/** A DICOM date (YYYYMMDD) as ISO YYYY-MM-DD ("" when absent or malformed). */
export function isoDate(da) {
  const s = String(da ?? "").trim();
  return /^\d{8}$/.test(s) ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}` : "";
}

/** An ISO date (YYYY-MM-DD, from an <input type=date>) as a DICOM date ("" when empty). */
export function dicomDate(iso) {
  const s = String(iso ?? "").trim();
  return /^\d{4}-\d{2}-\d{2}$/.test(s) ? s.replaceAll("-", "") : "";
}

/** QIDO StudyDate range from two ISO dates, either open ("20240101-", "-20241231"). */
export function dateRange(from, to) {
  const a = dicomDate(from);
  const b = dicomDate(to);
  if (!a && !b) return "";
  if (a && b && a === b) return a;
  return `${a}-${b}`;
}

/** One item of a sequence attribute (undefined when absent). */
export function item(ds, tag, index = 0) {
  const v = value(ds, tag, index);
  return v && typeof v === "object" ? v : undefined;
}

/** An attribute of an enhanced multi-frame functional group, per-frame first, then shared. */
function functional(meta, frame, group, tag) {
  const perFrame = item(item(meta, T.PerFrameFunctionalGroupsSequence, frame - 1), group);
  if (perFrame && values(perFrame, tag).length) return perFrame;
  const shared = item(item(meta, T.SharedFunctionalGroupsSequence), group);
  if (shared && values(shared, tag).length) return shared;
  return undefined;
}

/**
 * What the viewer needs of an instance's metadata to show frame `frame`: geometry, pixel module,
 * rescale, windows, calibration inputs, frame rate. Enhanced multi-frame objects (functional
 * groups) and classic ones alike.
 */
export function imageInfo(meta, frame = 1) {
  const bitsAllocated = number(meta, T.BitsAllocated) ?? 16;
  const rescaleSource = functional(meta, frame, T.PixelValueTransformationSequence, T.RescaleSlope) || meta;
  const voiSource = functional(meta, frame, T.FrameVOILUTSequence, T.WindowCenter) || meta;
  const measures = functional(meta, frame, T.PixelMeasuresSequence, T.PixelSpacing);
  const centers = numbers(voiSource, T.WindowCenter) || [];
  const widths = numbers(voiSource, T.WindowWidth) || [];
  const explanations = values(voiSource, T.WindowCenterWidthExplanation);
  const fn = value(voiSource, T.VOILUTFunction) || "LINEAR";
  const windows = [];
  for (let i = 0; i < Math.min(centers.length, widths.length); i++) {
    if (widths[i] > 0) windows.push({ center: centers[i], width: widths[i], fn, name: explanations[i] || `Window ${i + 1}` });
  }
  const frameTime = number(meta, T.FrameTime);
  const rate =
    number(meta, T.RecommendedDisplayFrameRate) || number(meta, T.CineRate) || (frameTime > 0 ? 1000 / frameTime : 10);
  return {
    rows: number(meta, T.Rows) ?? 0,
    columns: number(meta, T.Columns) ?? 0,
    frames: number(meta, T.NumberOfFrames) ?? 1,
    samplesPerPixel: number(meta, T.SamplesPerPixel) ?? 1,
    photometric: String(value(meta, T.PhotometricInterpretation) || "MONOCHROME2").trim(),
    planarConfiguration: number(meta, T.PlanarConfiguration) ?? 0,
    bitsAllocated,
    bitsStored: number(meta, T.BitsStored) ?? bitsAllocated,
    signed: number(meta, T.PixelRepresentation) === 1,
    slope: number(rescaleSource, T.RescaleSlope) ?? 1,
    intercept: number(rescaleSource, T.RescaleIntercept) ?? 0,
    rescaleType: value(rescaleSource, T.RescaleType) || "",
    windows,
    pixelSpacing: (measures && numbers(measures, T.PixelSpacing)) || numbers(meta, T.PixelSpacing),
    imagerPixelSpacing: numbers(meta, T.ImagerPixelSpacing),
    magnification: number(meta, T.EstimatedRadiographicMagnificationFactor) ?? null,
    frameRate: Math.min(Math.max(rate, 1), 60),
  };
}

// -- multipart/related bodies (RFC 2387, PS3.18 8.6.1.2) ---------------------------------------

const CR = 13;
const LF = 10;

function ascii(bytes, start, end) {
  let s = "";
  for (let i = start; i < end; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

function findBytes(haystack, needle, from) {
  const first = needle[0];
  let i = haystack.indexOf(first, from);
  while (i !== -1 && i + needle.length <= haystack.length) {
    let k = 1;
    while (k < needle.length && haystack[i + k] === needle[k]) k++;
    if (k === needle.length) return i;
    i = haystack.indexOf(first, i + 1);
  }
  return -1;
}

/** The boundary parameter of a multipart Content-Type (null when there is none). */
export function boundaryOf(contentType) {
  const m = /boundary\s*=\s*(?:"([^"]+)"|([^;,\s]+))/i.exec(contentType || "");
  return m ? m[1] || m[2] : null;
}

/**
 * The parts of a multipart/related body: [{headers: {name: value}, body: Uint8Array}], each body a
 * view into `bytes` (no copy). A part's Content-Length, when given, is trusted and spares a scan of
 * the body for the next delimiter (an 18 MB frame).
 */
export function parseMultipart(bytes, contentType) {
  const boundary = boundaryOf(contentType);
  if (!boundary) throw new Error(`not a multipart body: ${contentType}`);
  const dash = Uint8Array.from(`--${boundary}`, (c) => c.charCodeAt(0));
  const delimiter = Uint8Array.from(`\r\n--${boundary}`, (c) => c.charCodeAt(0));
  let pos = findBytes(bytes, dash, 0);
  if (pos === -1) throw new Error("multipart body without its boundary");
  const parts = [];
  for (;;) {
    pos += dash.length;
    if (bytes[pos] === 45 && bytes[pos + 1] === 45) break; // "--": the closing delimiter
    while (pos < bytes.length && bytes[pos] !== LF) pos++; // rest of the delimiter line
    pos++;
    const headers = {};
    for (;;) {
      let end = pos;
      while (end < bytes.length && bytes[end] !== LF) end++;
      const line = ascii(bytes, pos, end > pos && bytes[end - 1] === CR ? end - 1 : end);
      pos = end + 1;
      if (line === "" || end >= bytes.length) break;
      const colon = line.indexOf(":");
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const declared = Number(headers["content-length"]);
    let end;
    if (Number.isInteger(declared) && declared >= 0 && pos + declared <= bytes.length) {
      end = pos + declared;
    } else {
      end = findBytes(bytes, delimiter, pos);
      if (end === -1) throw new Error("multipart body cut short (no closing delimiter)");
    }
    parts.push({ headers, body: bytes.subarray(pos, end) });
    const next = findBytes(bytes, delimiter, end);
    if (next === -1) throw new Error("multipart body cut short (no closing delimiter)");
    pos = next + 2; // at "--boundary"
  }
  return parts;
}

function joined(a, b) {
  if (!a.length) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * A multipart/related body read as it arrives (`push` each chunk of the response stream, then
 * `finish`). A part that gives its Content-Length (the archive's frames do) is written straight
 * into an ArrayBuffer of its own, at offset 0: no second copy of an 18 MB frame, no scan of it for
 * the delimiter, a 16-bit view without realignment, and `expected` tells from the first chunk how
 * many bytes are coming. Parts without a Content-Length are left to parseMultipart at the end.
 */
export class MultipartReader {
  constructor(contentType) {
    const boundary = boundaryOf(contentType);
    if (!boundary) throw new Error(`not a multipart body: ${contentType}`);
    this.contentType = contentType;
    this.dash = Uint8Array.from(`--${boundary}`, (c) => c.charCodeAt(0));
    this.parts = [];
    this.pending = new Uint8Array(0); // bytes of a delimiter and part headers not complete yet
    this.body = null; // the part being filled: {headers, bytes, filled}
    this.rest = null; // from the first part without a Content-Length on: chunks for parseMultipart
    this.closed = false;
    this.received = 0;
    this.expected = 0; // bytes of the parts whose length is known, with what came before them
  }

  push(chunk) {
    this.received += chunk.length;
    let data = chunk;
    let pos = 0;
    while (pos < data.length) {
      if (this.rest) {
        this.rest.push(data.subarray(pos));
        return;
      }
      if (this.closed) return; // the epilogue
      const body = this.body;
      if (body) {
        const n = Math.min(body.bytes.length - body.filled, data.length - pos);
        body.bytes.set(data.subarray(pos, pos + n), body.filled);
        body.filled += n;
        pos += n;
        if (body.filled === body.bytes.length) this.endPart();
        continue;
      }
      data = joined(this.pending, data.subarray(pos));
      pos = this.head(data);
      this.pending = pos < 0 ? data : new Uint8Array(0);
      if (pos < 0) return; // the headers are not all in yet
    }
  }

  /** The bytes of the part being read that are in so far (its own buffer, from offset 0), or null. */
  get partial() {
    return this.body ? this.body.bytes.subarray(0, this.body.filled) : null;
  }

  endPart() {
    this.parts.push({ headers: this.body.headers, body: this.body.bytes });
    this.body = null;
  }

  /** Read a delimiter and the part headers at the start of `data`: the offset of the part's body,
   * or -1 when more bytes are needed. */
  head(data) {
    const at = findBytes(data, this.dash, 0);
    if (at === -1 || data.length < at + this.dash.length + 2) return -1;
    const pos = at + this.dash.length;
    if (data[pos] === 45 && data[pos + 1] === 45) {
      this.closed = true; // "--boundary--"
      return data.length;
    }
    let blank = -1; // the LF that ends the last header line (CRLF CRLF, or LF LF)
    for (let i = pos; i < data.length - 1 && blank === -1; i++) {
      if (data[i] === LF && (data[i + 1] === LF || (data[i + 1] === CR && data[i + 2] === LF))) blank = i;
    }
    if (blank === -1) return -1;
    const bodyStart = blank + (data[blank + 1] === LF ? 2 : 3);
    const headers = {};
    for (const line of ascii(data, pos, blank).split(/\r?\n/).slice(1)) { // after the delimiter line
      const colon = line.indexOf(":");
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const declared = /^\d+$/.test(headers["content-length"] || "") ? Number(headers["content-length"]) : NaN;
    if (!Number.isSafeInteger(declared)) {
      this.rest = [data.subarray(at)];
      return data.length;
    }
    this.body = { headers, bytes: new Uint8Array(declared), filled: 0 };
    this.expected = this.received - (data.length - bodyStart) + declared;
    if (declared === 0) this.endPart();
    return bodyStart;
  }

  /** The parts, each body a Uint8Array over an ArrayBuffer of its own; throws when the body was cut short. */
  finish() {
    if (this.body) throw new Error("multipart body cut short (a part ends early)");
    if (this.rest) {
      const total = this.rest.reduce((n, c) => n + c.length, 0);
      const bytes = new Uint8Array(total);
      let at = 0;
      for (const c of this.rest) {
        bytes.set(c, at);
        at += c.length;
      }
      this.rest = null;
      for (const p of parseMultipart(bytes, this.contentType)) this.parts.push({ headers: p.headers, body: p.body.slice() });
    } else if (!this.closed) throw new Error("multipart body cut short (no closing delimiter)");
    return this.parts;
  }
}

/**
 * A frame's native little-endian bytes as raw words: Uint16Array for 16 bits allocated, Uint8Array
 * for 8 (the words stay unsigned: imaging.js masks and sign-extends through its tables). A body
 * at an odd offset is copied once so the 16-bit view is aligned.
 */
export function framePixels(body, info) {
  const count = info.rows * info.columns * info.samplesPerPixel;
  if (info.bitsAllocated === 8) {
    if (body.length < count) throw new Error(`frame has ${body.length} bytes, ${count} expected`);
    return body.subarray(0, count);
  }
  if (info.bitsAllocated === 16) {
    if (body.length < count * 2) throw new Error(`frame has ${body.length} bytes, ${count * 2} expected`);
    let source = body;
    if (source.byteOffset % 2 !== 0) source = body.slice(0, count * 2);
    return new Uint16Array(source.buffer, source.byteOffset, count);
  }
  throw new Error(`${info.bitsAllocated} bits allocated: the viewer shows 8 and 16-bit data`);
}
