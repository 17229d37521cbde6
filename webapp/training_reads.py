"""What the offline trainer (model/training/) reads of the app's database: photos' and corrections' features.

Read-only, from the SQLite file or from PostgreSQL (FACES_DATABASE_URL); the app owns its schema, so the
queries live here, not in the training package.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from webapp.db import connect, describe, from_blob, is_postgres

__all__ = ["describe", "read_training_corrections", "read_training_photos"]  # describe: a URL, password hidden


@contextmanager
def _read_only(database: Path | str):
    """A connection that cannot write: the SQLite file opened read-only, or a read-only PostgreSQL session."""
    if is_postgres(database):
        conn = connect(str(database))
        conn.execute("SET default_transaction_read_only = on")
    elif not Path(database).exists():
        raise FileNotFoundError(f"no database at {database}")
    else:
        conn = sqlite3.connect(f"file:{Path(database)}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def read_training_photos(database: Path | str, backbone: str) -> list[tuple[int, str, NDArray[np.float32]]]:
    """(photo id, person name, backbone features float32 [D]) of every photo of that backbone, read-only.

    database: the SQLite file, or a postgresql:// URL. Ordered by person name, then photo id.
    :raises FileNotFoundError: no such file. sqlite3.OperationalError: PostgreSQL cannot be reached.
    """
    with _read_only(database) as conn:
        rows = conn.execute(
            "SELECT photos.id, people.name, photos.features FROM photos "
            "JOIN people ON people.id = photos.person_id "
            "WHERE photos.backbone = ? AND photos.features IS NOT NULL "
            "ORDER BY people.name, photos.id",
            (backbone,),
        ).fetchall()
    return [(int(photo_id), name, from_blob(blob)) for photo_id, name, blob in rows]


def read_training_corrections(database: Path | str, backbone: str) -> list[tuple[str, NDArray[np.float32]]]:
    """(name of the person the face is NOT, features float32 [D]) for every correction, by id, read-only.

    A database from before corrections existed gives [].
    """
    with _read_only(database) as conn:
        try:
            rows = conn.execute(
                "SELECT people.name, corrections.features FROM corrections "
                "JOIN people ON people.id = corrections.person_id "
                "WHERE corrections.backbone = ? ORDER BY corrections.id",
                (backbone,),
            ).fetchall()
        except sqlite3.OperationalError:  # no corrections table yet
            return []
    return [(name, from_blob(blob)) for name, blob in rows]
