"""SQLite: one connection per request (cached on g), the schema, its migrations, and the vector column codec.

The schema version is SQLite's `PRAGMA user_version`. `migrate` runs every
migration newer than the file's version, each in one transaction, when the app
starts. Connections run in autocommit mode; writes that must stick together
use `transaction()`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from flask import Flask, current_app, g
from numpy.typing import NDArray

from webapp import files

# Each entry turns version i into version i + 1. Append; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE people (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    CREATE TABLE photos (
        id INTEGER PRIMARY KEY,
        person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
        file TEXT NOT NULL UNIQUE,      -- generated name under photos/ and thumbs/
        box TEXT NOT NULL,              -- JSON [left, top, right, bottom] in the stored photo
        width INTEGER NOT NULL,         -- of the stored photo
        height INTEGER NOT NULL,
        embedding BLOB NOT NULL,        -- float32 [128], what the gallery matches
        features BLOB NOT NULL,         -- float32 backbone features, for re-applying a new head
        backbone TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    CREATE INDEX photos_by_person ON photos(person_id);
    """,
    """
    CREATE TABLE unknown_faces (
        id INTEGER PRIMARY KEY,
        track_key TEXT NOT NULL UNIQUE,  -- <connection>:<track id>: one face per live track
        file TEXT NOT NULL UNIQUE,       -- generated name under inbox/: the face crop, JPEG
        box TEXT NOT NULL,               -- JSON [left, top, right, bottom] of the face in the crop
        width INTEGER NOT NULL,          -- of the crop
        height INTEGER NOT NULL,
        embedding BLOB NOT NULL,         -- float32 [128]
        features BLOB NOT NULL,          -- float32 backbone features
        backbone TEXT NOT NULL,
        seen_at TEXT NOT NULL            -- UTC, '%Y-%m-%dT%H:%M:%SZ'
    );
    CREATE INDEX unknown_faces_by_time ON unknown_faces(seen_at);
    CREATE TABLE sightings (
        id INTEGER PRIMARY KEY,
        person_id INTEGER REFERENCES people(id) ON DELETE SET NULL,  -- NULL: unknown
        name TEXT,                       -- the name when seen (kept after a rename or delete)
        first_seen TEXT NOT NULL,        -- UTC, '%Y-%m-%dT%H:%M:%SZ'
        last_seen TEXT NOT NULL,
        frames INTEGER NOT NULL,
        best_similarity REAL NOT NULL
    );
    CREATE INDEX sightings_by_time ON sightings(last_seen);
    CREATE INDEX sightings_by_person ON sightings(person_id);
    """,
    """
    CREATE TABLE corrections (           -- "this face is NOT this person": hard negatives for the trainer
        id INTEGER PRIMARY KEY,
        photo_id INTEGER,                -- the removed photo it came from (row gone), or NULL
        unknown_face_id INTEGER,         -- the inbox face it came from, or NULL (live corrections)
        person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
        embedding BLOB NOT NULL,         -- float32 [128]
        features BLOB NOT NULL,          -- float32 backbone features
        backbone TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    CREATE INDEX corrections_by_person ON corrections(person_id);
    """,
    """
    CREATE TABLE cameras (               -- video streams the server reads and recognises (webapp/cameras.py)
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        url TEXT NOT NULL,               -- may hold a user name and password: never shown or logged as is
        enabled INTEGER NOT NULL DEFAULT 1,
        fps REAL,                        -- frames a second to analyse; NULL: FACES_CAMERA_FPS
        min_face_px INTEGER,             -- smallest face recognised (box side); NULL: FACES_MIN_RECOGNISE_PX
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    """,
    """
    -- the corrected face as a small JPEG, so the person page can show what an Undo would bring back (NULL: none kept)
    ALTER TABLE corrections ADD COLUMN thumb BLOB;
    """,
    """
    CREATE TABLE api_keys (              -- keys for scripts and integrations (webapp/api_keys.py)
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE, -- hex SHA-256 of the key; the key itself is shown once, never stored
        hint TEXT NOT NULL,              -- the key's first characters, to tell keys apart
        scopes TEXT NOT NULL,            -- space-separated: read recognize manage
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
        last_used_at TEXT,               -- UTC, at most a minute behind
        revoked_at TEXT                  -- UTC; NULL: live
    );
    """,
    """
    CREATE TABLE stored_settings (       -- choices made in the app's pages (webapp/strictness.py: "strictness")
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    -- which way the face looked (model.quality.POSES), recorded at enrollment; NULL: not recorded
    ALTER TABLE photos ADD COLUMN pose TEXT;
    """,
    """
    -- What changed in the tables that shape matching, for every process on this data folder to catch up
    -- (webapp/changes.py). Only these triggers write it, so no store code has to remember to; ids only, no
    -- names or vectors; purged after a day.
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a purge: "applied up to id" stays true
        kind TEXT NOT NULL,                    -- person, photo, correction or setting
        row_id INTEGER,                        -- people.id, photos.id, corrections.id; NULL for a setting
        changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    CREATE TRIGGER changes_person_added AFTER INSERT ON people
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('person', NEW.id); END;
    CREATE TRIGGER changes_person_renamed AFTER UPDATE OF name ON people
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('person', NEW.id); END;
    CREATE TRIGGER changes_person_deleted AFTER DELETE ON people
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('person', OLD.id); END;
    CREATE TRIGGER changes_photo_added AFTER INSERT ON photos
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('photo', NEW.id); END;
    CREATE TRIGGER changes_photo_changed AFTER UPDATE OF person_id, embedding, backbone ON photos
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('photo', NEW.id); END;
    CREATE TRIGGER changes_photo_deleted AFTER DELETE ON photos  -- a person's delete cascades here too
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('photo', OLD.id); END;
    CREATE TRIGGER changes_correction_added AFTER INSERT ON corrections
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('correction', NEW.id); END;
    CREATE TRIGGER changes_correction_changed AFTER UPDATE OF person_id, embedding, backbone ON corrections
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('correction', NEW.id); END;
    CREATE TRIGGER changes_correction_deleted AFTER DELETE ON corrections
        BEGIN INSERT INTO changes (kind, row_id) VALUES ('correction', OLD.id); END;
    CREATE TRIGGER changes_setting_added AFTER INSERT ON stored_settings
        BEGIN INSERT INTO changes (kind) VALUES ('setting'); END;
    CREATE TRIGGER changes_setting_changed AFTER UPDATE ON stored_settings
        BEGIN INSERT INTO changes (kind) VALUES ('setting'); END;
    CREATE TRIGGER changes_setting_deleted AFTER DELETE ON stored_settings
        BEGIN INSERT INTO changes (kind) VALUES ('setting'); END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """A request the stores refuse; `status` is the HTTP status to answer with."""

    status = 400


class InvalidName(StoreError):
    status = 400


class DuplicateName(StoreError):
    status = 409


class NotFound(StoreError):
    status = 404


def to_blob(vector: NDArray[np.float32]) -> bytes:
    """A float32 vector as little-endian bytes for a BLOB column (embedding, features)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> NDArray[np.float32]:
    """The inverse of to_blob."""
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the database with rows as sqlite3.Row, foreign keys on, WAL journaling and secure delete.

    secure_delete overwrites deleted rows with zeros, so a deleted person's
    face embeddings do not linger in free pages of the file.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA secure_delete = ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version it found.

    Processes starting together on one data dir take turns (a lock file beside the
    database), so the second finds the schema done instead of creating it again.
    """
    with _migration_lock(conn):
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database has schema version {found}, newer than this app's {SCHEMA_VERSION}; "
                "update the app or point FACES_DATA_DIR elsewhere"
            )
        for version in range(found, SCHEMA_VERSION):
            # executescript commits first, so the BEGIN/COMMIT here is the whole step.
            conn.executescript(f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;")
    return found


@contextmanager
def _migration_lock(conn: sqlite3.Connection) -> Iterator[None]:
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    if not path:  # an in-memory database: nobody else can see it
        yield
        return
    with files.locked(f"{path}.migrate-lock"):
        yield


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def flush_deleted(conn: sqlite3.Connection) -> None:
    """Checkpoint and empty the WAL file, whose older frames still hold what was just deleted (best effort)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def get_db() -> sqlite3.Connection:
    """This request's connection, opened on first use."""
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(exc: BaseException | None = None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    """Create or migrate the schema now, and close each request's connection after it."""
    conn = connect(app.config["DATABASE"])
    try:
        migrate(conn)
    finally:
        conn.close()
    app.teardown_appcontext(close_db)
