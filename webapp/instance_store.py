"""The instance's own secrets (the Flask secret key, the admin password's hash, the webhook signing secret)
and its live login sessions, on either engine.

SQLite (the default) keeps them as private files in the data dir, as it always has: `secret_key`,
`admin_password` and `webhook_secret` (written all or nothing, owner-only), and `sessions`: one line per
live login, a SHA-256 of its id and when it was made, rewritten under a lock file. PostgreSQL
(FACES_DATABASE_URL) keeps them in the rows of `instance_secrets` and `login_sessions`, so processes on
several machines agree on them through the database alone. On its first start on PostgreSQL an install
takes over those files' values once (`take_over_files`), so the password and the logins survive a switch.

Callers get a store from `of(app)` and never touch the files or tables themselves.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

from flask import Flask

from webapp import db, files
from webapp.security import read_or_create, write_private

log = logging.getLogger(__name__)

SECRET_KEY = "secret_key"
ADMIN_PASSWORD = "admin_password"
WEBHOOK_SECRET = "webhook_secret"
SECRETS = (SECRET_KEY, ADMIN_PASSWORD, WEBHOOK_SECRET)  # also their file names in a SQLite data dir
SESSIONS_FILE = "sessions"
# A row in instance_secrets, not a secret: the data dir's files were taken over (its value: when). Without
# it an emptied session table (log out everywhere) would be filled from the stale file at the next start.
TAKEN_OVER = "files_taken_over"
EXTENSION = "instance_store"  # app.extensions key


def sessions_path(data_dir: Path) -> Path:
    return Path(data_dir) / SESSIONS_FILE


class FileStore:
    """SQLite installs: the private files in the data dir."""

    engine = "sqlite"

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)

    def path(self, name: str) -> Path:
        return self.data_dir / name

    def get(self, name: str) -> str | None:
        """The stored value, or None while there is none (an empty file counts as none)."""
        try:
            text = self.path(name).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def get_or_create(self, name: str, make: Callable[[], str]) -> str:
        """The value, made with make() the first time; processes racing to make it all get the winner's."""
        return read_or_create(self.path(name), make)

    def put(self, name: str, value: str, *, replace: bool) -> bool:
        """Store value; with replace=False only while there is none. Returns whether it was stored."""
        return write_private(self.path(name), value + "\n", replace=replace)

    # --- sessions: one writer of the file at a time, across threads and processes, so no login is lost

    def _writer(self):
        return files.locked(self.data_dir / f"{SESSIONS_FILE}.lock")

    def sessions(self) -> dict[str, float]:
        """Live sessions: id digest -> when the login was made (Unix time). A damaged line counts as no session."""
        try:
            text = sessions_path(self.data_dir).read_text()
        except FileNotFoundError:
            return {}
        live = {}
        for line in text.splitlines():
            digest, _, started = line.partition(" ")
            try:
                live[digest] = float(started)
            except ValueError:
                continue
        return live

    def session_started(self, digest: str) -> float | None:
        return self.sessions().get(digest)

    def _write(self, live: dict[str, float], keep: int) -> None:
        newest = sorted(live.items(), key=lambda item: item[1])[-keep:] if keep else []
        write_private(sessions_path(self.data_dir),
                      "".join(f"{digest} {started:.3f}\n" for digest, started in newest), replace=True)

    def add_session(self, digest: str, now: float, lifetime_s: float, keep: int) -> None:
        """List a new login; those older than lifetime_s go, and beyond `keep` the oldest."""
        with self._writer():
            live = {d: t for d, t in self.sessions().items() if now - t < lifetime_s}
            live[digest] = now
            self._write(live, keep)

    def end_session(self, digest: str) -> None:
        with self._writer():
            live = self.sessions()
            if live.pop(digest, None) is not None:
                self._write(live, len(live))

    def end_all_sessions(self) -> int:
        """Forget every session; returns how many were listed."""
        with self._writer():
            count = len(self.sessions())
            if count or sessions_path(self.data_dir).exists():
                self._write({}, 0)
        return count


def _rowcount(cursor):
    return cursor.rowcount


def _first(cursor):
    return cursor.fetchone()


def _all(cursor):
    return [tuple(row) for row in cursor.fetchall()]


class PostgresStore:
    """PostgreSQL installs: the rows of instance_secrets and login_sessions.

    One connection per process, opened on first use and kept, one statement at a time under a lock: a
    login check is two short queries (0.3 ms together), a new connection for it 5 to 8 ms (loopback).
    A kept connection that broke (a server restart) is opened again once before an error reaches the caller.
    """

    engine = "postgres"

    def __init__(self, url: str, data_dir: Path):
        self.url, self.data_dir = url, Path(data_dir)
        self._lock = threading.Lock()
        self._conn = None

    def _use(self, work: Callable):
        """work(connection) on the kept connection, under the lock; once more on a new connection when the kept
        one broke since its last use. :raises sqlite3.OperationalError: the database cannot be reached."""
        with self._lock:
            if self._conn is not None:
                try:
                    return work(self._conn)
                except sqlite3.OperationalError:
                    self.close()
            self._conn = db.connect(self.url)
            return work(self._conn)

    def _run(self, sql: str, params: tuple = (), read: Callable = _rowcount):
        """One statement; returns read(cursor), the row count unless told."""
        return self._use(lambda conn: read(conn.execute(sql, params)))

    def close(self) -> None:
        """Close the kept connection (the next call opens another)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @contextmanager
    def _own_connection(self) -> Iterator:
        conn = db.connect(self.url)
        try:
            yield conn
        finally:
            conn.close()

    def get(self, name: str) -> str | None:
        row = self._run("SELECT value FROM instance_secrets WHERE name = ?", (name,), _first)
        return row[0] if row else None

    def get_or_create(self, name: str, make: Callable[[], str]) -> str:
        """The value, made with make() the first time. Processes racing to make it all get the first commit's:
        the insert of a later one does nothing, and the read after it sees the winner's row."""
        value = self.get(name)
        if value is None:
            self._run("INSERT INTO instance_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                      (name, make()))
            value = self.get(name)
        return value

    def put(self, name: str, value: str, *, replace: bool) -> bool:
        """Store value; with replace=False only while there is none. Returns whether it was stored."""
        if replace:
            self._run("INSERT INTO instance_secrets (name, value) VALUES (?, ?) "
                      "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))
            return True
        return self._run("INSERT INTO instance_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                         (name, value)) == 1

    def sessions(self) -> dict[str, float]:
        return dict(self._run("SELECT digest, started FROM login_sessions", (), _all))

    def session_started(self, digest: str) -> float | None:
        row = self._run("SELECT started FROM login_sessions WHERE digest = ?", (digest,), _first)
        return row[0] if row else None

    def add_session(self, digest: str, now: float, lifetime_s: float, keep: int) -> None:
        """List a new login; those older than lifetime_s go, and beyond `keep` the oldest (as the file does)."""
        def add(conn) -> None:
            conn.execute("DELETE FROM login_sessions WHERE started <= ?", (now - lifetime_s,))
            conn.execute("INSERT INTO login_sessions (digest, started) VALUES (?, ?) "
                         "ON CONFLICT (digest) DO UPDATE SET started = excluded.started", (digest, now))
            conn.execute("DELETE FROM login_sessions WHERE digest IN "
                         "(SELECT digest FROM login_sessions ORDER BY started DESC OFFSET ?)", (keep,))

        self._use(add)

    def end_session(self, digest: str) -> None:
        self._run("DELETE FROM login_sessions WHERE digest = ?", (digest,))

    def end_all_sessions(self) -> int:
        """Forget every session, on every process and machine; returns how many were listed."""
        return self._run("DELETE FROM login_sessions")

    def take_over_files(self) -> list[str]:
        """Once per database: copy what the data dir's files hold and the database lacks. Returns what was
        taken (names and a count, never values).

        One transaction under the writers' lock: processes starting together take turns, and only the
        first finds the marker missing.
        """
        old = FileStore(self.data_dir)
        taken = []
        with self._own_connection() as conn, db.transaction(conn):
            if conn.execute("SELECT 1 FROM instance_secrets WHERE name = ?", (TAKEN_OVER,)).fetchone():
                return []
            for name in SECRETS:
                value = old.get(name)
                if value and conn.execute("INSERT INTO instance_secrets (name, value) VALUES (?, ?) "
                                          "ON CONFLICT (name) DO NOTHING", (name, value)).rowcount:
                    taken.append(name)
            live = old.sessions()
            if live:
                conn.executemany("INSERT INTO login_sessions (digest, started) VALUES (?, ?) "
                                 "ON CONFLICT (digest) DO NOTHING", list(live.items()))
                taken.append(f"{len(live)} session(s)")
            conn.execute("INSERT INTO instance_secrets (name, value) VALUES (?, ?)", (TAKEN_OVER, db.utc_now()))
        return taken


Store = Union[FileStore, PostgresStore]


def open_store(config) -> Store:
    """The store for an app's settings: the database's tables on PostgreSQL, else the data dir's files."""
    if db.is_postgres(config["DATABASE"]):
        return PostgresStore(config["DATABASE"], config["DATA_DIR"])
    return FileStore(config["DATA_DIR"])


def of(app: Flask) -> Store:
    return app.extensions[EXTENSION]


def init_app(app: Flask) -> Store:
    """Open the app's store (after db.init_app: on PostgreSQL its tables must exist); on PostgreSQL take over
    an old data dir's files the first time."""
    store = open_store(app.config)
    app.extensions[EXTENSION] = store
    if isinstance(store, PostgresStore):
        taken = store.take_over_files()
        if taken:
            log.warning("took over from the data folder %s into the database, once: %s (the files stay, unused "
                        "while FACES_DATABASE_URL is set)", store.data_dir, ", ".join(taken))
    return store
