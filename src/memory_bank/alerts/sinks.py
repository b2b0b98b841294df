"""Where notifications go: a webhook (one JSON POST each), Apprise (any of its URLs), MQTT
(QoS 1, to ``<topic>/alerts/<rule>``).

A sink's ``send`` returns once the other side took the notification and raises
``SinkError`` (with what went wrong) otherwise; the delivery worker retries. Apprise and
paho-mqtt are imported only by the sinks that use them (the ``alerts`` extra).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from .rules import Sink

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """The sink did not take the notification (the reason is the message)."""


class WebhookSink:
    """POSTs the notification's JSON; any 2xx answer is delivery."""

    def __init__(self, config: Sink):
        self.config = config
        self.headers = {"Content-Type": "application/json", **dict(config.headers)}

    def send(self, body: dict) -> None:
        data = json.dumps(body, default=str).encode()
        request = urllib.request.Request(
            self.config.url, data=data, headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise SinkError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkError(f"cannot POST to {self.config.url}: {reason}") from None

    def close(self) -> None:
        pass


class AppriseSink:
    """Any Apprise URL (ntfy, Slack, Telegram, e-mail, json://...): the summary as the
    title, the notification's JSON as the body."""

    def __init__(self, config: Sink):
        import apprise

        self.apprise = apprise.Apprise()
        if not self.apprise.add(config.url):
            raise SinkError(f"sink {config.name!r}: Apprise does not understand {config.url!r}")
        self.config = config

    def send(self, body: dict) -> None:
        title = f"[{body['state'].upper()}] {body['rule']}"
        if not self.apprise.notify(title=title, body=json.dumps(body, default=str)):
            raise SinkError(f"Apprise could not notify {self.config.url}")

    def close(self) -> None:
        pass


def make_sink(config: Sink):
    if config.type == "webhook":
        return WebhookSink(config)
    if config.type == "apprise":
        return AppriseSink(config)
    from .mqtt import MqttSink

    return MqttSink(config)
