"""Bring a data folder over to a new backbone: stored photos and inbox faces are embedded again in the background.

When the app starts with another backbone than the one some photos were
enrolled with (after an upgrade, or `FACES_BACKBONE` changed), those photos
are not matched until their features are computed again from the stored
image. `Reembedder` does that on a daemon thread, one photo at a time (each
one its own transaction, so a restart resumes where it stopped), without
holding up start-up or live video (live frames run on their own recognizer).
Progress is on /api/status and the People page. Corrections keep only
features, not images, so those of another backbone stay unused.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from model.images import ImageError, decode_image
from webapp import files
from webapp.db import connect, to_blob, transaction
from webapp.service import FaceService, ModelNotReady

log = logging.getLogger(__name__)


class Reembedder:
    """The background job; `progress` says how far it got ({"state", "done", "total", "failed"})."""

    def __init__(self, database: str, data_dir: Path, service: FaceService):
        self.database = database
        self.data_dir = Path(data_dir)
        self.service = service
        self.done = 0
        self.failed = 0
        self.total = 0
        self.state = "idle"
        self._thread: threading.Thread | None = None

    @property
    def progress(self) -> dict:
        return {"state": self.state, "done": self.done, "total": self.total, "failed": self.failed}

    def start_if_needed(self) -> threading.Thread | None:
        """Start the job when rows of another backbone exist; returns the thread, or None."""
        conn = connect(self.database)
        try:
            self.total = sum(_count_other(conn, table, self.service.backbone) for table in ("photos", "unknown_faces"))
        finally:
            conn.close()
        if not self.total:
            return None
        self.state = "running"
        self._thread = threading.Thread(target=self._run, name="faces-reembed", daemon=True)
        self._thread.start()
        return self._thread

    def _run(self) -> None:
        conn = connect(self.database)
        try:
            self.service.wait_ready(timeout=None)
            self._photos(conn)
            self._inbox(conn)
            self.state = "done"
            log.info("re-embedded %d stored face(s) with %s (%d unreadable)", self.done, self.service.backbone,
                     self.failed)
        except ModelNotReady as exc:
            self.state = "failed"
            log.error("stored faces were not re-embedded: %s", exc)
        except Exception:  # a background job must say why it stopped, not vanish
            self.state = "failed"
            log.exception("re-embedding stored faces stopped")
        finally:
            conn.close()

    def _photos(self, conn) -> None:
        rows = conn.execute("SELECT id, person_id, file, box FROM photos WHERE backbone != ? ORDER BY id",
                            (self.service.backbone,)).fetchall()
        for row in rows:
            found = self._embed(self.data_dir / files.PHOTOS_DIR / row["file"], row["box"])
            if found is None:
                continue
            features, embedding = found
            with transaction(conn):
                changed = conn.execute(
                    "UPDATE photos SET features = ?, embedding = ?, backbone = ? WHERE id = ?",
                    (to_blob(features), to_blob(embedding), self.service.backbone, row["id"]),
                ).rowcount
            if changed:  # not deleted meanwhile
                self.service.add_photo(row["id"], row["person_id"], embedding)
            self.done += 1

    def _inbox(self, conn) -> None:
        rows = conn.execute("SELECT id, file, box FROM unknown_faces WHERE backbone != ? ORDER BY id",
                            (self.service.backbone,)).fetchall()
        for row in rows:
            found = self._embed(self.data_dir / files.INBOX_DIR / row["file"], row["box"])
            if found is None:
                continue
            features, embedding = found
            with transaction(conn):
                conn.execute("UPDATE unknown_faces SET features = ?, embedding = ?, backbone = ? WHERE id = ?",
                             (to_blob(features), to_blob(embedding), self.service.backbone, row["id"]))
            self.done += 1

    def _embed(self, path: Path, box: str):
        try:
            photo = decode_image(path.read_bytes())
        except (OSError, ImageError) as exc:
            log.warning("cannot re-embed %s: %s", path.name, exc)
            self.failed += 1
            return None
        return self.service.embed_stored(photo, json.loads(box))


def _count_other(conn, table: str, backbone: str) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM {table} WHERE backbone != ?", (backbone,)).fetchone()[0]
