"""Corrections ("this face is not P") as matching uses them: rows and the gallery in memory kept in step.

A correction is stored by people_store.add_correction (person page, live page)
and takes part in matching at once (model.gallery: a face more like a face marked
"not P" than like P's own photos is not given P's name). It keeps feeding
`model.train --gallery`. Undo removes the row and the gallery's copy together.
"""

from __future__ import annotations

import sqlite3

import numpy as np
from numpy.typing import NDArray

from model.head import Head
from webapp.db import NotFound, from_blob, to_blob, transaction
from webapp.service import FaceService


def gallery_items(db: sqlite3.Connection, backbone: str) -> list[tuple[int, int, NDArray[np.float32]]]:
    """(correction id, person id, embedding float32 [128]) of every correction made with this backbone."""
    rows = db.execute("SELECT id, person_id, embedding FROM corrections WHERE backbone = ? ORDER BY id", (backbone,))
    return [(row["id"], row["person_id"], from_blob(row["embedding"])) for row in rows]


def load(db: sqlite3.Connection, service: FaceService) -> int:
    """Put every correction of the service's backbone in its gallery, replacing what was there; returns how many."""
    items = gallery_items(db, service.backbone)
    service.set_corrections(items)
    return len(items)


def for_person(db: sqlite3.Connection, person_id: int) -> list[sqlite3.Row]:
    """A person's corrections, newest first: id, where it came from (photo_id / unknown_face_id), created_at,
    has_thumb (1 when a thumbnail was kept)."""
    return db.execute(
        "SELECT id, photo_id, unknown_face_id, backbone, created_at, thumb IS NOT NULL AS has_thumb "
        "FROM corrections WHERE person_id = ? ORDER BY id DESC",
        (person_id,),
    ).fetchall()


def get(db: sqlite3.Connection, correction_id: int) -> sqlite3.Row:
    """One correction's row (no vectors). :raises NotFound."""
    row = db.execute("SELECT id, person_id, photo_id, unknown_face_id, backbone, created_at FROM corrections "
                     "WHERE id = ?", (correction_id,)).fetchone()
    if row is None:
        raise NotFound(f"no correction with id {correction_id}")
    return row


def thumb(db: sqlite3.Connection, correction_id: int) -> bytes:
    """The corrected face's JPEG thumbnail. :raises NotFound: no such correction, or none was kept."""
    row = db.execute("SELECT thumb FROM corrections WHERE id = ?", (correction_id,)).fetchone()
    if row is None or row["thumb"] is None:
        raise NotFound(f"no thumbnail for correction {correction_id}")
    return row["thumb"]


def undo(db: sqlite3.Connection, service: FaceService, correction_id: int) -> sqlite3.Row:
    """Delete a correction: its face may be given the person's name again from the next match. :raises NotFound."""
    with transaction(db):
        row = get(db, correction_id)
        db.execute("DELETE FROM corrections WHERE id = ?", (correction_id,))
    service.remove_correction(correction_id)
    return row


def reembedded(db: sqlite3.Connection, head: Head, backbone: str) -> list[tuple[int, int, NDArray[np.float32]]]:
    """Every correction of this backbone embedded again from its features with a new head, and written back.

    Call inside the transaction that writes the photos' new embeddings. :return: gallery_items for the new head.
    """
    rows = db.execute("SELECT id, person_id, features FROM corrections WHERE backbone = ? ORDER BY id",
                      (backbone,)).fetchall()
    if not rows:
        return []
    embeddings = head(np.stack([from_blob(row["features"]) for row in rows]))
    db.executemany("UPDATE corrections SET embedding = ? WHERE id = ?",
                   [(to_blob(embedding), row["id"]) for embedding, row in zip(embeddings, rows)])
    return [(row["id"], row["person_id"], embedding) for row, embedding in zip(rows, embeddings)]
