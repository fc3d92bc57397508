// Small DOM helpers shared by the views.

/** h("div", {class: "x", "data-testid": "y", onclick: fn}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (key.startsWith("on") && typeof v === "function") el.addEventListener(key.slice(2), v);
    else if (key === "class") el.className = v;
    else if (key === "text") el.textContent = v;
    else if (key === "html") el.innerHTML = v; // only ever given constant markup (icons)
    else if (key in el && typeof v !== "string") el[key] = v;
    else el.setAttribute(key, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(key, String(v));
  for (const child of children.flat(Infinity)) if (child) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** A message box inside a view: kind "error" | "info" | "loading". */
export function notice(kind, text, testid = "notice") {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", "data-testid": testid }, text);
}

const banner = () => document.querySelector('[data-testid="banner"]');
let retryAction = null;

/** The page-wide banner, for a server that does not answer; `retry` re-runs what failed. */
export function showBanner(text, retry) {
  const el = banner();
  el.querySelector('[data-testid="banner-text"]').textContent = text;
  retryAction = retry || null;
  el.querySelector('[data-testid="banner-retry"]').hidden = !retry;
  el.hidden = false;
}

export function hideBanner() {
  banner().hidden = true;
  retryAction = null;
}

export function wireBanner() {
  const el = banner();
  el.querySelector('[data-testid="banner-retry"]').addEventListener("click", () => {
    const action = retryAction;
    hideBanner();
    if (action) action();
  });
  el.querySelector('[data-testid="banner-close"]').addEventListener("click", hideBanner);
}

/** Parameters of the hash route: "#/worklist?part=A" -> {path: "/worklist", params}. */
export function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/worklist";
  const q = raw.indexOf("?");
  const path = q === -1 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q === -1 ? "" : raw.slice(q + 1));
  return { path, params };
}

export function routeHref(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return `#${path}${s ? `?${s}` : ""}`;
}

export function go(path, params = {}, replace = false) {
  const href = routeHref(path, params);
  if (replace) history.replaceState(null, "", href);
  else location.hash = href;
}
