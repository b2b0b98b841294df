"""CURVE key pairs for daemons and publishers, in ZeroMQ's certificate file format."""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth


def create_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (mode 0600) into ``directory``."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(os.fspath(directory), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def client_curve(
    server_public_file: str | os.PathLike, client_secret_file: str | os.PathLike
) -> dict:
    """The ``curve=`` argument of Publisher/MemoryBank from a daemon's public key file and
    the publisher's own secret key file."""
    server_public, _ = zmq.auth.load_certificate(os.fspath(server_public_file))
    public, secret = zmq.auth.load_certificate(os.fspath(client_secret_file))
    if secret is None:
        raise ValueError(f"{client_secret_file} holds no secret key")
    return {
        "server_key": server_public.decode(),
        "public_key": public.decode(),
        "secret_key": secret.decode(),
    }
