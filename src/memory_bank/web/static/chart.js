// Metric charts on uPlot: several metrics on one time axis (one y axis per unit), the
// min–max band of each bucket, anomalies as markers with their description on hover.

const COLORS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2"];

export function colorOf(index) {
  return COLORS[index % COLORS.length];
}

const fmt = (v, digits = 2) => (v == null ? "–" : Number(v).toFixed(digits));

export function formatTime(t) {
  if (t == null) return "–";
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// One x array for every metric: buckets are aligned (same since, same width), so a bucket
// index is a time. A bucket a metric lacks is `undefined` (joined across) unless the hole
// is long (over three of its usual spacings), then `null` (the line breaks: no data there).
function align(responses) {
  const index = new Set();
  for (const r of responses) for (const b of r.buckets) index.add(b.bucket);
  const buckets = [...index].sort((a, b) => a - b);
  const first = responses[0];
  const width = first.bucket_seconds;
  const xs = buckets.map((b) => first.origin + (b + 0.5) * width);
  const columns = [];
  for (const r of responses) {
    const byBucket = new Map(r.buckets.map((b) => [b.bucket, b]));
    const present = r.buckets.map((b) => b.bucket);
    const steps = present.slice(1).map((b, i) => b - present[i]).sort((a, b) => a - b);
    const usual = steps.length ? steps[Math.floor(steps.length / 2)] : 1;
    const avg = [], lo = [], hi = [];
    let previous = null;
    for (const b of buckets) {
      const row = byBucket.get(b);
      if (row) {
        avg.push(row.avg); lo.push(row.min); hi.push(row.max);
        previous = b;
      } else {
        const next = present.find((p) => p > b);
        const hole = previous == null || next == null ? 0 : next - previous;
        const value = hole > 3 * usual ? null : undefined;
        avg.push(value); lo.push(value); hi.push(value);
      }
    }
    columns.push({ avg, lo, hi });
  }
  return { xs, columns };
}

// Anomaly markers: the API cuts a window in slices a marker wide and sends, for each slice
// holding anomalies, one of them (the most severe of its newest) and how many it holds
// (counted up to a limit). One element per few pixels over the plot, placed at its
// anomaly's time, with the description in a tooltip (DOM rather than canvas, so hovering
// and tests can find them); zooming in asks for finer slices.
const MARKER_PX = 6;
const RANK = { CRITICAL: 0, HIGH: 1, MEDIUM: 2, LOW: 3 };
const rank = (a) => RANK[a.severity] ?? 4;

// [{anomaly, count, capped}] from a /api/metrics response (its anomalies and their slices).
function markersOf(response) {
  const upTo = response.anomaly_count_up_to;
  return response.anomalies.map((anomaly, i) => {
    const { count } = response.anomaly_slices[i];
    return { anomaly, count, capped: count >= upTo };
  });
}

function tooltipFor(group, tooltip, ev) {
  const a = group.shown;
  tooltip.textContent = "";
  const head = document.createElement("b");
  head.textContent = `${a.anomaly_type} · ${a.severity}`;
  const when = document.createElement("div");
  when.textContent = formatTime(a.timestamp);
  const text = document.createElement("div");
  text.textContent = a.description || "";
  const values = document.createElement("div");
  values.textContent = `current ${fmt(a.current_value)} · expected ${fmt(a.expected_value)}`;
  tooltip.append(head, when, text, values);
  if (group.count > 1) {
    const more = document.createElement("div");
    more.textContent = `and ${(group.count - 1).toLocaleString()}${group.capped ? "+" : ""} ` +
      "more anomalies here (drag to zoom in)";
    tooltip.appendChild(more);
  }
  tooltip.hidden = false;
  tooltip.style.left = `${ev.clientX + 12}px`;
  tooltip.style.top = `${ev.clientY + 12}px`;
}

function markersPlugin(markers, tooltip) {
  let layer;
  function place(u) {
    const [lo, hi] = [u.scales.x.min, u.scales.x.max];
    const firstY = u.series.findIndex((s, i) => i > 0 && s.scale !== "x");
    const height = u.over.clientHeight; // read once: no layout per marker
    const groups = new Map();
    for (const { anomaly: a, count, capped } of markers) {
      if (a.timestamp < lo || a.timestamp > hi) continue;
      const x = u.valToPos(a.timestamp, "x");
      const slot = Math.round(x / MARKER_PX);
      const group = groups.get(slot);
      if (!group) {
        groups.set(slot, { x, shown: a, count, capped });
        continue;
      }
      group.count += count;
      group.capped ||= capped;
      if (rank(a) < rank(group.shown)) Object.assign(group, { x, shown: a });
    }
    const fragment = document.createDocumentFragment();
    for (const group of groups.values()) {
      const { x, shown: a } = group;
      const m = document.createElement("div");
      m.className = `marker ${a.severity || ""}`;
      m.style.left = `${x}px`;
      const dot = document.createElement("div");
      dot.className = "dot";
      const y = firstY > 0 ? u.data[firstY][u.valToIdx(a.timestamp)] : null;
      const top = y == null ? 6 : u.valToPos(y, u.series[firstY].scale);
      dot.style.top = `${Math.max(4, Math.min(top, height - 4))}px`;
      m.appendChild(dot);
      m.dataset.count = group.count;
      m.addEventListener("mouseenter", (ev) => tooltipFor(group, tooltip, ev));
      m.addEventListener("mouseleave", () => { tooltip.hidden = true; });
      fragment.appendChild(m);
    }
    layer.replaceChildren(fragment);
  }
  return {
    hooks: {
      init: (u) => {
        layer = document.createElement("div");
        layer.className = "markers";
        u.over.appendChild(layer);
      },
      draw: place,
    },
  };
}

// Draw (or redraw) a chart in `el` from /api/metrics/{name} responses sharing one window,
// with the anomaly markers of the first. onZoom(since, until) is called with the dragged
// selection; onBack on double-click.
export function drawChart(el, note, responses, { onZoom, onBack } = {}) {
  const markers = markersOf(responses[0]);
  const tooltip = document.getElementById("tooltip");
  el.textContent = "";
  const points = responses.reduce((n, r) => n + r.buckets.length, 0);
  const rows = responses.reduce((n, r) => n + r.buckets.reduce((m, b) => m + b.n, 0), 0);
  el.dataset.points = points;
  el.dataset.rows = rows;
  el.dataset.anomalies = markers.reduce((n, m) => n + m.count, 0);
  note.textContent = points ? "" : "no data in this time range";
  const { xs, columns } = align(responses);
  const units = [];
  const series = [{}];
  const data = [xs];
  const bands = [];
  responses.forEach((r, i) => {
    const unit = r.unit || r.metric;
    if (!units.includes(unit)) units.push(unit);
    const color = colorOf(i);
    const base = series.length;
    series.push({ label: `${r.metric}${r.unit ? ` (${r.unit})` : ""}`, scale: unit, stroke: color,
      width: 1.5, value: (u, v) => fmt(v) });
    series.push({ label: `${r.metric} max`, scale: unit, stroke: color + "55", width: 0.5,
      value: (u, v) => fmt(v) });
    series.push({ label: `${r.metric} min`, scale: unit, stroke: color + "55", width: 0.5,
      value: (u, v) => fmt(v) });
    data.push(columns[i].avg, columns[i].hi, columns[i].lo);
    bands.push({ series: [base + 1, base + 2], fill: color + "1f" });
  });
  const scales = { x: { time: true, range: () => [responses[0].since, responses[0].until] } };
  const axes = [{ stroke: "#66727f", grid: { stroke: "#eef1f4" } }];
  units.forEach((unit, i) => {
    scales[unit] = { auto: true };
    axes.push({ scale: unit, side: i % 2 ? 1 : 3, label: unit, stroke: "#66727f",
      grid: { show: i === 0, stroke: "#eef1f4" }, size: 60 });
  });
  const opts = {
    width: Math.max(el.clientWidth, 300),
    height: 320,
    series, scales, axes, bands,
    legend: { live: true },
    cursor: { drag: { x: true, y: false, setScale: false } },
    plugins: [markersPlugin(markers, tooltip)],
    hooks: {
      setSelect: [(u) => {
        if (u.select.width < 5 || !onZoom) return;
        const since = u.posToVal(u.select.left, "x");
        const until = u.posToVal(u.select.left + u.select.width, "x");
        u.setSelect({ left: 0, width: 0 }, false);
        onZoom(since, until);
      }],
    },
  };
  const chart = new uPlot(opts, data, el);
  if (onBack) chart.over.addEventListener("dblclick", onBack);
  el.chart = chart;
  return chart;
}

export function resizeCharts() {
  for (const el of document.querySelectorAll(".chart")) {
    if (el.chart) el.chart.setSize({ width: Math.max(el.clientWidth, 300), height: 320 });
  }
}
