"""Merge, move and split: photos change person, with their corrections and history when a whole person goes.

Each change is one database transaction, then one step in the gallery in
memory (`FaceService.move_photos`: no frame is matched against half of it). No
file changes: photos keep their generated names whoever they belong to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from webapp import corrections, people_store
from webapp.db import NotFound, StoreError, flush_deleted, from_blob, transaction
from webapp.security import MAX_IDS, MAX_ROW_ID
from webapp.service import FaceService


def row_id(value: object, what: str) -> int:
    """An id from JSON (a whole number) or a form (ASCII digits). :raises StoreError: anything else (400)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= len(str(MAX_ROW_ID)):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ROW_ID:
        raise StoreError(f"{what} must be an id (a whole number from 1), got {str(value)[:20]!r}")
    return value


def row_ids(values: object, what: str = "photo_ids") -> list[int]:
    """A non-empty list of ids, duplicates dropped, order kept. :raises StoreError: anything else (400)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise StoreError(f"{what} must be a non-empty list of ids")
    if len(values) > MAX_IDS:
        raise StoreError(f"too many {what} at once ({len(values)}; at most {MAX_IDS})")
    return list(dict.fromkeys(row_id(value, what) for value in values))


def merge_people(db: sqlite3.Connection, service: FaceService, person_id: int, into: int) -> sqlite3.Row:
    """Person person_id becomes person `into`: photos, corrections and history sightings follow; the name goes.

    :return: the merged person (`into`). :raises StoreError: the same person (400); NotFound: either is missing.
    """
    if person_id == into:
        raise StoreError("a person cannot be merged into themselves; choose someone else")
    with transaction(db):
        people_store.get_person(db, person_id)
        target = people_store.get_person(db, into)
        moved = _embeddings(db, "person_id = ?", [person_id], service.backbone)
        db.execute("UPDATE photos SET person_id = ? WHERE person_id = ?", (into, person_id))
        db.execute("UPDATE corrections SET person_id = ? WHERE person_id = ?", (into, person_id))
        negatives = corrections.gallery_items(db, service.backbone)
        db.execute("UPDATE sightings SET person_id = ?, name = ? WHERE person_id = ?",
                   (into, target["name"], person_id))
        db.execute("DELETE FROM people WHERE id = ?", (person_id,))
    service.move_photos([(photo, into, embedding) for photo, embedding in moved], drop_person=person_id,
                        corrections=negatives)
    flush_deleted(db)  # the removed name leaves the WAL too
    return people_store.get_person(db, into)


def move_photos(db: sqlite3.Connection, service: FaceService, photo_ids: Iterable[int], person_id: int) -> list[int]:
    """Give photos to another (existing) person; returns the people they came from.

    :raises NotFound: the person or any of the photos is missing (nothing moves).
    """
    photo_ids = list(photo_ids)
    with transaction(db):
        people_store.get_person(db, person_id)
        sources = _owners(db, photo_ids)
        moved = _reassign(db, photo_ids, person_id, service.backbone)
    service.move_photos([(photo, person_id, embedding) for photo, embedding in moved])
    return sorted(set(sources.values()) - {person_id})


def split_photos(
    db: sqlite3.Connection, service: FaceService, raw_name: object, photo_ids: Iterable[int]
) -> sqlite3.Row:
    """Make photos (of anyone) a new person called raw_name; returns the new person.

    :raises InvalidName, DuplicateName, NotFound: nothing changes.
    """
    name = people_store.clean_name(raw_name)
    photo_ids = list(photo_ids)
    with transaction(db):
        people_store.check_name_free(db, name)
        _owners(db, photo_ids)
        person_id = db.execute("INSERT INTO people (name) VALUES (?) RETURNING id", (name,)).fetchone()[0]
        moved = _reassign(db, photo_ids, person_id, service.backbone)
    service.add_person(person_id, name)
    service.move_photos([(photo, person_id, embedding) for photo, embedding in moved])
    return people_store.get_person(db, person_id)


def _owners(db: sqlite3.Connection, photo_ids: list[int]) -> dict[int, int]:
    """{photo id: person id}. :raises NotFound: naming the first missing photo."""
    if not photo_ids:
        raise StoreError("no photos were chosen")
    marks = ",".join("?" * len(photo_ids))
    owners = {row["id"]: row["person_id"]
              for row in db.execute(f"SELECT id, person_id FROM photos WHERE id IN ({marks})", photo_ids)}
    missing = [photo for photo in photo_ids if photo not in owners]
    if missing:
        raise NotFound(f"no photo with id {missing[0]}")
    return owners


def _reassign(db: sqlite3.Connection, photo_ids: list[int], person_id: int, backbone: str) -> list:
    marks = ",".join("?" * len(photo_ids))
    db.execute(f"UPDATE photos SET person_id = ? WHERE id IN ({marks})", [person_id, *photo_ids])
    return _embeddings(db, f"id IN ({marks})", photo_ids, backbone)


def _embeddings(db: sqlite3.Connection, where: str, args: list, backbone: str) -> list:
    """[(photo id, embedding)] of the matching photos the gallery holds (those of the service's backbone)."""
    rows = db.execute(f"SELECT id, embedding FROM photos WHERE {where} AND backbone = ?", [*args, backbone])
    return [(row["id"], from_blob(row["embedding"])) for row in rows]


def merge_counts(db: sqlite3.Connection, person_id: int) -> dict[str, int]:
    """What a merge of this person would carry over: their photos, corrections and history rows."""
    return {
        table: db.execute(f"SELECT COUNT(*) FROM {table} WHERE person_id = ?", (person_id,)).fetchone()[0]
        for table in ("photos", "corrections", "sightings")
    }
