"""Detection: a component that reads committed metrics and events, finds anomalies and
recurring cycles, and publishes them like any other component (ARCHITECTURE.md).

    memorybank detect --db ev.db [--once]

``runner`` is the process (position, checkpoints, publishing); ``position`` reads
committed rows in commit order; ``streams`` holds the per-stream detectors, ``cycles``
the event-cycle learner and ``forecast`` the next-anomaly forecast (standard library, so
``MemoryBank.forecast_anomaly`` and ``memorybank view --forecast`` need nothing more).
"""
