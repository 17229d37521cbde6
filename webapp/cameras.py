"""Cameras on the server: a reader thread per enabled camera keeps its newest frame, an analyser feeds
the same live pipeline as the browsers' streams.

Per camera (`CameraFeed`):

- the **reader** opens the source (webapp.camera_sources) and grabs every frame the stream sends, so
  nothing piles up in FFmpeg's buffers; only when the analyser is ready for one is a frame decoded into
  the slot, which holds the newest frame and nothing else (no queue). A video file is played at its
  own rate and starts over at its end. When the stream drops, or opening fails, the camera is
  offline with the reason, and the reader tries again after CAMERA_RETRY_MIN_S, doubling up to
  CAMERA_RETRY_MAX_S. OpenCV bounds each open and read by CAMERA_TIMEOUT_S; a reader stuck longer
  than that anyway (a backend that ignores it) is left behind by the manager's watchdog and a new
  one takes over.
- the **analyser** takes a frame at the camera's fps and hands it to a `LiveStream`
  (webapp.live_stream: track, decide, record sightings and inbox faces) on a recognizer twin of
  the camera's own, so no dlib object is shared with a browser's worker. Its newest results (frame
  and `faces` answer, the live event's shape) are kept for the Live page; a reconnect starts a new
  LiveStream, so the tracks of a dropped stream end in History.

webapp.camera_manager starts, changes and stops the feeds as the `cameras` table changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from numpy.typing import NDArray

from webapp.camera_sources import diagnose, open_capture, pass_jpeg_through, picture
from webapp.cameras_store import Camera, Source, scrub
from webapp.live_stream import LiveStream
from webapp.payloads import faces_json
from webapp.service import ModelNotReady

log = logging.getLogger(__name__)

# Analysed frames kept per camera, so the page can fetch the picture its `faces` answer was made on.
KEPT_RESULTS = 3
# The analysed fps is counted over this many seconds.
FPS_WINDOW_S = 5.0
# The watchdog looks this often, and calls a reader stuck when it gave no sign of life for this many timeouts.
WATCHDOG_EVERY_S = 1.0
STUCK_TIMEOUTS = 3.0
# A video file whose rate OpenCV cannot tell is played at this many frames a second.
FILE_FALLBACK_FPS = 25.0
JPEG_QUALITY = 80
# A stream whose JPEG frames fail to decode this many times in a row is read again with FFmpeg decoding them.
UNDECODABLE_JPEGS = 3


@dataclass(frozen=True)
class FeedOptions:
    """How a feed reads: fps analysed, frame width, timeouts and back-off (seconds), from the settings."""

    fps: float
    frame_width: int
    timeout_s: float
    retry_min_s: float
    retry_max_s: float


@dataclass
class Analysed:
    """One analysed frame: its picture (BGR uint8 [H, W, 3]) and its `faces` answer."""

    frame_id: int
    picture: NDArray[np.uint8]
    answer: dict
    at: float  # time.time()
    _jpeg: bytes | None = field(default=None, repr=False)

    def jpeg(self) -> bytes:
        """The picture as JPEG, encoded on first ask (nobody watching costs nothing)."""
        if self._jpeg is None:
            ok, encoded = cv2.imencode(".jpg", self.picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            self._jpeg = encoded.tobytes() if ok else b""
        return self._jpeg


class CameraFeed:
    """One camera's reader and analyser threads, its newest frame and results, and its state.

    :param make_stream: a new LiveStream for this camera (called at start and after each reconnect).
    """

    def __init__(self, camera: Camera, source: Source, options: FeedOptions, make_stream: Callable[[], LiveStream]):
        self.camera, self.source, self.options = camera, source, options
        self.make_stream = make_stream
        self.state, self.error = "connecting", None
        self.size: tuple[int, int] | None = None  # (width, height) analysed
        self._lock = threading.Lock()
        self._frame_ready = threading.Condition(self._lock)
        self._wanted = threading.Event()  # the analyser is ready for a frame
        self._stopping = threading.Event()
        self._slot: tuple[NDArray[np.uint8], float, int] | None = None  # (BGR frame, arrival, connection number)
        self._results: deque[Analysed] = deque(maxlen=KEPT_RESULTS)
        self._analysed_at: deque[float] = deque()
        self._generation = 0  # which reader is the current one (the watchdog may leave one behind)
        self._alive_at = time.monotonic()  # the current reader's last sign of life
        self._stuck_reader: threading.Thread | None = None
        self._pass_jpeg = True  # MJPEG frames are kept as JPEG until analysed (camera_sources.pass_jpeg_through)
        self._reader: threading.Thread | None = None
        self._analyser: threading.Thread | None = None
        self.on_result: Callable[[CameraFeed, Analysed], None] | None = None  # after each analysed frame

    @property
    def label(self) -> str:
        return f"camera {self.camera.id} ({self.camera.name})"

    # --- starting and stopping ----------------------------------------------------------------

    def start(self) -> None:
        self._reader = self._start_reader()
        self._analyser = threading.Thread(target=self._analyse_loop, name=f"camera-{self.camera.id}-analyse",
                                          daemon=True)
        self._analyser.start()

    def _start_reader(self) -> threading.Thread:
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._alive_at = time.monotonic()
        thread = threading.Thread(target=self._read_loop, args=(generation,), daemon=True,
                                  name=f"camera-{self.camera.id}-read-{generation}")
        thread.start()
        return thread

    def stop(self, wait_s: float = 0.5) -> None:
        """Stop both threads, waiting up to wait_s in all: the analyser writes what its stream saw, the reader
        closes the stream. One still opening or reading (up to CAMERA_TIMEOUT_S) ends by itself afterwards."""
        self._stopping.set()
        with self._lock:
            self._generation += 1
            self._frame_ready.notify_all()
        deadline = time.monotonic() + wait_s
        for thread in (self._analyser, self._reader):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def configure(self, camera: Camera, options: FeedOptions) -> None:
        """A changed name, fps or smallest face, taken from the next frame on (the stream stays open)."""
        self.camera, self.options = camera, options

    def watch(self, now: float) -> None:
        """The watchdog's look: a reader silent for STUCK_TIMEOUTS timeouts is left behind and replaced.

        A stuck thread cannot be killed; while the one left behind is still stuck, no other is started.
        """
        limit = STUCK_TIMEOUTS * self.options.timeout_s
        if self._stopping.is_set() or now - self._alive_at < limit:
            return
        if self._stuck_reader is not None and self._stuck_reader.is_alive():
            self._set_state("offline", f"the camera has given nothing for {now - self._alive_at:.0f} s and its "
                                       "reader is stuck; it is replaced once that returns")
            return
        log.warning("%s: no sign of life for %.0f s; starting a new reader", self.label, now - self._alive_at)
        self._stuck_reader = self._reader
        self._set_state("connecting", f"the stream stalled (nothing for {limit:.0f} s); reconnecting")
        self._reader = self._start_reader()

    # --- the reader ----------------------------------------------------------------------

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stopping.is_set()

    def _alive(self, generation: int) -> None:
        if generation == self._generation:
            self._alive_at = time.monotonic()

    def _set_state(self, state: str, error: str | None = None, generation: int | None = None) -> None:
        with self._lock:
            if generation is not None and generation != self._generation:
                return  # a reader left behind says nothing any more
            if error is not None:
                error = scrub(error, self.camera.url)
            if (state, error) != (self.state, self.error) and state != "online":
                log.info("%s: %s%s", self.label, state, f" ({error})" if error else "")
            self.state, self.error = state, error

    def _pause(self, seconds: float, generation: int) -> bool:
        """Wait, showing signs of life; False when the feed stops or this reader is no longer the current one."""
        deadline = time.monotonic() + seconds
        while self._current(generation):
            self._alive(generation)
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._stopping.wait(min(left, WATCHDOG_EVERY_S))
        return False

    def _read_loop(self, generation: int) -> None:
        retry = self.options.retry_min_s
        connection = 0
        while self._current(generation):
            self._set_state("connecting", self.error, generation)
            self._alive(generation)
            capture = open_capture(self.source, self.options.timeout_s)
            if not capture.isOpened():
                capture.release()
                reason = diagnose(self.source, self.camera.url, self.options.timeout_s)
                self._set_state("offline", f"{reason}; trying again in {retry:g} s", generation)
            else:
                connection += 1
                try:
                    frames, reason = self._read_frames(capture, generation, connection)
                finally:
                    capture.release()
                if reason is None:
                    return
                if frames:
                    retry = self.options.retry_min_s  # it worked for a while: back to the shortest wait
                self._set_state("offline", f"{reason}; reconnecting in {retry:g} s", generation)
            if not self._pause(retry, generation):
                return
            retry = min(retry * 2, self.options.retry_max_s)

    def _read_frames(self, capture: cv2.VideoCapture, generation: int, connection: int) -> tuple[int, str | None]:
        """Grab frames until the stream drops or the reader is stopped: (frames grabbed, why it dropped or None)."""
        player = FilePlayer(capture) if self.source.kind == "file" else None
        jpeg = self._pass_jpeg and pass_jpeg_through(capture)
        frames = undecodable = 0
        while self._current(generation):
            grabbed = capture.grab()
            self._alive(generation)
            if not grabbed and player is not None and frames and player.rewind():
                continue  # a video file starts over at its end
            if not grabbed:
                if frames:
                    return frames, f"the stream stopped after {frames} frames (no frame for {self.options.timeout_s:g} s)"
                return frames, "the stream opened but sent no frame"
            frames += 1
            if frames == 1:
                self._set_state("online", None, generation)
                log.info("%s: online", self.label)
            if player is not None and not player.wait(self._stopping):
                break
            if self._wanted.is_set():
                taken = picture(capture, jpeg)
                if taken is not None:
                    self._put(taken, connection)
                    undecodable = 0
                elif jpeg and (undecodable := undecodable + 1) >= UNDECODABLE_JPEGS:
                    self._pass_jpeg = False  # from the next connection on, FFmpeg decodes them
                    return frames, "its JPEG frames could not be decoded"
        return frames, None

    def _put(self, picture: NDArray[np.uint8], connection: int) -> None:
        with self._lock:
            self._wanted.clear()
            self._slot = (picture, time.monotonic(), connection)
            self._frame_ready.notify_all()

    # --- the analyser ---------------------------------------------------------------------

    def _take(self) -> tuple[NDArray[np.uint8], float, int] | None:
        """Ask the reader for a frame and wait for it (None: the feed stops)."""
        self._wanted.set()
        with self._lock:
            while self._slot is None and not self._stopping.is_set():
                self._frame_ready.wait(WATCHDOG_EVERY_S)
            taken, self._slot = self._slot, None
        return None if self._stopping.is_set() else taken

    def _analyse_loop(self) -> None:
        stream, connection, frame_id, due = None, None, 0, 0.0
        try:
            while not self._stopping.is_set():
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    break
                taken = self._take()
                if taken is None:
                    break
                picture, arrived, from_connection = taken
                due = max(due + 1.0 / self.options.fps, time.monotonic())
                if from_connection != connection:  # reconnected: the old tracks end
                    if stream is not None:
                        stream.close()
                    stream, connection = self.make_stream(), from_connection
                self._publish(self._analyse(stream, frame_id, picture, arrived))
                frame_id += 1
        finally:
            if stream is not None:
                stream.close()

    def _analyse(self, stream: LiveStream, frame_id: int, picture: NDArray[np.uint8], arrived: float) -> Analysed:
        started = time.perf_counter()
        picture = fit_width(picture, self.options.frame_width)
        faces, problem = [], None
        try:
            faces = stream.process(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), arrived)
        except ModelNotReady as exc:
            problem = str(exc)
        except Exception:  # the camera must survive anything one frame does
            log.exception("%s: frame %d failed", self.label, frame_id)
            problem = "the server could not process a frame"
        answer = faces_json(frame_id, picture.shape, faces, started)
        if problem:
            answer["error"] = problem
        return Analysed(frame_id, picture, answer, time.time())

    def _publish(self, result: Analysed) -> None:
        now = time.monotonic()
        with self._lock:
            self._results.append(result)
            self.size = (result.picture.shape[1], result.picture.shape[0])
            self._analysed_at.append(now)
            while self._analysed_at and self._analysed_at[0] < now - FPS_WINDOW_S:
                self._analysed_at.popleft()
        if self.on_result is not None:
            self.on_result(self, result)

    # --- what the pages see ---------------------------------------------------------------

    def latest(self, frame_id: int | None = None) -> Analysed | None:
        """The newest analysed frame, or the kept one with that frame_id (else the newest)."""
        with self._lock:
            results = list(self._results)
        wanted = [r for r in results if r.frame_id == frame_id]
        return wanted[0] if wanted else (results[-1] if results else None)

    def analysed_fps(self) -> float:
        now = time.monotonic()
        with self._lock:
            times = [t for t in self._analysed_at if t >= now - FPS_WINDOW_S]
        if len(times) < 2 or now - times[-1] > max(2.0, 3.0 / self.options.fps):
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def status(self) -> dict:
        latest = self.latest()
        return {
            "state": self.state,
            "error": self.error,
            "fps": round(self.analysed_fps(), 1),
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
            "frames": latest.frame_id + 1 if latest else 0,
            "last_frame_at": latest.at if latest else None,
        }


class FilePlayer:
    """Plays a video file at its own rate: waits until each grabbed frame is due, and rewinds at the end."""

    def __init__(self, capture: cv2.VideoCapture):
        self.capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.period = 1.0 / (fps if 1.0 <= fps <= 240.0 else FILE_FALLBACK_FPS)
        self.next_at = time.monotonic()

    def wait(self, stopping: threading.Event) -> bool:
        """Sleep until the frame just grabbed is due; False when stopping was set meanwhile."""
        self.next_at = max(self.next_at + self.period, time.monotonic() - self.period)
        return not stopping.wait(max(0.0, self.next_at - time.monotonic()))

    def rewind(self) -> bool:
        return bool(self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)) and self.capture.grab()


def fit_width(picture: NDArray[np.uint8], width: int) -> NDArray[np.uint8]:
    """The picture scaled down (never up) to `width` pixels wide, like the browsers scale their frames."""
    height, current = picture.shape[:2]
    if current <= width or width <= 0:
        return picture
    return cv2.resize(picture, (width, max(1, round(height * width / current))), interpolation=cv2.INTER_AREA)


def options_for(camera: Camera, defaults: FeedOptions) -> FeedOptions:
    return replace(defaults, fps=camera.fps or defaults.fps)

