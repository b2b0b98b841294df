// The firing alerts: the rules firing now, per group, read from the API when the stream
// opens (and again after a reset), then kept current by the stream's `alert` events: a
// firing one joins the panel, a resolved one leaves it. Events arriving while the API
// answers are applied after its answer, in order, so the panel ends as the newest says.

import { api } from "./api.js";
import { severityChip } from "./cards.js";
import { formatTime } from "./chart.js";
import { cell, fillTable } from "./tables.js";

const $ = (id) => document.getElementById(id);
const LIMIT = 1000;
const RANK = { CRITICAL: 4, HIGH: 3, MEDIUM: 2, LOW: 1 };

// A notification names its group as {key: value} ({} without one); the API's rows give the
// value, as the daemon keeps each rule's state per group.
const groupValue = (group) =>
  group !== null && typeof group === "object" ? String(Object.values(group)[0] ?? "") : group ?? "";
const keyOf = (rule, group) => `${rule}\u0000${group}`;

// What fired an alert, in a line: its anomaly, event or metric reading.
function recordSummary(r) {
  if (!r) return "";
  if (r.anomaly_type) return `${r.anomaly_type}: ${r.description ?? ""}`;
  if (r.event_type) return `${r.component} ${r.event_type}: ${r.message ?? ""}`;
  if (r.metric_name) return `${r.metric_name} = ${r.metric_value}${r.unit ? ` ${r.unit}` : ""}`;
  return "";
}

export class AlertsPanel {
  constructor() {
    this.firing = new Map(); // rule + group -> {rule, group, since, severity, summary, record}
    this.loading = null; // the API read in flight: events wait for its answer
    this.queued = [];
  }

  async load() {
    const ticket = (this.loading = {});
    this.queued = [];
    let rows = null;
    try {
      rows = await api("alerts", { state: "firing", limit: LIMIT });
      $("alerts-note").textContent = "";
    } catch (e) {
      $("alerts-note").textContent = `firing alerts unavailable: ${e.message}`;
    }
    if (ticket !== this.loading) return; // a newer read replaced this one
    this.loading = null;
    if (rows) this.firing = new Map(rows.map((a) => [keyOf(a.rule, a.group), a]));
    for (const alert of this.queued.splice(0)) this.apply(alert);
    this.render();
  }

  receive(alert) {
    if (this.loading) {
      this.queued.push(alert);
      return;
    }
    this.apply(alert);
    this.render();
  }

  apply(alert) {
    const group = groupValue(alert.group);
    const key = keyOf(alert.rule, group);
    if (alert.state === "resolved") {
      this.firing.delete(key);
      return;
    }
    const shown = this.firing.get(key);
    if (shown) { // a repeat: firing since it began, now with its latest record
      shown.record = alert.record ?? shown.record;
      shown.severity = alert.severity ?? shown.severity;
      return;
    }
    this.firing.set(key, {
      rule: alert.rule, group, since: Date.parse(alert.at) / 1000, severity: alert.severity,
      summary: (alert.summary ?? "").replace(`${alert.rule} ${alert.state}: `, ""),
      record: alert.record,
    });
  }

  render() {
    const rows = [...this.firing.values()].sort((a, b) =>
      (RANK[b.severity] ?? 0) - (RANK[a.severity] ?? 0) || b.since - a.since);
    $("alerts-count").textContent = rows.length ? String(rows.length) : "";
    $("alerts-none").hidden = rows.length > 0; // one line, not an empty table
    $("alerts").hidden = !rows.length;
    fillTable($("alerts"), rows, (a) => {
      const tr = document.createElement("tr");
      tr.dataset.rule = a.rule;
      const severity = cell("");
      if (a.severity) severity.appendChild(severityChip(a.severity));
      const what = cell(recordSummary(a.record) || a.summary || "", "what");
      what.title = [a.summary, a.record ? JSON.stringify(a.record) : ""].filter(Boolean).join("\n");
      tr.append(cell(a.rule), severity, cell(a.group || ""), cell(formatTime(a.since)), what);
      return tr;
    }, "no firing alerts");
  }
}
