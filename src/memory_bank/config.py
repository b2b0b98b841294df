"""Configuration: defaults, then one TOML file, then environment variables, then flags.

Every key is known here with its type; an unknown key or a bad value is refused with the
key's name and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .locations import DEFAULT_DATABASE


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


@dataclass
class Config:
    db: str = DEFAULT_DATABASE
    endpoint: str | None = None
    batch_rows: int = 2000
    batch_seconds: float = 0.05
    synchronous: str = "FULL"
    max_db_bytes: int | None = None
    max_wal_bytes: int = 64 << 20
    max_text_chars: int = 1_000_000
    max_future_seconds: float = 86400.0
    curve_secret_key_file: str | None = None
    curve_authorized_keys_dir: str | None = None
    retention_schedule: str = "0 3 * * *"
    vacuum_schedule: str = "after-retention"
    retention_days: float = 7.0
    events_days: float | None = None
    anomalies_days: float | None = None
    metrics_days: float | None = None
    sessions_days: float | None = None
    patterns_days: float | None = None
    chunk_rows: int = 5000
    log_level: str = "INFO"
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    web_token: str | None = None
    # [[alerts]] rules and [sinks.NAME] (memory_bank.alerts.rules), as the file has them.
    alerts: list | None = None
    sinks: dict | None = None
    metrics_listen: str | None = None  # [daemon] HOST:PORT of the Prometheus endpoint

    # [detect]: `memorybank detect` (see memory_bank.detect.runner.DetectSettings)
    detect_instance: str = "detect"
    detect_sensitivity: float = 1.0
    detect_warmup_readings: int = 240
    detect_metrics: list[str] | None = None
    detect_poll_seconds: float = 1.0
    detect_checkpoint_seconds: float = 60.0
    detect_cycle_min_period_s: float = 2.0

    def table_retention_days(self) -> dict[str, float | None]:
        """Days kept per table: events, anomalies and metrics default to retention_days;
        sessions and patterns are kept unless configured, as in the seed."""
        return {
            "events": self.retention_days if self.events_days is None else self.events_days,
            "anomalies": (
                self.retention_days if self.anomalies_days is None else self.anomalies_days
            ),
            "metrics": self.retention_days if self.metrics_days is None else self.metrics_days,
            "sessions": self.sessions_days,
            "patterns": self.patterns_days,
        }


_DAY_KEYS = (
    "retention_days",
    "events_days",
    "anomalies_days",
    "metrics_days",
    "sessions_days",
    "patterns_days",
)
# TOML layout: [daemon] ..., [limits] ..., [security] ..., [logging] level
_SECTIONS = {
    "daemon": {
        "db",
        "endpoint",
        "batch_rows",
        "batch_seconds",
        "synchronous",
        "max_db_bytes",
        "metrics_listen",
        "max_wal_bytes",
    },
    "limits": {"max_text_chars", "max_future_seconds"},
    "security": {"curve_secret_key_file", "curve_authorized_keys_dir"},
    "maintenance": {"retention_schedule", "vacuum_schedule", "chunk_rows", *_DAY_KEYS},
    "logging": {"level"},
    "web": {"host", "port", "token"},
    "detect": {
        "instance",
        "sensitivity",
        "warmup_readings",
        "metrics",
        "poll_seconds",
        "checkpoint_seconds",
        "cycle_min_period_s",
    },
}
# Sections whose attributes are named for them (the file says [web] port: web_port).
_PREFIXED_SECTIONS = ("web", "detect")
_ATTRIBUTE = {("logging", "level"): "log_level"}


def _attribute(section: str, key: str) -> str:
    """The Config attribute a file's [section] key sets."""
    if section in _PREFIXED_SECTIONS:
        return f"{section}_{key}"
    return _ATTRIBUTE.get((section, key), key)


_PATH_KEYS = ("db", "curve_secret_key_file", "curve_authorized_keys_dir")
_ENV = {
    "MEMORYBANK_DB": "db",
    "MEMORYBANK_ENDPOINT": "endpoint",
    "MEMORYBANK_LOG_LEVEL": "log_level",
    "MEMORYBANK_WEB_TOKEN": "web_token",
}


def _whole(value, key: str, low: int, high: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key}: expected a whole number from {low} to {high}, got {value!r}")


def _check(config: Config) -> Config:
    if (
        not isinstance(config.batch_rows, int)
        or isinstance(config.batch_rows, bool)
        or not (1 <= config.batch_rows <= 1_000_000)
    ):
        raise ConfigError(
            f"daemon.batch_rows: expected a whole number from 1 to 1000000, "
            f"got {config.batch_rows!r}"
        )
    if not isinstance(config.batch_seconds, int | float) or not (
        0.001 <= config.batch_seconds <= 10
    ):
        raise ConfigError(
            f"daemon.batch_seconds: expected seconds from 0.001 to 10, got {config.batch_seconds!r}"
        )
    if str(config.synchronous).upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(
            f"daemon.synchronous: expected OFF, NORMAL, FULL or EXTRA, got {config.synchronous!r}"
        )
    config.synchronous = str(config.synchronous).upper()
    if str(config.log_level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"logging.level: expected DEBUG, INFO, WARNING or ERROR, got {config.log_level!r}"
        )
    config.log_level = str(config.log_level).upper()
    _whole(config.max_db_bytes, "daemon.max_db_bytes", 4096, 1 << 50, optional=True)
    _whole(config.max_wal_bytes, "daemon.max_wal_bytes", 1 << 20, 1 << 50)
    _whole(config.max_text_chars, "limits.max_text_chars", 16, 100_000_000)
    if not isinstance(config.max_future_seconds, int | float) or config.max_future_seconds < 0:
        raise ConfigError(
            f"limits.max_future_seconds: expected seconds >= 0, got {config.max_future_seconds!r}"
        )
    for key in _DAY_KEYS:
        value = getattr(config, key)
        if value is None and key != "retention_days":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"maintenance.{key}: expected days >= 0, got {value!r}")
    _whole(config.chunk_rows, "maintenance.chunk_rows", 1, 1_000_000)
    _whole(config.web_port, "web.port", 0, 65535)  # 0: any free port
    if not isinstance(config.web_host, str) or not config.web_host:
        raise ConfigError(f"web.host: expected a host name or address, got {config.web_host!r}")
    if config.web_token is not None and (
        not isinstance(config.web_token, str) or not config.web_token
    ):
        raise ConfigError("web.token: expected a non-empty string")

    _check_detect(config)
    _check_alerts(config)
    from .writer.schedule import parse_schedule

    try:
        parse_schedule(config.retention_schedule, "maintenance.retention_schedule")
        parse_schedule(config.vacuum_schedule, "maintenance.vacuum_schedule", allow_after=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if bool(config.curve_secret_key_file) != bool(config.curve_authorized_keys_dir):
        raise ConfigError(
            "security: set both curve_secret_key_file and curve_authorized_keys_dir, or neither"
        )
    if config.endpoint is not None and not str(config.endpoint).startswith(("ipc://", "tcp://")):
        raise ConfigError(
            f"daemon.endpoint: expected ipc://PATH or tcp://HOST:PORT, got {config.endpoint!r}"
        )
    return config


def _check_alerts(config: Config) -> None:
    from .alerts import RuleError, parse

    try:
        parse(config.alerts, config.sinks)
    except RuleError as exc:
        raise ConfigError(str(exc)) from None
    listen = config.metrics_listen
    if listen is not None:
        host, _, port = str(listen).rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"daemon.metrics_listen: expected HOST:PORT (127.0.0.1:9464), got {listen!r}"
            )


def _check_detect(config: Config) -> None:
    for key, low, high in (
        ("sensitivity", 0.1, 10.0),
        ("poll_seconds", 0.01, 3600.0),
        ("checkpoint_seconds", 1.0, 86400.0),
        ("cycle_min_period_s", 0.01, 86400.0),
    ):
        value = getattr(config, f"detect_{key}")
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            raise ConfigError(
                f"detect.{key}: expected a number from {low:g} to {high:g}, got {value!r}"
            )
    _whole(config.detect_warmup_readings, "detect.warmup_readings", 10, 10_000_000)
    if (
        not isinstance(config.detect_instance, str)
        or not config.detect_instance.replace("-", "").replace("_", "").isalnum()
    ):
        raise ConfigError(
            f"detect.instance: expected a name of letters, digits, - and _, "
            f"got {config.detect_instance!r}"
        )
    metrics = config.detect_metrics
    if metrics is not None and (
        not isinstance(metrics, list) or not all(isinstance(m, str) and m for m in metrics)
    ):
        raise ConfigError(f"detect.metrics: expected a list of metric names, got {metrics!r}")


def standard_locations() -> list[Path]:
    """Where a configuration is looked for when neither --config nor $MEMORYBANK_CONFIG
    names one: the current folder, the user's config folder, then /etc/memorybank."""
    user = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [
        Path("memorybank.toml"),
        user / "memorybank" / "memorybank.toml",
        Path("/etc/memorybank/memorybank.toml"),
    ]


def find(path: str | os.PathLike | None = None) -> str | None:
    """The configuration file to read: explicit, $MEMORYBANK_CONFIG, or the first found."""
    if path is not None:
        return os.fspath(path)
    if os.environ.get("MEMORYBANK_CONFIG"):
        return os.environ["MEMORYBANK_CONFIG"]
    for candidate in standard_locations():
        if candidate.is_file():
            return os.fspath(candidate)
    return None


def load(path: str | os.PathLike | None = None, **overrides) -> Config:
    """Build the configuration; ``overrides`` (flags) whose value is None are ignored."""
    config = Config()
    path = find(path)
    if path is not None:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        # [[alerts]] and [sinks.NAME] are checked by memory_bank.alerts.rules (in _check).
        config.alerts = doc.pop("alerts", None)
        config.sinks = doc.pop("sinks", None)
        for section, values in doc.items():
            if section not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(
                    f"{path}: unknown section [{section}]; expected one of "
                    f"{', '.join(sorted([*_SECTIONS, 'alerts', 'sinks']))}"
                )
            for key, value in values.items():
                if key not in _SECTIONS[section]:
                    raise ConfigError(
                        f"{path}: unknown key {section}.{key}; expected one of "
                        f"{', '.join(sorted(_SECTIONS[section]))}"
                    )
                setattr(config, _attribute(section, key), value)
        for key in _PATH_KEYS:  # paths in the file are relative to the file
            value = getattr(config, key)
            if (
                isinstance(value, str)
                and value
                and not os.path.isabs(value)
                and "://" not in value  # a postgresql:// URL is not a path
            ):
                setattr(config, key, str(Path(path).resolve().parent / value))
    for env, attr in _ENV.items():
        if os.environ.get(env):
            setattr(config, attr, os.environ[env])
    known = {f.name for f in fields(Config)}
    # The file sets limits as [limits] max_text_chars etc.; the attribute names match.
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown setting {key}")
        if value is not None:
            setattr(config, key, value)
    return _check(config)
