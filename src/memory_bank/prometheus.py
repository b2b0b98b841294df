"""The daemon's own figures for Prometheus (``metrics_listen = "127.0.0.1:9464"``): what
`memorybank status` shows, as Vector and Fluent Bit expose theirs.

The HTTP server runs on prometheus-client's thread; it never touches the store. The
daemon's loop hands it a snapshot of its figures about once a second (``refresh``), and
the writer reports each batch's commit time to the histogram (``observe_commit``).
prometheus-client comes with the ``alerts`` extra and is imported only when configured.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
# status figure -> (metric name, help); counters end in _total in the exposition.
COUNTERS = {
    "received_records": ("memorybank_records_received", "Records received from publishers."),
    "committed_records": ("memorybank_records_committed", "Records committed to the store."),
    "rejected_records": ("memorybank_records_rejected", "Records refused (bad input)."),
    "rejected_messages": ("memorybank_messages_rejected", "Messages refused whole."),
    "duplicate_records": ("memorybank_records_duplicate", "Replayed records skipped."),
    "batches": ("memorybank_batches", "Batches committed."),
    "store_errors": ("memorybank_store_errors", "Commits the store could not take."),
}
GAUGES = {
    "queue_depth": ("memorybank_queue_depth", "Records received and not yet committed."),
    "dropped_by_publishers": (
        "memorybank_records_dropped_by_publishers",
        "Records publishers had to drop (their buffers overflowed), as they report them.",
    ),
    "db_bytes": ("memorybank_database_bytes", "Size of the database file."),
    "wal_bytes": ("memorybank_wal_bytes", "Size of the write-ahead log."),
    "publishers": ("memorybank_publishers", "Publishers seen."),
    "uptime_seconds": ("memorybank_uptime_seconds", "Seconds since the daemon started."),
}
SINK_FIGURES = {
    "pending": ("memorybank_sink_pending", "Notifications waiting in the outbox.", False),
    "delivered": ("memorybank_sink_delivered", "Notifications delivered.", True),
    "failures": ("memorybank_sink_failures", "Failed delivery attempts.", True),
    "dropped": ("memorybank_sink_dropped", "Notifications dropped (outbox full).", True),
}
STREAM_FIGURES = {
    "published": ("memorybank_stream_published", "Records the broker acknowledged.", True),
    "pending": ("memorybank_stream_pending", "Records waiting for the broker.", False),
    "dropped": ("memorybank_stream_dropped", "Records deleted before streamed.", True),
    "failures": ("memorybank_stream_failures", "Failed publish rounds.", True),
}

PROCESS_FIGURES = {  # a stream in a process of its own (stream_process)
    "restarts": (
        "memorybank_stream_process_restarts",
        "Times the stream's process ended unasked and was started again.",
        True,
    ),
}


class Exporter:
    def __init__(self, listen: str):
        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry()
        self.commit_seconds = Histogram(
            "memorybank_batch_commit_seconds",
            "Time to commit one batch (its transaction, alerts included).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.registry.register(self)
        self._figures: dict = {}
        self._lock = threading.Lock()
        self._next = 0.0
        self.server, _thread = start_http_server(int(port), host.strip("[]"), self.registry)
        self.address = f"{host}:{self.server.server_port}"
        log.info("Prometheus metrics on http://%s/metrics", self.address)

    def observe_commit(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def refresh(self, figures) -> None:
        """Take a new snapshot (``figures()``) when the last is a second old."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + REFRESH_SECONDS
        snapshot = figures()
        with self._lock:
            self._figures = snapshot

    def collect(self):
        """prometheus-client's collector protocol: the metrics from the last snapshot."""
        with self._lock:
            figures = self._figures
        for key, (name, text) in COUNTERS.items():
            if figures.get(key) is not None:
                yield CounterMetricFamily(name, text, value=figures[key])
        for key, (name, text) in GAUGES.items():
            if figures.get(key) is not None:
                yield GaugeMetricFamily(name, text, value=figures[key])
        yield GaugeMetricFamily(
            "memorybank_store_up",
            "1 while the store takes commits, 0 while it fails.",
            value=0 if figures.get("store_error") else 1,
        )
        alerts = figures.get("alerts")
        if not alerts:
            return
        yield GaugeMetricFamily(
            "memorybank_alerts_firing", "Rule groups firing now.", value=alerts["firing"]
        )
        yield from _labelled(alerts["sinks"], SINK_FIGURES)
        streams = alerts.get("streams") or {}
        yield from _labelled(streams, STREAM_FIGURES)
        processes = {n: s["process"] for n, s in streams.items() if s.get("process")}
        if processes:
            yield from _labelled(processes, PROCESS_FIGURES)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _labelled(per_sink: dict, spec: dict):
    for key, (name, text, counter) in spec.items():
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(
            name, text, labels=["sink"]
        )
        for sink, values in sorted(per_sink.items()):
            family.add_metric([sink], values[key])
        yield family
