"""Which process reads each enabled server camera: exactly one live process at a time, by the store's own locks.

- **PostgreSQL**: a session-level advisory lock per camera, pg_try_advisory_lock(LOCK_KEY, camera id), held on
  one connection the owning process keeps for it; PostgreSQL lets go when that process dies or the connection
  drops. The connection's application_name says who holds it.
- **SQLite, several processes on one data folder**: an flock on `<data dir>/cameras/<id>.lock`, kept open by
  the owner, who writes who it is into it; the kernel lets go when the process dies.
- **One process alone** (the default): it owns every camera and nothing is locked, as before.

webapp.camera_manager asks again every CLAIM_EVERY_S for the cameras another process holds, so a camera whose
owner died is taken over within about that long.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from pathlib import Path

from webapp import changes, db, files

log = logging.getLogger(__name__)

# The advisory locks' first key, so ours never meet another application's on the same database ("FACE").
LOCK_KEY = 0x46414345
LOCKS_DIR = "cameras"
CONNECT_TIMEOUT_S = 5
_HOLDER_MAX_BYTES = 200


def whoami() -> str:
    """How this process is named to the others: its pid and host."""
    return f"process {os.getpid()} on {socket.gethostname()}"


class SoleClaims:
    """One process alone owns every camera."""

    shared = False

    def claim(self, camera_id: int) -> bool:
        return True

    def release(self, camera_id: int) -> None:
        pass

    def holder(self, camera_id: int) -> str | None:
        return None

    def lost(self) -> set[int]:
        """The cameras this process held and no longer holds (none here)."""
        return set()

    def close(self) -> None:
        pass


class FileClaims(SoleClaims):
    """Per-camera lock files in the data folder (SQLite with several processes on one machine)."""

    shared = True

    def __init__(self, data_dir: Path):
        self.folder = Path(data_dir) / LOCKS_DIR
        self.folder.mkdir(mode=files.PRIVATE_DIR, exist_ok=True)
        self._held: dict[int, io.FileIO] = {}  # camera id -> the locked file, open (closed when collected, too)
        self._lock = threading.Lock()

    def _path(self, camera_id: int) -> Path:
        return self.folder / f"{int(camera_id)}.lock"

    def claim(self, camera_id: int) -> bool:
        with self._lock:
            if camera_id in self._held:
                return True
            fd = files.try_lock(self._path(camera_id))
            if fd is None:
                return False
            held = io.FileIO(fd, "r+")
            held.truncate(0)
            held.write(whoami().encode())
            self._held[camera_id] = held
            return True

    def release(self, camera_id: int) -> None:
        with self._lock:
            held = self._held.pop(camera_id, None)
        if held is not None:
            held.close()  # closing the last descriptor of the open file lets go of its flock

    def holder(self, camera_id: int) -> str | None:
        try:
            with open(self._path(camera_id), "rb") as f:
                text = f.read(_HOLDER_MAX_BYTES).decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        return text or None

    def close(self) -> None:
        for camera_id in list(self._held):
            self.release(camera_id)


class PgClaims(SoleClaims):
    """Advisory locks on one dedicated PostgreSQL connection, opened again after it broke."""

    shared = True

    def __init__(self, url: str):
        self.url = url
        self._conn = None
        self._held: set[int] = set()
        self._lock = threading.Lock()  # request threads and the manager's claim loop share the connection

    def _connection(self):
        if self._conn is None or self._conn.closed:
            import psycopg  # only needed with FACES_DATABASE_URL

            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                         application_name=whoami()[:63])
        return self._conn

    def _broken(self, exc: Exception) -> None:
        """The connection failed: every lock on it is gone (PostgreSQL released them, or will)."""
        log.warning("the camera locks' PostgreSQL connection failed (%s): its cameras are let go", exc)
        self._held.clear()
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def claim(self, camera_id: int) -> bool:
        with self._lock:
            if camera_id in self._held:
                return True
            try:
                row = self._connection().execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4)",
                                                 (LOCK_KEY, camera_id)).fetchone()
            except Exception as exc:
                self._broken(exc)
                return False
            if row[0]:
                self._held.add(camera_id)
            return bool(row[0])

    def release(self, camera_id: int) -> None:
        with self._lock:
            if camera_id not in self._held:
                return
            self._held.discard(camera_id)
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s::int4, %s::int4)", (LOCK_KEY, camera_id))
            except Exception as exc:
                self._broken(exc)

    def holder(self, camera_id: int) -> str | None:
        """The holding connection's application_name (None: nobody, or not visible to this database user)."""
        with self._lock:
            try:
                row = self._connection().execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid::bigint = %s "
                    "AND l.objid::bigint = %s AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())", (LOCK_KEY, camera_id)).fetchone()
            except Exception as exc:
                self._broken(exc)
                return None
        return (row[0] or None) if row else None

    def lost(self) -> set[int]:
        """The cameras held before and not now: all of them when the connection broke."""
        with self._lock:
            if not self._held:
                return set()
            before = set(self._held)
            try:
                rows = self._conn.execute(
                    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
                    "AND classid::bigint = %s AND pid = pg_backend_pid()", (LOCK_KEY,)).fetchall()
            except Exception as exc:
                self._broken(exc)
                return before
            self._held = {row[0] for row in rows} & before
            return before - self._held

    def close(self) -> None:
        with self._lock:
            self._held.clear()
            if self._conn is not None:
                self._conn.close()  # the session ends: PostgreSQL lets go of its locks
            self._conn = None


def for_app(config) -> SoleClaims:
    """The claims for the app's store: sole unless several processes may share it (webapp.changes.shared)."""
    if not changes.shared(config):
        return SoleClaims()
    if db.is_postgres(config["DATABASE"]):
        return PgClaims(config["DATABASE"])
    return FileClaims(config["DATA_DIR"])
