"""People, their photos and corrections: database rows, image files and the gallery in memory, kept in step.

Every change goes database first (one transaction), then files, then the
in-memory gallery. A person's name is data only: files get generated names.
"""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.head import head_bytes, read_head
from webapp import corrections, files, head_store
from webapp.db import DuplicateName, InvalidName, NotFound, flush_deleted, from_blob, to_blob, transaction
from webapp.names import normalise_name
from webapp.service import Candidate, FaceService

MAX_NAME_LENGTH = 100
PHOTO_JPEG_QUALITY = 92
THUMB_SIDE = 160
THUMB_JPEG_QUALITY = 85
# The thumbnail shows the face box grown by this fraction on each side.
THUMB_MARGIN = 0.3
PHOTO_FOLDERS = (files.PHOTOS_DIR, files.THUMBS_DIR)


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the browser gave it (display only), its bytes, and an optional face choice."""

    file: str
    data: bytes
    face_index: int | None = None


# --- names -------------------------------------------------------------------------


def clean_name(raw: object) -> str:
    """Trim a person's name; refuse empty, overlong, invisible, control characters and broken text."""
    if not isinstance(raw, str):
        raise InvalidName("the name must be text")
    try:
        normal = normalise_name(raw)  # NFKC, no invisible characters, paired direction controls only
    except ValueError as exc:
        raise InvalidName(str(exc)) from None
    name = " ".join(normal.split())
    if not name:
        raise InvalidName("please enter a name with visible characters" if raw.strip() else "please enter a name")
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


def check_name_free(db: sqlite3.Connection, name: str, except_id: int | None = None) -> None:
    """:raises DuplicateName: someone else has this name (case-insensitive)."""
    row = db.execute("SELECT id, name FROM people WHERE lower(name) = lower(?)", (name,)).fetchone()
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
        GROUP BY people.id ORDER BY lower(people.name), people.id
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


def person_corrections(db: sqlite3.Connection, person_id: int) -> list[sqlite3.Row]:
    """A person's corrections ("not this person") by id, with their embedding and features BLOBs (for export)."""
    return db.execute(
        "SELECT id, photo_id, backbone, created_at, embedding, features FROM corrections WHERE person_id = ? "
        "ORDER BY id",
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
    return Path(data_dir) / (files.THUMBS_DIR if thumb else files.PHOTOS_DIR) / photo["file"]


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
    corrections.load(db, service)  # faces marked "not this person" are matched against too
    return loaded


def count_other_backbones(db: sqlite3.Connection, backbone: str) -> int:
    return db.execute("SELECT COUNT(*) FROM photos WHERE backbone != ?", (backbone,)).fetchone()[0]


# --- for the trainer (model.training reads the app's tables only through these) ------------


# --- changing ----------------------------------------------------------------------


def create_person(db: sqlite3.Connection, service: FaceService, raw_name: object) -> sqlite3.Row:
    """A new person with no photos (the API allows that for a moment)."""
    name = clean_name(raw_name)
    with transaction(db):
        check_name_free(db, name)
        person_id = db.execute("INSERT INTO people (name) VALUES (?) RETURNING id", (name,)).fetchone()[0]
    service.add_person(person_id, name)
    return get_person(db, person_id)


def rename_person(db: sqlite3.Connection, service: FaceService, person_id: int, raw_name: object) -> sqlite3.Row:
    name = clean_name(raw_name)
    with transaction(db):
        get_person(db, person_id)
        check_name_free(db, name, except_id=person_id)
        db.execute("UPDATE people SET name = ? WHERE id = ?", (name, person_id))
    service.add_person(person_id, name)
    return get_person(db, person_id)


def delete_photo(db: sqlite3.Connection, service: FaceService, data_dir: Path, photo_id: int) -> sqlite3.Row:
    """Remove one photo (row, embedding, files); returns its row."""
    with transaction(db):
        photo = get_photo(db, photo_id)
        db.execute("DELETE FROM photos WHERE id = ?", (photo_id,))
    service.remove_photo(photo_id)
    _remove_photo_files(data_dir, [photo["file"]])
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
    thumb: bytes | None = None,
    service: FaceService | None = None,
) -> int:
    """Store "this face is not person_id" (its backbone features, embedding and a JPEG thumbnail); returns the
    correction id. With the service, its gallery matches against it from the next face on.

    :raises NotFound: no such person.
    """
    with transaction(db):
        get_person(db, person_id)
        correction_id = db.execute(
            "INSERT INTO corrections (photo_id, unknown_face_id, person_id, embedding, features, backbone, thumb) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (photo_id, unknown_face_id, person_id, to_blob(embedding), to_blob(features), backbone, thumb),
        ).fetchone()[0]
    if service is not None and backbone == service.backbone:
        service.add_correction(correction_id, person_id, embedding)
    return correction_id


def not_this_person(db: sqlite3.Connection, service: FaceService, data_dir: Path, photo_id: int) -> sqlite3.Row:
    """A photo wrongly filed under its person: keep it as a correction, then remove it (see delete_photo)."""
    row = db.execute("SELECT person_id, file, embedding, features, backbone FROM photos WHERE id = ?",
                     (photo_id,)).fetchone()
    if row is None:
        raise NotFound(f"no photo with id {photo_id}")
    thumb = Path(data_dir) / files.THUMBS_DIR / row["file"]
    add_correction(
        db, row["person_id"], from_blob(row["features"]), from_blob(row["embedding"]), row["backbone"], photo_id=photo_id,
        thumb=thumb.read_bytes() if thumb.is_file() else None, service=service,
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
        check_name_free(db, name)
    else:
        get_person(db, person_id)
    candidates, written = [], []
    try:
        for upload in uploads:
            candidate = service.analyse(upload.file, upload.data, upload.face_index)
            if candidate.accepted:
                written.append(_write_photo_files(data_dir, candidate))
            candidate.release()  # 30 large photos would otherwise all be in memory until the request ends
            candidates.append(candidate)
    except BaseException:
        _remove_photo_files(data_dir, written)
        raise
    accepted = [candidate for candidate in candidates if candidate.accepted]
    if not accepted:
        return (None if person_id is None else get_person(db, person_id)), [(c, None) for c in candidates]
    person, photo_ids = store_candidates(db, service, data_dir, accepted, person_id=person_id, name=name,
                                         written=written)
    return person, [(candidate, photo_ids.get(id(candidate))) for candidate in candidates]


def store_candidates(
    db: sqlite3.Connection,
    service: FaceService,
    data_dir: Path,
    accepted: list[Candidate],
    *,
    person_id: int | None = None,
    name: str | None = None,
    written: list[str] | None = None,
) -> tuple[sqlite3.Row, dict[int, int]]:
    """Write accepted candidates (photo, box, features, embedding) as photos of a person, in one transaction.

    Give person_id for an existing person, or a clean name for a new one. written: the
    candidates' files, when they were saved already (one per candidate, in order); on
    failure they are removed like the ones written here.
    :return: (the person, {id(candidate): photo_id}).
    :raises DuplicateName, NotFound.
    """
    photo_ids: dict[int, int] = {}
    files_given, written = written is not None, list(written or [])
    try:
        if not files_given:
            for candidate in accepted:  # one at a time, so a failure removes what was written
                written.append(_write_photo_files(data_dir, candidate))
        with transaction(db):
            if person_id is None:
                check_name_free(db, name)
                person_id = db.execute("INSERT INTO people (name) VALUES (?) RETURNING id", (name,)).fetchone()[0]
            else:
                get_person(db, person_id)
            vectors = head_store.embeddings_now(db, service, [c.features for c in accepted],
                                                [c.embedding for c in accepted])
            for candidate, file, embedding in zip(accepted, written, vectors):
                width, height = candidate.size
                photo_ids[id(candidate)] = db.execute(
                    "INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone, pose) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        person_id, file, json.dumps(candidate.box), width, height,
                        to_blob(embedding), to_blob(candidate.features), service.backbone, candidate.pose,
                    ),
                ).fetchone()[0]
    except BaseException:
        _remove_photo_files(data_dir, written)
        raise

    person = get_person(db, person_id)
    service.add_person(person_id, person["name"])
    for candidate, embedding in zip(accepted, vectors):
        service.add_photo(photo_ids[id(candidate)], person_id, embedding)
    return person, photo_ids


def reload_head(db: sqlite3.Connection, service: FaceService) -> dict:
    """Load the backbone's head file again, re-embed every stored photo from its features, swap both in.

    The new embeddings and the head itself (webapp.head_store, which other processes load it from) are
    written in one transaction before the swap; on a bad head file nothing changes. :raises ValueError,
    HeadUnavailable.
    """
    service.wait_ready()
    dim = service.recognizer.backbone.dim
    head, file = read_head(service.backbone, dim, weights_dir=service.recognizer.weights_dir)
    with transaction(db):  # read in it too: a photo another process adds meanwhile is re-embedded, not missed
        rows = db.execute("SELECT id, person_id, features FROM photos WHERE backbone = ? AND features IS NOT NULL",
                          (service.backbone,)).fetchall()
        features = np.stack([from_blob(row["features"]) for row in rows]) if rows else np.zeros((0, dim), np.float32)
        if features.shape[1] != dim:
            raise ValueError(f"stored features are {features.shape[1]}-D, the {service.backbone} backbone gives "
                             f"{dim}-D")
        embeddings = head(features)
        gallery = service.gallery.fresh(dim=embeddings.shape[1], capacity=max(256, len(rows)))
        gallery.add_many((row["id"], row["person_id"], embedding) for row, embedding in zip(rows, embeddings))
        db.executemany(
            "UPDATE photos SET embedding = ? WHERE id = ?",
            [(to_blob(embedding), row["id"]) for embedding, row in zip(embeddings, rows)],
        )
        gallery.set_corrections(corrections.reembedded(db, head, service.backbone))
        sha = head_store.record(db, service.backbone, file or head_bytes(head), head.info)  # last: see changes.py
    service.swap_head(head, gallery, sha)
    return {"photos": len(rows), "threshold": service.recognizer.threshold, "head": head.info}


# --- files -------------------------------------------------------------------------


def _write_photo_files(data_dir: Path, candidate: Candidate) -> str:
    """Save the photo (re-encoded, so no metadata is kept) and its face thumbnail; returns the file name."""
    file = files.new_name()
    files.write_atomic(Path(data_dir) / files.PHOTOS_DIR / file, files.jpeg(candidate.photo, PHOTO_JPEG_QUALITY))
    try:
        files.write_atomic(Path(data_dir) / files.THUMBS_DIR / file, thumbnail_jpeg(candidate.photo, candidate.box))
    except BaseException:
        _remove_photo_files(data_dir, [file])
        raise
    return file


def thumbnail_jpeg(photo: NDArray[np.uint8], box: list[int]) -> bytes:
    """The face thumbnail of a stored photo (RGB uint8) and its [left, top, right, bottom] box, as JPEG bytes."""
    thumb, _ = files.face_crop(photo, box, THUMB_MARGIN)
    return files.jpeg(thumb, THUMB_JPEG_QUALITY, side=THUMB_SIDE)


def _remove_photo_files(data_dir: Path, names: list[str]) -> None:
    for folder in PHOTO_FOLDERS:
        files.remove(data_dir, folder, names)


def sweep_orphans(db: sqlite3.Connection, data_dir: Path, min_age_s: float = 0.0) -> list[str]:
    """Remove photo and thumbnail files no photo row names (a crash between file and row) and unfinished writes.

    Run at start, before any request; min_age_s: see files.sweep. :return: the removed paths, relative to data_dir.
    """
    known = {row[0] for row in db.execute("SELECT file FROM photos")}
    removed = [path for folder in PHOTO_FOLDERS for path in files.sweep(data_dir, folder, known, min_age_s)]
    return removed + files.sweep_unfinished(data_dir)


def missing_files(db: sqlite3.Connection, data_dir: Path) -> list[int]:
    """Ids of photo rows whose photo or thumbnail file is gone (reported, never deleted: the row is the data)."""
    return [
        row["id"]
        for row in db.execute("SELECT id, file FROM photos")
        if not all((Path(data_dir) / folder / row["file"]).is_file() for folder in PHOTO_FOLDERS)
    ]
