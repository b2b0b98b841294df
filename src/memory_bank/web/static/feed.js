// The live feed: events and anomalies as they commit, over Server-Sent Events (which also
// carry the alerts' notifications, handed to their panel). The backlog comes from the API
// once the stream is open (nothing committed in between is missed; rows seen twice are
// shown once). Filters apply to what is shown; pause holds new rows back and counts them.
// A hidden tab lets its stream go (nothing is drawn that nobody sees, and the server has
// one stream fewer to feed); shown again, it reconnects and catches up from the API as a
// first load does.

import { api } from "./api.js";
import { formatTime } from "./chart.js";

const $ = (id) => document.getElementById(id);
const KEEP = 500; // rows kept in the list
const BACKLOG = 50;

export class Feed {
  constructor({ onStatus, onSummary, onRecords, onAlert, onReload }) {
    this.onStatus = onStatus;
    this.onSummary = onSummary;
    this.onRecords = onRecords;
    this.onAlert = onAlert; // each notification as it commits
    this.onReload = onReload; // the stream (re)opened or reset: read the rest from the API
    this.rows = []; // newest first: {key, kind, time, component, type, severity, text}
    this.seen = new Set();
    this.paused = false;
    this.held = [];
    this.skipped = 0; // rows committed faster than a page can show (the API has them)
    this.pending = []; // rows waiting to go on top of the list (null: redraw it whole)
    this.renderTimer = null;
    this.list = $("feed");
    for (const id of ["feed-kind", "feed-component", "feed-type", "feed-severity"]) {
      $(id).addEventListener("change", () => this.render());
    }
    $("feed-pause").addEventListener("click", () => this.togglePause());
  }

  connect() {
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.disconnect();
      else if (!this.source) this.open();
    });
    if (document.visibilityState !== "hidden") this.open();
    else this.disconnect();
  }

  disconnect() {
    if (this.source) this.source.close();
    this.source = null;
    this.loaded = false; // shown again: the backlog is read again (it holds what was missed)
    this.onStatus({ live: false, message: "paused while this tab is hidden" });
  }

  open() {
    this.source = new EventSource("/api/stream");
    this.source.addEventListener("status", (ev) => {
      this.onStatus(JSON.parse(ev.data));
      if (!this.loaded) this.loadBacklog();
    });
    this.source.addEventListener("reset", () => this.loadBacklog());
    this.source.addEventListener("summary", (ev) => this.onSummary(JSON.parse(ev.data)));
    this.source.addEventListener("alert", (ev) => this.onAlert(JSON.parse(ev.data)));
    this.source.addEventListener("records", (ev) => {
      const batch = JSON.parse(ev.data);
      this.add(batch.events.map(asEvent).concat(batch.anomalies.map(asAnomaly)), true);
      const skipped = batch.skipped.events + batch.skipped.anomalies;
      if (skipped) this.skipped += skipped;
      this.onRecords(batch);
    });
    this.source.addEventListener("error", () => {
      this.onStatus({ live: false, message: "reconnecting to the dashboard…" });
    });
  }

  async loadBacklog() {
    this.loaded = true;
    this.onReload();
    try {
      const [events, anomalies] = await Promise.all([
        api("events", { limit: BACKLOG }), api("anomalies", { limit: BACKLOG })]);
      this.add(events.map(asEvent).concat(anomalies.map(asAnomaly)), false);
    } catch (e) {
      $("feed-note").textContent = `backlog unavailable: ${e.message}`;
    }
  }

  add(rows, fresh) {
    rows = rows.filter((r) => !this.seen.has(r.key));
    if (!rows.length) return;
    for (const r of rows) { this.seen.add(r.key); r.fresh = fresh; }
    if (this.paused && fresh) {
      this.held.push(...rows);
      $("feed-pause").textContent = `resume (${this.held.length} new)`;
      return;
    }
    this.merge(rows);
  }

  merge(rows) {
    const newest = this.rows.length ? this.rows[0].time : -Infinity;
    this.rows = this.rows.concat(rows).sort((a, b) => b.time - a.time);
    for (const gone of this.rows.splice(KEEP)) this.seen.delete(gone.key);
    this.remember(rows);
    // Lines newer than every line shown go on top; anything else redraws the list. At high
    // rates batches come every few tens of ms: the page is updated ten times a second.
    const onTop = rows.every((r) => r.time >= newest);
    this.pending = onTop && this.pending !== null ? this.pending.concat(rows) : null;
    if (!this.renderTimer) {
      this.renderTimer = setTimeout(() => {
        this.renderTimer = null;
        const pending = this.pending;
        this.pending = [];
        if (pending === null || this.list.querySelector(".empty")) this.render();
        else this.prepend(pending);
      }, 100);
    }
  }

  prepend(rows) {
    const items = rows.filter((r) => this.wanted(r)).sort((a, b) => a.time - b.time)
      .map((r) => this.item(r));
    for (const li of items) this.list.prepend(li);
    while (this.list.childElementCount > KEEP) this.list.lastElementChild.remove();
    this.note();
  }

  togglePause() {
    this.paused = !this.paused;
    const button = $("feed-pause");
    button.setAttribute("aria-pressed", String(this.paused));
    button.textContent = this.paused ? "resume" : "pause";
    $("feed-note").textContent = this.paused ? "paused: new rows are held back" : "";
    if (!this.paused && this.held.length) {
      const held = this.held;
      this.held = [];
      this.merge(held);
    }
  }

  // The component and type pickers offer what the feed has shown.
  remember(rows) {
    for (const [id, field] of [["feed-component", "component"], ["feed-type", "type"]]) {
      const select = $(id);
      const known = new Set([...select.options].map((o) => o.value));
      for (const r of rows) {
        if (r[field] && !known.has(r[field])) {
          known.add(r[field]);
          select.add(new Option(r[field], r[field]));
        }
      }
    }
  }

  wanted(r) {
    const kind = $("feed-kind").value, component = $("feed-component").value;
    const type = $("feed-type").value, severity = $("feed-severity").value;
    return (!kind || r.kind === kind) && (!component || r.component === component) &&
      (!type || r.type === type) && (!severity || r.severity === severity);
  }

  item(r) {
    const li = document.createElement("li");
    li.className = r.kind + (r.fresh ? " fresh" : "");
    r.fresh = false;
    li.dataset.key = r.key;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = formatTime(r.time);
    const who = document.createElement("span");
    if (r.kind === "anomaly") {
      who.className = `sev ${r.severity}`;
      who.textContent = r.severity;
    } else {
      who.textContent = r.component;
    }
    const type = document.createElement("span");
    type.textContent = r.type;
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = r.text;
    what.title = r.text;
    li.append(when, who, type, what);
    return li;
  }

  render() {
    this.pending = [];
    const items = this.rows.filter((r) => this.wanted(r)).map((r) => this.item(r));
    this.list.replaceChildren(...items);
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = this.rows.length ? "nothing matches these filters" : "nothing yet";
      this.list.appendChild(li);
    }
    this.note();
  }

  note() {
    if (this.skipped && !this.paused) {
      $("feed-note").textContent = `${this.skipped.toLocaleString()} more rows committed ` +
        "too fast to list here (all are in the database)";
    }
  }
}

function asEvent(e) {
  return { key: `e${e.id}`, kind: "event", time: e.timestamp, component: e.component,
    type: e.event_type, severity: null, text: e.message || "" };
}

function asAnomaly(a) {
  return { key: `a${a.id}`, kind: "anomaly", time: a.timestamp, component: null,
    type: a.anomaly_type, severity: a.severity, text: a.description || "" };
}
