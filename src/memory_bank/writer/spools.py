"""Spool adoption: what exited or crashed publishers left on disk is applied, then removed.

A publisher spools what it could not deliver; when it ends before delivering it, the
writer finds its folder (no live owner) and feeds the messages in as if they had arrived.
Under CURVE (``SpoolAuth``) a spool is applied only with the token its publisher was
handed at lease time; what fails is reported and left in place.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .. import spool, wire
from ..spool_auth import SpoolAuth, SpoolRefused

log = logging.getLogger(__name__)

ADOPT_EVERY_SECONDS = 10.0


class SpoolAdoption:
    """Finds finished publishers' spools under ``spool_key`` (None: nowhere) and adopts them."""

    def __init__(self, spool_key: Path | None, auth: SpoolAuth | None = None):
        self.spool_key = spool_key
        self.auth = auth  # under CURVE: whose spools may be applied
        self.refused: dict[Path, str] = {}  # folder -> why it is not applied
        # Folders refused for their MACs -> what they held then: not read again until it changes.
        self._refused_contents: dict[Path, tuple] = {}
        self.adopted = 0
        self.corrupt_bytes = 0
        self.forged_frames = 0
        self._next_look = 0.0

    def due(self, force: bool = False) -> bool:
        """Whether it is time to look for spools again (every ADOPT_EVERY_SECONDS)."""
        now = time.monotonic()
        if not force and now < self._next_look:
            return False
        self._next_look = now + ADOPT_EVERY_SECONDS
        return self.spool_key is not None

    def adopt(self, accept: Callable[[bytes], None], commit: Callable[[], bool]) -> None:
        """Feed each orphaned spool's messages to ``accept``, ``commit`` them (False: the
        store cannot write; the spool is kept for later), then remove the spool."""
        assert self.spool_key is not None
        for folder in [f for f in self.refused if not f.exists()]:
            del self.refused[folder]  # an operator removed it
            self._refused_contents.pop(folder, None)
        for folder, publisher_id in spool.orphaned_spools(self.spool_key):
            token = None
            contents: tuple = ()
            if self.auth is not None:
                try:
                    token = self.auth.token_for(folder, publisher_id)
                except SpoolRefused as exc:
                    self._refuse(folder, str(exc))
                    continue
                contents = _spool_contents(folder)
                if self._refused_contents.get(folder) == contents:
                    continue  # what it holds with a valid MAC is applied; the rest reported
            frames = forged = unsigned = 0
            for segment in spool.segment_paths(folder):
                result = spool.read_segment(segment, token)
                forged += result.forged_frames
                unsigned += result.unsigned_frames
                if result.corrupt_bytes:
                    self.corrupt_bytes += result.corrupt_bytes
                    log.error(
                        "spool %s: %d byte(s) after the last intact message were torn "
                        "or corrupt and are skipped",
                        segment,
                        result.corrupt_bytes,
                    )
                for _seq, raw in result.frames:
                    accept(raw)
                    frames += 1
            if not commit():
                return  # keep the spool; try again later
            if forged or unsigned:
                self.forged_frames += forged + unsigned
                self._refused_contents[folder] = contents
                reasons = []
                if forged:
                    reasons.append(f"{forged} message(s) carry no valid MAC for its identity")
                if unsigned:
                    reasons.append(
                        f"{unsigned} message(s) carry no MAC (written before its publisher "
                        "had a spool token)"
                    )
                self._refuse(folder, "; ".join(reasons))
                continue
            self.refused.pop(folder, None)
            self._refused_contents.pop(folder, None)
            log.info(
                "adopted %d message(s) from the spool of a finished publisher: %s", frames, folder
            )
            self.adopted += 1
            shutil.rmtree(folder, ignore_errors=True)

    def _refuse(self, folder: Path, reason: str) -> None:
        """A spool that may not be applied is left alone and reported (logged once per
        folder and reason, counted in status as refused_spools)."""
        if self.refused.get(folder) != reason:
            log.warning("spool %s is not applied: %s; it is left in place", folder, reason)
        self.refused[folder] = reason

    def token(self, publisher_id: int, peer: str) -> dict | None:
        """Under CURVE, what lets ``publisher_id``'s spool be applied later: the identity
        its channel authenticated (``peer``) and the token for both (spool_auth)."""
        if self.auth is None:
            return None
        return wire.spool_token(peer, self.auth.token(publisher_id, peer))


def _spool_contents(folder: Path) -> tuple:
    """What a spool folder holds, cheaply: each file's name, size and modification time."""
    found = []
    for path in sorted(folder.iterdir()):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        found.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(found)
