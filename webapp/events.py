"""Socket.IO namespace /live: browsers send JPEG frames, the server answers `faces`.

Per connection there is one slot holding the newest frame not yet processed; a
newer frame replaces it (the older one is dropped and its frame_id never
answered). There is one worker thread per core (FACES_LIVE_WORKERS); each
connection is served by one of them for good, on that worker's own recognizer
twin (so no dlib object runs on two threads), and connections are spread so
no worker has two more than another. A worker takes its connections' slots in
turn, hands each frame to its connection's LiveStream (webapp.live_stream:
decode, track, decide, record) and emits the answer to that connection only.
Handlers only validate and store, so a slow model never holds up the socket;
nothing queues.

Admission: every connection is given a frame rate (a `rate` event), at most
what it asked for (the `fps` of its Socket.IO auth, default FACES_LIVE_MAX_FPS)
while all of them fit in what the workers can answer (measured from how long
frames take, webapp.live_admission; or FACES_LIVE_CAPACITY_FPS). When they do
not, the newest connections are slowed down first, to FACES_LIVE_MIN_FPS
("server busy: N streams"), before older ones give anything up. A connection
once let in keeps that minimum; a new one for which it does not fit waits at 0
("server full: N streams") until there is room. A worker takes a connection's frames no faster than its
rate, so a client that ignores it cannot take more.

Contract: the client emits `frame` with JPEG bytes as a binary payload. The
server emits `faces` {frame_id, width, height, faces: [{box, name, person_id,
similarity, margin}], ms}, `error` {error, frame_id}, and `rate` {fps, reason}
(reason: null, or a sentence such as "server busy: 9 streams"). frame_id counts
the frames this connection sent, from 0.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Mapping

import socketio as python_socketio
from flask import Flask, current_app, request
from flask_socketio import emit

from webapp import settings
from webapp.auth import logged_in
from webapp.extensions import socketio
from webapp.inbox_store import Archive
from webapp.live_admission import RATE_EVERY_S, Capacity, Connection, allocate, cores
from webapp.live_processes import LiveProcess, RemoteStream, WorkerSpec
from webapp.live_stream import LiveStream
from webapp.service import FaceService

log = logging.getLogger(__name__)

NAMESPACE = "/live"
# Bad frames get an `error` event each, up to this many per connection and second; the rest are shed unanswered.
MAX_ERROR_REPLIES_PER_S = 10
class LiveFrames:
    """The newest unprocessed frame of each connection, and the workers that answer them.

    :param service: the app's FaceService.
    :param server: the python-socketio Server of this app (to emit from the workers).
    :param max_bytes: larger frames are refused with an error event.
    :param archive: where each connection's sightings and unknown faces are written (None: not kept).
    :param unknown_frames: see webapp.live_stream.Recorder.
    :param workers: worker threads (0: one per core).
    :param max_fps, min_fps, capacity_fps: admission (see the module docstring; capacity 0: measured).
    :param tracker_options: model.tracking.FaceTracker options for every stream.
    :param on_event: each stream's track events go here (webapp.notify.Notifier.publish; None: none).
    :param processes: what each worker's child process builds (webapp.live_processes); None: the workers are
        threads of this process, each on its own recognizer twin.
    """

    def __init__(self, service: FaceService, server: python_socketio.Server, max_bytes: int,
                 archive: Archive | None = None, unknown_frames: int = 5, *, workers: int = 0,
                 max_fps: float = 30.0, min_fps: float = 5.0, capacity_fps: float = 0.0,
                 tracker_options: Mapping | None = None, on_event=None, processes: WorkerSpec | None = None):
        self.service = service
        self.archive = archive
        self.unknown_frames = unknown_frames
        self.server = server
        self.max_bytes = max_bytes
        self.workers = workers or cores()
        self.max_fps, self.min_fps = max_fps, min_fps
        self.tracker_options = dict(tracker_options or {})
        self.on_event = on_event
        self._slots: dict[str, tuple[int, bytes]] = {}
        self._arrived: dict[str, float] = {}
        self._sent: dict[str, int] = {}
        self._streams: dict[str, LiveStream] = {}
        self._connections: dict[str, Connection] = {}  # in the order they connected
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # frames of connections no worker serves (tests)
        self._wakes = [threading.Condition(self._lock) for _ in range(self.workers)]
        self._busy: list[str | None] = [None] * self.workers  # the connection each worker is answering
        self._twins: list | None = None
        self._spec = processes
        self._processes: list[LiveProcess] | None = None
        self.capacity = Capacity(self.workers, capacity_fps)
        self.capacity_fps = self.capacity.step()  # the last capacity worked out
        self._allocated_at = 0.0
        self._errors: dict[str, tuple[int, int]] = {}  # sid -> (second, error replies in it)
        self.processed = 0
        self.dropped = 0
        self.shed = 0  # bad frames not answered (flood)

    # --- connections -------------------------------------------------------------------

    def connect(self, sid: str, want_fps: float | None = None) -> None:
        """A new connection: put it on the worker with the fewest, and give everyone their rates."""
        self.start()
        with self._lock:
            counts = self._counts()
            worker = counts.index(min(counts))
            want = min(self.max_fps, want_fps) if want_fps else self.max_fps
            self._connections[sid] = Connection(sid, worker, want, want)
        if self._processes is not None:
            stream = RemoteStream(self._processes[worker], sid, self.service, self.on_event)
        else:
            stream = LiveStream(self.service, self.archive, unknown_frames=self.unknown_frames,
                                max_frame_bytes=self.max_bytes, recognizer=self._twins[worker],
                                tracker_options=self.tracker_options, on_event=self.on_event)
        with self._lock:
            if sid in self._connections:
                self._sent[sid] = 0
                self._streams[sid] = stream
            rates = self._allocate()
        self._send_rates(rates)

    def disconnect(self, sid: str) -> None:
        with self._lock:
            self._sent.pop(sid, None)
            self._slots.pop(sid, None)
            self._arrived.pop(sid, None)
            self._connections.pop(sid, None)
            stream = self._streams.pop(sid, None)
            self._rebalance()
            rates = self._allocate()
        if stream is not None:
            stream.close()  # waits for the worker if it is still on this stream's last frame
        self._send_rates(rates)

    def worker_of(self, sid: str) -> int | None:
        connection = self._connections.get(sid)
        return None if connection is None else connection.worker

    def rate_of(self, sid: str) -> tuple[float, str | None] | None:
        """(fps, reason) the connection is given, or None when it is not connected."""
        connection = self._connections.get(sid)
        return None if connection is None else (connection.fps, connection.reason)

    def _counts(self) -> list[int]:
        counts = [0] * self.workers
        for connection in self._connections.values():
            counts[connection.worker] += 1
        return counts

    def _rebalance(self) -> None:
        """Move connections from the busiest worker to the idlest until no worker has two more. Under _lock.

        Streams in worker processes stay where they are (their tracks live there); new ones go to the idlest.
        """
        while self._processes is None:
            counts = self._counts()
            most, least = counts.index(max(counts)), counts.index(min(counts))
            if counts[most] - counts[least] <= 1:
                return
            movable = [c for c in self._connections.values()
                       if c.worker == most and self._busy[most] != c.sid and c.sid in self._streams]
            if not movable:
                return
            connection = movable[-1]  # the newest
            connection.worker = least
            self._streams[connection.sid].move_to(self._twins[least])
            self._wakes[least].notify()

    # --- frames ------------------------------------------------------------------------

    def put(self, sid: str, data: object) -> tuple[int, str | None]:
        """Count a received frame; keep it as the connection's newest, or say why not.

        :return: (frame_id, error message or None). None also for a bad frame
            shed in a flood (past MAX_ERROR_REPLIES_PER_S this second): neither kept nor answered.
        """
        with self._lock:
            frame_id = self._sent.get(sid, 0)
            self._sent[sid] = frame_id + 1
            error = None
            if not isinstance(data, (bytes, bytearray)):
                error = "a frame must be JPEG bytes sent as a binary payload"
            elif len(data) > self.max_bytes:
                error = f"the frame is too large ({len(data) / 1e6:.1f} MB; the limit is {self.max_bytes / 1e6:.1f} MB)"
            if error:
                # A flood of bad frames is shed: past the budget it gets no answer (the sender's problem, not ours).
                return frame_id, (error if self._error_budget(sid) else None)
            if sid in self._slots:
                self.dropped += 1
            self._slots[sid] = (frame_id, bytes(data))  # replaces an older frame, keeping its turn
            self._arrived[sid] = time.monotonic()
            connection = self._connections.get(sid)
            (self._wake if connection is None else self._wakes[connection.worker]).notify()
        return frame_id, None

    def _error_budget(self, sid: str) -> bool:
        """Whether sid may get another error reply this second (at most MAX_ERROR_REPLIES_PER_S). Under _lock."""
        second = int(time.monotonic())
        start, count = self._errors.get(sid, (second, 0))
        if start != second:
            count = 0
            if len(self._errors) > len(self._sent):  # forget connections that are gone
                self._errors = {key: value for key, value in self._errors.items() if key in self._sent}
        self._errors[sid] = (second, count + 1)
        if count >= MAX_ERROR_REPLIES_PER_S:
            self.shed += 1
            return False
        return True

    def _take(self) -> tuple[str, int, bytes, LiveStream | None]:
        """Wait for a frame of any connection; they take turns in the order their slots were filled."""
        return self._claim(None)[:4]

    def _claim(self, worker: int | None) -> tuple[str, int, bytes, LiveStream | None, float]:
        """Wait for the next frame this worker may take (None: any connection's, rates aside).

        :return: (sid, frame_id, JPEG bytes, its stream or None when not connected, arrival time).
        """
        wake = self._wake if worker is None else self._wakes[worker]
        with self._lock:
            while True:
                now, wait = time.monotonic(), None
                for sid in self._slots:
                    connection = self._connections.get(sid)
                    if worker is not None and (connection is None or connection.worker != worker):
                        continue
                    if connection is not None and worker is not None:
                        pause = connection.wait_s(now)
                        if pause > 0:  # over its rate (or waiting for a place: then its frame stays in the slot)
                            if pause < math.inf:
                                wait = min(wait or math.inf, pause)
                            continue
                        connection.tokens -= 1.0
                    frame_id, data = self._slots.pop(sid)
                    if worker is not None:
                        self._busy[worker] = sid
                    return sid, frame_id, data, self._streams.get(sid), self._arrived.pop(sid, now)
                wake.wait(wait)

    # --- the workers -------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (and their processes, which load their models now); the first stream does otherwise."""
        with self._lock:
            if self._twins is not None or self._processes is not None:
                return
            if self._spec is not None:
                self._processes = [LiveProcess(self._spec, i, self.service.head_version) for i in range(self.workers)]
            else:
                self._twins = [self.service.live_twin(i) for i in range(self.workers)]
        for index in range(self.workers):
            self.server.start_background_task(self._run, index)

    @property
    def worker_pids(self) -> list[int]:
        return [process.pid for process in self._processes or []]

    def _run(self, index: int) -> None:
        if self._twins is not None:
            try:  # load this worker's twin before its first frame, so that frame is not slow
                self.service.wait_ready()
                self._twins[index].load()
            except Exception:  # answered per frame (ModelNotReady) by LiveStream.answer
                log.exception("live worker %d could not load its model", index)
        while True:
            sid, frame_id, data, stream, arrived = self._claim(index)
            if stream is not None:
                started = time.perf_counter()
                event, payload = stream.answer(frame_id, data, arrived)
                self.server.emit(event, payload, to=sid, namespace=NAMESPACE)
                connection = self._connections.get(sid)
                if connection is not None and connection.counts_toward_capacity(time.monotonic()):
                    self.capacity.answered(time.perf_counter() - started)
                self.processed += 1
            with self._lock:
                self._busy[index] = None
                due = time.monotonic() - self._allocated_at >= RATE_EVERY_S
                rates = self._allocate(measure=True) if due else []
            self._send_rates(rates)

    # --- admission -----------------------------------------------------------------------

    def _allocate(self, measure: bool = False) -> list[tuple[str, dict]]:
        """Work out every connection's rate (measure: the capacity first); returns the `rate` events to send.

        Under _lock.
        """
        if measure:
            self._allocated_at = time.monotonic()
            self.capacity_fps = self.capacity.step(self._allocated_at)
        connections = list(self._connections.values())
        rates = allocate([c.want for c in connections], self.capacity_fps, self.min_fps,
                         [c.fps > 0 and c.sent is not None for c in connections])
        events = []
        for connection, fps in zip(connections, rates):
            reason = connection.reason_for(fps, len(connections))
            if connection.needs_event(fps, reason):
                connection.sent = (fps, reason)
                events.append((connection.sid, {"fps": round(fps, 1), "reason": reason}))
            if fps > connection.fps:
                self._wakes[connection.worker].notify()  # it may take frames sooner now
            connection.fps, connection.reason = fps, reason
        return events

    def _send_rates(self, rates: list[tuple[str, dict]]) -> None:
        for sid, payload in rates:
            self.server.emit("rate", payload, to=sid, namespace=NAMESPACE)


def _live() -> LiveFrames:
    return current_app.extensions["live"]


def _emitted_by_client() -> bool:
    """True when this connect/disconnect handler runs for an event the client emitted under that name.

    A real connect or disconnect runs while the connection is still being set up or taken
    down; an event can only arrive on a connection that is fully up.
    """
    return _live().server.manager.is_connected(request.sid, NAMESPACE)


def _wanted_fps(auth) -> float | None:
    """The frame rate the client asked for in its Socket.IO auth ({"fps": n}), when it is a sensible number."""
    value = auth.get("fps") if isinstance(auth, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


@socketio.on("connect", namespace=NAMESPACE)
def on_connect(auth=None):
    if _emitted_by_client():  # a client emitting "connect" must not reset its own stream
        log.warning("ignored a 'connect' event emitted by live client %s", request.sid)
        return
    if not logged_in():  # the handshake's session cookie: only the logged-in admin may stream
        raise ConnectionRefusedError("please log in")
    _no_delay(request.environ)
    _live().connect(request.sid, _wanted_fps(auth))


def _no_delay(environ: dict) -> None:
    """Send small WebSocket messages at once: with Nagle's algorithm on, an answer
    can wait for the peer's delayed ACK (about 40 ms on Linux)."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


@socketio.on("disconnect", namespace=NAMESPACE)
def on_disconnect(reason=None):
    if _emitted_by_client():  # nor end it
        log.warning("ignored a 'disconnect' event emitted by live client %s", request.sid)
        return
    _live().disconnect(request.sid)


@socketio.on("frame", namespace=NAMESPACE)
def on_frame(data=None, *extra):
    frame_id, error = _live().put(request.sid, data)
    if error:
        emit("error", {"error": error, "frame_id": frame_id})


def init_app(app: Flask, server: python_socketio.Server) -> None:
    """Give the app its live-frame state, bound to the Socket.IO server init_app just made."""
    service = app.extensions["faces"]
    config = app.config
    archive = Archive(
        config["DATABASE"], config["DATA_DIR"], service.backbone,
        inbox_days=config["INBOX_RETENTION_DAYS"], history_days=config["HISTORY_RETENTION_DAYS"],
    )
    tracker_options = {
        "detect_every_s": config["LIVE_DETECT_EVERY_S"],
        "detect_still_s": config["LIVE_DETECT_STILL_S"],
        "reembed_s": config["LIVE_REEMBED_S"],
        "full_face_px": config["LIVE_FULL_FACE_PX"],
        "search_every_s": config["LIVE_SEARCH_EVERY_S"],
    }
    # No sink (MQTT, webhooks) configured: no track events are made on the live path at all.
    on_event = app.extensions["notifier"].publish if app.extensions["notifier"].workers else None
    app.extensions["live"] = LiveFrames(
        service, server, config["MAX_FRAME_BYTES"], archive, config["LIVE_UNKNOWN_FRAMES"],
        workers=config["LIVE_WORKERS"], max_fps=config["LIVE_MAX_FPS"], min_fps=config["LIVE_MIN_FPS"],
        capacity_fps=config["LIVE_CAPACITY_FPS"], tracker_options=tracker_options, on_event=on_event,
        processes=_worker_spec(config, tracker_options, on_event is not None),
    )


def _worker_spec(config, tracker_options: dict, events: bool) -> WorkerSpec | None:
    """What live worker processes build (FACES_LIVE_POOL=processes), or None for threads.

    An app given a RECOGNIZER object (tests on the fakes) runs threads: a child builds its model from the settings.
    :raises ValueError: FACES_LIVE_POOL is neither.
    """
    pool = config["LIVE_POOL"]
    if pool not in ("processes", "threads"):
        raise ValueError(f"FACES_LIVE_POOL={pool!r}: must be processes or threads")
    if pool == "threads" or config.get("RECOGNIZER") is not None:
        return None
    plain = {setting.key: config[setting.key] for setting in settings.SETTINGS}
    plain.update(DATABASE=config["DATABASE"], DATA_DIR=str(config["DATA_DIR"]),
                 MAX_FRAME_BYTES=config["MAX_FRAME_BYTES"])
    return WorkerSpec(plain, dict(tracker_options), events)
