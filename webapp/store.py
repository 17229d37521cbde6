"""People and photos: database rows, image files and the gallery, kept in step.

Every change goes database first (one transaction), then files, then the
in-memory gallery. A person's name is data only: files get generated names.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.feature_cache import reload_head as build_reloaded_head
from webapp.db import flush_deleted, transaction
from webapp.faces import Candidate, FaceService

MAX_NAME_LENGTH = 100
PHOTO_JPEG_QUALITY = 92
THUMB_SIDE = 160
THUMB_JPEG_QUALITY = 85
# The thumbnail shows the face box grown by this fraction on each side.
THUMB_MARGIN = 0.3
PHOTOS_DIR = "photos"
THUMBS_DIR = "thumbs"
TMP_SUFFIX = ".tmp"  # files being written are named .<name>.tmp, then renamed


class StoreError(Exception):
    """A request the store refuses; `status` is the HTTP status to answer with."""

    status = 400


class InvalidName(StoreError):
    status = 400


class DuplicateName(StoreError):
    status = 409


class NotFound(StoreError):
    status = 404


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the browser gave it (display only), its bytes, and an optional face choice."""

    file: str
    data: bytes
    face_index: int | None = None


# --- float32 BLOBs -----------------------------------------------------------------


def to_blob(vector: NDArray[np.float32]) -> bytes:
    """A float32 vector as little-endian bytes for a BLOB column."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> NDArray[np.float32]:
    """The inverse of to_blob."""
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


# --- names -------------------------------------------------------------------------


def clean_name(raw: object) -> str:
    """Trim a person's name; refuse empty, overlong, invisible, control characters and broken text."""
    if not isinstance(raw, str):
        raise InvalidName("the name must be text")
    name = " ".join(raw.split())
    if not name:
        raise InvalidName("please enter a name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"the name is too long ({len(name)} characters; at most {MAX_NAME_LENGTH})")
    categories = {unicodedata.category(ch) for ch in name}
    if "Cc" in categories:
        raise InvalidName("the name contains control characters")
    if "Cs" in categories:  # a lone UTF-16 surrogate from JSON: not storable text
        raise InvalidName("the name is not valid text")
    if categories <= {"Cf", "Zs", "Mn", "Me"}:  # only zero-width or combining marks
        raise InvalidName("please enter a name with visible characters")
    return name


def _check_free(db: sqlite3.Connection, name: str, except_id: int | None = None) -> None:
    row = db.execute("SELECT id, name FROM people WHERE name = ?", (name,)).fetchone()
    if row is not None and row["id"] != except_id:
        raise DuplicateName(f"there is already a person called {row['name']}")


# --- reading -----------------------------------------------------------------------


def list_people(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Everyone, by name, with photo_count and cover_photo_id (their first photo, or None)."""
    return db.execute(
        """
        SELECT people.id, people.name, people.created_at,
               COUNT(photos.id) AS photo_count, MIN(photos.id) AS cover_photo_id
        FROM people LEFT JOIN photos ON photos.person_id = people.id
        GROUP BY people.id ORDER BY people.name COLLATE NOCASE
        """
    ).fetchall()


def get_person(db: sqlite3.Connection, person_id: int) -> sqlite3.Row:
    row = db.execute(
        """
        SELECT people.id, people.name, people.created_at,
               COUNT(photos.id) AS photo_count, MIN(photos.id) AS cover_photo_id
        FROM people LEFT JOIN photos ON photos.person_id = people.id
        WHERE people.id = ? GROUP BY people.id
        """,
        (person_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no person with id {person_id}")
    return row


def person_photos(db: sqlite3.Connection, person_id: int, *, vectors: bool = False) -> list[sqlite3.Row]:
    """A person's photo rows by id; vectors=True adds the embedding and features BLOBs (for export)."""
    extra = ", embedding, features" if vectors else ""
    return db.execute(
        f"SELECT id, person_id, file, box, width, height, backbone, created_at{extra} FROM photos "
        "WHERE person_id = ? ORDER BY id",
        (person_id,),
    ).fetchall()


def get_photo(db: sqlite3.Connection, photo_id: int) -> sqlite3.Row:
    row = db.execute(
        "SELECT id, person_id, file, box, width, height, backbone, created_at FROM photos WHERE id = ?",
        (photo_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no photo with id {photo_id}")
    return row


def photo_path(data_dir: Path, photo: sqlite3.Row, *, thumb: bool = False) -> Path:
    return Path(data_dir) / (THUMBS_DIR if thumb else PHOTOS_DIR) / photo["file"]


def load_gallery(db: sqlite3.Connection, service: FaceService) -> int:
    """Fill the service's gallery and names from the database; returns the photos loaded.

    Photos embedded with another backbone than the service's are skipped (and logged by the caller).
    """
    for row in db.execute("SELECT id, name FROM people"):
        service.add_person(row["id"], row["name"])
    loaded = 0
    for row in db.execute("SELECT id, person_id, embedding FROM photos WHERE backbone = ?", (service.backbone,)):
        service.add_photo(row["id"], row["person_id"], from_blob(row["embedding"]))
        loaded += 1
    return loaded


def count_other_backbones(db: sqlite3.Connection, backbone: str) -> int:
    return db.execute("SELECT COUNT(*) FROM photos WHERE backbone != ?", (backbone,)).fetchone()[0]


# --- changing ----------------------------------------------------------------------


def create_person(db: sqlite3.Connection, service: FaceService, raw_name: object) -> sqlite3.Row:
    """A new person with no photos (the API allows that for a moment)."""
    name = clean_name(raw_name)
    with transaction(db):
        _check_free(db, name)
        person_id = db.execute("INSERT INTO people (name) VALUES (?)", (name,)).lastrowid
    service.add_person(person_id, name)
    return get_person(db, person_id)


def rename_person(db: sqlite3.Connection, service: FaceService, person_id: int, raw_name: object) -> sqlite3.Row:
    name = clean_name(raw_name)
    with transaction(db):
        get_person(db, person_id)
        _check_free(db, name, except_id=person_id)
        db.execute("UPDATE people SET name = ? WHERE id = ?", (name, person_id))
    service.add_person(person_id, name)
    return get_person(db, person_id)


def delete_person(db: sqlite3.Connection, service: FaceService, data_dir: Path, person_id: int) -> None:
    """Remove a person, their photo rows (cascade), embeddings (stored and in memory) and files."""
    with transaction(db):
        get_person(db, person_id)
        photos = person_photos(db, person_id)
        db.execute("DELETE FROM people WHERE id = ?", (person_id,))
    service.remove_person(person_id)
    for photo in photos:
        _remove_files(data_dir, photo["file"])
    flush_deleted(db)


def delete_photo(db: sqlite3.Connection, service: FaceService, data_dir: Path, photo_id: int) -> sqlite3.Row:
    """Remove one photo (row, embedding, files); returns its row."""
    with transaction(db):
        photo = get_photo(db, photo_id)
        db.execute("DELETE FROM photos WHERE id = ?", (photo_id,))
    service.remove_photo(photo_id)
    _remove_files(data_dir, photo["file"])
    flush_deleted(db)
    return photo


def add_correction(
    db: sqlite3.Connection,
    person_id: int,
    features: NDArray[np.float32],
    embedding: NDArray[np.float32],
    backbone: str,
    *,
    photo_id: int | None = None,
    unknown_face_id: int | None = None,
) -> int:
    """Store "this face is not person_id" (its backbone features and embedding); returns the correction id.

    :raises NotFound: no such person.
    """
    with transaction(db):
        get_person(db, person_id)
        return db.execute(
            "INSERT INTO corrections (photo_id, unknown_face_id, person_id, embedding, features, backbone) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (photo_id, unknown_face_id, person_id, to_blob(embedding), to_blob(features), backbone),
        ).lastrowid


def not_this_person(db: sqlite3.Connection, service: FaceService, data_dir: Path, photo_id: int) -> sqlite3.Row:
    """A photo wrongly filed under its person: keep it as a correction, then remove it (see delete_photo)."""
    row = db.execute("SELECT person_id, embedding, features, backbone FROM photos WHERE id = ?", (photo_id,)).fetchone()
    if row is None:
        raise NotFound(f"no photo with id {photo_id}")
    add_correction(
        db, row["person_id"], from_blob(row["features"]), from_blob(row["embedding"]), row["backbone"], photo_id=photo_id
    )
    return delete_photo(db, service, data_dir, photo_id)


def enroll(
    db: sqlite3.Connection,
    service: FaceService,
    data_dir: Path,
    uploads: Iterable[Upload],
    *,
    person_id: int | None = None,
    name: object = None,
) -> tuple[sqlite3.Row | None, list[tuple[Candidate, int | None]]]:
    """Analyse every upload, then store the accepted ones in one transaction.

    Give person_id to add photos to an existing person, or name to create one;
    a new person is created only when at least one photo is accepted.

    :return: (the person or None when nobody was created, [(candidate, photo_id or None)]).
    :raises InvalidName, DuplicateName, NotFound: before any photo is analysed.
    :raises ModelNotReady: the model cannot run.
    """
    if person_id is None:
        name = clean_name(name)
        _check_free(db, name)
    else:
        get_person(db, person_id)
    candidates = [service.analyse(upload.file, upload.data, upload.face_index) for upload in uploads]
    accepted = [candidate for candidate in candidates if candidate.accepted]
    if not accepted:
        return (None if person_id is None else get_person(db, person_id)), [(c, None) for c in candidates]
    person, photo_ids = store_candidates(db, service, data_dir, accepted, person_id=person_id, name=name)
    return person, [(candidate, photo_ids.get(id(candidate))) for candidate in candidates]


def store_candidates(
    db: sqlite3.Connection,
    service: FaceService,
    data_dir: Path,
    accepted: list[Candidate],
    *,
    person_id: int | None = None,
    name: str | None = None,
) -> tuple[sqlite3.Row, dict[int, int]]:
    """Write accepted candidates (photo, box, features, embedding) as photos of a person, in one transaction.

    Give person_id for an existing person, or a clean name for a new one.
    :return: (the person, {id(candidate): photo_id}).
    :raises DuplicateName, NotFound.
    """
    written: list[str] = []
    photo_ids: dict[int, int] = {}
    try:
        for candidate in accepted:
            written.append(_write_files(data_dir, candidate))
        with transaction(db):
            if person_id is None:
                _check_free(db, name)
                person_id = db.execute("INSERT INTO people (name) VALUES (?)", (name,)).lastrowid
            else:
                get_person(db, person_id)
            for candidate, file in zip(accepted, written):
                width, height = candidate.size
                photo_ids[id(candidate)] = db.execute(
                    "INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        person_id, file, json.dumps(candidate.box), width, height,
                        to_blob(candidate.embedding), to_blob(candidate.features), service.backbone,
                    ),
                ).lastrowid
    except BaseException:
        for file in written:
            _remove_files(data_dir, file)
        raise

    person = get_person(db, person_id)
    service.add_person(person_id, person["name"])
    for candidate in accepted:
        service.add_photo(photo_ids[id(candidate)], person_id, candidate.embedding)
    return person, photo_ids


def reload_head(db: sqlite3.Connection, service: FaceService) -> dict:
    """Load the backbone's head file again, re-embed every stored photo from its features, swap both in.

    The new embeddings are written back in one transaction before the swap;
    on a bad head file nothing changes. :raises ValueError, HeadUnavailable.
    """
    service.wait_ready()
    rows = db.execute(
        "SELECT id, person_id, features FROM photos WHERE backbone = ? AND features IS NOT NULL",
        (service.backbone,),
    ).fetchall()
    head, gallery, embeddings = build_reloaded_head(
        service.backbone,
        service.recognizer.backbone.dim,
        [row["id"] for row in rows],
        [row["person_id"] for row in rows],
        [row["features"] for row in rows],
    )
    with transaction(db):
        db.executemany(
            "UPDATE photos SET embedding = ? WHERE id = ?",
            [(to_blob(embedding), row["id"]) for embedding, row in zip(embeddings, rows)],
        )
    service.swap_head(head, gallery)
    return {"photos": len(rows), "threshold": service.recognizer.threshold, "head": head.info}


# --- files -------------------------------------------------------------------------


def _write_files(data_dir: Path, candidate: Candidate) -> str:
    """Save the photo (re-encoded, so no metadata is kept) and its face thumbnail; returns the file name."""
    file = f"{uuid.uuid4().hex}.jpg"
    _write_atomic(Path(data_dir) / PHOTOS_DIR / file, _jpeg(candidate.photo, PHOTO_JPEG_QUALITY))
    try:
        thumb = _face_crop(candidate.photo, candidate.box)
        _write_atomic(Path(data_dir) / THUMBS_DIR / file, _jpeg(thumb, THUMB_JPEG_QUALITY, side=THUMB_SIDE))
    except BaseException:
        _remove_files(data_dir, file)
        raise
    return file


def _face_crop(photo: NDArray[np.uint8], box: list[int]) -> NDArray[np.uint8]:
    """A square slice of the photo around the face box, grown by THUMB_MARGIN and clipped."""
    left, top, right, bottom = box
    side = max(right - left, bottom - top) * (1 + 2 * THUMB_MARGIN)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    height, width = photo.shape[:2]
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x1, y1 = min(width, int(cx + side / 2)), min(height, int(cy + side / 2))
    return photo[y0:y1, x0:x1]


def _jpeg(pixels: NDArray[np.uint8], quality: int, side: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if side is not None:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to .<name>.tmp, sync, rename: a crash leaves the old state or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_files(data_dir: Path, file: str) -> None:
    for folder in (PHOTOS_DIR, THUMBS_DIR):
        try:
            os.unlink(Path(data_dir) / folder / file)
        except FileNotFoundError:
            pass


def sweep_orphans(db: sqlite3.Connection, data_dir: Path) -> list[str]:
    """Remove what a crash can leave behind: image files no photo row names, and unfinished .*.tmp files.

    Files are written before their rows are committed, so a server killed in
    between leaves files without rows. Run at start, before any request (a
    second server on the same data dir would lose its unfinished uploads).

    :return: the removed paths, relative to data_dir.
    """
    data_dir = Path(data_dir)
    known = {row[0] for row in db.execute("SELECT file FROM photos")}
    removed = []
    for folder in (PHOTOS_DIR, THUMBS_DIR):
        directory = data_dir / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            unfinished = path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
            if path.is_file() and (unfinished or path.name not in known):
                path.unlink(missing_ok=True)
                removed.append(f"{folder}/{path.name}")
    for path in data_dir.glob(f".*{TMP_SUFFIX}"):  # the secret key's or password's, if a write was cut short
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def missing_files(db: sqlite3.Connection, data_dir: Path) -> list[int]:
    """Ids of photo rows whose photo or thumbnail file is gone (reported, never deleted: the row is the data)."""
    return [
        row["id"]
        for row in db.execute("SELECT id, file FROM photos")
        if not all((Path(data_dir) / folder / row["file"]).is_file() for folder in (PHOTOS_DIR, THUMBS_DIR))
    ]
