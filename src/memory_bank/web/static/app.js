// The dashboard: summary cards, firing alerts, metric chart, live feed, sessions, patterns;
// a session's own view at #/sessions/ID. Every number comes from the JSON API; the feed and
// the alerts from SSE.

import { drawChart, resizeCharts, colorOf, formatTime } from "./chart.js";
import { Feed } from "./feed.js";
import { api } from "./api.js";
import { firstSummaryShown, num, severityChip, showSummary } from "./cards.js";
import { cell, fillTable } from "./tables.js";
import { AlertsPanel } from "./alerts.js";

const $ = (id) => document.getElementById(id);
const RANGES = { "10m": 600, "1h": 3600, "24h": 86400, "7d": 7 * 86400 };
const state = {
  metrics: ["current"], // shown on the chart
  range: "1h", // a key of RANGES, or "custom"
  custom: null, // {since, until} in epoch seconds (until null: now)
  history: [], // earlier windows, for double-click after a zoom
  view: "dashboard",
};

const fixed = (v, d = 2) => (v == null ? "–" : Number(v).toFixed(d));
const iso = (t) => new Date(t * 1000).toISOString();
const counted = (n, upTo) => `${num(n)}${n >= upTo ? "+" : ""}`; // a count the API stopped at upTo

function showError(where, error) {
  let banner = where.querySelector(":scope > .error-banner");
  if (!error) { banner?.remove(); return; }
  if (!banner) {
    banner = document.createElement("div");
    banner.className = "error-banner";
    where.prepend(banner);
  }
  banner.textContent = error.message;
}

// -- summary cards ---------------------------------------------------------------------
async function loadSummary() {
  showSummary(await api("summary"));
}

// -- the metric chart --------------------------------------------------------------------
function windowNow() {
  if (state.range === "custom" && state.custom) {
    return { since: iso(state.custom.since), until: state.custom.until ? iso(state.custom.until) : "" };
  }
  return { since: state.range, until: "" }; // "10m", "1h"...: the API reads them as the viewer does
}

async function loadMetricNames() {
  const names = await api("metrics");
  const picker = $("metric-picker");
  picker.textContent = "";
  const known = names.length ? names : state.metrics;
  state.metrics = state.metrics.filter((m) => known.includes(m));
  if (!state.metrics.length && known.length) state.metrics = [known[0]];
  for (const name of known) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = state.metrics.includes(name);
    label.append(box, name);
    label.dataset.metric = name;
    const paint = () => {
      const i = state.metrics.indexOf(name);
      label.classList.toggle("checked", i >= 0);
      label.style.background = i >= 0 ? colorOf(i) : "";
    };
    box.addEventListener("change", () => {
      if (box.checked) state.metrics.push(name);
      else if (state.metrics.length > 1) state.metrics = state.metrics.filter((m) => m !== name);
      else box.checked = true; // keep one metric on the chart
      for (const l of picker.querySelectorAll("label")) l.paint();
      loadChart();
    });
    label.paint = paint;
    picker.appendChild(label);
    paint();
  }
}

let chartRequest = 0;
async function loadChart() {
  const ticket = ++chartRequest;
  const el = $("chart");
  const points = Math.min(2000, Math.max(100, Math.round(el.clientWidth || 1000)));
  const { since, until } = windowNow();
  const responses = await Promise.all(
    state.metrics.map((m) => api(`metrics/${encodeURIComponent(m)}`, { since, until, points })));
  if (ticket !== chartRequest) return; // a newer request superseded this one
  drawChart(el, $("chart-note"), responses, {
    onZoom: (lo, hi) => {
      state.history.push({ range: state.range, custom: state.custom });
      setRange("custom", { since: lo, until: hi });
    },
    onBack: () => {
      const previous = state.history.pop();
      if (previous) setRange(previous.range, previous.custom, false);
    },
  });
  el.dataset.since = responses[0].since;
  el.dataset.until = responses[0].until;
  if (!performance.getEntriesByName("mb-chart").length) performance.mark("mb-chart");
}

function setRange(range, custom = null, remember = true, load = true) {
  if (remember === true && range !== "custom") state.history = [];
  state.range = range;
  state.custom = custom;
  for (const b of $("ranges").querySelectorAll("button")) {
    b.classList.toggle("active", b.dataset.range === range);
  }
  const form = $("custom-range");
  form.hidden = range !== "custom";
  if (range === "custom" && custom) {
    $("custom-since").value = localInput(custom.since);
    $("custom-until").value = custom.until ? localInput(custom.until) : "";
  }
  if (load && (range !== "custom" || custom)) guarded(loadChart, $("chart").parentNode);
}

function localInput(t) {
  const d = new Date(t * 1000 - new Date(t * 1000).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
}

function setupRanges() {
  for (const b of $("ranges").querySelectorAll("button")) {
    b.addEventListener("click", () => {
      if (b.dataset.range === "custom") {
        const now = Date.now() / 1000;
        const seconds = RANGES[state.range] || 3600;
        setRange("custom", state.custom || { since: now - seconds, until: now });
      } else {
        setRange(b.dataset.range);
      }
    });
  }
  $("custom-range").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const since = new Date($("custom-since").value).getTime() / 1000;
    const untilText = $("custom-until").value;
    const until = untilText ? new Date(untilText).getTime() / 1000 : null;
    state.history.push({ range: state.range, custom: state.custom });
    setRange("custom", { since, until }, false);
  });
}

// -- tables ------------------------------------------------------------------------------
function duration(seconds) {
  if (seconds == null) return "–";
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function loadSessions() {
  const rows = await api("sessions", { limit: 50 });
  fillTable($("sessions"), rows, (s) => {
    const tr = document.createElement("tr");
    const link = document.createElement("a");
    link.href = `#/sessions/${encodeURIComponent(s.session_id)}`;
    link.textContent = s.session_id;
    const first = document.createElement("td");
    first.appendChild(link);
    tr.append(first, cell(s.status, `status-${s.status}`), cell(formatTime(s.start_time)),
      cell(formatTime(s.end_time)), cell(duration(s.duration), "num"),
      cell(fixed(s.total_energy), "num"), cell(fixed(s.avg_current), "num"),
      cell(fixed(s.max_current), "num"), cell(fixed(s.min_current), "num"),
      cell(num(s.anomaly_count), "num"));
    return tr;
  }, "no sessions yet");
}

async function loadPatterns() {
  const rows = await api("patterns", { limit: 50 });
  fillTable($("patterns"), rows, (p) => {
    const tr = document.createElement("tr");
    const data = typeof p.pattern_data === "string" ? p.pattern_data : JSON.stringify(p.pattern_data);
    tr.append(cell(p.pattern_type), cell(num(p.frequency), "num"), cell(fixed(p.confidence), "num"),
      cell(formatTime(p.last_seen)), cell(data, "wrap"));
    return tr;
  }, "no patterns learned yet");
}

// -- a session's own view -----------------------------------------------------------------
async function showSession(sessionId) {
  const view = $("session-view");
  showError(view, null);
  $("session-title").textContent = `Session ${sessionId}`;
  let detail;
  try {
    detail = await api(`sessions/${encodeURIComponent(sessionId)}`);
  } catch (e) {
    showError(view, e);
    return;
  }
  const s = detail.session;
  const cards = $("session-cards");
  cards.textContent = "";
  for (const [label, value, sub] of [
    ["Status", s.status, `started ${formatTime(s.start_time)}`],
    ["Duration", duration(s.duration ?? (Date.now() / 1000 - s.start_time)),
      s.end_time ? `ended ${formatTime(s.end_time)}` : "still running"],
    ["Energy", s.total_energy == null ? "–" : `${fixed(s.total_energy)} Wh`, ""],
    ["Current", s.avg_current == null ? "–" : `${fixed(s.avg_current)} A`,
      `min ${fixed(s.min_current)} · max ${fixed(s.max_current)}`],
    ["Anomalies", num(s.anomaly_count), `${counted(detail.anomaly_count, detail.anomaly_count_up_to)} in its window`],
  ]) {
    const card = document.createElement("div");
    card.className = "card";
    card.innerHTML = '<div class="label"></div><div class="value"></div><div class="sub"></div>';
    card.children[0].textContent = label;
    card.children[1].textContent = value;
    card.children[2].textContent = sub;
    cards.appendChild(card);
  }
  const stats = Object.entries(detail.statistics).filter(([, st]) => st.count);
  const covered = detail.statistics_window;
  $("session-stats-note").textContent =
    covered.since === detail.window.since && covered.until === detail.window.until ? "" :
      `over the whole minutes ${formatTime(covered.since)} – ${formatTime(covered.until)}: ` +
      "the session's first or last seconds hold too many points to read in time";
  const listed = detail.anomalies.length;
  $("session-anomalies-note").textContent = listed < detail.anomaly_count ?
    `the newest ${num(listed)} of ${counted(detail.anomaly_count, detail.anomaly_count_up_to)}` : "";
  fillTable($("session-stats"), stats, ([name, st]) => {
    const tr = document.createElement("tr");
    tr.append(cell(name), cell(num(st.count), "num"), cell(fixed(st.min), "num"),
      cell(fixed(st.max), "num"), cell(fixed(st.avg), "num"));
    return tr;
  }, "no metrics recorded during this session");
  fillTable($("session-anomalies"), detail.anomalies, (a) => {
    const tr = document.createElement("tr");
    const sev = document.createElement("td");
    sev.appendChild(severityChip(a.severity));
    tr.append(cell(formatTime(a.timestamp)), cell(a.anomaly_type), sev, cell(a.description || ""),
      cell(fixed(a.current_value), "num"), cell(fixed(a.expected_value), "num"));
    return tr;
  }, "no anomalies in this session's window");
  const { since, until } = detail.window;
  const metrics = ["current", ...(stats.some(([m]) => m === "voltage") ? ["voltage"] : [])];
  const el = $("session-chart");
  const points = Math.min(2000, Math.max(100, Math.round(el.clientWidth || 1000)));
  const responses = await Promise.all(metrics.map((m) =>
    api(`metrics/${m}`, { since: iso(since), until: iso(until + 0.001), points })));
  drawChart(el, $("session-chart-note"), responses);
}

// -- routing and live refresh -------------------------------------------------------------
function route(firstLoad = false) {
  const match = location.hash.match(/^#\/sessions\/(.+)$/);
  const sessionId = match ? decodeURIComponent(match[1]) : null;
  $("dashboard-view").hidden = !!sessionId;
  $("session-view").hidden = !sessionId;
  state.view = sessionId ? "session" : "dashboard";
  if (sessionId) showSession(sessionId);
  else refreshDashboard(!(firstLoad && firstSummaryShown)); // the page came with one
}

function guarded(fn, where) {
  return fn().then(() => showError(where, null), (e) => showError(where, e));
}

function refreshDashboard(withSummary = true) {
  if (withSummary) guarded(loadSummary, $("dashboard-view"));
  guarded(loadChart, $("chart").parentNode);
  guarded(loadSessions, $("sessions").parentNode);
  guarded(loadPatterns, $("patterns").parentNode);
}

// Coalesce refreshes: at most one per `every` ms for each loader.
function throttled(fn, every) {
  let last = 0, timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + every - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}

// Live refresh: the cards come with the stream (one query for every page); tables and a
// chart of "the last ..." are asked for again at most every 10 s, and only when seen.
const visible = () => state.view === "dashboard" && document.visibilityState === "visible";
const refreshSummary = throttled(() => guarded(loadSummary, $("dashboard-view")), 1000);
const refreshTables = throttled(() => {
  if (!visible()) return;
  guarded(loadSessions, $("sessions").parentNode);
  guarded(loadPatterns, $("patterns").parentNode);
}, 10000);
const refreshChart = throttled(() => {
  if (visible() && state.range !== "custom") guarded(loadChart, $("chart").parentNode);
}, 10000);

async function start() {
  api("status").then((s) => { $("db-name").textContent = s.database; }).catch(() => {});
  setupRanges();
  setRange("1h", null, true, false);
  // The picker may find that this database has no "current": then chart what it has.
  const before = state.metrics.join();
  guarded(loadMetricNames, $("chart").parentNode).then(() => {
    if (state.metrics.join() !== before && state.view === "dashboard") refreshChart();
  });
  const alerts = new AlertsPanel();
  const feed = new Feed({
    onStatus: (s) => {
      const el = $("live-status");
      el.textContent = s.message;
      el.className = `live ${s.live ? "on" : "off"}`;
    },
    onSummary: (summary) => { if (state.view === "dashboard") showSummary(summary); },
    onRecords: () => {
      refreshTables();
      refreshChart();
    },
    onAlert: (alert) => alerts.receive(alert),
    onReload: () => alerts.load(),
  });
  feed.connect();
  window.addEventListener("hashchange", () => route());
  window.addEventListener("resize", throttled(resizeCharts, 200));
  // Back to a tab that was hidden: what it shows may be old (it did not redraw meanwhile).
  document.addEventListener("visibilitychange", () => {
    if (visible()) { refreshSummary(); refreshTables(); refreshChart(); }
  });
  // Quiet databases still move (sessions end, time passes): refresh now and then.
  setInterval(() => { if (visible()) { refreshSummary(); refreshTables(); refreshChart(); } }, 30000);
  route(true);
}

start();
