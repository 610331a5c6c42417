// fwpd's dashboard: shared helpers of the pages (docs/DASHBOARD.md). No build step: plain
// scripts, the charts drawn by Debian's dygraphs (served at /js/dygraphs/).
"use strict";

const fwp = {};

fwp.api = async function (path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = { code: "http_" + response.status, message: text }; }
  if (!response.ok) {
    const error = new Error(body.message || ("HTTP " + response.status));
    error.status = response.status;
    error.code = body.code;
    throw error;
  }
  return body;
};

// Changes carry X-FWP-Request, which pages of other sites cannot send here.
fwp.post = function (path) {
  return fwp.api(path, { method: "POST", headers: { "X-FWP-Request": "1" } });
};

fwp.el = function (tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
};

fwp.query = function (name) { return new URLSearchParams(location.search).get(name); };

fwp.number = function (v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(digits || 3);
  return v.toPrecision(digits || 4);
};

fwp.age = function (seconds) {
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return Math.round(s / 86400) + " d";
};

fwp.stateBadge = function (state, cancelRequested) {
  return fwp.el("span", { class: "state " + state, "data-state": state }, state + (cancelRequested && state === "running" ? " (cancelling)" : ""));
};

// The metric a finished job is judged by: its result's first best_* number, else the last eval.
fwp.bestMetric = function (job) {
  const result = job.result || {};
  const keys = Object.keys(result).filter((k) => k.startsWith("best_") && typeof result[k] === "number").sort();
  const preferred = ["best_eval_loss", "best_valid_loss", "best_valid_bits_per_byte"];
  for (const k of preferred) if (typeof result[k] === "number") return [k, result[k]];
  if (keys.length) return [keys[0], result[keys[0]]];
  if (job.eval) {
    const m = job.eval.metrics || {};
    if (typeof m.best_valid_loss === "number") return ["best_valid_loss", m.best_valid_loss];
    if (typeof job.eval.loss === "number") return ["eval loss", job.eval.loss];
  }
  return null;
};

fwp.progressBar = function (step, total, text) {
  if (!total) return step ? "step " + step : "";
  const pct = Math.min(100, (100 * step) / total);
  const label = text || step + " / " + total;
  return fwp.el("span", { class: "progress", title: label },
    fwp.el("span", { class: "bar", style: "width:" + pct.toFixed(1) + "%" }),
    fwp.el("span", { class: "label" }, label));
};

fwp.header = async function (title) {
  document.title = title + " · fwpd";
  const who = fwp.el("span", { class: "who" });
  document.body.prepend(fwp.el("header", {},
    fwp.el("a", { href: "/", class: "brand" }, "fwpd"),
    fwp.el("nav", {}, fwp.el("a", { href: "/" }, "jobs"), fwp.el("a", { href: "/compare" }, "compare")),
    who));
  try {
    const me = await fwp.api("/api/whoami");
    who.textContent = me.name + " (" + me.role + ")";
    fwp.me = me;
  } catch (e) {
    who.textContent = e.message;
    who.classList.add("error");
  }
};

// A job's events folded into series by step: the last value per step wins (a resumed attempt
// repeats the steps after its checkpoint), and events at or below the last sequence number are
// ignored, so a reconnect can neither duplicate nor lose a point.
class JobSeries {
  constructor(id) {
    this.id = id;
    this.lastSeq = 0;
    this.seqs = [];
    this.series = new Map(); // name -> Map(step -> value)
    this.events = [];
    this.duplicates = 0;
  }
  set(name, step, value) {
    if (typeof value !== "number" || !Number.isFinite(value) || step === undefined || step === null) return;
    if (!this.series.has(name)) this.series.set(name, new Map());
    this.series.get(name).set(step, value);
  }
  add(e) {
    if (e.seq <= this.lastSeq) { this.duplicates += 1; return false; }
    this.lastSeq = e.seq;
    this.seqs.push(e.seq);
    this.events.push(e);
    if (this.events.length > 2000) this.events.splice(0, this.events.length - 2000);
    const m = e.metrics || {};
    if (e.kind === "progress") {
      this.set("train loss", e.step, e.loss);
      this.set("tokens/s", e.step, e.tokens_per_second);
      for (const [k, v] of Object.entries(m)) if (!k.startsWith("best_")) this.set("train " + k, e.step, v);
    } else if (e.kind === "eval") {
      this.set("eval loss", e.step, e.loss);
      for (const [k, v] of Object.entries(m)) if (!k.startsWith("best_")) this.set("eval " + k, e.step, v);
    }
    return true;
  }
  // Chart groups: "loss" (train and eval), then one per other metric.
  groups() {
    const groups = new Map();
    for (const name of this.series.keys()) {
      const base = name.replace(/^(train|eval) /, "");
      if (!groups.has(base)) groups.set(base, []);
      groups.get(base).push(name);
    }
    return groups;
  }
}
fwp.JobSeries = JobSeries;

// Rows for dygraphs: [x, y1, y2, …] over the union of the series' steps, null where absent.
fwp.rows = function (seriesList) {
  const steps = new Set();
  for (const s of seriesList) for (const k of s.keys()) steps.add(k);
  const xs = Array.from(steps).sort((a, b) => a - b);
  return xs.map((x) => [x].concat(seriesList.map((s) => (s.has(x) ? s.get(x) : null))));
};

// What every chart shares: the legend always shown (in a div of its own under the chart),
// compact axis labels.
fwp.chartOptions = function () {
  return {
    legend: "always", labelsSeparateLines: false, animatedZooms: false, strokeWidth: 1.5,
    axes: { y: { axisLabelWidth: 64, axisLabelFormatter: (v) => fwp.number(v, 2) } },
  };
};

fwp.logScaleFor = function (name) {
  return /loss|bits|perplexity/.test(name);
};

// Follows a job's event stream; the browser's EventSource reconnects by itself with the last
// event id it saw, and `reconnect` (tests, a stalled network) opens a new one after lastSeq.
fwp.follow = function (series, onChange, onEnd) {
  const handle = { source: null };
  const open = (after) => {
    const source = new EventSource("/api/jobs/" + series.id + "/stream?after=" + after);
    source.onmessage = (m) => {
      const e = JSON.parse(m.data);
      if (series.add(e)) onChange(e);
    };
    source.addEventListener("end", () => { source.close(); if (onEnd) onEnd(); });
    source.onerror = () => { if (onChange) onChange(null); };
    handle.source = source;
  };
  handle.reconnect = () => { if (handle.source) handle.source.close(); open(series.lastSeq); };
  handle.close = () => { if (handle.source) handle.source.close(); };
  open(0);
  return handle;
};

window.fwp = fwp;
