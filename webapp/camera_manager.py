"""Every enabled camera's feed (webapp.cameras), started, changed and stopped as the `cameras` table changes.

Each camera gets a recognizer twin of its own (FaceService.live_twin, at indices after the browsers'
workers), so its analyser never shares dlib objects with another thread. One watchdog thread looks
at every feed's reader each second (CameraFeed.watch).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from model.tracking import FULL_RATE_FPS
from webapp import db
from webapp.cameras import WATCHDOG_EVERY_S, CameraFeed, FeedOptions, options_for
from webapp.cameras_store import Camera, CameraRefused, file_dirs, list_cameras, parse_source, scrub
from webapp.live_stream import LiveStream

log = logging.getLogger(__name__)

EXTENSION = "cameras"
# Managers of this process's apps, stopped at exit so every stream is closed and its sightings written.
_running: weakref.WeakSet = weakref.WeakSet()
# At exit and teardown each feed is given this long to write its sightings and close its stream.
STOP_WAIT_S = 5.0


class CameraManager:
    """Every enabled camera's feed, started, changed and stopped as the `cameras` table changes.

    :param service: the app's FaceService; archive: where sightings and inbox faces go (the browsers' own).
    :param defaults: the settings' FeedOptions.
    :param first_twin: the first live-twin index left free by the browsers' workers (FaceService.live_twin):
        each camera gets a twin of its own from there on, so it never shares dlib objects with another thread.
    :param min_recognise_px: smallest face recognised for a camera that sets none.
    :param allowed_dirs: folders whose video files may be cameras (webapp.cameras_store.file_dirs).
    :param stream_options: LiveStream keyword arguments (unknown_frames, tracker_options, on_event).
    """

    def __init__(self, service, archive, defaults: FeedOptions, *, first_twin: int, min_recognise_px: int,
                 allowed_dirs: list[Path], stream_options: dict | None = None,
                 announce: Callable[[str], None] | None = None):
        self.service, self.archive, self.defaults = service, archive, defaults
        self.announce = announce  # tells the home-automation sinks a camera exists (Notifier.announce_camera)
        self.allowed_dirs = allowed_dirs
        self.first_twin, self.min_recognise_px = first_twin, min_recognise_px
        self.stream_options = dict(stream_options or {})
        self._feeds: dict[int, CameraFeed] = {}
        self._refused: dict[int, str] = {}  # camera id -> why its stored source is refused now
        self._twins: dict[int, int] = {}  # camera id -> its twin's index
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self, cameras: list[Camera]) -> None:
        """Start a feed for each enabled camera."""
        for camera in cameras:
            self.sync(camera)

    def sync(self, camera: Camera) -> None:
        """Bring a camera's feed in line with its row: started, restarted (new URL), changed in place, or stopped."""
        with self._lock:
            feed = self._feeds.get(camera.id)
        if feed is not None and camera.enabled and camera.url == feed.camera.url:
            feed.configure(camera, options_for(camera, self.defaults))
            self._twin(camera.id).min_recognise_px = camera.min_face_px or self.min_recognise_px
            return
        self.remove(camera.id)
        if not camera.enabled or self._stopping.is_set():
            return
        try:
            source = parse_source(camera.url, self.allowed_dirs)
        except CameraRefused as exc:  # e.g. its file's folder is no longer allowed: shown as its state
            self._refused[camera.id] = scrub(str(exc), camera.url)
            log.warning("camera %d (%s) not started: %s", camera.id, camera.name, self._refused[camera.id])
            return
        feed = CameraFeed(camera, source, options_for(camera, self.defaults), lambda: self._new_stream(feed))
        with self._lock:
            self._feeds[camera.id] = feed
        feed.start()
        self._start_watchdog()

    def remove(self, camera_id: int) -> None:
        """Stop a camera's feed (its sightings are written); its twin is kept for the next camera."""
        with self._lock:
            feed = self._feeds.pop(camera_id, None)
            self._refused.pop(camera_id, None)
        if feed is not None:
            feed.stop()

    def stop(self) -> None:
        """Stop every feed and the watchdog (app teardown, tests, process exit)."""
        self._stopping.set()
        with self._lock:
            feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:  # all told first, then waited for: a slow one does not hold up the others
            feed.stop(wait_s=0)
        for feed in feeds:
            feed.stop(wait_s=STOP_WAIT_S)
        if self._watchdog is not None:
            self._watchdog.join(2 * WATCHDOG_EVERY_S)

    def feed(self, camera_id: int) -> CameraFeed | None:
        with self._lock:
            return self._feeds.get(camera_id)

    def status(self, camera: Camera) -> dict:
        feed = self.feed(camera.id)
        if feed is not None:
            return feed.status()
        state = "offline" if camera.enabled else "disabled"
        error = self._refused.get(camera.id, "not started") if camera.enabled else None
        return {"state": state, "error": error, "fps": 0.0, "width": None, "height": None, "frames": 0,
                "last_frame_at": None}

    def _twin(self, camera_id: int):
        """The camera's own live twin, loaded; indices of removed cameras are handed out again."""
        with self._lock:
            if camera_id not in self._twins:
                taken = {index for cid, index in self._twins.items() if cid in self._feeds}
                self._twins = {cid: index for cid, index in self._twins.items() if cid in self._feeds}
                self._twins[camera_id] = next(i for i in range(self.first_twin, self.first_twin + len(taken) + 1)
                                              if i not in taken)
            index = self._twins[camera_id]
        return self.service.live_twin(index)

    def _new_stream(self, feed: CameraFeed) -> LiveStream:
        twin = self._twin(feed.camera.id)
        twin.min_recognise_px = feed.camera.min_face_px or self.min_recognise_px
        try:  # load before the first frame, so that frame is not slow; a failure is answered per frame
            self.service.wait_ready()
            twin.load()
        except Exception as exc:
            log.warning("%s: the model is not ready: %s", feed.label, exc)
        if self.announce is not None:
            self.announce(feed.camera.name)  # Home Assistant lists it before its first event
        # A camera analysed at a few frames a second is slow by design: its timed work keeps to its own rate.
        options = dict(self.stream_options, tracker_options={
            **self.stream_options.get("tracker_options", {}), "full_rate_fps": min(FULL_RATE_FPS, feed.options.fps)})
        return LiveStream(self.service, self.archive, recognizer=twin, camera=feed.camera.name, **options)

    def _start_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is not None:
                return
            self._watchdog = threading.Thread(target=self._watch, name="camera-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCHDOG_EVERY_S):
            with self._lock:
                feeds = list(self._feeds.values())
            for feed in feeds:
                feed.watch(time.monotonic())


def init_app(app: Flask) -> CameraManager:
    """Give the app its camera manager (after webapp.events.init_app: cameras share the live streams'
    archive and options) and start the enabled cameras. :raises ValueError: a camera setting out of range."""
    config = app.config
    defaults = FeedOptions(fps=config["CAMERA_FPS"], frame_width=config["FRAME_WIDTH"],
                           timeout_s=config["CAMERA_TIMEOUT_S"], retry_min_s=config["CAMERA_RETRY_MIN_S"],
                           retry_max_s=config["CAMERA_RETRY_MAX_S"])
    _check(defaults, config["LIVE_MAX_FPS"])
    live = app.extensions["live"]
    manager = CameraManager(
        app.extensions["faces"], live.archive, defaults, first_twin=live.workers,
        min_recognise_px=config["MIN_RECOGNISE_PX"], allowed_dirs=file_dirs(config["CAMERA_FILE_DIRS"]),
        stream_options={"unknown_frames": live.unknown_frames, "tracker_options": live.tracker_options,
                        "on_event": live.on_event},  # track events (MQTT, webhooks) name the camera
        announce=app.extensions["notifier"].announce_camera,
    )
    app.extensions[EXTENSION] = manager
    conn = db.connect(config["DATABASE"])
    try:
        cameras = list_cameras(conn)
    finally:
        conn.close()
    manager.start(cameras)
    _running.add(manager)
    return manager


def _check(defaults: FeedOptions, max_fps: float) -> None:
    if not 0 < defaults.fps <= max_fps:
        raise ValueError(f"FACES_CAMERA_FPS={defaults.fps!r}: must be above 0 and at most FACES_LIVE_MAX_FPS ({max_fps:g})")
    if not defaults.timeout_s > 0:
        raise ValueError(f"FACES_CAMERA_TIMEOUT_S={defaults.timeout_s!r}: must be more than 0 seconds")
    if not 0 < defaults.retry_min_s <= defaults.retry_max_s:
        raise ValueError("FACES_CAMERA_RETRY_MIN_S must be more than 0 and at most FACES_CAMERA_RETRY_MAX_S")


@atexit.register
def _stop_all() -> None:
    for manager in list(_running):
        manager.stop()
