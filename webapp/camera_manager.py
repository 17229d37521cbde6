"""Every enabled camera's feed (webapp.cameras), started, changed and stopped as the `cameras` table changes.

Each camera gets a recognizer twin of its own (FaceService.live_twin, at indices after the browsers'
workers), so its analyser never shares dlib objects with another thread. One watchdog thread looks
at every feed's reader each second (CameraFeed.watch).

With several processes on one store each camera is read by one of them (webapp.camera_claims): the others
answer with its frames as relayed through the data folder (webapp.camera_relay), ask for it again every
CLAIM_EVERY_S (so a dead owner's cameras are taken over), and follow the table's changes made on any process
at that pace.
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
from webapp import camera_claims, db
from webapp.camera_claims import SoleClaims
from webapp.camera_relay import Relay, Relayed
from webapp.cameras import Analysed
from webapp.cameras import WATCHDOG_EVERY_S, CameraFeed, FeedOptions, options_for
from webapp.cameras_store import Camera, CameraRefused, file_dirs, list_cameras, parse_source, scrub
from webapp.live_stream import LiveStream

log = logging.getLogger(__name__)

EXTENSION = "cameras"
# Managers of this process's apps, stopped at exit so every stream is closed and its sightings written.
_running: weakref.WeakSet = weakref.WeakSet()
# At exit and teardown each feed is given this long to write its sightings and close its stream.
STOP_WAIT_S = 5.0
# With several processes: how often one asks for the cameras another holds and reads the table again.
CLAIM_EVERY_S = 2.0
# A camera read here that analysed no frame for this long has its status alone relayed by the claim round.
RELAY_STATE_S = 1.0


class CameraManager:
    """Every enabled camera's feed, started, changed and stopped as the `cameras` table changes.

    :param service: the app's FaceService; archive: where sightings and inbox faces go (the browsers' own).
    :param defaults: the settings' FeedOptions.
    :param first_twin: the first live-twin index left free by the browsers' workers (FaceService.live_twin):
        each camera gets a twin of its own from there on, so it never shares dlib objects with another thread.
    :param min_recognise_px: smallest face recognised for a camera that sets none.
    :param allowed_dirs: folders whose video files may be cameras (webapp.cameras_store.file_dirs).
    :param stream_options: LiveStream keyword arguments (unknown_frames, tracker_options, on_event).
    :param claims: which cameras this process reads (webapp.camera_claims; default: all of them).
    :param database: the store, read every CLAIM_EVERY_S when the claims are shared.
    :param relay: hands the newest frames of the cameras read here to the other processes, and theirs here.
    """

    def __init__(self, service, archive, defaults: FeedOptions, *, first_twin: int, min_recognise_px: int,
                 allowed_dirs: list[Path], stream_options: dict | None = None,
                 announce: Callable[[str], None] | None = None, claims: SoleClaims | None = None,
                 database: str | None = None, relay: Relay | None = None):
        self.service, self.archive, self.defaults = service, archive, defaults
        self.announce = announce  # tells the home-automation sinks a camera exists (Notifier.announce_camera)
        self.allowed_dirs = allowed_dirs
        self.first_twin, self.min_recognise_px = first_twin, min_recognise_px
        self.stream_options = dict(stream_options or {})
        self._feeds: dict[int, CameraFeed] = {}
        self.claims, self.database, self.relay = claims or SoleClaims(), database, relay
        self._refused: dict[int, tuple[Camera, str]] = {}  # camera id -> (its row, why its source is refused)
        self._elsewhere: dict[int, str] = {}  # camera id -> who reads it (another process holds its claim)
        self._twins: dict[int, int] = {}  # camera id -> its twin's index
        self._lock = threading.Lock()
        # sync, remove and stop one at a time: a request's and the claim loop's at once would start two feeds
        self._changing = threading.RLock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._claimer: threading.Thread | None = None

    def start(self, cameras: list[Camera]) -> None:
        """Start a feed for each enabled camera (this process holds); with shared claims, ask again for the others
        every CLAIM_EVERY_S."""
        for camera in cameras:
            self.sync(camera)
        if self.claims.shared and self.database is not None and self._claimer is None:
            self._claimer = threading.Thread(target=_claim_loop, args=(weakref.ref(self), self._stopping),
                                             name="camera-claims", daemon=True)
            self._claimer.start()

    def sync(self, camera: Camera) -> None:
        """Bring a camera's feed in line with its row: started, restarted (new URL), changed in place, or stopped."""
        with self._changing:
            self._sync(camera)

    def _sync(self, camera: Camera) -> None:
        with self._lock:
            feed = self._feeds.get(camera.id)
        if feed is not None and camera.enabled and camera.url == feed.camera.url:
            feed.configure(camera, options_for(camera, self.defaults))
            self._twin(camera.id).min_recognise_px = camera.min_face_px or self.min_recognise_px
            return
        if not camera.enabled or self._stopping.is_set():
            self.remove(camera.id)
            return
        self._stop_feed(camera.id)  # a new URL: the claim is kept, the stream opened again
        if not self.claims.claim(camera.id):
            self._elsewhere[camera.id] = self.claims.holder(camera.id) or "another process"
            return
        if self._elsewhere.pop(camera.id, None) is not None:
            log.info("camera %d (%s): read by this process (%s) from now on", camera.id, camera.name,
                     camera_claims.whoami())
            if self.relay is not None:
                self.relay.drop(camera.id)  # the last owner's frame, if it died
        try:
            source = parse_source(camera.url, self.allowed_dirs)
        except CameraRefused as exc:  # e.g. its file's folder is no longer allowed: shown as its state
            self._refused[camera.id] = (camera, scrub(str(exc), camera.url))
            log.warning("camera %d (%s) not started: %s", camera.id, camera.name, self._refused[camera.id][1])
            return
        feed = CameraFeed(camera, source, options_for(camera, self.defaults), lambda: self._new_stream(feed))
        if self.relay is not None:
            feed.on_result = self._relay_out
        with self._lock:
            self._feeds[camera.id] = feed
        feed.start()
        self._start_watchdog()

    def remove(self, camera_id: int) -> None:
        """Stop a camera's feed (its sightings are written) and let go of its claim; its twin is kept for the
        next camera."""
        with self._changing:
            self._stop_feed(camera_id)
            self._elsewhere.pop(camera_id, None)
            self.claims.release(camera_id)

    def _stop_feed(self, camera_id: int) -> None:
        with self._lock:
            feed = self._feeds.pop(camera_id, None)
            self._refused.pop(camera_id, None)
        if feed is not None:
            feed.stop()
            if self.relay is not None:
                self.relay.drop(camera_id)

    def stop(self) -> None:
        """Stop every feed and the watchdog (app teardown, tests, process exit)."""
        with self._changing, self._lock:
            self._stopping.set()
            feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:  # all told first, then waited for: a slow one does not hold up the others
            feed.stop(wait_s=0)
        for feed in feeds:
            feed.stop(wait_s=STOP_WAIT_S)
            if self.relay is not None:
                self.relay.drop(feed.camera.id)
        if self._watchdog is not None:
            self._watchdog.join(2 * WATCHDOG_EVERY_S)
        if self._claimer is not None:
            self._claimer.join(2 * CLAIM_EVERY_S)
        self._elsewhere.clear()
        self.claims.close()  # after the feeds: their sightings are written before another process reads on

    def feed(self, camera_id: int) -> CameraFeed | None:
        with self._lock:
            return self._feeds.get(camera_id)

    def reader(self, camera_id: int) -> str | None:
        """Who reads the camera when another process does (None: this one, or nobody)."""
        return self._elsewhere.get(camera_id)

    def newest(self, camera_id: int, frame_id: int | None = None) -> Analysed | Relayed | None:
        """The camera's newest analysed frame (or the kept one with frame_id): read here, or relayed from the
        process that reads it (which is asked for its frames from now on)."""
        feed = self.feed(camera_id)
        if feed is not None:
            return feed.latest(frame_id)
        relayed = self._relayed(camera_id)
        return relayed if relayed is not None and relayed.frame_id is not None else None

    def _relayed(self, camera_id: int) -> Relayed | None:
        if self.relay is None or self.reader(camera_id) is None:
            return None
        self.relay.ask(camera_id)
        return self.relay.get(camera_id)

    def _relay_out(self, feed: CameraFeed, result: Analysed) -> None:
        """After each analysed frame: the frame to the other processes while one of them asks for it."""
        try:
            if self.relay.wanted(feed.camera.id):
                self.relay.put(feed.camera.id, feed.status(), result.frame_id, result.answer, result.jpeg())
        except OSError as exc:  # the data folder is full or gone: this process still shows the camera
            log.warning("%s: could not hand its frame to the other processes: %s", feed.label, exc)

    def status(self, camera: Camera) -> dict:
        """The camera's state; with shared claims also `reader`, the process that reads it."""
        feed = self.feed(camera.id)
        elsewhere = self.reader(camera.id) if camera.enabled else None
        if feed is not None:
            answer = feed.status()
        elif elsewhere is not None and (relayed := self._relayed(camera.id)) is not None:
            answer = dict(relayed.status)  # as the reader sees it
        elif elsewhere is not None:
            answer = {"state": "elsewhere", "error": f"read by {elsewhere}; no frame from it yet",
                      "fps": 0.0, "width": None, "height": None, "frames": 0, "last_frame_at": None}
        else:
            state = "offline" if camera.enabled else "disabled"
            refused = self._refused.get(camera.id)
            error = (refused[1] if refused else "not started") if camera.enabled else None
            answer = {"state": state, "error": error, "fps": 0.0, "width": None, "height": None, "frames": 0,
                      "last_frame_at": None}
        if self.claims.shared:
            held_here = feed is not None or camera.id in self._refused
            answer["reader"] = elsewhere or (camera_claims.whoami() if held_here else None)
        return answer

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

    def claim_round(self, cameras: list[Camera]) -> None:
        """One look: drop the feeds whose claim was lost, follow the rows' changes made on any process, and ask
        for the enabled cameras nobody here reads."""
        with self._changing:
            self._claim_round(cameras)

    def _claim_round(self, cameras: list[Camera]) -> None:
        for camera_id in self.claims.lost():
            log.warning("camera %d: its lock was lost; another process may read it now", camera_id)
            self._stop_feed(camera_id)
        rows = {camera.id: camera for camera in cameras}
        with self._lock:
            known = set(self._feeds) | set(self._refused)
        for camera_id in (known | set(self._elsewhere)) - set(rows):  # deleted on another process
            self.remove(camera_id)
        for camera in cameras:
            feed, refused = self.feed(camera.id), self._refused.get(camera.id)
            if (feed is not None and feed.camera == camera) or (refused is not None and refused[0] == camera):
                continue  # read here (or refused here) and unchanged
            if feed is None and refused is None and not camera.enabled and camera.id not in self._elsewhere:
                continue
            self.sync(camera)
        if self.relay is not None:
            self._relay_states(cameras)

    def _relay_states(self, cameras: list[Camera]) -> None:
        """The status of the cameras read here, asked for elsewhere, that gave no frame in the last
        RELAY_STATE_S (offline, refused): the others show why."""
        for camera in cameras:
            feed = self.feed(camera.id)
            if feed is None and camera.id not in self._refused:
                continue
            latest = feed.latest() if feed is not None else None
            if latest is not None and time.time() - latest.at < RELAY_STATE_S:
                continue
            try:
                if self.relay.wanted(camera.id):
                    self.relay.put(camera.id, self.status(camera))
            except OSError as exc:
                log.warning("camera %d: could not hand its state to the other processes: %s", camera.id, exc)

    def _watch(self) -> None:
        while not self._stopping.wait(WATCHDOG_EVERY_S):
            with self._lock:
                feeds = list(self._feeds.values())
            for feed in feeds:
                feed.watch(time.monotonic())


def _claim_loop(manager_ref: weakref.ref, stopping: threading.Event) -> None:
    """Every CLAIM_EVERY_S, the manager's claim_round on the table as it is. The manager is held weakly, so the
    loop ends with it (tests build many apps) or on stop()."""
    conn = None
    while not stopping.wait(CLAIM_EVERY_S):
        manager = manager_ref()
        if manager is None:
            break
        try:
            conn = conn or db.connect(manager.database)
            manager.claim_round(list_cameras(conn))
        except Exception as exc:  # the store is away for a while: the feeds go on, the next round tries again
            log.warning("cameras: could not read the cameras table: %s", exc)
            if conn is not None:
                conn.close()
            conn = None
        del manager
    if conn is not None:
        conn.close()


def init_app(app: Flask) -> CameraManager:
    """Give the app its camera manager (after webapp.events.init_app: cameras share the live streams'
    archive and options) and start the enabled cameras. :raises ValueError: a camera setting out of range."""
    config = app.config
    defaults = FeedOptions(fps=config["CAMERA_FPS"], frame_width=config["FRAME_WIDTH"],
                           timeout_s=config["CAMERA_TIMEOUT_S"], retry_min_s=config["CAMERA_RETRY_MIN_S"],
                           retry_max_s=config["CAMERA_RETRY_MAX_S"])
    _check(defaults, config["LIVE_MAX_FPS"])
    live = app.extensions["live"]
    claims = camera_claims.for_app(config)
    manager = CameraManager(
        app.extensions["faces"], live.archive, defaults, first_twin=live.workers,
        min_recognise_px=config["MIN_RECOGNISE_PX"], allowed_dirs=file_dirs(config["CAMERA_FILE_DIRS"]),
        stream_options={"unknown_frames": live.unknown_frames, "tracker_options": live.tracker_options,
                        "on_event": live.on_event},  # track events (MQTT, webhooks) name the camera
        announce=app.extensions["notifier"].announce_camera,
        claims=claims, database=config["DATABASE"], relay=Relay(config["DATA_DIR"]) if claims.shared else None,
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
