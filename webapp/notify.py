"""Track events for home automation: one event per decided track, fanned out to MQTT and webhooks off the live path.

A live stream (browser or camera) hands every processed frame's recognitions to
its `TrackEvents`, which turns them into at most one event per track and person:

- a track is announced as a person the first frame it is named them;
- a track that stays unknown for `unknown_frames` decided frames (the inbox's
  rule) is announced once as unknown, unless it was named before.

An event is a JSON-ready dict (see `track_event`). `Notifier.publish` hands it to
every sink's own background thread and bounded queue and returns at once: a
broker that is down or a webhook that hangs delays only its own sink, never a
frame or another sink. When a sink's queue is full the oldest event is dropped
(and counted), since home automation wants what is happening now.

A sink is any object with `name`, `send(event)` (may block; its exceptions are
logged and counted as failed; returning False counts the event as skipped), `status()` (a JSON-ready dict) and optionally `tick()` (called about
every `tick_s` seconds, e.g. to time presence out) and `close()`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

log = logging.getLogger(__name__)

BROWSER = "browser"  # the camera name of browser streams on the live page
EVENT_FIELDS = ("camera", "person", "person_id", "similarity", "time", "track_id", "unknown")
# Events waiting for one sink; past this the oldest are dropped (a sink that long behind is stuck).
QUEUE_SIZE = 256
TICK_S = 1.0


def event_time(seconds: float | None = None) -> str:
    """A Unix time (default: now) as ISO 8601 UTC with milliseconds, e.g. '2026-12-01T08:30:00.123Z'."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def track_event(camera: str, track_id: str, person_id: int | None, person: str | None, similarity: float,
                seconds: float | None = None) -> dict:
    """The event of one track: who (person and person_id, both None when unknown), where, when, how sure."""
    return {
        "camera": camera,
        "person": person if person_id is not None else None,
        "person_id": person_id,
        "similarity": round(float(similarity), 4),
        "time": event_time(seconds),
        "track_id": track_id,
        "unknown": person_id is None,
    }


class TrackEvents:
    """One stream's tracks turned into events: at most one per track and person, one unknown per track.

    :param camera: the stream's camera name ("browser" for the live page).
    :param publish: called with each event dict, on the stream's thread (Notifier.publish never blocks).
    :param unknown_frames: a track unknown in this many decided frames is announced as unknown.
    """

    def __init__(self, camera: str, publish: Callable[[dict], None], unknown_frames: int = 5):
        self.camera = camera
        self.publish = publish
        self.unknown_frames = max(1, unknown_frames)
        self.key = uuid.uuid4().hex[:8]  # track ids restart with every stream; keys stay unique
        self.announced: dict[int, set[int | None]] = {}  # track id -> people (None: unknown) announced
        self.unknown_counts: dict[int, int] = {}

    def observe(self, recognitions: Iterable, names: Mapping[int, str]) -> list[dict]:
        """Announce what this frame decided; returns the events published (model.recognizer.Recognition items)."""
        events, present = [], set()
        for seen in recognitions:
            track_id, match = seen.track_id, seen.match
            if track_id is None:
                continue
            present.add(track_id)
            if match.reason is not None:  # not decided yet (too little evidence, too small)
                continue
            event = self._decided(track_id, match.person_id, float(match.similarity), names)
            if event is not None:
                events.append(event)
        for gone in [t for t in self.announced if t not in present]:
            del self.announced[gone]
        for gone in [t for t in self.unknown_counts if t not in present]:
            del self.unknown_counts[gone]
        for event in events:
            self._safely_publish(event)
        return events

    def _decided(self, track_id: int, person_id: int | None, similarity: float,
                 names: Mapping[int, str]) -> dict | None:
        announced = self.announced.setdefault(track_id, set())
        if person_id is not None:
            if person_id in announced:
                return None
        else:
            count = self.unknown_counts.get(track_id, 0) + 1
            self.unknown_counts[track_id] = count
            if announced or count < self.unknown_frames:  # named before, or not unknown for long enough
                return None
        announced.add(person_id)
        return track_event(self.camera, f"{self.key}:{track_id}", person_id, names.get(person_id), similarity)

    def _safely_publish(self, event: dict) -> None:
        try:
            self.publish(event)
        except Exception:  # events must never stop the live video
            log.exception("could not publish a track event")


class Sink(Protocol):
    name: str

    def send(self, event: dict) -> bool | None: ...

    def status(self) -> dict: ...


class SinkWorker:
    """One sink's queue and thread: events in, send() one at a time, tick() now and then."""

    def __init__(self, sink: Sink, queue_size: int = QUEUE_SIZE, tick_s: float = TICK_S):
        self.sink = sink
        self.tick_s = tick_s
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.sent = 0
        self.skipped = 0  # not sent on purpose (e.g. MQTT while the broker is away)
        self.failed = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"notify-{sink.name}"[:60], daemon=True)
        self._thread.start()

    def offer(self, event: dict) -> None:
        """Queue an event without waiting; when full, the oldest waiting event makes room."""
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def stop(self) -> None:
        """Ask the thread to end (it finishes the delivery it is in, if any)."""
        self._stop.set()
        closer = getattr(self.sink, "close", None)
        if closer is not None:
            closer()  # a webhook stops waiting between retries; MQTT says offline and disconnects
        self.offer(None)  # wakes the thread

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        tick = getattr(self.sink, "tick", None)
        while not self._stop.is_set():
            try:
                event = self.queue.get(timeout=self.tick_s)
            except queue.Empty:
                event = None
            if event is not None:
                self._send(event)
            if tick is not None and not self._stop.is_set():
                self._guarded(tick)

    def _send(self, event: dict) -> None:
        try:
            if self.sink.send(event) is False:
                self.skipped += 1
            else:
                self.sent += 1
        except Exception as exc:
            self.failed += 1
            log.warning("%s: could not deliver a track event: %s", self.sink.name, exc)

    def _guarded(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception:
            log.exception("%s: background step failed", self.sink.name)


class Notifier:
    """Fans each event out to every sink's worker; `publish` never blocks. Kept on app.extensions["notifier"]."""

    def __init__(self) -> None:
        self.workers: list[SinkWorker] = []
        self.published = 0
        self.last_event: dict | None = None
        self._count_lock = threading.Lock()  # live workers publish from several threads

    def add_sink(self, sink: Sink, **options) -> SinkWorker:
        worker = SinkWorker(sink, **options)
        self.workers.append(worker)
        return worker

    def publish(self, event: dict) -> None:
        with self._count_lock:
            self.published += 1
            self.last_event = event
        for worker in self.workers:
            worker.offer(event)

    def announce_camera(self, camera: str) -> None:
        """A camera exists (e.g. added on the server): sinks that list cameras (MQTT discovery) show it before
        its first event. Never blocks."""
        for worker in self.workers:
            add = getattr(worker.sink, "add_camera", None)
            if add is not None:
                add(camera)

    def status(self) -> dict:
        """What each sink did: its own status plus sent, skipped, failed, dropped and waiting counts."""
        sinks = []
        for worker in self.workers:
            entry = dict(worker.sink.status())
            entry.update(sent=worker.sent, skipped=worker.skipped, failed=worker.failed, dropped=worker.dropped,
                         waiting=worker.queue.qsize())
            sinks.append(entry)
        return {"published": self.published, "last_event": self.last_event, "sinks": sinks}

    def close(self, timeout: float = 2.0) -> None:
        """Stop every sink (all at once, so a hung one holds up the others' ends no longer than itself)."""
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(timeout)
