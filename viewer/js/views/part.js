// Part page: one component, its inspections on a timeline, each inspection's series with
// thumbnails, and the images to open, alone or two side by side (this year's scan against last
// year's).

import * as api from "../api.js";
import { T, isoDate, number, value } from "../dicom.js";
import { ndeNames } from "../names.js";
import { clear, h, notice, routeHref, svg } from "../ui.js";

/** Runs thumbnail requests a few at a time, newest first, and drops them when the view goes. */
class Queue {
  constructor(limit, signal) {
    this.limit = limit;
    this.signal = signal;
    this.running = 0;
    this.waiting = [];
  }
  push(task) {
    this.waiting.push(task);
    this.next();
  }
  next() {
    while (this.running < this.limit && this.waiting.length && !this.signal.aborted) {
      const task = this.waiting.shift();
      this.running++;
      task()
        .catch(() => {})
        .finally(() => {
          this.running--;
          this.next();
        });
    }
  }
}

function thumbnail(path, alt, queue, urls, testid) {
  const img = h("img", { alt, class: "thumb-img", "data-testid": testid, decoding: "async" });
  const box = h("div", { class: "thumb loading" }, img);
  queue.push(async () => {
    try {
      const url = await api.imageUrl(path, {}, { signal: queue.signal });
      urls.push(url);
      img.src = url;
      box.classList.remove("loading");
    } catch (error) {
      if (error.name === "AbortError") return;
      box.classList.remove("loading");
      box.classList.add("failed");
      box.title = error.kind === "notfound" ? "no image to show" : error.message;
    }
  });
  return box;
}

function timeline(inspections, onPick) {
  const dated = inspections.filter((i) => i.date);
  const width = 900;
  const height = 84;
  const pad = 40;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "timeline", role: "img", "aria-label": "Inspections over time", "data-testid": "timeline" });
  root.append(svg("line", { x1: pad, x2: width - pad, y1: 44, y2: 44, class: "axis" }));
  if (!dated.length) {
    root.append(svg("text", { x: width / 2, y: 30, "text-anchor": "middle", class: "tl-label" }, "No dated inspections"));
    return root;
  }
  const times = dated.map((i) => Date.parse(i.date));
  let lo = Math.min(...times);
  let hi = Math.max(...times);
  if (hi - lo < 86400000 * 30) {
    lo -= 86400000 * 15;
    hi += 86400000 * 15;
  }
  const x = (t) => pad + ((t - lo) / (hi - lo)) * (width - 2 * pad);
  const firstYear = new Date(lo).getUTCFullYear();
  const lastYear = new Date(hi).getUTCFullYear();
  const step = Math.max(1, Math.ceil((lastYear - firstYear + 1) / 12));
  for (let y = firstYear; y <= lastYear + 1; y += step) {
    const t = Date.UTC(y, 0, 1);
    if (t < lo || t > hi) continue;
    root.append(svg("line", { x1: x(t), x2: x(t), y1: 40, y2: 48, class: "tick" }), svg("text", { x: x(t), y: 62, "text-anchor": "middle", class: "tl-year" }, String(y)));
  }
  dated.forEach((inspection, index) => {
    const cx = x(Date.parse(inspection.date));
    const g = svg(
      "g",
      { class: "tl-point", tabindex: "0", role: "button", "data-testid": "timeline-point", "data-study": inspection.study_instance_uid, "aria-label": `Inspection ${inspection.date}` },
      svg("circle", { cx, cy: 44, r: 7 }),
      svg("text", { x: cx, y: index % 2 ? 80 : 24, "text-anchor": "middle", class: "tl-label" }, `${inspection.date} ${inspection.methods.join("/")}`),
      svg("title", {}, `${inspection.date} · ${inspection.methods.join(", ")} · ${inspection.instance_count} images`),
    );
    g.addEventListener("click", () => onPick(inspection.study_instance_uid));
    g.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && onPick(inspection.study_instance_uid));
    root.append(g);
  });
  return root;
}

export function renderPart(root, partId, params) {
  clear(root);
  const controller = new AbortController();
  const urls = [];
  const queue = new Queue(4, controller.signal);
  const selected = new Map(); // "study/series/instance" -> label
  const view = h("section", { class: "part", "data-testid": "part" });
  root.append(view);
  view.append(notice("loading", `Loading part ${partId}…`, "part-loading"));

  const compareButton = h("button", { type: "button", class: "btn primary", disabled: true, "data-testid": "compare-open", onclick: openCompare }, "Open side by side");
  const compareText = h("span", { "data-testid": "compare-status" }, "Tick two images to compare them side by side.");
  const compareBar = h("div", { class: "compare-bar", "data-testid": "compare-bar" }, compareText, compareButton);

  function updateCompare() {
    const n = selected.size;
    compareButton.disabled = n !== 2;
    compareText.textContent = n === 0 ? "Tick two images to compare them side by side." : n === 1 ? "1 image ticked: tick one more." : n === 2 ? `Compare ${[...selected.values()].join(" with ")}` : `${n} images ticked: tick exactly two.`;
  }

  function openCompare() {
    const [a, b] = [...selected.keys()];
    location.hash = routeHref("/view", { a, b, part: partId });
  }

  let decisionsByStudy = new Map();
  Promise.all([
    api.part(partId, { signal: controller.signal }),
    ndeNames(),
    api.decisions(partId, { signal: controller.signal }).catch((error) => (error.name === "AbortError" ? Promise.reject(error) : [])),
  ])
    .then(([part, names, decisions]) => {
      decisionsByStudy = new Map();
      for (const d of decisions) {
        if (!decisionsByStudy.has(d.study_instance_uid)) decisionsByStudy.set(d.study_instance_uid, []);
        decisionsByStudy.get(d.study_instance_uid).push(d);
      }
      show(part, names);
    })
    .catch((error) => {
      if (error.name === "AbortError") return;
      clear(view).append(
        notice("error", error.kind === "notfound" ? `There is no part with the ID ${partId} in the archive.` : error.message, "part-error"),
        h("p", {}, h("a", { href: "#/worklist" }, "Back to the worklist")),
      );
    });

  function show(part, names) {
    clear(view);
    const attributes = Object.entries(part.attributes || {}).map(([column, v]) =>
      h("div", { class: "attr" }, h("dt", {}, names.byColumn[column] || column), h("dd", {}, column.endsWith("_date") && isoDate(v) ? isoDate(v) : Array.isArray(v) ? v.join(", ") : String(v).replaceAll("\\", ", "))),
    );
    const evidence = h(
      "button",
      {
        type: "button",
        class: "btn",
        "data-testid": "evidence",
        hidden: !api.can("audit"),
        title: "Download the evidence of this part (every version, with hashes and audit trail)",
        onclick: downloadEvidence,
      },
      "Evidence",
    );
    const evidenceStatus = h("span", { class: "muted", "data-testid": "evidence-status", "aria-live": "polite" });

    // The package streams from the archive; the file name is the one it gives (Content-Disposition).
    async function downloadEvidence() {
      evidenceStatus.textContent = "Preparing the evidence…";
      try {
        const response = await api.evidence(part.part_id, { signal: controller.signal });
        const disposition = response.headers.get("Content-Disposition") || "";
        const named = /filename="([^"]+)"/.exec(disposition);
        const blob = await response.blob();
        const a = h("a", { href: URL.createObjectURL(blob), download: named ? named[1] : `evidence-${part.part_id}.zip` });
        document.body.append(a);
        a.click();
        a.remove();
        evidenceStatus.textContent = `Evidence downloaded (${(blob.size / 1e6).toFixed(1)} MB); check it with pacs evidence verify.`;
      } catch (error) {
        evidenceStatus.textContent = error.message;
      }
    }

    view.append(
      h(
        "header",
        { class: "part-head" },
        h("div", {}, h("h1", { class: "view-title", "data-testid": "part-id" }, part.part_id || "(no part ID)"), h("div", { class: "subtitle", "data-testid": "part-name" }, (part.name || "").replaceAll("^", " "))),
        h("div", { class: "part-actions" }, evidenceStatus, evidence, h("a", { class: "btn ghost", href: "#/worklist" }, "Worklist")),
      ),
      h(
        "dl",
        { class: "attrs", "data-testid": "part-attributes" },
        h("div", { class: "attr" }, h("dt", {}, "Inspections"), h("dd", {}, String(part.inspection_count))),
        h("div", { class: "attr" }, h("dt", {}, "Images"), h("dd", {}, String(part.instance_count))),
        h("div", { class: "attr" }, h("dt", {}, "NDE methods"), h("dd", {}, part.methods.join(", "))),
        attributes,
      ),
      timeline(part.inspections, pick),
    );
    const list = h("div", { class: "inspections", "data-testid": "inspections" });
    view.append(list, compareBar);
    const newestFirst = [...part.inspections].reverse();
    for (const inspection of newestFirst) list.append(inspectionCard(inspection));
    const wanted = params.get("study");
    if (wanted) pick(wanted, false);
  }

  function pick(study, smooth = true) {
    const card = view.querySelector(`[data-testid="inspection"][data-study="${CSS.escape(study)}"]`);
    view.querySelectorAll(".inspection.current").forEach((el) => el.classList.remove("current"));
    if (card) {
      card.classList.add("current");
      card.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
    }
  }

  function inspectionCard(inspection) {
    const series = h("div", { class: "series-list" }, notice("loading", "Loading series…", "series-loading"));
    const card = h(
      "article",
      { class: "inspection", "data-testid": "inspection", "data-study": inspection.study_instance_uid },
      h(
        "header",
        {},
        h("h2", {}, inspection.date || "undated", " ", h("span", { class: "method-tags" }, inspection.methods.map((m) => h("span", { class: "tag" }, m)))),
        h(
          "div",
          { class: "muted" },
          [inspection.accession_number && `Work order ${inspection.accession_number}`, inspection.study_id && `Inspection ${inspection.study_id}`, inspection.description, `${inspection.series_count} series, ${inspection.instance_count} images`]
            .filter(Boolean)
            .join(" · "),
        ),
      ),
      decisionList(decisionsByStudy.get(inspection.study_instance_uid) || []),
      series,
    );
    api
      .qido(`/studies/${inspection.study_instance_uid}/series`, {}, { signal: controller.signal })
      .then(({ results }) => {
        clear(series);
        results.sort((a, b) => (number(a, T.SeriesNumber) ?? 0) - (number(b, T.SeriesNumber) ?? 0));
        for (const s of results) series.append(seriesRow(inspection, s));
        if (!results.length) series.append(notice("info", "No series.", "series-empty"));
      })
      .catch((error) => error.name !== "AbortError" && clear(series).append(notice("error", error.message, "series-error")));
    return card;
  }

  // Decisions are shown, never edited here: the newest is the current one, earlier ones are marked
  // superseded. Each names the inspector and the time.
  function decisionList(decisions) {
    if (!decisions.length) return h("p", { class: "muted decisions", "data-testid": "decisions" }, "No decision recorded.");
    const newestFirst = [...decisions].reverse();
    return h(
      "ul",
      { class: "decisions", "data-testid": "decisions" },
      newestFirst.map((d) =>
        h(
          "li",
          { class: d.current ? "decision current" : "decision superseded", "data-testid": "decision", "data-current": String(d.current) },
          h("span", { class: `tag disposition-${d.disposition}` }, d.disposition),
          " ",
          d.comment || "",
          h("span", { class: "muted" }, ` — ${d.user}, ${new Date(d.decided_at).toISOString().replace("T", " ").slice(0, 16)} UTC${d.current ? "" : " (superseded)"}`),
        ),
      ),
    );
  }

  function seriesRow(inspection, s) {
    const study = inspection.study_instance_uid;
    const uid = value(s, T.SeriesInstanceUID);
    const modality = value(s, T.Modality) || "";
    const description = value(s, T.SeriesDescription) || "";
    const images = h("div", { class: "instance-grid" });
    const row = h(
      "section",
      { class: "series", "data-testid": "series", "data-series": uid },
      h(
        "div",
        { class: "series-head" },
        thumbnail(`/studies/${study}/series/${uid}/thumbnail`, `${modality} series ${description}`, queue, urls, "series-thumb"),
        h("div", {}, h("div", { class: "series-title" }, h("span", { class: "tag" }, modality), " ", description || "(no description)"), h("div", { class: "muted" }, `Series ${number(s, T.SeriesNumber) ?? "-"} · ${number(s, T.NumberOfSeriesRelatedInstances) ?? "?"} images`)),
      ),
      images,
    );
    api
      .qido(`/studies/${study}/series/${uid}/instances`, {}, { signal: controller.signal })
      .then(({ results }) => {
        results.sort((a, b) => (number(a, T.InstanceNumber) ?? 0) - (number(b, T.InstanceNumber) ?? 0));
        for (const inst of results) images.append(instanceTile(inspection, uid, modality, inst));
      })
      .catch((error) => error.name !== "AbortError" && images.append(notice("error", error.message, "instances-error")));
    return row;
  }

  function instanceTile(inspection, series, modality, inst) {
    const study = inspection.study_instance_uid;
    const uid = value(inst, T.SOPInstanceUID);
    const key = `${study}/${series}/${uid}`;
    const frames = number(inst, T.NumberOfFrames) ?? 1;
    const label = `${inspection.date || "undated"} ${modality} #${number(inst, T.InstanceNumber) ?? ""}`.trim();
    const href = routeHref("/view", { a: key, part: partId });
    const tick = h("input", {
      type: "checkbox",
      "aria-label": `Compare ${label}`,
      "data-testid": "compare-tick",
      onchange: () => {
        if (tick.checked) selected.set(key, label);
        else selected.delete(key);
        updateCompare();
      },
    });
    return h(
      "figure",
      { class: "instance", "data-testid": "instance", "data-instance": uid },
      h("a", { href, "data-testid": "open-instance", title: `Open ${label}` }, thumbnail(`/studies/${study}/series/${series}/instances/${uid}/thumbnail`, label, queue, urls, "instance-thumb")),
      h(
        "figcaption",
        {},
        h("span", {}, `#${number(inst, T.InstanceNumber) ?? "-"}`),
        h("span", { class: "muted" }, `${number(inst, T.Columns) ?? "?"}×${number(inst, T.Rows) ?? "?"}${frames > 1 ? ` · ${frames} frames` : ""}`),
        h("label", { class: "tick" }, tick, "compare"),
      ),
    );
  }

  return () => {
    controller.abort();
    urls.forEach((u) => URL.revokeObjectURL(u));
  };
}
