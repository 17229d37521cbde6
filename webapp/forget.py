"""Deleting a person leaves nothing of them: rows, files and vectors that are theirs or look like them.

What goes, in one transaction (then files, then the gallery in memory):
- the person, their photo rows and files, and corrections filed against them (cascade);
- their History rows (sightings);
- inbox faces that look like them (their embedding reaches the person's template
  at the open-set threshold: crops kept before they were enrolled);
- corrections filed against other people whose face looks like them.
The freed database pages are zeroed (secure_delete) and the WAL emptied.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from model.gallery import templates
from webapp import files, people_store
from webapp.db import flush_deleted, from_blob, transaction
from webapp.service import FaceService


def delete_person(db: sqlite3.Connection, service: FaceService, data_dir: Path, person_id: int) -> dict:
    """Remove a person and everything of them (see the module). :return: counts of what went. :raises NotFound."""
    with transaction(db):
        people_store.get_person(db, person_id)
        photos = people_store.person_photos(db, person_id, vectors=True)
        inbox = _lookalikes(db, "unknown_faces", photos, service, "1 = 1")
        corrections = _lookalikes(db, "corrections", photos, service, "person_id != ?", person_id)
        sightings = db.execute("DELETE FROM sightings WHERE person_id = ?", (person_id,)).rowcount
        db.executemany("DELETE FROM unknown_faces WHERE id = ?", [(row["id"],) for row in inbox])
        db.executemany("DELETE FROM corrections WHERE id = ?", [(row["id"],) for row in corrections])
        db.execute("DELETE FROM people WHERE id = ?", (person_id,))
    service.remove_person(person_id)  # their own corrections go with them
    for row in corrections:  # and the ones that look like them
        service.remove_correction(row["id"])
    for folder in people_store.PHOTO_FOLDERS:
        files.remove(data_dir, folder, [photo["file"] for photo in photos])
    files.remove(data_dir, files.INBOX_DIR, [row["file"] for row in inbox])
    flush_deleted(db)
    return {"photos": len(photos), "sightings": sightings, "inbox_faces": len(inbox), "corrections": len(corrections)}


def _lookalikes(db: sqlite3.Connection, table: str, photos: list[sqlite3.Row], service: FaceService,
                where: str, *args) -> list[sqlite3.Row]:
    """Rows of `table` (with embedding and backbone columns) whose face looks like the person of these photos."""
    same = [photo for photo in photos if photo["backbone"] == service.backbone]
    if not same:
        return []
    vectors = np.stack([from_blob(photo["embedding"]) for photo in same])
    _, centre, _ = templates(vectors, np.zeros(len(same), dtype=np.int64))
    rows = db.execute(f"SELECT * FROM {table} WHERE backbone = ? AND {where}", (service.backbone, *args)).fetchall()
    return [row for row in rows if float(from_blob(row["embedding"]) @ centre[0]) >= service.recognizer.threshold]
