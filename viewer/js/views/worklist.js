// Worklist: inspections (QIDO-RS studies) by part ID, component name, date range and NDE method.
// The search lives in the URL (#/worklist?part=...), so a search can be bookmarked and shared.
//
// QIDO-RS has no sort parameter on this archive (results come in arrival order), so the viewer
// asks for up to MAX_RESULTS matches at once and sorts and pages them itself; when more match, it
// says so and asks for a narrower search.

import * as api from "../api.js";
import { T, dateRange, isoDate, number, personName, value, values } from "../dicom.js";
import { clear, go, h, notice } from "../ui.js";

export const MAX_RESULTS = 1000;
export const PAGE_SIZE = 25;

export const METHODS = [
  ["", "Any method"],
  ["DX", "DX · digital radiography"],
  ["CR", "CR · computed radiography"],
  ["CT", "CT · computed tomography"],
  ["US", "US · ultrasound"],
  ["EC", "EC · eddy current"],
  ["TG", "TG · thermography"],
  ["OT", "OT · other"],
];

const COLUMNS = [
  ["part", "Part ID"],
  ["component", "Component"],
  ["date", "Date"],
  ["order", "Work order"],
  ["method", "Method"],
  ["images", "Images"],
  ["description", "Description"],
];

/** A search term as QIDO matching: as typed with * or ?, otherwise a prefix. */
export function pattern(text) {
  const s = String(text || "").trim();
  if (!s) return "";
  return /[*?]/.test(s) ? s : `${s}*`;
}

function row(study) {
  return {
    study: value(study, T.StudyInstanceUID),
    part: value(study, T.PatientID) || "",
    component: personName(value(study, T.PatientName)),
    date: isoDate(value(study, T.StudyDate)),
    time: String(value(study, T.StudyTime) || ""),
    order: value(study, T.AccessionNumber) || "",
    method: values(study, T.ModalitiesInStudy).join(", "),
    images: number(study, T.NumberOfStudyRelatedInstances) ?? 0,
    description: value(study, T.StudyDescription) || "",
  };
}

export function compareRows(key, dir) {
  const sign = dir === "desc" ? -1 : 1;
  return (a, b) => {
    let r;
    if (key === "images") r = a.images - b.images;
    else if (key === "date") r = (a.date + a.time).localeCompare(b.date + b.time);
    else r = String(a[key] ?? "").localeCompare(String(b[key] ?? ""), undefined, { numeric: true, sensitivity: "base" });
    return sign * r || a.part.localeCompare(b.part);
  };
}

export function renderWorklist(root, params) {
  clear(root);
  const controller = new AbortController();
  const state = {
    part: params.get("part") || "",
    name: params.get("name") || "",
    from: params.get("from") || "",
    to: params.get("to") || "",
    method: params.get("method") || "",
    sort: params.get("sort") || "date",
    dir: params.get("dir") || (params.get("sort") ? "asc" : "desc"),
    page: Math.max(1, Number(params.get("page")) || 1),
  };
  const searched = Boolean(state.part || state.name || state.from || state.to || state.method || params.get("all"));

  const field = (id, label, attrs) =>
    h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));
  const methodSelect = h(
    "select",
    { id: "wl-method", name: "method", "data-testid": "search-method" },
    METHODS.map(([v, label]) => h("option", { value: v, selected: v === state.method }, label)),
  );
  const form = h(
    "form",
    { class: "search-bar", "data-testid": "search-form", role: "search", onsubmit: submit },
    field("wl-part", "Part ID", { value: state.part, placeholder: "BLADE-0001 or BLADE-*", "data-testid": "search-part" }),
    field("wl-name", "Component name", { value: state.name, placeholder: "Turbine* (wildcards * ?)", "data-testid": "search-name" }),
    field("wl-from", "Inspected from", { type: "date", value: state.from, "data-testid": "search-from" }),
    field("wl-to", "to", { type: "date", value: state.to, "data-testid": "search-to" }),
    h("div", { class: "field" }, h("label", { for: "wl-method" }, "NDE method"), methodSelect),
    h(
      "div",
      { class: "field actions" },
      h("button", { type: "submit", class: "btn primary", "data-testid": "search-submit" }, "Search"),
      h("button", { type: "button", class: "btn ghost", onclick: () => go("/worklist"), "data-testid": "search-clear" }, "Clear"),
    ),
  );

  function submit(event) {
    event.preventDefault();
    const data = new FormData(form);
    const next = {
      part: data.get("wl-part"),
      name: data.get("wl-name"),
      from: data.get("wl-from"),
      to: data.get("wl-to"),
      method: data.get("method"),
      sort: state.sort !== "date" ? state.sort : "",
      dir: state.sort !== "date" ? state.dir : "",
    };
    if (!next.part && !next.name && !next.from && !next.to && !next.method) next.all = "1";
    go("/worklist", next);
  }

  const results = h("section", { class: "results", "data-testid": "results", "aria-live": "polite" });
  root.append(h("section", { class: "worklist", "data-testid": "worklist" }, h("h1", { class: "view-title" }, "Worklist"), form, results));

  if (!searched) {
    results.append(notice("info", "Search by part ID, component name, inspection date or NDE method; an empty search lists every inspection.", "results-hint"));
    form.querySelector("#wl-part").focus();
    return () => controller.abort();
  }

  results.append(notice("loading", "Searching…", "results-loading"));
  const query = {
    PatientID: pattern(state.part),
    PatientName: pattern(state.name),
    StudyDate: dateRange(state.from, state.to),
    ModalitiesInStudy: state.method,
    includefield: "StudyDescription",
    limit: MAX_RESULTS,
  };

  api
    .qido("/studies", query, { signal: controller.signal })
    .then(({ results: found, more }) => show(found.map(row), more))
    .catch((error) => {
      if (error.name === "AbortError") return;
      clear(results).append(notice("error", error.kind === "bad" ? `The search was refused: ${error.detail}` : error.message, "results-error"));
    });

  function link(patch) {
    const p = { ...Object.fromEntries(params.entries()), ...patch };
    for (const k of Object.keys(p)) if (p[k] === "" || p[k] === undefined) delete p[k];
    return "#/worklist?" + new URLSearchParams(p).toString();
  }

  function show(rows, more) {
    clear(results);
    rows.sort(compareRows(state.sort, state.dir));
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    const page = Math.min(state.page, pages);
    const shown = rows.slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE);
    const count = h(
      "div",
      { class: "result-count", "data-testid": "result-count" },
      rows.length === 0
        ? "No inspection matches."
        : `${rows.length}${more ? "+" : ""} inspection${rows.length === 1 ? "" : "s"}` +
            (rows.length > PAGE_SIZE ? ` · ${(page - 1) * PAGE_SIZE + 1}–${(page - 1) * PAGE_SIZE + shown.length} shown` : ""),
    );
    results.append(count);
    if (more) {
      results.append(
        notice("info", `More than ${MAX_RESULTS} inspections match: sorting covers the first ${MAX_RESULTS}. Narrow the search.`, "results-more"),
      );
    }
    if (!rows.length) return;

    const head = h(
      "tr",
      {},
      COLUMNS.map(([key, label]) => {
        const active = state.sort === key;
        const dir = active && state.dir === "asc" ? "desc" : "asc";
        return h(
          "th",
          { scope: "col", "aria-sort": active ? (state.dir === "asc" ? "ascending" : "descending") : "none", class: key === "images" ? "num" : "" },
          h("a", { href: link({ sort: key, dir, page: "" }), "data-testid": `sort-${key}`, class: "sort" }, label, h("span", { class: "sort-mark", "aria-hidden": "true" }, active ? (state.dir === "asc" ? "▲" : "▼") : "")),
        );
      }),
    );
    const body = h(
      "tbody",
      {},
      shown.map((r) => {
        const href = `#/part/${encodeURIComponent(r.part)}?study=${encodeURIComponent(r.study)}`;
        return h(
          "tr",
          { "data-testid": "result-row", "data-study": r.study, class: "clickable", onclick: (e) => { if (e.target.tagName !== "A") location.hash = href; } },
          h("td", { "data-col": "part" }, h("a", { href, "data-testid": "result-part" }, r.part || "(no part ID)")),
          h("td", { "data-col": "component" }, r.component),
          h("td", { "data-col": "date", class: "mono" }, r.date),
          h("td", { "data-col": "order" }, r.order),
          h("td", { "data-col": "method" }, r.method),
          h("td", { "data-col": "images", class: "num" }, String(r.images)),
          h("td", { "data-col": "description", class: "muted" }, r.description),
        );
      }),
    );
    results.append(h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": "results-table" }, h("thead", {}, head), body)));
    if (pages > 1) {
      results.append(
        h(
          "nav",
          { class: "pager", "aria-label": "Pages", "data-testid": "pager" },
          h("a", { class: "btn", href: link({ page: page - 1 }), "aria-disabled": page <= 1 ? "true" : null, "data-testid": "page-prev" }, "‹ Previous"),
          h("span", { "data-testid": "page-status" }, `Page ${page} of ${pages}`),
          h("a", { class: "btn", href: link({ page: page + 1 }), "aria-disabled": page >= pages ? "true" : null, "data-testid": "page-next" }, "Next ›"),
        ),
      );
    }
  }

  return () => controller.abort();
}
