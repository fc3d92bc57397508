// A line plot in hand-written SVG (the line profile): no library needed for one polyline and axes.

import { formatNumber } from "./imaging.js";
import { svg } from "./ui.js";

/** "Nice" tick values covering lo..hi, about `count` of them. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

export function linePlot({ xs, ys, xLabel, yLabel, width = 320, height = 180, testid = "plot" }) {
  const m = { left: 52, right: 10, top: 10, bottom: 34 };
  const w = width - m.left - m.right;
  const hgt = height - m.top - m.bottom;
  let ylo = Math.min(...ys);
  let yhi = Math.max(...ys);
  if (yhi === ylo) {
    ylo -= 1;
    yhi += 1;
  }
  const pad = (yhi - ylo) * 0.05;
  ylo -= pad;
  yhi += pad;
  const xlo = xs[0];
  const xhi = xs[xs.length - 1] > xlo ? xs[xs.length - 1] : xlo + 1;
  const X = (v) => m.left + ((v - xlo) / (xhi - xlo)) * w;
  const Y = (v) => m.top + hgt - ((v - ylo) / (yhi - ylo)) * hgt;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "plot", role: "img", "aria-label": `${yLabel} along ${xLabel}`, "data-testid": testid });
  const grid = svg("g", { class: "grid" });
  for (const v of ticks(ylo, yhi, 4)) {
    grid.append(svg("line", { x1: m.left, x2: m.left + w, y1: Y(v), y2: Y(v) }), svg("text", { x: m.left - 4, y: Y(v) + 4, "text-anchor": "end" }, formatNumber(v, 5)));
  }
  for (const v of ticks(xlo, xhi, 5)) {
    grid.append(svg("line", { x1: X(v), x2: X(v), y1: m.top, y2: m.top + hgt }), svg("text", { x: X(v), y: m.top + hgt + 14, "text-anchor": "middle" }, formatNumber(v, 4)));
  }
  root.append(grid);
  root.append(svg("rect", { x: m.left, y: m.top, width: w, height: hgt, class: "frame" }));
  const points = Array.from(xs, (x, i) => `${X(x).toFixed(1)},${Y(ys[i]).toFixed(1)}`).join(" ");
  root.append(svg("polyline", { points, class: "series" }));
  root.append(svg("text", { x: m.left + w / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" }, xLabel));
  root.append(svg("text", { x: 12, y: m.top + hgt / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${m.top + hgt / 2})`, class: "axis-label" }, yLabel));
  return root;
}
