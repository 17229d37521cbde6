"""Socket.IO namespace /live: browsers send JPEG frames, the server answers `faces`.

Per connection there is one slot holding the newest frame not yet processed; a
newer frame replaces it (the older one is dropped and its frame_id never
answered). One worker thread takes the slots in turn, hands each frame to its
connection's LiveStream (webapp.live_stream: decode, track, decide, record)
and emits the answer to that connection only. Handlers only validate and
store, so a slow model never holds up the socket; nothing queues.

Contract: the client emits `frame` with JPEG bytes as a binary payload. The
server emits `faces` {frame_id, width, height, faces: [{box, name, person_id,
similarity, margin}], ms} or `error` {error, frame_id}. frame_id counts the
frames this connection sent, from 0.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import socketio as python_socketio
from flask import Flask, current_app, request
from flask_socketio import emit

from webapp.auth import logged_in
from webapp.extensions import socketio
from webapp.inbox_store import Archive
from webapp.live_stream import LiveStream
from webapp.service import FaceService

log = logging.getLogger(__name__)

NAMESPACE = "/live"
# Bad frames get an `error` event each, up to this many per connection and second; the rest are shed unanswered.
MAX_ERROR_REPLIES_PER_S = 10


class LiveFrames:
    """The newest unprocessed frame of each connection, and the one worker that answers them.

    :param service: the app's FaceService.
    :param server: the python-socketio Server of this app (to emit from the worker).
    :param max_bytes: larger frames are refused with an error event.
    :param archive: where each connection's sightings and unknown faces are written (None: not kept).
    :param unknown_frames: see webapp.live_stream.Recorder.
    """

    def __init__(self, service: FaceService, server: python_socketio.Server, max_bytes: int,
                 archive: Archive | None = None, unknown_frames: int = 5):
        self.service = service
        self.archive = archive
        self.unknown_frames = unknown_frames
        self.server = server
        self.max_bytes = max_bytes
        self._slots: dict[str, tuple[int, bytes]] = {}
        self._sent: dict[str, int] = {}
        self._streams: dict[str, LiveStream] = {}
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self._errors: dict[str, tuple[int, int]] = {}  # sid -> (second, error replies in it)
        self.processed = 0
        self.dropped = 0
        self.shed = 0  # bad frames not answered (flood)

    def connect(self, sid: str) -> None:
        stream = LiveStream(self.service, self.archive, unknown_frames=self.unknown_frames,
                            max_frame_bytes=self.max_bytes)
        with self._wake:
            self._sent[sid] = 0
            self._streams[sid] = stream
            if self._worker is None:
                self._worker = self.server.start_background_task(self._run)

    def disconnect(self, sid: str) -> None:
        with self._wake:
            self._sent.pop(sid, None)
            self._slots.pop(sid, None)
            stream = self._streams.pop(sid, None)
        if stream is not None:
            stream.close()  # waits for the worker if it is still on this stream's last frame

    def put(self, sid: str, data: object) -> tuple[int, str | None]:
        """Count a received frame; keep it as the connection's newest, or say why not.

        :return: (frame_id, error message or None). None also for a bad frame
            shed in a flood (past MAX_ERROR_REPLIES_PER_S this second): neither kept nor answered.
        """
        with self._wake:
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
            self._wake.notify()
        return frame_id, None

    def _error_budget(self, sid: str) -> bool:
        """Whether sid may get another error reply this second (at most MAX_ERROR_REPLIES_PER_S). Under _wake."""
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
        """Wait for a frame; connections take turns in the order their slots were filled."""
        with self._wake:
            while not self._slots:
                self._wake.wait()
            sid = next(iter(self._slots))
            frame_id, data = self._slots.pop(sid)
            return sid, frame_id, data, self._streams.get(sid)

    def _run(self) -> None:
        while True:
            sid, frame_id, data, stream = self._take()
            if stream is None:  # the connection ended after sending it
                continue
            event, payload = stream.answer(frame_id, data)
            self.processed += 1
            self.server.emit(event, payload, to=sid, namespace=NAMESPACE)


def _live() -> LiveFrames:
    return current_app.extensions["live"]


@socketio.on("connect", namespace=NAMESPACE)
def on_connect(auth=None):
    if not logged_in():  # the handshake's session cookie: only the logged-in admin may stream
        raise ConnectionRefusedError("please log in")
    _no_delay(request.environ)
    _live().connect(request.sid)


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
    _live().disconnect(request.sid)


@socketio.on("frame", namespace=NAMESPACE)
def on_frame(data=None, *extra):
    frame_id, error = _live().put(request.sid, data)
    if error:
        emit("error", {"error": error, "frame_id": frame_id})


def init_app(app: Flask, server: python_socketio.Server) -> None:
    """Give the app its live-frame state, bound to the Socket.IO server init_app just made."""
    service = app.extensions["faces"]
    archive = Archive(
        app.config["DATABASE"], app.config["DATA_DIR"], service.backbone,
        inbox_days=app.config["INBOX_RETENTION_DAYS"], history_days=app.config["HISTORY_RETENTION_DAYS"],
    )
    app.extensions["live"] = LiveFrames(service, server, app.config["MAX_FRAME_BYTES"], archive,
                                        app.config["LIVE_UNKNOWN_FRAMES"])
