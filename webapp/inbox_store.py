"""What the live page saw, stored: sightings per track (History) and faces that stayed unknown (the Inbox).

Live streams keep their bookkeeping in memory (`webapp.live_stream.Recorder`)
and hand it to `Archive.write` now and then; the rows and crop files are made
here. `purge` deletes rows and files past their retention (at start, and every
`purge_every_s` from the live path).

Times are UTC text '%Y-%m-%dT%H:%M:%SZ', which sorts and compares as text.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.clustering import cluster
from model.images import ImageError, decode_image
from webapp import files, people_store
from webapp.db import NotFound, connect, flush_deleted, from_blob, to_blob, transaction
from webapp.service import Candidate, FaceService

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CROP_JPEG_QUALITY = 90
# The stored crop is the face box grown by this fraction on each side (it becomes an enrollment photo).
CROP_MARGIN = 0.5
HISTORY_LIMIT = 500


def utc(seconds: float | None = None) -> str:
    """A Unix time (default: now) as the stored UTC text."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc)
    return moment.strftime(TIME_FORMAT)


@dataclass
class Sighting:
    """One person (or unknown) on one track, while it lasts: a History row being built."""

    person_id: int | None
    name: str | None
    first_seen: float
    last_seen: float
    frames: int = 0
    best_similarity: float = -1.0
    row_id: int | None = None
    dirty: bool = True


@dataclass
class UnknownFace:
    """An Inbox row to write: the frame it is in (RGB uint8, not copied), its box, features and embedding."""

    track_key: str
    frame: NDArray[np.uint8]
    box: list[int]
    features: NDArray[np.float32]
    embedding: NDArray[np.float32]
    seen_at: float


class Archive:
    """Writes the live streams' sightings and unknown faces, and purges old rows now and then.

    One connection for every stream, behind its own lock (streams run on different threads).

    :param database: the SQLite file.
    :param data_dir: inbox crops go to <data_dir>/inbox/.
    :param backbone: the name stored with inbox features (the service's backbone).
    :param flush_every_s: a stream hands over its sightings at most this often.
    :param purge_every_s: `purge` runs at most this often.
    """

    def __init__(self, database: str, data_dir: Path, backbone: str, *, inbox_days: float, history_days: float,
                 flush_every_s: float = 1.0, purge_every_s: float = 3600.0):
        self.database = database
        self.data_dir = Path(data_dir)
        self.backbone = backbone
        self.inbox_days = inbox_days
        self.history_days = history_days
        self.flush_every_s = flush_every_s
        self.purge_every_s = purge_every_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_purge = time.monotonic()

    def write(self, faces: list[UnknownFace], sightings: list[Sighting]) -> None:
        with self._lock:
            db = self._db()
            for face in faces:
                save_unknown(db, self.data_dir, face, self.backbone)
            write_sightings(db, sightings)

    def purge_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < self.purge_every_s:
            return
        self._last_purge = now
        with self._lock:
            purge(self._db(), self.data_dir, inbox_days=self.inbox_days, history_days=self.history_days)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.database)
        return self._conn


# --- writing -------------------------------------------------------------------------


def save_unknown(db: sqlite3.Connection, data_dir: Path, face: UnknownFace, backbone: str) -> int | None:
    """Store one inbox face (crop file, then row); returns its id, or None when its track already has one."""
    crop, box = files.face_crop(face.frame, face.box, CROP_MARGIN)
    if crop.size == 0:
        return None
    file = files.new_name()
    path = Path(data_dir) / files.INBOX_DIR / file
    files.write_atomic(path, files.jpeg(crop, CROP_JPEG_QUALITY))
    try:
        added = db.execute(
            "INSERT INTO unknown_faces (track_key, file, box, width, height, embedding, features, backbone, "
            "seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (track_key) DO NOTHING RETURNING id",
            (face.track_key, file, json.dumps(box), int(crop.shape[1]), int(crop.shape[0]),
             to_blob(face.embedding), to_blob(face.features), backbone, utc(face.seen_at)),
        ).fetchall()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if not added:  # its track has a face already
        path.unlink(missing_ok=True)
        return None
    return added[0][0]


def write_sightings(db: sqlite3.Connection, sightings: list[Sighting]) -> None:
    """Insert new sightings and update the others, in one transaction."""
    if not sightings:
        return
    with transaction(db):
        for s in sightings:
            values = (utc(s.last_seen), s.frames, round(s.best_similarity, 4))
            if s.row_id is None:
                if s.person_id is not None and db.execute(
                    "SELECT 1 FROM people WHERE id = ?", (s.person_id,)
                ).fetchone() is None:
                    s.person_id, s.name = None, None  # deleted meanwhile: nothing of them stays
                s.row_id = db.execute(
                    "INSERT INTO sightings (person_id, name, first_seen, last_seen, frames, best_similarity) "
                    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (s.person_id, s.name, utc(s.first_seen), *values),
                ).fetchone()[0]
            else:
                db.execute("UPDATE sightings SET last_seen = ?, frames = ?, best_similarity = ? WHERE id = ?",
                           (*values, s.row_id))
            s.dirty = False


def purge(db: sqlite3.Connection, data_dir: Path, *, inbox_days: float, history_days: float,
          now: float | None = None) -> tuple[int, int]:
    """Delete inbox faces (rows and crop files) and sightings past their retention; returns how many of each."""
    now = time.time() if now is None else now
    inbox_cutoff = utc(now - inbox_days * 86400)
    history_cutoff = utc(now - history_days * 86400)
    with transaction(db):
        names = [row[0] for row in db.execute("SELECT file FROM unknown_faces WHERE seen_at < ?", (inbox_cutoff,))]
        db.execute("DELETE FROM unknown_faces WHERE seen_at < ?", (inbox_cutoff,))
        sightings = db.execute("DELETE FROM sightings WHERE last_seen < ?", (history_cutoff,)).rowcount
    files.remove(data_dir, files.INBOX_DIR, names)
    if names or sightings:
        flush_deleted(db)
        log.info("purged %d inbox face(s) and %d sighting(s) past their retention", len(names), sightings)
    return len(names), sightings


def sweep_inbox(db: sqlite3.Connection, data_dir: Path, min_age_s: float = 0.0) -> list[str]:
    """Remove inbox files no row names (a crash between file and row). Run at start only (min_age_s: files.sweep)."""
    known = {row[0] for row in db.execute("SELECT file FROM unknown_faces")}
    return files.sweep(data_dir, files.INBOX_DIR, known, min_age_s)


# --- the inbox -----------------------------------------------------------------------


def unknown_faces(db: sqlite3.Connection, ids: list[int] | None = None) -> list[sqlite3.Row]:
    if ids is None:
        return db.execute("SELECT * FROM unknown_faces ORDER BY seen_at, id").fetchall()
    marks = ",".join("?" * len(ids))
    return db.execute(f"SELECT * FROM unknown_faces WHERE id IN ({marks}) ORDER BY id", ids).fetchall()


def get_unknown(db: sqlite3.Connection, face_id: int) -> sqlite3.Row:
    row = db.execute("SELECT * FROM unknown_faces WHERE id = ?", (face_id,)).fetchone()
    if row is None:
        raise NotFound(f"no inbox face with id {face_id}")
    return row


def inbox_path(data_dir: Path, row: sqlite3.Row) -> Path:
    return Path(data_dir) / files.INBOX_DIR / row["file"]


def clusters(db: sqlite3.Connection, threshold: float, backbone: str) -> list[list[sqlite3.Row]]:
    """The inbox faces grouped by likely identity (see model.clustering), biggest group first.

    Faces stored with another backbone cannot be compared and come as groups of one.
    """
    rows = unknown_faces(db)
    same = [row for row in rows if row["backbone"] == backbone]
    groups: dict[int, list[sqlite3.Row]] = {}
    if same:
        labels = cluster(np.stack([from_blob(row["embedding"]) for row in same]), threshold)
        for row, label in zip(same, labels.tolist()):
            groups.setdefault(label, []).append(row)
    result = list(groups.values()) + [[row] for row in rows if row["backbone"] != backbone]
    return sorted(result, key=lambda group: (-len(group), group[0]["seen_at"]))


def enroll_unknown(
    db: sqlite3.Connection, service: FaceService, data_dir: Path, face_ids: list[int], *,
    person_id: int | None = None, name: object = None,
) -> tuple[sqlite3.Row, int]:
    """Make inbox faces photos of a person (new with name, or existing with person_id), then drop them from the inbox.

    The crops become the photos; their stored features and embeddings are used, so the model does not run.
    :return: (the person, photos added). :raises InvalidName, DuplicateName, NotFound, StoreError.
    """
    if person_id is None:
        name = people_store.clean_name(name)
    rows = [row for row in unknown_faces(db, face_ids) if row["backbone"] == service.backbone]
    if not rows:
        raise NotFound("none of these inbox faces is left")
    candidates = []
    for row in rows:
        try:
            photo = decode_image(inbox_path(data_dir, row).read_bytes())
        except (OSError, ImageError) as exc:
            log.warning("inbox face %d is unreadable: %s", row["id"], exc)
            continue
        candidates.append(Candidate(row["file"], photo=photo, box=json.loads(row["box"]),
                                    features=from_blob(row["features"]), embedding=from_blob(row["embedding"])))
    if not candidates:
        raise NotFound("the image files of these inbox faces are missing")
    person, photo_ids = people_store.store_candidates(db, service, data_dir, candidates, person_id=person_id,
                                                      name=name)
    dismiss(db, data_dir, [row["id"] for row in rows])
    return person, len(photo_ids)


def dismiss(db: sqlite3.Connection, data_dir: Path, face_ids: list[int]) -> int:
    """Delete inbox faces, rows and files; returns how many there were."""
    rows = unknown_faces(db, face_ids)
    if not rows:
        return 0
    with transaction(db):
        db.executemany("DELETE FROM unknown_faces WHERE id = ?", [(row["id"],) for row in rows])
    files.remove(data_dir, files.INBOX_DIR, [row["file"] for row in rows])
    flush_deleted(db)
    return len(rows)


# --- history -------------------------------------------------------------------------


def history(db: sqlite3.Connection, *, person_id: int | None = None, unknown: bool = False,
            since: str | None = None, until: str | None = None, limit: int = HISTORY_LIMIT) -> list[sqlite3.Row]:
    """Sightings, newest first, filtered by person (or unknown only) and by a UTC time range on last/first seen."""
    where, args = [], []
    if unknown:
        where.append("person_id IS NULL")
    elif person_id is not None:
        where.append("person_id = ?")
        args.append(person_id)
    if since:
        where.append("last_seen >= ?")
        args.append(since)
    if until:
        where.append("first_seen <= ?")
        args.append(until)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return db.execute(
        f"SELECT id, person_id, name, first_seen, last_seen, frames, best_similarity FROM sightings {clause} "
        "ORDER BY last_seen DESC, id DESC LIMIT ?",
        (*args, limit),
    ).fetchall()


def day_bounds(day: str, *, end: bool) -> str:
    """'YYYY-MM-DD' as the first (or, with end, last) second of that UTC day. :raises ValueError."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    moment = start + timedelta(days=1, seconds=-1) if end else start
    return moment.strftime(TIME_FORMAT)
