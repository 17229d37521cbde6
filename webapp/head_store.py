"""The active head in the store of record: the `heads` table, one row per backbone, written by a head reload.

A reload (people_store.reload_head) puts the head file's bytes, its sidecar and their SHA-256 here in the
transaction that writes the photos it re-embedded, so the row always names the head those embeddings were
made with. Its change-log row (kind 'head') tells every other process, which loads the head from these bytes
and swaps it in without embedding anything again (webapp/changes.py). Nothing else writes the table, so a
store never reloaded has no row and every process uses its head file, as before the table existed.

At start (README, "The active head"): a process uses the stored head when there is one, since the stored
embeddings were made with it; a head file in the weights folder that differs from it and was written after
it was stored is a retrained head, and the app process reloads it once its model is up (`retrained`).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.head import Head, head_from_bytes, head_path, sidecar_path
from webapp.db import utc_now
from webapp.service import FaceService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredHead:
    """One row of `heads`: the .h5 file's bytes, its sidecar (a dict), their SHA-256 and when it was stored."""

    backbone: str
    file: bytes
    sidecar: dict
    sha256: str
    loaded_at: str  # UTC, '%Y-%m-%dT%H:%M:%SZ'

    def head(self, dim: int) -> Head:
        """:raises ValueError: the bytes do not hold a head for this backbone and dim."""
        return head_from_bytes(self.file, self.backbone, dim, self.sidecar, name=f"the stored {self.backbone} head")

    @property
    def loaded_epoch(self) -> float:
        return float(calendar.timegm(time.strptime(self.loaded_at, "%Y-%m-%dT%H:%M:%SZ")))


def sidecar_text(info: dict) -> str:
    """A sidecar as the table keeps it: JSON with sorted keys, so one head always hashes the same."""
    return json.dumps(info, sort_keys=True)


def fingerprint(file: bytes, info: dict) -> str:
    """Hex SHA-256 of a head file's bytes and its sidecar: what tells two heads apart."""
    return hashlib.sha256(file + b"\0" + sidecar_text(info).encode()).hexdigest()


def read(conn: sqlite3.Connection, backbone: str) -> StoredHead | None:
    """The stored head of a backbone, or None when no reload has stored one."""
    row = conn.execute("SELECT file, sidecar, sha256, loaded_at FROM heads WHERE backbone = ?", (backbone,)).fetchone()
    if row is None:
        return None
    return StoredHead(backbone, bytes(row["file"]), json.loads(row["sidecar"]), row["sha256"], row["loaded_at"])


def record(conn: sqlite3.Connection, backbone: str, file: bytes, info: dict) -> str:
    """Store a backbone's active head (call inside the reload's transaction); returns its fingerprint."""
    sha = fingerprint(file, info)
    conn.execute(
        "INSERT INTO heads (backbone, file, sidecar, sha256, loaded_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (backbone) "
        "DO UPDATE SET file = excluded.file, sidecar = excluded.sidecar, sha256 = excluded.sha256, "
        "loaded_at = excluded.loaded_at",
        (backbone, file, sidecar_text(info), sha, utc_now()),
    )
    return sha


def file_fingerprint(path: Path) -> str | None:
    """The fingerprint of a head file in the weights folder and its sidecar; None when it cannot be read."""
    try:
        sidecar = sidecar_path(path)
        info = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        return fingerprint(path.read_bytes(), info)
    except (OSError, ValueError):
        return None


def use_stored(conn: sqlite3.Connection, service: FaceService) -> StoredHead | None:
    """At start, before the model loads: give the service the stored head of its backbone, if there is one.

    :return: the stored head used (None: none stored, or unreadable, which is logged; the head file then).
    """
    stored = read(conn, service.backbone)
    if stored is None:
        return None
    try:
        head = stored.head(service.recognizer.backbone.dim)
    except ValueError as exc:
        log.error("%s; using the head file instead", exc)
        return None
    service.swap_head(head, sha=stored.sha256)
    log.info("head: using the stored %s head, reloaded at %s (sha256 %s)", stored.backbone, stored.loaded_at,
             stored.sha256[:12])
    return stored


def retrained(stored: StoredHead | None, backbone: str, weights_dir: Path | None) -> Path | None:
    """The weights folder's head file when it is a head retrained since the stored one, else None.

    That is: it differs from the stored head and was written after it was stored. An older, different
    file (a second machine's old copy, a rollback that kept its date) is left alone, with a warning.
    """
    path = head_path(backbone, weights_dir)
    if stored is None or not path.exists():
        return None
    sha = file_fingerprint(path)
    if sha == stored.sha256:
        return None
    if path.stat().st_mtime > stored.loaded_epoch:
        return path
    log.warning("%s differs from the head reloaded at %s and is older: using the stored head (Reload head "
                "takes the file)", path, stored.loaded_at)
    return None


def embeddings_now(conn: sqlite3.Connection, service: FaceService, features: Sequence[NDArray[np.float32]],
                   embedded: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
    """The embeddings to store for new photos, read inside the write's transaction: `embedded` (this process's
    head made them) unless another process has since stored a different head, which this one's poller has not
    swapped in yet; then that head applied to `features`, so no photo is kept with an old head's vector."""
    row = conn.execute("SELECT sha256 FROM heads WHERE backbone = ?", (service.backbone,)).fetchone()
    if row is None or row["sha256"] == service.head_sha:
        return list(embedded)
    try:
        head = read(conn, service.backbone).head(service.recognizer.backbone.dim)
    except ValueError as exc:  # unreadable: this process uses its file head, whose vectors these are
        log.error("%s; new photos keep this process's embeddings", exc)
        return list(embedded)
    return list(head(np.stack(features)))
