"""One live video stream: its face tracks and what it saw, one frame at a time, top to bottom.

`LiveStream.answer` is the whole path of a live frame:

1. decode the JPEG (bad bytes: an `error` answer);
2. track: the stream's FaceTracker detects or follows faces and embeds, in one
   batch, every face that is due (model.tracking), timed by the frame's arrival;
3. decide: each track's match on its fused embedding becomes a `faces` entry
   (payloads.face_json);
4. record: the Recorder counts sightings per track and keeps a track that stays
   unknown as an inbox face, reusing that batch's features and embedding;
   the Archive writes both now and then (webapp.inbox_store).

A stream is served by one live worker, on that worker's recognizer twin (webapp.events);
its own lock keeps `close` (from the disconnect handler) and `move_to` from running
while a frame is being processed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

from model.images import DEFAULT_MAX_BYTES, ImageError, decode_image
from model.recognizer import Recognition, Recognizer
from webapp.inbox_store import Archive, Sighting, UnknownFace
from webapp.notify import BROWSER, TrackEvents
from webapp.payloads import face_json, faces_json
from webapp.service import FaceService, ModelNotReady

log = logging.getLogger(__name__)

# Live frames are JPEG (the Socket.IO contract), which decodes in draft mode at a fraction of its size: a 4K PNG of
# 29 KB took 0.6 s to decode on 2 busy cores, holding up every stream on its worker. Frames over 4K UHD are refused
# from their header: no webcam sends more.
JPEG_START = b"\xff\xd8"  # the start-of-image marker
MAX_FRAME_PIXELS = 3840 * 2160


class Recorder:
    """One stream's sightings and inbox faces, kept in memory until they are handed to the Archive.

    :param unknown_frames: a track reported unknown in this many processed frames gives one inbox face.
    """

    def __init__(self, unknown_frames: int = 5):
        self.key = uuid.uuid4().hex[:12]
        self.unknown_frames = max(1, unknown_frames)
        self.live: dict[int, dict[int | None, Sighting]] = {}  # track id -> person id -> sighting
        self.ended: list[Sighting] = []
        self.unknown_counts: dict[int, int] = {}
        self.captured: set[int] = set()
        self.faces: list[UnknownFace] = []
        self.last_drain = time.monotonic()

    def observe(self, frame: NDArray[np.uint8], recognitions: list[Recognition], names: Mapping[int, str],
                now: float | None = None) -> None:
        """Count one processed frame's tracked faces; a track unknown long enough becomes an inbox face."""
        now = time.time() if now is None else now
        present = set()
        for seen in recognitions:
            track_id, person_id = seen.track_id, seen.match.person_id
            present.add(track_id)
            if seen.match.reason is not None:  # not decided (too little evidence yet, too small): not counted
                continue
            sighting = self.live.setdefault(track_id, {}).get(person_id)
            if sighting is None:
                sighting = Sighting(person_id, names.get(person_id) if person_id is not None else None, now, now)
                self.live[track_id][person_id] = sighting
            sighting.last_seen, sighting.dirty = now, True
            sighting.frames += 1
            sighting.best_similarity = max(sighting.best_similarity, float(seen.match.similarity))
            if person_id is None and track_id not in self.captured:
                count = self.unknown_counts.get(track_id, 0) + 1
                self.unknown_counts[track_id] = count
                if count >= self.unknown_frames and seen.features is not None:
                    self._capture(frame, seen, now)
        for track_id in [t for t in self.live if t not in present]:
            self.ended.extend(self.live.pop(track_id).values())
            self.unknown_counts.pop(track_id, None)

    def _capture(self, frame: NDArray[np.uint8], seen: Recognition, now: float) -> None:
        self.captured.add(seen.track_id)
        box = [int(v) for v in seen.face.box]
        self.faces.append(UnknownFace(f"{self.key}:{seen.track_id}", frame, box, seen.features, seen.embedding, now))

    def due(self, every_s: float) -> bool:
        """Whether there is something to write now: an inbox face, or sightings older than every_s."""
        return bool(self.faces) or time.monotonic() - self.last_drain >= every_s

    def drain(self) -> tuple[list[UnknownFace], list[Sighting]]:
        """What to write: new inbox faces, and the sightings that are new or changed (ended ones are let go)."""
        self.last_drain = time.monotonic()
        faces, self.faces = self.faces, []
        ended, self.ended = self.ended, []
        changed = [s for group in self.live.values() for s in group.values() if s.dirty]
        return faces, [s for s in ended if s.dirty or s.row_id is None] + changed

    def end(self) -> None:
        """The stream is gone: every sighting ends."""
        for sightings in self.live.values():
            self.ended.extend(sightings.values())
        self.live.clear()


class LiveStream:
    """One live connection's tracker and recorder.

    :param service: the app's FaceService.
    :param archive: where sightings and unknown faces are written (None: not kept).
    :param unknown_frames: see Recorder.
    :param max_frame_bytes: larger frames are refused (None: model.images.DEFAULT_MAX_BYTES).
    :param recognizer: the live twin its tracker runs on (default: the service's first).
    :param tracker_options: model.tracking.FaceTracker options (from the settings).
    :param camera: the stream's camera name in its track events ("browser" for the live page).
    :param on_event: called with one event dict per decided track (webapp.notify.TrackEvents; None: no events).
    """

    def __init__(self, service: FaceService, archive: Archive | None = None, *, unknown_frames: int = 5,
                 max_frame_bytes: int | None = None, recognizer: Recognizer | None = None,
                 tracker_options: Mapping | None = None, camera: str = BROWSER,
                 on_event: Callable[[dict], None] | None = None):
        self.service = service
        self.archive = archive
        self.max_frame_bytes = max_frame_bytes or DEFAULT_MAX_BYTES
        self.tracker = service.new_tracker(recognizer, **(tracker_options or {}))
        self.gallery_version = service.gallery_version
        self.recorder = Recorder(unknown_frames) if archive is not None else None
        self.events = TrackEvents(camera, on_event, unknown_frames) if on_event is not None else None
        self._lock = threading.Lock()

    def answer(self, frame_id: int, data: bytes, now: float | None = None) -> tuple[str, dict]:
        """('faces', payload) for the stream's next frame, or ('error', {error, frame_id}).

        :param now: when the frame arrived (time.monotonic() seconds; default: now).
        """
        started = time.perf_counter()
        try:
            if bytes(data[:2]) != JPEG_START:
                raise ImageError("live frames must be JPEG")
            frame = decode_image(data, max_bytes=self.max_frame_bytes, max_pixels=MAX_FRAME_PIXELS)
            faces = self.process(frame, now)
        except ImageError as exc:
            return "error", {"error": f"bad frame: {exc}", "frame_id": frame_id}
        except ModelNotReady as exc:
            return "error", {"error": str(exc), "frame_id": frame_id}
        except Exception:  # the live worker must survive anything one frame does
            log.exception("live frame %d failed", frame_id)
            return "error", {"error": "the server could not process this frame", "frame_id": frame_id}
        return "faces", faces_json(frame_id, frame.shape, faces, started)

    def process(self, frame: NDArray[np.uint8], now: float | None = None) -> list[dict]:
        """Track, decide and record one decoded RGB frame (`now`: its stream time); returns its `faces` entries."""
        with self._lock:
            if self.gallery_version != self.service.gallery_version:
                self.tracker.gallery_changed()  # tracks stay; their fused embeddings are matched again
                self.gallery_version = self.service.gallery_version
            recognitions = self.service.track(self.tracker, frame, now)
            names = self.service.names
            faces = [face_json(seen, names) for seen in recognitions]
            if self.events is not None:
                self.events.observe(recognitions, names)
            if self.recorder is not None:
                self.recorder.observe(frame, recognitions, names)
                if self.recorder.due(self.archive.flush_every_s):
                    self._write()
                self._safely(self.archive.purge_if_due)
        return faces

    def move_to(self, recognizer: Recognizer) -> None:
        """Run the tracker on another worker's twin from the next frame on (its tracks stay)."""
        with self._lock:
            self.tracker.recognizer = recognizer

    def close(self) -> None:
        """The connection ended: write what it saw."""
        if self.recorder is None:
            return
        with self._lock:
            self.recorder.end()
            self._write()

    def _write(self) -> None:
        faces, sightings = self.recorder.drain()
        self._safely(lambda: self.archive.write(faces, sightings))

    @staticmethod
    def _safely(write) -> None:
        """History and inbox writes must never stop the live video."""
        try:
            write()
        except Exception:
            log.exception("could not write live sightings")
