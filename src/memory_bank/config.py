"""Configuration: defaults, then one TOML file, then environment variables, then flags.

Every key is known here with its type; an unknown key or a bad value is refused with the
key's name and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


@dataclass
class Config:
    db: str = "ev_charging_memory.db"
    endpoint: str | None = None
    batch_rows: int = 4000
    batch_seconds: float = 0.05
    synchronous: str = "FULL"
    log_level: str = "INFO"


# TOML layout: [daemon] db, endpoint, batch_rows, batch_seconds, synchronous; [logging] level
_SECTIONS = {
    "daemon": {"db", "endpoint", "batch_rows", "batch_seconds", "synchronous"},
    "logging": {"level"},
}
_ENV = {
    "MEMORYBANK_DB": "db",
    "MEMORYBANK_ENDPOINT": "endpoint",
    "MEMORYBANK_LOG_LEVEL": "log_level",
}


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
    if config.endpoint is not None and not str(config.endpoint).startswith(("ipc://", "tcp://")):
        raise ConfigError(
            f"daemon.endpoint: expected ipc://PATH or tcp://HOST:PORT, got {config.endpoint!r}"
        )
    return config


def load(path: str | os.PathLike | None = None, **overrides) -> Config:
    """Build the configuration; ``overrides`` (flags) whose value is None are ignored."""
    config = Config()
    if path is None:
        path = os.environ.get("MEMORYBANK_CONFIG")
    if path is not None:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for section, values in doc.items():
            if section not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(
                    f"{path}: unknown section [{section}]; expected one of "
                    f"{', '.join(sorted(_SECTIONS))}"
                )
            for key, value in values.items():
                if key not in _SECTIONS[section]:
                    raise ConfigError(
                        f"{path}: unknown key {section}.{key}; expected one of "
                        f"{', '.join(sorted(_SECTIONS[section]))}"
                    )
                setattr(config, "log_level" if section == "logging" else key, value)
        if config.db and not os.path.isabs(config.db):
            config.db = str(Path(path).resolve().parent / config.db)
    for env, attr in _ENV.items():
        if os.environ.get(env):
            setattr(config, attr, os.environ[env])
    known = {f.name for f in fields(Config)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown setting {key}")
        if value is not None:
            setattr(config, key, value)
    return _check(config)
