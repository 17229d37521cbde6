"""PostgreSQL (FACES_DATABASE_URL) behind the part of sqlite3's connection the stores use.

The stores write one SQL text per query with `?` parameters and read rows as row["col"] or row[0]; this
adapter turns `?` into psycopg's `%s`, gives rows that read both ways, and raises sqlite3's exception
classes (IntegrityError for a unique or foreign key violation, OperationalError for a lost connection), so
`except sqlite3.IntegrityError` means the same on both engines. It is imported only when a URL is set.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg

CONNECT_TIMEOUT_S = 10
MIGRATE_LOCK = 1_504_150_001  # an advisory lock key (any fixed number): one process migrates at a time


class Row(tuple):
    """A result row read as row["column"] or row[0], like sqlite3.Row."""

    def __new__(cls, values: Sequence, names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key):
        return super().__getitem__(self._names[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self._names)


def _rows(cursor):
    names = {column.name: index for index, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


@contextmanager
def _as_sqlite_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise sqlite3.IntegrityError(str(exc)) from exc
    except psycopg.OperationalError as exc:
        raise sqlite3.OperationalError(str(exc)) from exc
    except psycopg.Error as exc:
        raise sqlite3.DatabaseError(str(exc)) from exc


def _placeholders(sql: str) -> str:
    """`?` parameters as psycopg's `%s` (a literal % doubled). The stores' SQL has no `?` inside strings."""
    return sql.replace("%", "%%").replace("?", "%s")


def _values(params: Sequence) -> list:
    """Parameters as sqlite3 stores them: a bool is the integer 0 or 1 (the schema has no boolean columns)."""
    return [int(value) if isinstance(value, bool) else value for value in params]


class Connection:
    """One autocommit psycopg connection; BEGIN ... COMMIT as statements, as with SQLite's isolation_level=None."""

    engine = "postgres"

    def __init__(self, url: str):
        with _as_sqlite_errors():
            self.raw = psycopg.connect(url, autocommit=True, row_factory=_rows, connect_timeout=CONNECT_TIMEOUT_S)

    def execute(self, sql: str, params: Sequence = ()) -> psycopg.Cursor:
        """Run one statement (or, without params, several: migrations); the cursor reads its rows."""
        with _as_sqlite_errors():
            if not params:
                return self.raw.execute(sql)
            return self.raw.execute(_placeholders(sql), _values(params))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> psycopg.Cursor:
        with _as_sqlite_errors():
            cursor = self.raw.cursor()
            cursor.executemany(_placeholders(sql), [_values(row) for row in rows])
            return cursor

    def close(self) -> None:
        self.raw.close()


class Listener:
    """A connection LISTENing on one channel: wait() returns as soon as a NOTIFY on it commits."""

    def __init__(self, url: str, channel: str):
        with _as_sqlite_errors():
            self.raw = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self.raw.execute(f"LISTEN {channel}")

    def wait(self, timeout_s: float) -> bool:
        """Whether a notification came within timeout_s. :raises sqlite3.OperationalError: the connection broke."""
        with _as_sqlite_errors():
            return any(True for _ in self.raw.notifies(timeout=timeout_s, stop_after=1))

    def close(self) -> None:
        self.raw.close()


def connect(url: str) -> Connection:
    """:raises sqlite3.OperationalError: the server cannot be reached or refuses the login."""
    return Connection(url)


def migrate(conn: Connection, steps: Sequence[str], check_found: Callable[[int], None]) -> int:
    """Run the steps (version i to i + 1: steps[i]) the database lacks; returns the version it found.

    The session holds a lock for the whole run (released if the process dies), so a second process waits and
    then finds the schema done; each step is one transaction, so a crash leaves a whole number of steps.
    """
    conn.execute(f"SELECT pg_advisory_lock({MIGRATE_LOCK})")
    try:
        with _transaction(conn):
            found = _version(conn)
        check_found(found)
        for version in range(found, len(steps)):
            with _transaction(conn):
                conn.execute(steps[version])
                conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
    finally:
        conn.execute(f"SELECT pg_advisory_unlock({MIGRATE_LOCK})")
    return found


@contextmanager
def _transaction(conn: Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _version(conn: Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        return 0
    return row[0]


def check_url(url: str) -> None:
    """:raises ValueError: not a postgresql:// URL with a host or socket and a database name (no password shown)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"FACES_DATABASE_URL is malformed: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise ValueError(f"FACES_DATABASE_URL must look like postgresql://user:password@host:5432/dbname, "
                         f"not {redact(url)}")


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
