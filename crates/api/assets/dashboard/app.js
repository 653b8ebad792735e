// Daena's operator dashboard: no build step, no dependencies. The API key lives in this
// tab's sessionStorage and goes only to this origin. Everything the server sends is put in
// the page as text (textContent), never as HTML.
"use strict";

const KEY = "daena.dashboard.key";
const POLL_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fill(id, ...children) {
  const body = document.querySelector(`#${id} .body`);
  body.replaceChildren(...children.flat());
}

const pct = (x) => (x == null ? "–" : `${(x * 100).toFixed(1)}%`);
const num = (x, d = 0) => (x == null ? "–" : Number(x).toLocaleString(undefined, { maximumFractionDigits: d }));
const usd = (x) => (x == null ? "–" : `$${Number(x).toFixed(4)}`);

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const key = sessionStorage.getItem(KEY);
  const res = await fetch(path, { headers: { "X-API-Key": key || "" }, cache: "no-store" });
  const body = await res.json().catch(() => null);
  // /health answers 503 with its report when unhealthy: that is a figure, not a failure.
  if (res.status === 503 && body && body.status) return body;
  if (!res.ok) throw new HttpError(res.status, (body && body.error && body.error.message) || res.statusText);
  return body;
}

/// A panel that cannot load says why, and the others go on.
async function panel(id, path, render) {
  try {
    render(await (Array.isArray(path) ? Promise.all(path.map(api)) : api(path)));
  } catch (e) {
    if (e.status === 401) return signOut("The key is no longer valid (unknown or revoked).");
    const why = e.status === 403 ? "not available to this key's role" : `could not load: ${e.message}`;
    fill(id, el("p", { class: "muted" }, why));
  }
}

/// A line chart of `series` (arrays of [x, y]) with optional horizontal `lines` ({y, label}).
function chart(series, { height = 110, lines = [], format = (v) => v } = {}) {
  const width = 360, pad = 28;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).concat(lines.map((l) => l.y));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const y1 = Math.max(1e-9, ...ys);
  const X = (x) => pad + ((x - x0) / Math.max(1, x1 - x0)) * (width - pad - 4);
  const Y = (y) => height - 14 - (y / y1) * (height - 24);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img" });
  root.append(svg("text", { x: 0, y: 10 }, format(y1)), svg("text", { x: 0, y: height - 14 }, format(0)));
  for (const l of lines) {
    root.append(svg("line", { x1: pad, x2: width - 4, y1: Y(l.y), y2: Y(l.y), stroke: "#f85149", "stroke-dasharray": "4 3" }));
    root.append(svg("text", { x: width - 90, y: Y(l.y) - 2 }, l.label));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points: d, fill: "none", stroke: s.color, "stroke-width": 1.6 }));
  }
  const span = (x1 - x0) / 60000;
  root.append(svg("text", { x: pad, y: height - 2 }, span >= 1 ? `last ${span.toFixed(0)} min` : "since start"));
  const legend = el("div", { class: "legend" }, series.map((s) => el("span", {}, el("span", { class: "swatch", style: `background:${s.color}` }), s.name)));
  return el("div", {}, root, legend);
}

/// Per-minute differences of a cumulative field of the samples.
function deltas(samples, f) {
  const out = [];
  for (let i = 1; i < samples.length; i++) out.push([samples[i].at_ms, Math.max(0, f(samples[i]) - f(samples[i - 1]))]);
  return out;
}

function renderHealth(h) {
  const checks = Object.entries(h.checks || {});
  fill("panel-health",
    el("div", { class: `big ${h.status}` }, h.status),
    el("table", {}, checks.map(([name, c]) => el("tr", {},
      el("td", {}, name), el("td", { class: c.status === "pass" ? "ok" : c.status === "warn" ? "warn" : "bad" }, c.status),
      el("td", { class: "muted" }, c.detail)))));
  const pill = document.getElementById("status-pill");
  pill.textContent = h.status;
  pill.className = `pill ${h.status}`;
}

function renderCache([cas, series]) {
  const s = series.samples;
  const exact = deltas(s, (x) => x.cache_exact_hits), near = deltas(s, (x) => x.cache_near_hits), miss = deltas(s, (x) => x.cache_misses);
  fill("panel-cache",
    el("div", {}, el("span", { class: "big" }, pct(cas.hit_rate)), el("span", { class: "muted" }, ` hit rate (target ${pct(cas.target_hit_rate)})`)),
    el("p", {}, `exact ${num(cas.exact_hits)} (${pct(cas.exact_rate)}) · near ${num(cas.near_hits)} (${pct(cas.near_rate)}) · misses ${num(cas.misses)} · ${num(cas.entries)} entries`),
    chart([{ name: "exact hits/min", color: "#3fb950", points: exact }, { name: "near hits/min", color: "#58a6ff", points: near },
      { name: "misses/min", color: "#d29922", points: miss }]));
}

function renderLatency([mem, series]) {
  const rows = ["l1", "l2", "l3"].map((t) => {
    const lat = t === "l1" ? mem.l1.latency : mem[t].latency;
    const slo = mem.slo[`${t}_p95_ms`] || {};
    return el("tr", {}, el("td", {}, t.toUpperCase()),
      el("td", {}, lat ? `${lat.p50_ms} / ${lat.p95_ms} / ${lat.p99_ms} ms` : "no reads yet"),
      el("td", { class: slo.status === "ok" ? "ok" : slo.status === "no_data" ? "muted" : "bad" }, `SLO p95 ≤ ${num(slo.target, 1)} ms: ${slo.status || "–"}`));
  });
  const s = series.samples;
  const line = (f) => s.filter((x) => f(x) != null).map((x) => [x.at_ms, f(x)]);
  const l2slo = (mem.slo.l2_p95_ms || {}).target;
  fill("panel-latency", el("table", {}, rows),
    chart([{ name: "L1 p95", color: "#3fb950", points: line((x) => x.l1_p95_ms) }, { name: "L2 p95", color: "#58a6ff", points: line((x) => x.l2_p95_ms) },
      { name: "L3 p95", color: "#d29922", points: line((x) => x.l3_p95_ms) }],
      { lines: l2slo ? [{ y: l2slo, label: `L2 SLO ${l2slo} ms` }] : [], format: (v) => `${v.toFixed(1)} ms` }));
}

function renderErrors(series) {
  const s = series.samples;
  const last = s[s.length - 1];
  fill("panel-errors", el("div", {}, el("span", { class: "big" }, pct(last.error_rate)), el("span", { class: "muted" }, " of reported interactions, last 5 min")),
    chart([{ name: "error rate", color: "#f85149", points: s.map((x) => [x.at_ms, x.error_rate]) }], { format: (v) => pct(v) }));
}

const STATUS_COLOR = { active: "#3fb950", stale: "#d29922", idle: "#d29922", inactive: "#3a4450" };

function renderAgents(a) {
  const departments = [...new Set(a.agents.map((x) => x.department))];
  const roles = [...new Set(a.agents.map((x) => x.role))];
  const r = 15, w = Math.sqrt(3) * r;
  const root = svg("svg", { viewBox: `0 0 ${w * roles.length + w / 2 + 110} ${departments.length * r * 1.5 + r + 4}`, width: "100%", role: "img", "aria-label": "agent honeycomb", class: "honeycomb" });
  departments.forEach((dep, row) => {
    root.append(svg("text", { x: 0, y: row * r * 1.5 + r + 4 }, dep));
    roles.forEach((role, col) => {
      const agent = a.agents.find((x) => x.department === dep && x.role === role);
      const cx = 110 + col * w + (row % 2 ? w / 2 : 0) + w / 2, cy = row * r * 1.5 + r + 1;
      const pts = [...Array(6).keys()].map((i) => { const t = Math.PI / 3 * i + Math.PI / 6; return `${(cx + r * Math.cos(t)).toFixed(1)},${(cy + r * Math.sin(t)).toFixed(1)}`; }).join(" ");
      const status = agent ? agent.status : "inactive";
      const hex = svg("polygon", { points: pts, fill: STATUS_COLOR[status] || "#8a96a3", stroke: "#0f1419", "stroke-width": 1.5, class: "agent", "data-status": status });
      hex.append(svg("title", {}, agent ? `${agent.name} (${agent.id}): ${status}` : `${dep} ${role}`));
      root.append(hex);
    });
  });
  const counts = a.agents.reduce((m, x) => ((m[x.status] = (m[x.status] || 0) + 1), m), {});
  fill("panel-agents", el("p", {}, `${a.active} of ${a.total} active (heartbeat within ${a.heartbeat_window_secs} s) · tenant ${a.tenant}`), root,
    el("div", { class: "legend" }, Object.entries(counts).map(([k, v]) => el("span", {}, el("span", { class: "swatch", style: `background:${STATUS_COLOR[k] || "#8a96a3"}` }), `${k} ${v}`))));
}

function renderAnomalies(a) {
  fill("panel-anomalies", a.anomalies.length === 0
    ? el("p", {}, el("span", { class: "ok" }, "none"), el("span", { class: "muted" }, ` · ${a.method}`))
    : el("table", {}, el("tr", {}, el("th", {}, "agent"), el("th", {}, "metric"), el("th", {}, "value"), el("th", {}, "score")),
      a.anomalies.slice(0, 12).map((x) => el("tr", {}, el("td", {}, x.agent || x.agent_id || "–"), el("td", {}, x.metric || x.kind || "–"),
        el("td", {}, num(x.value, 3)), el("td", {}, num(x.score || x.z, 2))))));
}

function renderComms(c) {
  // department_matrix: {"engineering -> legal": messages}
  const m = {};
  for (const [pair, n] of Object.entries(c.department_matrix || {})) {
    const [from, to] = pair.split(" -> ");
    (m[from] = m[from] || {})[to] = n;
  }
  const deps = [...new Set(Object.keys(m).concat(...Object.values(m).map((row) => Object.keys(row))))].sort();
  if (deps.length === 0) return fill("panel-comms", el("p", { class: "muted" }, "no messages reported yet"));
  const max = Math.max(1, ...deps.flatMap((f) => deps.map((t) => (m[f] || {})[t] || 0)));
  fill("panel-comms", el("p", {}, `${num(c.total_messages)} messages · cross-department ${pct(c.cross_department_share)}`),
    el("table", { class: "matrix" }, el("tr", {}, el("th", {}, "from ↓ to →"), deps.map((d) => el("th", { title: d }, d.slice(0, 6)))),
      deps.map((f) => el("tr", {}, el("th", {}, f), deps.map((t) => {
        const v = (m[f] || {})[t] || 0;
        return el("td", { style: `background: rgba(88,166,255,${(v / max * 0.8).toFixed(2)})`, title: `${f} → ${t}: ${v}` }, v ? String(v) : "");
      })))));
}

function renderCost([costs, series]) {
  const s = series.samples;
  fill("panel-cost", el("p", {}, el("span", { class: "big" }, usd(costs.saved_usd)), el("span", { class: "muted" }, ` saved · spent ${usd(costs.spend_usd)} · ${num(costs.savings_pct, 1)}% savings`)),
    chart([{ name: "spend", color: "#d29922", points: s.map((x) => [x.at_ms, x.spend_usd]) }, { name: "saved", color: "#3fb950", points: s.map((x) => [x.at_ms, x.saved_usd]) }],
      { format: (v) => `$${v.toFixed(3)}` }));
}

function renderLimits(l) {
  if (!l.enabled) return fill("panel-limits", el("p", { class: "muted" }, "tenant rate limits are off (rate_limit.enabled = false)"));
  fill("panel-limits", el("p", { class: "muted" }, `default ${l.defaults.rpm}/min, burst ${l.defaults.burst} · ${l.active_tenants} active tenants · ${num(l.rejected)} refused`),
    el("table", {}, l.tenants.slice(0, 15).map((t) => el("tr", {}, el("td", {}, t.tenant),
      el("td", { style: "width:45%" }, el("div", { class: "bar" }, el("span", { style: `width:${Math.min(100, t.utilization_pct).toFixed(0)}%` }))),
      el("td", {}, `${num(t.utilization_pct, 1)}%`), el("td", { class: t.rejected ? "warn" : "muted" }, `${t.rejected} refused`)))));
}

function renderLedger([head, verification]) {
  fill("panel-ledger", el("div", { class: "big" }, num(head.size)), el("p", { class: "muted" }, "entries"),
    el("table", {}, el("tr", {}, el("td", {}, "head"), el("td", {}, `${head.head_hash.slice(0, 16)}…`)),
      el("tr", {}, el("td", {}, "last entry"), el("td", {}, head.last_entry_at || "–")),
      el("tr", {}, el("td", {}, "checkpoint"), el("td", {}, head.checkpoint ? `${num(head.checkpoint.size)} entries` : "none yet")),
      el("tr", {}, el("td", {}, "last verification"), el("td", { class: verification ? (verification.ok ? "ok" : "bad") : "muted" },
        verification ? `${verification.ok ? "passed" : "FAILED"} at ${verification.at} (${num(verification.entries)} entries)` : "not run since start"))));
}

function renderBackups([snapshots, drill]) {
  const last = snapshots.length ? snapshots[snapshots.length - 1] : null;
  fill("panel-backups", el("table", {},
    el("tr", {}, el("td", {}, "last snapshot"), el("td", {}, last ? `${last.created_at || last.id || ""} (${snapshots.length} kept)` : "none")),
    el("tr", {}, el("td", {}, "last drill"), el("td", { class: drill ? (drill.passed || drill.ok ? "ok" : "warn") : "muted" },
      drill ? `${drill.at || drill.recorded_at || ""} ${drill.passed === false ? "failed" : ""}` : "none recorded"))));
}

async function refresh() {
  const series = await api("/api/v1/dashboard/series");
  await Promise.all([
    panel("panel-health", "/health", renderHealth),
    // The history is fetched once above and shared by the panels that chart it.
    panel("panel-cache", "/monitoring/memory/cas", (cas) => renderCache([cas, series])),
    panel("panel-latency", "/monitoring/memory", (mem) => renderLatency([mem, series])),
    Promise.resolve(renderErrors(series)),
    panel("panel-agents", "/api/v1/agents", renderAgents),
    panel("panel-anomalies", "/api/v1/analytics/anomalies", renderAnomalies),
    panel("panel-comms", "/api/v1/analytics/communication-patterns", renderComms),
    panel("panel-cost", "/monitoring/memory/cost-tracking", (costs) => renderCost([costs, series])),
    panel("panel-limits", "/api/v1/tenant-rate-limit/stats", renderLimits),
    panel("panel-ledger", ["/api/v1/ledger/head", "/api/v1/ledger/verification"], renderLedger),
    panel("panel-backups", ["/api/v1/admin/snapshots", "/api/v1/admin/drills/last"], renderBackups),
  ]);
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.loaded = "true";
}

function showSignedIn(on) {
  document.getElementById("sign-in").hidden = on;
  document.getElementById("panels").hidden = !on;
  document.getElementById("sign-out").hidden = !on;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  showSignedIn(false);
  document.body.dataset.loaded = "false";
  document.getElementById("status-pill").textContent = "signed out";
  document.getElementById("status-pill").className = "pill";
  document.getElementById("sign-in-error").textContent = message || "";
}

async function start() {
  try {
    await refresh();
  } catch (e) {
    if (e.status === 401) return signOut("Unknown or revoked API key.");
    if (e.status === 403) return signOut("This key cannot view the dashboard: use an ops or auditor key.");
    document.getElementById("sign-in-error").textContent = `The server did not answer: ${e.message}`;
    return;
  }
  showSignedIn(true);
  clearInterval(timer);
  timer = setInterval(() => refresh().catch((e) => { document.getElementById("updated").textContent = `update failed: ${e.message}`; }), POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = document.getElementById("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    document.getElementById("key").value = "";
    start();
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut(""));
  if (sessionStorage.getItem(KEY)) start();
});
