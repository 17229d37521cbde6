"""The database: one connection per request (cached on g), the schema, its migrations, and the vector codec.

SQLite in the data folder by default; PostgreSQL when FACES_DATABASE_URL is set (webapp/pg.py adapts its
connection to the part of sqlite3's the stores use). One migration history serves both (webapp/schema.py).
The schema version is SQLite's `PRAGMA user_version`, or the one row of PostgreSQL's
`schema_version`. `migrate` runs every migration newer than that, each in one transaction, when the app
starts. Connections run in autocommit mode; writes that must stick together use `transaction()`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from flask import Flask, current_app, g
from numpy.typing import NDArray

from webapp import files
from webapp.schema import (  # noqa: F401  (db.MIGRATIONS etc.: the names the stores and tests use)
    MIGRATIONS, PG_CHANGES_CHANNEL, PG_WRITE_LOCK, SCHEMA_VERSION, WORDS, PerEngine, Step,
)


class Unavailable(RuntimeError):
    """The database cannot be reached (PostgreSQL down, wrong host or login); the message names it, no password."""


class StoreError(Exception):
    """A request the stores refuse; `status` is the HTTP status to answer with."""

    status = 400


class InvalidName(StoreError):
    status = 400


class DuplicateName(StoreError):
    status = 409


class NotFound(StoreError):
    status = 404


def utc_now(offset_s: float = 0.0) -> str:
    """Now (plus offset_s seconds) in UTC as the schema's TEXT timestamps hold it: '%Y-%m-%dT%H:%M:%SZ'."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))


def to_blob(vector: NDArray[np.float32]) -> bytes:
    """A float32 vector as little-endian bytes for a BLOB column (embedding, features)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> NDArray[np.float32]:
    """The inverse of to_blob."""
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def is_postgres(target: object) -> bool:
    """Whether a DATABASE setting (a path or URL) or an open connection is PostgreSQL."""
    if isinstance(target, str):
        return target.startswith(("postgresql://", "postgres://"))
    return getattr(target, "engine", "sqlite") == "postgres"  # webapp.pg.Connection says so


def render(step: Step, engine: str) -> str:
    """One migration step's SQL for "sqlite" or "postgres"."""
    parts = (step,) if isinstance(step, str) else step
    return "".join(getattr(part, engine) if isinstance(part, PerEngine) else part for part in parts).format_map(
        WORDS[engine])


def connect(target: str | Path):
    """Open the database: a SQLite file, or PostgreSQL for a postgresql:// URL (webapp.pg.Connection).

    :raises sqlite3.OperationalError: PostgreSQL cannot be reached.
    """
    if is_postgres(target):
        from webapp import pg  # psycopg is only needed with FACES_DATABASE_URL

        return pg.connect(str(target))
    return connect_sqlite(target)


def connect_sqlite(path: str | Path) -> sqlite3.Connection:
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


def migrate(conn) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version it found.

    Processes starting together take turns (SQLite: a lock file beside the database; PostgreSQL: an
    advisory lock), so the second finds the schema done instead of creating it again.
    """
    if is_postgres(conn):
        from webapp import pg

        return pg.migrate(conn, [render(step, "postgres") for step in MIGRATIONS], check_not_newer)
    with _migration_lock(conn):
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        check_not_newer(found)
        for version in range(found, SCHEMA_VERSION):
            # executescript commits first, so the BEGIN/COMMIT here is the whole step.
            conn.executescript(
                f"BEGIN; {render(MIGRATIONS[version], 'sqlite')} PRAGMA user_version = {version + 1}; COMMIT;")
    return found


def check_not_newer(found: int) -> None:
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {found}, newer than this app's {SCHEMA_VERSION}; "
            "update the app or point FACES_DATA_DIR (or FACES_DATABASE_URL) elsewhere"
        )


@contextmanager
def _migration_lock(conn: sqlite3.Connection) -> Iterator[None]:
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    if not path:  # an in-memory database: nobody else can see it
        yield
        return
    with files.locked(f"{path}.migrate-lock"):
        yield


@contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises.

    On PostgreSQL: BEGIN and the writers' advisory lock, so writers take turns as on SQLite and the
    stores' read-then-write sequences (a name is free, then the insert; a merge) stay safe.
    """
    conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})" if is_postgres(conn) else "BEGIN IMMEDIATE")
    yield from _until_done(conn)


@contextmanager
def snapshot(conn):
    """A read-only transaction: every read in the block sees the database as of its first read."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if is_postgres(conn) else "BEGIN")
    yield from _until_done(conn)


def _until_done(conn):
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# What a person's delete touches: PostgreSQL keeps deleted rows (dead tuples) in the files until VACUUM.
DELETED_FROM = ("people", "photos", "corrections", "unknown_faces", "sightings", "changes")


def flush_deleted(conn) -> None:
    """Make what was just deleted unreachable on disk (best effort).

    SQLite: checkpoint and empty the WAL file, whose older frames still hold it. PostgreSQL: VACUUM the
    tables deletes touch, so their dead rows are freed for reuse (README: what stays on disk after a delete).
    """
    if is_postgres(conn):
        conn.execute(f"VACUUM {', '.join(DELETED_FROM)}")
    else:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def get_db():
    """This request's connection, opened on first use."""
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(exc: BaseException | None = None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


def check_url(url: str) -> str:
    """FACES_DATABASE_URL, checked; returns it. :raises ValueError: not a postgresql://.../dbname URL."""
    from webapp import pg

    pg.check_url(url)
    return url


def init_app(app: Flask) -> None:
    """Create or migrate the schema now, and close each request's connection after it.

    :raises Unavailable: PostgreSQL cannot be reached (server.py logs it and exits).
    """
    try:
        conn = connect(app.config["DATABASE"])
    except sqlite3.OperationalError as exc:
        if not is_postgres(app.config["DATABASE"]):
            raise
        raise Unavailable(f"cannot reach the database {describe(app.config['DATABASE'])}: {exc}") from None
    try:
        migrate(conn)
    finally:
        conn.close()
    app.teardown_appcontext(close_db)


def describe(target: str | Path) -> str:
    """The DATABASE setting for a log line (a URL's password hidden)."""
    if not is_postgres(target):
        return str(target)
    from webapp import pg

    return pg.redact(str(target))
