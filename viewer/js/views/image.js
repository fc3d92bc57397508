// Image view: one image, or two side by side with synchronised zoom and pan; toolbar, evaluation
// panel (measurement, line profile, ROI statistics with SNR and normalised SNR), DICOM header view
// with NDE names, status bar, keyboard shortcuts.

import { T, isoDate, value } from "../dicom.js";
import { formatNumber, normalisedSnr } from "../imaging.js";
import { ndeNames } from "../names.js";
import { linePlot } from "../plot.js";
import { clear, h, notice } from "../ui.js";
import { TOOLS, Viewport, unitOf } from "../viewport.js";

const SRB_KEY = "ndt-viewer.srb";

const SHORTCUTS = [
  ["W", "window/level tool (or drag with the right button)"],
  ["P", "pan tool (or drag with the middle button)"],
  ["Z", "zoom tool (or the mouse wheel)"],
  ["M", "measure a length"],
  ["L", "line profile"],
  ["R", "rectangular ROI statistics"],
  ["F", "fit to the viewport (or double-click)"],
  ["1", "1:1, one image pixel per screen pixel"],
  ["+ / −", "zoom in / out"],
  ["I", "invert"],
  ["A", "automatic window (1–99 %)"],
  ["0", "the image's own window"],
  ["← / →", "previous / next frame"],
  ["Home / End", "first / last frame"],
  ["Space", "play / pause the cine loop"],
  ["Tab", "switch the active image (side by side)"],
  ["H", "DICOM header"],
  ["Delete", "clear the measurements"],
  ["?", "this list"],
];

/** Two decimals for statistics (what an inspector writes in a report); exponent only when huge. */
function fixed(x) {
  if (!Number.isFinite(x)) return x === Infinity ? "∞" : "-";
  return Math.abs(x) < 1e9 ? x.toFixed(2) : x.toPrecision(6);
}

function parseRef(text) {
  const [study, series, instance] = String(text || "").split("/");
  return study && series && instance ? { study, series, instance } : null;
}

function headerValue(element) {
  if (!element) return "";
  if (element.BulkDataURI) return "(bulk data)";
  if (element.InlineBinary) return `(binary, ${Math.floor((element.InlineBinary.length * 3) / 4)} bytes)`;
  const vals = element.Value || [];
  if (element.vr === "SQ") return `${vals.length} item${vals.length === 1 ? "" : "s"}`;
  return vals.map((v) => (v && typeof v === "object" ? v.Alphabetic || JSON.stringify(v) : String(v))).join("\\");
}

function headerRows(ds, names, depth = 0, out = []) {
  for (const tag of Object.keys(ds).sort()) {
    const element = ds[tag];
    out.push({ tag, depth, name: names.label(tag), keyword: names.keyword(tag), vr: element.vr || "", value: headerValue(element), nde: Boolean(names.nde[tag]) });
    if (element.vr === "SQ" && Array.isArray(element.Value) && depth < 6) {
      element.Value.forEach((item, i) => {
        out.push({ tag: "", depth: depth + 1, name: `Item ${i + 1}`, keyword: "", vr: "", value: "", item: true });
        headerRows(item || {}, names, depth + 2, out);
      });
    }
  }
  return out;
}

export function renderImages(root, params) {
  clear(root);
  const refs = [parseRef(params.get("a")), parseRef(params.get("b"))].filter(Boolean);
  const partId = params.get("part") || "";
  if (!refs.length) {
    root.append(notice("error", "No image named in the address: open one from a part's page.", "view-error"), h("p", {}, h("a", { href: "#/worklist" }, "Worklist")));
    return () => {};
  }
  const viewports = refs.map((_, i) => new Viewport(i, { preview: params.get("preview") !== "0" }));
  let active = viewports[0];
  let cine = null;
  let sync = true;
  let headerOpen = false;

  // -- toolbar ---------------------------------------------------------------------------------
  const toolButtons = Object.entries(TOOLS).map(([tool, label]) =>
    h("button", { type: "button", class: "tool", "data-testid": `tool-${tool}`, "data-tool": tool, title: label, "aria-pressed": tool === "wl" ? "true" : "false", onclick: () => setTool(tool) }, label),
  );
  const btn = (testid, text, title, onclick) => h("button", { type: "button", class: "tool", "data-testid": testid, title, onclick }, text);
  const invertButton = btn("invert", "Invert", "Invert (I)", () => active.setInvert(!active.invert));
  const center = h("input", { type: "number", step: "any", id: "wl-center", "data-testid": "wl-center", class: "num-input", onchange: applyNumericWindow });
  const width = h("input", { type: "number", step: "any", min: "1", id: "wl-width", "data-testid": "wl-width", class: "num-input", onchange: applyNumericWindow });
  // Filled when opened: the automatic presets need a histogram of the whole frame.
  const presets = h("select", { "data-testid": "wl-preset", "aria-label": "Window presets", onchange: applyPreset, onfocus: fillPresets, onpointerdown: fillPresets });
  presets.append(h("option", { value: "" }, "Presets…"));
  const slider = h("input", { type: "range", min: "1", max: "1", value: "1", "data-testid": "frame-slider", "aria-label": "Frame", oninput: () => active.setFrame(Number(slider.value)) });
  const frameReadout = h("span", { class: "readout", "data-testid": "frame-readout" }, "");
  const playButton = btn("cine-play", "▶ Play", "Play / pause (Space)", toggleCine);
  const fps = h("input", { type: "number", min: "1", max: "60", step: "1", value: "10", class: "num-input small", "data-testid": "cine-fps", "aria-label": "Frames per second", onchange: () => cine && (stopCine(), toggleCine()) });
  const frameGroup = h(
    "div",
    { class: "tool-group", "data-testid": "frame-controls", hidden: true },
    btn("frame-prev", "◀", "Previous frame (←)", () => step(-1)),
    slider,
    btn("frame-next", "▶", "Next frame (→)", () => step(1)),
    frameReadout,
    playButton,
    h("label", { class: "inline" }, fps, "fps"),
  );
  const syncBox = h("input", { type: "checkbox", checked: true, "data-testid": "sync", onchange: () => (sync = syncBox.checked) });
  const headerButton = btn("header-toggle", "Header", "DICOM header (H)", () => toggleHeader());
  const toolbar = h(
    "div",
    { class: "toolbar", role: "toolbar", "aria-label": "Image tools", "data-testid": "toolbar" },
    h("div", { class: "tool-group" }, toolButtons),
    h(
      "div",
      { class: "tool-group" },
      btn("fit", "Fit", "Fit (F)", () => active.fit()),
      btn("one-to-one", "1:1", "One image pixel per screen pixel (1)", () => active.oneToOne()),
      btn("zoom-in", "+", "Zoom in (+)", () => active.zoomBy(1.25)),
      btn("zoom-out", "−", "Zoom out (−)", () => active.zoomBy(0.8)),
      invertButton,
    ),
    h("div", { class: "tool-group" }, h("label", { for: "wl-center", class: "inline" }, "C"), center, h("label", { for: "wl-width", class: "inline" }, "W"), width, presets),
    frameGroup,
    h(
      "div",
      { class: "tool-group end" },
      viewports.length > 1 ? h("label", { class: "inline", title: "Zoom and pan both images together" }, syncBox, "Sync zoom/pan") : null,
      headerButton,
      btn("clear-annotations", "Clear", "Clear measurements (Delete)", () => active.clearAnnotations()),
      btn("help", "?", "Keyboard shortcuts (?)", () => toggleHelp()),
      partId ? h("a", { class: "tool", href: `#/part/${encodeURIComponent(partId)}`, "data-testid": "back-to-part" }, "Part") : null,
    ),
  );

  // -- panel -------------------------------------------------------------------------------------
  const measureBox = h("div", { "data-testid": "measure-panel" });
  const profileBox = h("div", { "data-testid": "profile-panel" });
  const roiBox = h("div", { "data-testid": "roi-panel" });
  const srb = h("input", {
    type: "number",
    min: "1",
    step: "any",
    id: "srb",
    class: "num-input",
    value: sessionStorage.getItem(SRB_KEY) || "",
    placeholder: "e.g. 100",
    "data-testid": "srb-input",
    oninput: () => {
      sessionStorage.setItem(SRB_KEY, srb.value);
      updatePanel();
    },
  });
  const headerFilter = h("input", { type: "search", placeholder: "Filter: name, keyword, tag or value", "data-testid": "header-filter", "aria-label": "Filter the header", oninput: () => fillHeader() });
  const headerTable = h("div", { class: "header-table-wrap" });
  const headerPanel = h("section", { class: "panel-section header-panel", "data-testid": "header-panel", hidden: true }, h("h3", {}, "DICOM header"), headerFilter, headerTable);
  const panel = h(
    "aside",
    { class: "side-panel", "aria-label": "Evaluation" },
    h("section", { class: "panel-section" }, h("h3", {}, "Measurement"), measureBox),
    h("section", { class: "panel-section" }, h("h3", {}, "Line profile"), profileBox),
    h(
      "section",
      { class: "panel-section" },
      h("h3", {}, "ROI statistics"),
      roiBox,
      h("div", { class: "field inline-field" }, h("label", { for: "srb" }, "SRb (µm)"), srb),
      h("p", { class: "hint" }, "Basic spatial resolution from the duplex wire IQI (ISO 19232-5); gives SNR", h("sub", {}, "N"), " = SNR × 88.6 µm / SRb."),
    ),
    headerPanel,
  );

  // -- status bar --------------------------------------------------------------------------------
  const status = {};
  const statusItem = (key, title) => (status[key] = h("span", { class: "status-item", "data-testid": `status-${key}`, title }, ""));
  const statusBar = h(
    "footer",
    { class: "statusbar", "data-testid": "statusbar" },
    statusItem("pos", "Pixel under the cursor (column, row)"),
    statusItem("stored", "Stored value"),
    statusItem("value", "Modality value (after Rescale Slope / Intercept)"),
    statusItem("zoom", "Zoom"),
    statusItem("wl", "Window centre / width"),
    statusItem("frame", "Frame"),
    statusItem("cal", "Length calibration"),
    statusItem("render", "Time of the last redraw"),
  );

  const help = h(
    "div",
    { class: "help", "data-testid": "shortcuts", hidden: true, role: "dialog", "aria-label": "Keyboard shortcuts" },
    h("h3", {}, "Keyboard shortcuts"),
    h("dl", {}, SHORTCUTS.map(([k, d]) => [h("dt", {}, h("kbd", {}, k)), h("dd", {}, d)])),
    h("button", { type: "button", class: "btn", onclick: () => toggleHelp(false) }, "Close"),
  );

  const grid = h("div", { class: `viewports n${viewports.length}` }, viewports.map((v) => v.root));
  const view = h("section", { class: "imageview", "data-testid": "imageview" }, toolbar, h("div", { class: "workspace" }, grid, panel), statusBar, help);
  root.append(view);

  // -- behaviour -----------------------------------------------------------------------------------
  function setTool(tool) {
    viewports.forEach((v) => v.setTool(tool));
    toolButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.tool === tool)));
  }

  function setActive(vp) {
    active = vp;
    viewports.forEach((v) => v.root.classList.toggle("active", v === vp && viewports.length > 1));
    delete presets.dataset.filledFor;
    refresh();
    if (headerOpen) fillHeader();
  }

  function applyNumericWindow() {
    active.setWindow({ center: Number(center.value), width: Number(width.value) });
  }

  function applyPreset() {
    const chosen = active.presets()[Number(presets.value)];
    if (chosen) active.setWindow(chosen.window);
    presets.value = "";
  }

  function fillPresets() {
    if (presets.dataset.filledFor === String(active.index) + (active.pixels ? active.frame : "")) return;
    presets.dataset.filledFor = String(active.index) + (active.pixels ? active.frame : "");
    clear(presets).append(h("option", { value: "" }, "Presets…"), (active.info ? active.presets() : []).map((p, i) => h("option", { value: String(i) }, `${p.name} (C ${formatNumber(p.window.center, 5)}, W ${formatNumber(p.window.width, 5)})`)));
  }

  function step(delta) {
    if (active.frames > 1) active.setFrame(((active.frame - 1 + delta + active.frames) % active.frames) + 1);
  }

  function toggleCine() {
    if (cine) return stopCine();
    const vp = active;
    if (vp.frames <= 1) return;
    playButton.textContent = "❚❚ Pause";
    playButton.setAttribute("aria-pressed", "true");
    let busy = false;
    cine = setInterval(async () => {
      if (busy) return; // the next frame is still on its way: hold rather than skip
      busy = true;
      try {
        await vp.setFrame((vp.frame % vp.frames) + 1);
      } finally {
        busy = false;
      }
    }, 1000 / Math.min(60, Math.max(1, Number(fps.value) || 10)));
  }

  function stopCine() {
    clearInterval(cine);
    cine = null;
    playButton.textContent = "▶ Play";
    playButton.setAttribute("aria-pressed", "false");
  }

  function toggleHeader(open = !headerOpen) {
    headerOpen = open;
    headerPanel.hidden = !open;
    headerButton.setAttribute("aria-pressed", String(open));
    if (open) fillHeader();
  }

  function toggleHelp(open) {
    help.hidden = open === undefined ? !help.hidden : !open;
  }

  async function fillHeader() {
    if (!active.meta) {
      clear(headerTable).append(notice("info", "No header loaded.", "header-empty"));
      return;
    }
    const names = await ndeNames();
    const filter = headerFilter.value.trim().toLowerCase();
    const rows = headerRows(active.meta, names).filter(
      (r) => !filter || (!r.item && [r.tag, r.name, r.keyword, r.value].some((s) => String(s).toLowerCase().includes(filter))),
    );
    const tagText = (tag) => (tag ? `(${tag.slice(0, 4)},${tag.slice(4)})` : "");
    clear(headerTable).append(
      h(
        "table",
        { class: "grid compact", "data-testid": "header-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Tag"), h("th", {}, "Name"), h("th", {}, "VR"), h("th", {}, "Value"))),
        h(
          "tbody",
          {},
          rows.map((r) =>
            h(
              "tr",
              { "data-testid": "header-row", "data-tag": r.tag, class: r.item ? "item-row" : r.nde ? "nde-row" : "" },
              h("td", { class: "mono" }, tagText(r.tag)),
              h("td", { style: `padding-left:${0.4 + r.depth * 0.8}em`, title: r.keyword }, r.name),
              h("td", { class: "mono" }, r.vr),
              h("td", { class: "value" }, r.value),
            ),
          ),
        ),
      ),
    );
  }

  function refresh() {
    const vp = active;
    if (vp.info && vp.window) {
      if (document.activeElement !== center) center.value = String(Number(vp.window.center.toFixed(3)));
      if (document.activeElement !== width) width.value = String(Number(vp.window.width.toFixed(3)));
      invertButton.setAttribute("aria-pressed", String(vp.invert));
      const frames = vp.frames;
      frameGroup.hidden = frames <= 1;
      slider.max = String(frames);
      slider.value = String(vp.frame);
      frameReadout.textContent = `${vp.frame} / ${frames}`;
      status.zoom.textContent = `${Math.round(vp.t.scale * 100)} %`;
      status.wl.textContent = vp.rgb ? "colour" : `C ${formatNumber(vp.window.center, 6)} / W ${formatNumber(vp.window.width, 6)}`;
      status.frame.textContent = frames > 1 ? `frame ${vp.frame} / ${frames}` : "";
      status.cal.textContent = vp.cal.label;
      status.cal.dataset.unit = vp.cal.unit;
      status.render.textContent = `redraw ${vp.lastRenderMs.toFixed(1)} ms`;
    }
    updatePanel();
  }

  function updatePanel() {
    const vp = active;
    clear(measureBox);
    const m = vp.info ? vp.measurement() : null;
    if (m) {
      measureBox.append(
        h("div", { class: "big-readout" }, h("span", { "data-testid": "measure-length" }, formatNumber(m.length, 5)), " ", h("span", { "data-testid": "measure-unit" }, m.unit)),
        h("div", { class: "muted", "data-testid": "measure-px" }, `${formatNumber(m.lengthPx, 5)} px`),
      );
    } else measureBox.append(h("p", { class: "hint" }, "Choose Measure (M) and drag across the image."));
    if (vp.cal) {
      measureBox.append(h("div", { class: vp.cal.unit === "px" ? "cal-warning" : "muted", "data-testid": "calibration-label" }, vp.cal.unit === "px" ? "Uncalibrated, px: no Pixel Spacing or Imager Pixel Spacing in this image" : `Calibration: ${vp.cal.label}`));
    }

    clear(profileBox);
    const p = vp.info ? vp.profile() : null;
    if (p) {
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of p.values) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      profileBox.append(
        linePlot({ xs: p.positions, ys: p.values, xLabel: `distance from A (${p.unit})`, yLabel: unitOf(vp.info.rescaleType) ? `value (${unitOf(vp.info.rescaleType)})` : "value", testid: "profile-plot" }),
        h(
          "dl",
          { class: "stats" },
          h("dt", {}, "Length"),
          h("dd", { "data-testid": "profile-length" }, `${formatNumber(p.length, 5)} ${p.unit}`),
          h("dt", {}, "Min"),
          h("dd", { "data-testid": "profile-min" }, formatNumber(lo, 6)),
          h("dt", {}, "Max"),
          h("dd", { "data-testid": "profile-max" }, formatNumber(hi, 6)),
          h("dt", {}, "Samples"),
          h("dd", { "data-testid": "profile-samples" }, String(p.values.length)),
        ),
      );
      profileBox.dataset.values = JSON.stringify(Array.from(p.values, (v) => Number(v.toFixed(3))));
    } else {
      delete profileBox.dataset.values;
      profileBox.append(h("p", { class: "hint" }, "Choose Line profile (L) and drag from A to B."));
    }

    clear(roiBox);
    const r = vp.info ? vp.roiStats() : null;
    if (r && r.n) {
      roiBox.dataset.rect = `${r.rect.x0},${r.rect.y0},${r.rect.x1},${r.rect.y1}`;
      const snrn = normalisedSnr(r.snr, srb.value);
      roiBox.append(
        h(
          "dl",
          { class: "stats" },
          h("dt", {}, "Mean"),
          h("dd", { "data-testid": "roi-mean" }, fixed(r.mean)),
          h("dt", {}, "SD"),
          h("dd", { "data-testid": "roi-sd" }, fixed(r.sd)),
          h("dt", {}, "SNR"),
          h("dd", { "data-testid": "roi-snr" }, fixed(r.snr)),
          h("dt", {}, h("abbr", { title: "normalised signal-to-noise ratio" }, "SNR", h("sub", {}, "N"))),
          h("dd", { "data-testid": "roi-snrn" }, Number.isFinite(snrn) ? fixed(snrn) : "enter SRb"),
          h("dt", {}, "Min / max"),
          h("dd", { "data-testid": "roi-minmax" }, `${formatNumber(r.min, 6)} / ${formatNumber(r.max, 6)}`),
          h("dt", {}, "Pixels"),
          h("dd", { "data-testid": "roi-n" }, `${r.n} (${r.rect.x1 - r.rect.x0} × ${r.rect.y1 - r.rect.y0})`),
          h("dt", {}, "Size"),
          h("dd", {}, r.unit === "px" ? "px only" : `${formatNumber(r.widthMm, 4)} × ${formatNumber(r.heightMm, 4)} mm`),
        ),
      );
    } else {
      delete roiBox.dataset.rect;
      roiBox.append(h("p", { class: "hint" }, "Choose ROI (R) and drag a rectangle over a uniform area."));
    }
  }

  function onCursor(event) {
    const p = event.detail;
    if (!p) {
      status.pos.textContent = status.stored.textContent = status.value.textContent = "";
      return;
    }
    status.pos.textContent = `x ${p.x}, y ${p.y}`;
    if (p.rgb) {
      status.stored.textContent = `RGB ${p.rgb.join(", ")}`;
      status.value.textContent = "";
    } else {
      status.stored.textContent = `stored ${p.stored}`;
      status.value.textContent = `value ${formatNumber(p.value, 7)}${p.unit ? ` ${p.unit}` : ""}`;
    }
  }

  viewports.forEach((vp) => {
    vp.addEventListener("activate", () => vp !== active && setActive(vp));
    vp.addEventListener("change", () => {
      if (vp === active) refresh();
    });
    vp.addEventListener("cursor", onCursor);
    vp.addEventListener("transform", (e) => {
      if (vp === active) refresh();
      if (sync) viewports.forEach((other) => other !== vp && other.info && other.setTransform(e.detail, true));
    });
  });

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const target = e.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "SELECT" || target.tagName === "TEXTAREA")) return;
    const key = e.key;
    const tools = { w: "wl", p: "pan", z: "zoom", m: "measure", l: "profile", r: "roi" };
    const lower = key.length === 1 ? key.toLowerCase() : key;
    let handled = true;
    if (tools[lower]) setTool(tools[lower]);
    else if (lower === "f") active.fit();
    else if (key === "1") active.oneToOne();
    else if (key === "+" || key === "=") active.zoomBy(1.25);
    else if (key === "-") active.zoomBy(0.8);
    else if (lower === "i") active.setInvert(!active.invert);
    else if (lower === "a") active.info && active.setWindow(active.presets().find((p) => p.name.startsWith("Auto")).window);
    else if (key === "0") active.defaultWindow && active.setWindow(active.defaultWindow);
    else if (key === "ArrowRight" || key === "ArrowDown" || key === "PageDown") step(1);
    else if (key === "ArrowLeft" || key === "ArrowUp" || key === "PageUp") step(-1);
    else if (key === "Home") active.setFrame(1);
    else if (key === "End") active.setFrame(active.frames);
    else if (key === " ") toggleCine();
    else if (lower === "h") toggleHeader();
    else if (key === "Delete" || key === "Backspace") active.clearAnnotations();
    else if (key === "?") toggleHelp();
    else if (key === "Escape") toggleHelp(false);
    else if (key === "Tab" && viewports.length > 1 && target && target.closest && target.closest(".viewport")) {
      const next = viewports[(viewports.indexOf(active) + 1) % viewports.length];
      setActive(next);
      next.root.focus();
    } else handled = false;
    if (handled) e.preventDefault();
  }
  document.addEventListener("keydown", onKey);

  // -- load ----------------------------------------------------------------------------------------
  viewports.forEach((vp, i) => {
    vp.load(refs[i]).then(() => {
      if (!vp.meta) return;
      const m = vp.meta;
      vp.cornerTL.textContent = [value(m, T.PatientID), isoDate(value(m, T.StudyDate)), value(m, T.Modality), `#${value(m, T.InstanceNumber) ?? ""}`].filter(Boolean).join(" · ");
      if (vp.info) fps.value = String(Math.round(vp.info.frameRate));
      if (vp === active) {
        delete presets.dataset.filledFor;
        refresh();
        if (headerOpen) fillHeader();
      }
    });
  });
  setActive(viewports[0]);
  viewports[0].root.focus({ preventScroll: true });
  document.title = `NDT Archive · ${partId || "Image"}`;

  return () => {
    stopCine();
    document.removeEventListener("keydown", onKey);
    viewports.forEach((v) => v.destroy());
    document.title = "NDT Archive · Viewer";
  };
}

