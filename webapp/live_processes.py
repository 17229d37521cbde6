"""Live workers as processes: each has its own model copy and gallery, so every core recognises at once.

dlib's ResNet holds the GIL for most of its time (README, "Many streams"), so threads in one process take
turns; a process each does not. The server's LiveFrames keeps its slots, turns and admission as they are;
only the work on a frame moves: its worker thread hands the JPEG to its LiveProcess and waits for the
answer, so there is still one frame in flight per worker and nothing queues.

A child (`serve`) builds the service from the app's settings, loads the gallery from the database, and
keeps one LiveStream per connection it serves (made on its first frame). Its gallery follows the database
through the `changes` log (webapp.changes.catch_up): before a frame whenever the parent's gallery version
moved since the last one, so a face enrolled on the page is named from the next frame, and every
FACES_CHANGES_POLL_S anyway (other processes' changes). A new head (/head/reload) restarts the children,
which load it as a fresh start would. A child that dies is started again; its streams' tracks start over.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webapp import changes
from webapp.inbox_store import Archive
from webapp.live_stream import LiveStream

log = logging.getLogger(__name__)

LOST_FRAME_ERROR = "the server could not process this frame"


@dataclass(frozen=True)
class WorkerSpec:
    """What a child needs to build its part of the app: the settings (plain values) and the live options."""

    config: dict[str, Any]
    tracker_options: dict[str, Any]
    events: bool  # whether track events are made (a sink is configured in the parent)


class LiveProcess:
    """One child process and the pipe to it; `answer` and `close` take turns on it (one call at a time).

    :param spec: what the child builds.
    :param index: the worker's number (its process name).
    :param head_version: the parent service's head_version when it starts; another one restarts the child.
    """

    def __init__(self, spec: WorkerSpec, index: int, head_version: int = 0):
        self.spec, self.index = spec, index
        self._lock = threading.Lock()
        self._head_version = head_version
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child, self.spec), name=f"faces-live-{self.index}",
                                        daemon=True)
        self._process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def answer(self, sid: str, frame_id: int, data: bytes, arrived: float | None, version: int,
               head_version: int) -> tuple[str, dict, list[dict]]:
        """(event, payload, track events) for one frame of stream sid. A new head restarts the child first."""
        with self._lock:
            if head_version != self._head_version:
                log.info("live worker %d: a new head, starting the worker process again", self.index)
                self._head_version = head_version
                self._restart()
            reply = self._call(("frame", sid, frame_id, data, arrived, version))
        if reply is None:
            return "error", {"error": LOST_FRAME_ERROR, "frame_id": frame_id}, []
        return reply

    def close(self, sid: str) -> None:
        """Stream sid ended: the child writes what it saw and forgets it."""
        with self._lock:
            self._call(("close", sid))

    def _call(self, message: tuple) -> Any:
        """Send one message and wait for its reply; None when the child died (it is started again)."""
        try:
            self._conn.send(message)
            return self._conn.recv()
        except (EOFError, OSError):
            self._process.join(1)
            log.error("live worker process %d stopped (exit code %s); starting a new one", self.index,
                      self._process.exitcode)
            self._restart()
            return None

    def _restart(self) -> None:
        self._conn.close()
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)
        self._start()


class RemoteStream:
    """A live connection served in a child: LiveStream's answer() and close(), through its LiveProcess.

    :param on_event: the track events the child made are handed here (None: none are made).
    """

    def __init__(self, process: LiveProcess, sid: str, service, on_event: Callable[[dict], None] | None = None):
        self.process, self.sid, self.service, self.on_event = process, sid, service, on_event

    def answer(self, frame_id: int, data: bytes, now: float | None = None) -> tuple[str, dict]:
        event, payload, events = self.process.answer(self.sid, frame_id, data, now, self.service.gallery_version,
                                                     self.service.head_version)
        for track_event in events:
            self.on_event(track_event)
        return event, payload

    def close(self) -> None:
        self.process.close(self.sid)


# --- the child ---------------------------------------------------------------------------


class _Worker:
    """The child's service, archive and streams."""

    def __init__(self, spec: WorkerSpec):
        from webapp import build_face_service  # the package imports this module: not at the top

        config = spec.config
        self.spec = spec
        after = changes.newest_in(config["DATABASE"])  # before the load: changes during it are caught up
        self.service = build_face_service(config)
        self.service.start_loading()
        # The change log's reader, without its thread: the frames say when to read it (see _follow).
        self.changes = changes.ChangePoller(config["DATABASE"], self.service, after=after,
                                            every_s=config["CHANGES_POLL_S"])
        self.archive = Archive(config["DATABASE"], config["DATA_DIR"], self.service.backbone,
                               inbox_days=config["INBOX_RETENTION_DAYS"], history_days=config["HISTORY_RETENTION_DAYS"])
        self.parent_version: int | None = None
        self.caught_up_at = time.monotonic()
        self.streams: dict[str, LiveStream] = {}
        self.events: list[dict] = []

    def answer(self, sid: str, frame_id: int, data: bytes, arrived: float, version: int):
        self._follow(version)
        stream = self.streams.get(sid) or self._open(sid)
        self.events = []
        event, payload = stream.answer(frame_id, data, arrived)
        return event, payload, self.events

    def close(self, sid: str) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.close()

    def close_all(self) -> None:
        for sid in list(self.streams):
            self.close(sid)

    def _open(self, sid: str) -> LiveStream:
        config = self.spec.config
        stream = LiveStream(self.service, self.archive, unknown_frames=config["LIVE_UNKNOWN_FRAMES"],
                            max_frame_bytes=config["MAX_FRAME_BYTES"], tracker_options=self.spec.tracker_options,
                            on_event=self.events.append if self.spec.events else None)
        self.streams[sid] = stream
        return stream

    def _follow(self, version: int) -> None:
        """Catch the gallery up when the parent's changed, or every FACES_CHANGES_POLL_S (other processes')."""
        now = time.monotonic()
        if version == self.parent_version and now - self.caught_up_at < self.changes.every_s:
            return
        try:
            self.changes.poll(self.service)
        except sqlite3.Error as exc:  # PostgreSQL's errors come as sqlite3's too (webapp/pg.py)
            log.error("live worker: could not read the gallery's changes (%s); trying again on the next frame", exc)
            return
        self.parent_version, self.caught_up_at = version, now


def serve(conn, spec: WorkerSpec) -> None:
    """The child's loop: answer ("frame", ...) and ("close", sid) messages until the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    worker = _Worker(spec)
    handlers: Mapping[str, Callable] = {"frame": worker.answer, "close": worker.close}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        conn.send(handlers[message[0]](*message[1:]))
    worker.close_all()
