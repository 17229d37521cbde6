"""Bring a data folder over to a new backbone: stored photos and inbox faces are embedded again in the background.

When the app starts with another backbone than the one some photos were
enrolled with (after an upgrade, or `FACES_BACKBONE` changed), those photos
are not matched until their features are computed again from the stored
image. The `reembed` job does that (webapp.jobs: on a daemon thread of this
process, or once in the job worker when FACES_REDIS_URL is set), one photo at
a time (each one its own transaction, so a restart resumes where it stopped),
without holding up start-up or live video (live frames run on their own
recognizer). Progress is on /api/status and the People page. Corrections keep
only features, not images, so those of another backbone stay unused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flask import current_app

from model.images import ImageError, decode_image
from webapp import files
from webapp.db import connect, to_blob, transaction
from webapp.jobs import Jobs, QueueUnreachable, Record, Run
from webapp.service import FaceService, ModelNotReady

log = logging.getLogger(__name__)

STATES = {"queued": "running", "running": "running", "done": "done", "failed": "failed"}


class Reembedder:
    """Starts the job when needed; `progress` says how far it got ({"state", "done", "total", "failed"})."""

    def __init__(self, database: str, data_dir: Path, service: FaceService, jobs: Jobs):
        self.database = database
        self.data_dir = Path(data_dir)
        self.service = service
        self.jobs = jobs
        self.total = 0
        self._record: Record | None = None
        self._last = {"state": "idle", "done": 0, "total": 0, "failed": 0}

    @property
    def progress(self) -> dict:
        record = self._record
        if record is None or self._last["state"] in ("done", "failed"):
            return self._last
        if record.queued:  # in the worker: read it from Redis (any process shows the same)
            try:
                record = self.jobs.read(record.id)
            except QueueUnreachable:
                return self._last
            if record is None:  # its outcome expired (webapp.jobs.KEEP_FINISHED_S): it ended long ago
                self._last = {**self._last, "state": "done"}
                return self._last
        self._last = {"state": STATES[record.state], "done": record.done, "total": record.total or self.total,
                      "failed": (record.outcome or {}).get("failed", record.extra.get("failed", 0))}
        return self._last

    def start_if_needed(self) -> Record | None:
        """Submit the job when rows of another backbone exist; returns its record, or None."""
        conn = connect(self.database)
        try:
            self.total = sum(_count_other(conn, table, self.service.backbone) for table in ("photos", "unknown_faces"))
        finally:
            conn.close()
        if not self.total:
            return None
        self._last = {"state": "running", "done": 0, "total": self.total, "failed": 0}
        self._record, _ = self.jobs.submit(reembed, f"reembed-{self.service.backbone}")
        return self._record


def reembed(run: Run) -> dict:
    """The job: every photo and inbox face of another backbone than the app's, embedded again."""
    config, service = current_app.config, current_app.extensions["faces"]
    work = _Work(run, Path(config["DATA_DIR"]), service)
    conn = connect(config["DATABASE"])
    try:
        service.wait_ready(timeout=None)
        work.total = sum(_count_other(conn, table, service.backbone) for table in ("photos", "unknown_faces"))
        work.photos(conn)
        work.inbox(conn)
    except ModelNotReady as exc:
        log.error("stored faces were not re-embedded: %s", exc)
        return {"error": str(exc), "failed": work.failed}
    finally:
        conn.close()
    log.info("re-embedded %d stored face(s) with %s (%d unreadable)", work.done, service.backbone, work.failed)
    return {"done": work.done, "failed": work.failed}


class _Work:
    def __init__(self, run: Run, data_dir: Path, service: FaceService):
        self.run, self.data_dir, self.service = run, data_dir, service
        self.done = self.failed = self.total = 0

    def _step(self) -> None:
        self.done += 1
        self.run.progress(self.done, self.total, failed=self.failed)

    def photos(self, conn) -> None:
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
            self._step()

    def inbox(self, conn) -> None:
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
            self._step()

    def _embed(self, path: Path, box: str):
        try:
            photo = decode_image(path.read_bytes())
        except (OSError, ImageError) as exc:
            log.warning("cannot re-embed %s: %s", path.name, exc)
            self.failed += 1
            self.run.progress(self.done, self.total, failed=self.failed)
            return None
        return self.service.embed_stored(photo, json.loads(box))


def _count_other(conn, table: str, backbone: str) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM {table} WHERE backbone != ?", (backbone,)).fetchone()[0]
