"""What the live page saw: sightings per track (History) and faces that stayed unknown (the Inbox).

The live path only does bookkeeping in memory (`Recorder`, one per
connection); `Archive.flush` writes it from the live worker at most once per
`flush_every_s` per connection and when the connection ends. A track that
stays unknown for `unknown_frames` processed frames gives one face crop with
its features and embedding, once per track. `purge` deletes rows and files
past their retention; it runs at start and every `purge_every_s` from the worker.

Times are UTC text '%Y-%m-%dT%H:%M:%SZ', which sorts and compares as text.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.clustering import cluster
from model.images import ImageError, decode_image
from webapp import store
from webapp.db import connect, flush_deleted, transaction
from webapp.faces import Candidate, FaceService

log = logging.getLogger(__name__)

INBOX_DIR = "inbox"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CROP_JPEG_QUALITY = 90
# The stored crop is the face box grown by this fraction on each side (it becomes an enrollment photo).
CROP_MARGIN = 0.5
HISTORY_LIMIT = 500


def utc(seconds: float | None = None) -> str:
    """A Unix time (default: now) as the stored UTC text."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc)
    return moment.strftime(TIME_FORMAT)


# --- the live path: in memory --------------------------------------------------------


@dataclass
class Sighting:
    """One person (or unknown) on one track, while it lasts."""

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
    """A face to put in the inbox: the frame it is in (RGB uint8, not copied), its box, features and embedding."""

    track_key: str
    frame: NDArray[np.uint8]
    box: list[int]
    features: NDArray[np.float32]
    embedding: NDArray[np.float32]
    seen_at: float


class Recorder:
    """One live connection's sightings and inbox faces, kept in memory until `Archive.flush`.

    :param unknown_frames: a track reported unknown in this many processed frames gives one inbox face.
    """

    def __init__(self, unknown_frames: int = 5):
        self.key = uuid.uuid4().hex[:12]
        self.unknown_frames = max(1, unknown_frames)
        self.live: dict[int, dict[int | None, Sighting]] = {}  # track id -> person id -> sighting
        self.ended: list[Sighting] = []
        self.unknown_counts: dict[int, int] = {}
        self.captured: set[int] = set()
        self.faces: list[UnknownFace] = []
        self.last_flush = time.monotonic()

    def observe(self, faces: list[tuple[int, dict]], now: float | None = None) -> list[int]:
        """Count one processed frame's faces, as (track id, `faces` entry); returns the track ids to capture now."""
        now = time.time() if now is None else now
        present = set()
        capture = []
        for track_id, face in faces:
            present.add(track_id)
            person_id = face["person_id"]
            sighting = self.live.setdefault(track_id, {}).get(person_id)
            if sighting is None:
                sighting = Sighting(person_id, face["name"], now, now)
                self.live[track_id][person_id] = sighting
            sighting.last_seen, sighting.dirty = now, True
            sighting.frames += 1
            sighting.best_similarity = max(sighting.best_similarity, float(face["similarity"]))
            if person_id is None and track_id not in self.captured:
                count = self.unknown_counts.get(track_id, 0) + 1
                self.unknown_counts[track_id] = count
                if count >= self.unknown_frames:
                    capture.append(track_id)
        for track_id in [t for t in self.live if t not in present]:
            self.ended.extend(self.live.pop(track_id).values())
            self.unknown_counts.pop(track_id, None)
        return capture

    def capture(self, track_id: int, frame: NDArray[np.uint8], box: list[int], features, embedding,
                now: float | None = None) -> None:
        """Keep one inbox face for a track (later captures of the same track are ignored)."""
        if track_id in self.captured:
            return
        self.captured.add(track_id)
        self.faces.append(UnknownFace(f"{self.key}:{track_id}", frame, list(box), features, embedding,
                                      time.time() if now is None else now))

    def end(self) -> None:
        """The connection is gone: every sighting ends."""
        for sightings in self.live.values():
            self.ended.extend(sightings.values())
        self.live.clear()


class Archive:
    """Writes recorders to the database from the live worker, and purges old rows now and then.

    :param database: the SQLite file.
    :param data_dir: inbox crops go to <data_dir>/inbox/.
    :param backbone: the name stored with inbox features (the service's backbone).
    :param flush_every_s: a connection's sightings are written at most this often.
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

    def after_frame(self, recorder: Recorder) -> None:
        """Flush the recorder if it is due, and purge if that is due. Cheap when nothing is."""
        now = time.monotonic()
        if now - recorder.last_flush >= self.flush_every_s or len(recorder.faces) > 0:
            self.flush(recorder)
        if now - self._last_purge >= self.purge_every_s:
            self._last_purge = now
            with self._lock:
                purge(self._db(), self.data_dir, inbox_days=self.inbox_days, history_days=self.history_days)

    def finish(self, recorder: Recorder) -> None:
        recorder.end()
        self.flush(recorder)

    def flush(self, recorder: Recorder) -> None:
        recorder.last_flush = time.monotonic()
        faces, recorder.faces = recorder.faces, []
        ended, recorder.ended = recorder.ended, []
        dirty = [s for group in recorder.live.values() for s in group.values() if s.dirty]
        with self._lock:
            db = self._db()
            for face in faces:
                save_unknown(db, self.data_dir, face, self.backbone)
            write_sightings(db, [s for s in ended if s.dirty or s.row_id is None] + dirty)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.database)
        return self._conn


# --- writing -------------------------------------------------------------------------


def face_crop(frame: NDArray[np.uint8], box: list[int], margin: float = CROP_MARGIN) -> tuple[NDArray[np.uint8], list[int]]:
    """A square slice of the frame around the face box grown by margin (clipped), and the box inside it."""
    left, top, right, bottom = (int(v) for v in box)
    side = max(right - left, bottom - top) * (1 + 2 * margin)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    height, width = frame.shape[:2]
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x1, y1 = min(width, int(cx + side / 2)), min(height, int(cy + side / 2))
    inner = [max(0, left - x0), max(0, top - y0), min(x1, right) - x0, min(y1, bottom) - y0]
    return frame[y0:y1, x0:x1], inner


def save_unknown(db: sqlite3.Connection, data_dir: Path, face: UnknownFace, backbone: str) -> int | None:
    """Store one inbox face (crop file, then row); returns its id, or None when its track already has one."""
    crop, box = face_crop(face.frame, face.box)
    if crop.size == 0:
        return None
    file = f"{uuid.uuid4().hex}.jpg"
    path = Path(data_dir) / INBOX_DIR / file
    store._write_atomic(path, store._jpeg(np.ascontiguousarray(crop), CROP_JPEG_QUALITY))
    try:
        cursor = db.execute(
            "INSERT OR IGNORE INTO unknown_faces (track_key, file, box, width, height, embedding, features, backbone, "
            "seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (face.track_key, file, json.dumps(box), int(crop.shape[1]), int(crop.shape[0]),
             store.to_blob(face.embedding), store.to_blob(face.features), backbone, utc(face.seen_at)),
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if cursor.rowcount == 0:
        path.unlink(missing_ok=True)
        return None
    return cursor.lastrowid


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
                    s.person_id = None  # deleted meanwhile; the name snapshot stays
                s.row_id = db.execute(
                    "INSERT INTO sightings (person_id, name, first_seen, last_seen, frames, best_similarity) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (s.person_id, s.name, utc(s.first_seen), *values),
                ).lastrowid
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
        files = [row[0] for row in db.execute("SELECT file FROM unknown_faces WHERE seen_at < ?", (inbox_cutoff,))]
        db.execute("DELETE FROM unknown_faces WHERE seen_at < ?", (inbox_cutoff,))
        sightings = db.execute("DELETE FROM sightings WHERE last_seen < ?", (history_cutoff,)).rowcount
    _remove(data_dir, files)
    if files or sightings:
        flush_deleted(db)
        log.info("purged %d inbox face(s) and %d sighting(s) past their retention", len(files), sightings)
    return len(files), sightings


def sweep_inbox(db: sqlite3.Connection, data_dir: Path) -> list[str]:
    """Remove inbox files no row names (a crash between file and row). Run at start only."""
    directory = Path(data_dir) / INBOX_DIR
    if not directory.is_dir():
        return []
    known = {row[0] for row in db.execute("SELECT file FROM unknown_faces")}
    removed = []
    for path in directory.iterdir():
        if path.is_file() and path.name not in known:
            path.unlink(missing_ok=True)
            removed.append(f"{INBOX_DIR}/{path.name}")
    return removed


def _remove(data_dir: Path, files: list[str]) -> None:
    for file in files:
        try:
            os.unlink(Path(data_dir) / INBOX_DIR / file)
        except FileNotFoundError:
            pass


# --- the inbox -----------------------------------------------------------------------


def unknown_faces(db: sqlite3.Connection, ids: list[int] | None = None) -> list[sqlite3.Row]:
    if ids is None:
        return db.execute("SELECT * FROM unknown_faces ORDER BY seen_at, id").fetchall()
    marks = ",".join("?" * len(ids))
    return db.execute(f"SELECT * FROM unknown_faces WHERE id IN ({marks}) ORDER BY id", ids).fetchall()


def get_unknown(db: sqlite3.Connection, face_id: int) -> sqlite3.Row:
    row = db.execute("SELECT * FROM unknown_faces WHERE id = ?", (face_id,)).fetchone()
    if row is None:
        raise store.NotFound(f"no inbox face with id {face_id}")
    return row


def inbox_path(data_dir: Path, row: sqlite3.Row) -> Path:
    return Path(data_dir) / INBOX_DIR / row["file"]


def clusters(db: sqlite3.Connection, threshold: float, backbone: str) -> list[list[sqlite3.Row]]:
    """The inbox faces grouped by likely identity (see model.clustering), biggest group first.

    Faces stored with another backbone cannot be compared and come as groups of one.
    """
    rows = unknown_faces(db)
    same = [row for row in rows if row["backbone"] == backbone]
    groups: dict[int, list[sqlite3.Row]] = {}
    if same:
        labels = cluster(np.stack([store.from_blob(row["embedding"]) for row in same]), threshold)
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
        name = store.clean_name(name)
    rows = [row for row in unknown_faces(db, face_ids) if row["backbone"] == service.backbone]
    if not rows:
        raise store.NotFound("none of these inbox faces is left")
    candidates = []
    for row in rows:
        try:
            photo = decode_image(inbox_path(data_dir, row).read_bytes())
        except (OSError, ImageError) as exc:
            log.warning("inbox face %d is unreadable: %s", row["id"], exc)
            continue
        candidates.append(Candidate(row["file"], photo=photo, box=json.loads(row["box"]),
                                    features=store.from_blob(row["features"]),
                                    embedding=store.from_blob(row["embedding"])))
    if not candidates:
        raise store.NotFound("the image files of these inbox faces are missing")
    person, photo_ids = store.store_candidates(db, service, data_dir, candidates, person_id=person_id, name=name)
    dismiss(db, data_dir, [row["id"] for row in rows])
    return person, len(photo_ids)


def dismiss(db: sqlite3.Connection, data_dir: Path, face_ids: list[int]) -> int:
    """Delete inbox faces, rows and files; returns how many there were."""
    rows = unknown_faces(db, face_ids)
    if not rows:
        return 0
    with transaction(db):
        db.executemany("DELETE FROM unknown_faces WHERE id = ?", [(row["id"],) for row in rows])
    _remove(data_dir, [row["file"] for row in rows])
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
