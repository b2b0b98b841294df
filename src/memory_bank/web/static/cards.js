// The summary cards. The page arrives with a summary inside it (#first-summary), and this
// module, which imports nothing, fills the cards from it as soon as it runs: the numbers
// appear with the page's first paint, before the chart and the tables are even asked for.
// Later summaries come with the live stream (app.js).

export const num = (v) => (v == null ? "–" : Number(v).toLocaleString());

export function severityChip(severity, count) {
  const chip = document.createElement("span");
  chip.className = `sev ${severity}`;
  chip.textContent = count == null ? severity : `${severity} ${num(count)}`;
  return chip;
}

const $ = (id) => document.getElementById(id);

export function showSummary(s) {
  $("total-events").textContent = num(s.total_events);
  $("events-last-hour").textContent = num(s.events_last_hour);
  $("total-anomalies").textContent = num(s.total_anomalies);
  $("anomalies-last-hour").textContent = num(s.anomalies_last_hour);
  $("total-sessions").textContent = num(s.total_sessions);
  $("active-sessions").textContent = num(s.active_sessions);
  const bySeverity = $("by-severity");
  bySeverity.textContent = "";
  const entries = Object.entries(s.anomalies_by_severity);
  if (!entries.length) bySeverity.textContent = "none";
  for (const [severity, count] of entries) bySeverity.appendChild(severityChip(severity, count));
  if (!performance.getEntriesByName("mb-summary").length) performance.mark("mb-summary");
}

// True when the page came with a summary (the server could read one) and it is shown.
export const firstSummaryShown = (() => {
  const text = $("first-summary")?.textContent;
  if (!text) return false;
  showSummary(JSON.parse(text));
  return true;
})();
