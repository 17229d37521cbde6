"""Changes made by other app processes on the same data folder, brought into this process's gallery.

Several processes (scripts/cluster.sh) share one database. Triggers (webapp/db.py, the `changes`
migration) append a row for every insert, update and delete of a person, photo, correction or stored
setting, so no store code has to remember to log one. With several processes (FACES_PROCESSES above 1,
or FACES_REDIS_URL set) each runs one ChangePoller: every FACES_CHANGES_POLL_S it reads the rows after
the last one it applied and, for each person, photo or correction they name, reads that row as it is now
and puts it in the gallery or takes it out. Applying a change twice, or one this process made itself,
leaves the same gallery, so nothing needs to know who made it. The change rows and the rows they name are
read in one snapshot: whatever commits later has a higher change id and is read on the next poll.

On PostgreSQL (FACES_DATABASE_URL) the trigger also NOTIFYs, and the poller LISTENs, so it catches up as
soon as a change commits; the timer stays as the catch-up after a lost connection. Every process on
PostgreSQL follows the log, since other machines may share the database.

A process that starts loads everything (create_app) and follows from the newest change id it saw before
loading. Change rows hold ids only and are purged after KEEP_S. One process alone does not poll (its own
changes are in its gallery already); a poll that finds nothing costs one indexed SELECT (bench/cluster.py).

A head reload writes the re-embedded photos and then the `heads` row (webapp/head_store.py) in one
transaction: a 'head' change makes the poller load that head from its row and swap it in, after the photos.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
from flask import Flask
from numpy.typing import NDArray

from model.head import Head
from webapp import corrections, db, head_store, redis_link, strictness
from webapp.service import FaceService

log = logging.getLogger(__name__)

EXTENSION = "changes"
KEEP_S = 24 * 3600.0  # change rows older than this are purged; a process away longer reloads at start anyway
PURGE_EVERY_S = 3600.0
BATCH = 5000  # change rows read per snapshot: a large import or head reload is read in parts, never one huge read
MAX_POLL_S = 60.0
# /api/health calls a poller stalled after this many intervals without a successful poll (at least STALLED_MIN_S).
STALLED_POLLS = 20
STALLED_MIN_S = 10.0


@dataclass
class Touched:
    """What a run of change rows names: person and photo ids, whether corrections or settings changed.

    `last` is the newest change id read (the one to follow from).
    """

    last: int
    rows: int = 0  # change rows read (BATCH: there may be more)
    people: set[int] = field(default_factory=set)
    photos: set[int] = field(default_factory=set)
    corrections: bool = False
    settings: bool = False
    head: bool = False

    @property
    def empty(self) -> bool:
        return not (self.people or self.photos or self.corrections or self.settings or self.head)


@dataclass
class Current:
    """The named rows as they are now, as the gallery needs them."""

    names: dict[int, str]  # people still there: id -> name
    gone: set[int]  # people deleted
    photos: dict[int, tuple[int, NDArray[np.float32]]]  # photo id -> (person id, embedding float32 [D])
    dropped: set[int]  # photos deleted, or of another backbone (not matched until re-embedded)
    corrections: list[tuple[int, int, NDArray[np.float32]]] | None  # every correction; None: untouched
    strictness: float | None  # None: untouched
    head: head_store.StoredHead | None = None  # the backbone's stored head; None: untouched or none stored


def newest(conn: sqlite3.Connection) -> int:
    """The newest change id (0 for none yet)."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM changes").fetchone()[0])


def newest_in(database: str) -> int:
    """newest() of a database file; call it before loading the gallery, so nothing after the load is missed."""
    conn = db.connect(database)
    try:
        return newest(conn)
    finally:
        conn.close()


def read_touched(conn: sqlite3.Connection, after: int, limit: int = BATCH) -> Touched:
    """What the change rows after id `after` name (at most `limit` rows)."""
    rows = conn.execute("SELECT id, kind, row_id FROM changes WHERE id > ? ORDER BY id LIMIT ?",
                        (after, limit)).fetchall()
    touched = Touched(rows[-1]["id"] if rows else after, len(rows))
    for row in rows:
        if row["kind"] == "person":
            touched.people.add(row["row_id"])
        elif row["kind"] == "photo":
            touched.photos.add(row["row_id"])
        elif row["kind"] == "correction":
            touched.corrections = True
        elif row["kind"] == "setting":
            touched.settings = True
        elif row["kind"] == "head":
            touched.head = True
    return touched


def _named(conn, sql: str, ids: set[int], *args) -> list:
    """The rows of `sql` (ending in `id IN`) for these ids; one `?` each (a poll reads at most BATCH ids)."""
    if not ids:
        return []
    return conn.execute(f"{sql} ({', '.join('?' * len(ids))})", (*args, *sorted(ids))).fetchall()


def read_current(conn: sqlite3.Connection, touched: Touched, backbone: str) -> Current:
    """The rows `touched` names, as they are now (photos and corrections of `backbone` only)."""
    names = {row["id"]: row["name"] for row in _named(conn, "SELECT id, name FROM people WHERE id IN",
                                                      touched.people)}
    photos = {row["id"]: (row["person_id"], db.from_blob(row["embedding"])) for row in _named(
        conn, "SELECT id, person_id, embedding FROM photos WHERE backbone = ? AND id IN", touched.photos, backbone)}
    return Current(
        names=names,
        gone=touched.people - set(names),
        photos=photos,
        dropped=touched.photos - set(photos),
        corrections=corrections.gallery_items(conn, backbone) if touched.corrections else None,
        strictness=strictness.stored(conn) if touched.settings else None,
        head=head_store.read(conn, backbone) if touched.head else None,
    )


def apply(service: FaceService, current: Current) -> None:
    """Put the current rows in the service's gallery and names; idempotent.

    Names first, so no frame shows a new photo's person without a name; deleted people last. A new head
    (another process's reload) is swapped in with the photos it embedded, no frame in between.
    """
    head = new_head(service, current.head)
    with service.swapping_head(head, current.head.sha256) if head is not None else contextlib.nullcontext():
        for person_id, name in current.names.items():
            service.add_person(person_id, name)
        for photo_id, (person_id, embedding) in current.photos.items():
            service.add_photo(photo_id, person_id, embedding)  # a moved photo keeps its row and changes person
        for photo_id in current.dropped:
            service.remove_photo(photo_id)
        for person_id in current.gone:
            service.remove_person(person_id)
        if current.corrections is not None:
            service.set_corrections(current.corrections)
    if head is not None:
        log.info("changes: using the %s head reloaded at %s (sha256 %s)", current.head.backbone,
                 current.head.loaded_at, current.head.sha256[:12])
    if current.strictness is not None:
        service.set_strictness(current.strictness)


def new_head(service: FaceService, stored: head_store.StoredHead | None) -> Head | None:
    """The stored head when it is not the one in use (None: untouched, the same, or unreadable, which is logged).

    Nothing is embedded again: the photos it embedded come in the same catch-up (before it in the log). The
    process that reloaded, or a change read twice, finds the same fingerprint, so live workers restart only
    for a new head.
    """
    if stored is None or stored.sha256 == service.head_sha:
        return None
    try:
        return stored.head(service.recognizer.backbone.dim)
    except ValueError as exc:
        log.error("changes: %s; keeping the head in use", exc)
        return None


def catch_up(conn: sqlite3.Connection, service: FaceService, after: int) -> int:
    """Apply the changes after id `after`, BATCH at a time until none are left; returns the id applied up to.

    A full batch is followed at once, not a poll later: a head reload's photos and its head arrive together.
    """
    while True:
        with db.snapshot(conn):  # the change rows and the rows they name, as of one moment
            touched = read_touched(conn, after)
            current = None if touched.empty else read_current(conn, touched, service.backbone)
        if current is not None:
            apply(service, current)
        if touched.rows < BATCH:
            return touched.last
        after = touched.last


def purge(conn: sqlite3.Connection, keep_s: float = KEEP_S) -> int:
    """Delete change rows older than keep_s seconds; returns how many."""
    return conn.execute("DELETE FROM changes WHERE changed_at < ?", (db.utc_now(-int(keep_s)),)).rowcount


class ChangePoller:
    """One thread that applies the `changes` table to a FaceService every `every_s` seconds.

    :param after: the change id the service's gallery already reflects (newest_in, read before it loaded).
    The thread holds the service weakly and ends when it is gone (tests build many apps) or on stop().
    """

    def __init__(self, database: str, service: FaceService, *, after: int, every_s: float, keep_s: float = KEEP_S):
        self.database = database
        self.every_s, self.keep_s = every_s, keep_s
        self.applied = after
        self.polls = 0
        self.error: str | None = None  # the last poll's failure, None once one succeeds
        self._service = weakref.ref(service)
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._listener = None  # PostgreSQL: woken by the change log's NOTIFY instead of waiting out every_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faces-changes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(2.0, 4 * self.every_s))

    @property
    def stalled(self) -> bool:
        """No successful poll for STALLED_POLLS intervals: this process's gallery may be out of date."""
        return time.monotonic() - self._last_ok > max(STALLED_MIN_S, STALLED_POLLS * self.every_s)

    def poll(self, service: FaceService) -> int:
        """One catch-up on this thread's connection; returns the id applied up to. :raises sqlite3.Error."""
        if self._conn is None:
            self._conn = db.connect(self.database)
        try:
            self.applied = catch_up(self._conn, service, self.applied)
        except sqlite3.Error:
            self._conn.close()  # a fresh connection next time (the file may have been replaced)
            self._conn = None
            self._drop_listener()
            raise
        self.polls += 1
        self._last_ok = time.monotonic()
        return self.applied

    def _listen(self) -> None:
        if self._listener is None and db.is_postgres(self.database):
            from webapp import pg

            self._listener = pg.Listener(self.database, db.PG_CHANGES_CHANNEL)

    def _wait(self) -> bool:
        """Until the next poll: every_s, or sooner when PostgreSQL notifies a change. False: stop.

        Every poll catches up from `applied`, so a change committed while nobody listened waits at most every_s.
        """
        try:
            self._listen()
            if self._listener is not None:
                self._listener.wait(self.every_s)
                return not self._stop.is_set()
        except sqlite3.Error:
            self._drop_listener()  # the timer, until listening works again
        return not self._stop.wait(self.every_s)

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _run(self) -> None:
        next_purge = time.monotonic() + PURGE_EVERY_S
        while self._wait():
            service = self._service()
            if service is None:
                break
            try:
                self.poll(service)
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY_S
                    purge(self._conn, self.keep_s)
                if self.error is not None:
                    log.info("changes: reading the database again (applied up to change %d)", self.applied)
                self.error = None
            except sqlite3.Error as exc:
                if self.error is None:  # once per outage, not twice a second
                    log.error("changes: cannot read other processes' changes from %s: %s; this process's "
                              "gallery may fall behind until it can", self.database, str(exc))  # no traceback kept
                self.error = str(exc)
            del service  # held weakly between polls
        if self._conn is not None:
            self._conn.close()
        self._drop_listener()


def check(config) -> None:
    """:raises ValueError: FACES_PROCESSES or FACES_CHANGES_POLL_S out of range, or a malformed FACES_REDIS_URL."""
    redis_link.check_url(config.get("REDIS_URL"))  # before anything starts following it
    if config["PROCESSES"] < 1:
        raise ValueError(f"FACES_PROCESSES={config['PROCESSES']!r}: at least 1 process")
    if not 0 < config["CHANGES_POLL_S"] <= MAX_POLL_S:
        raise ValueError(f"FACES_CHANGES_POLL_S={config['CHANGES_POLL_S']!r}: must be above 0 and at most "
                         f"{MAX_POLL_S:g} seconds")


def shared(config) -> bool:
    """Whether several processes may share this store: FACES_PROCESSES above 1, FACES_REDIS_URL set, or PostgreSQL
    (other machines may be using it)."""
    return config["PROCESSES"] > 1 or bool(config.get("REDIS_URL")) or db.is_postgres(config["DATABASE"])


def init_app(app: Flask, after: int) -> ChangePoller | None:
    """Purge old change rows; when several processes share the folder, follow their changes from id `after`.

    :raises ValueError: see check().
    """
    check(app.config)
    conn = db.connect(app.config["DATABASE"])
    try:
        purge(conn)
    finally:
        conn.close()
    if not shared(app.config):
        return None
    poller = ChangePoller(app.config["DATABASE"], app.extensions["faces"], after=after,
                          every_s=app.config["CHANGES_POLL_S"])
    app.extensions[EXTENSION] = poller
    poller.start()
    log.info("changes: following other processes' changes every %g s from change %d", poller.every_s, after)
    return poller
