"""FaceService: the recognizer, the gallery and people's names, shared by every request and the live streams.

It is created in `create_app` and kept in `app.extensions["faces"]`. It loads
the model on a background thread so the server answers at once; callers that
need the model wait for it (`ModelNotReady` after a timeout or a failed load).
dlib's detector and network keep per-call scratch state and must not run on
two threads at once, so enrollment and /api/recognize share one recognizer
behind one lock, and each live worker has a twin of it (same head, own dlib
objects) behind a lock of its own: enrollments and live frames use every core
instead of the live video stalling. These locks are taken only in here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from model.backbones import BackboneUnavailable
from model.detect import box_iou
from model.gallery import Gallery
from model.head import Head, HeadUnavailable
from model.images import ImageError, decode_image
from model.quality import Assessment, assess, head_pose, pose_bin
from model.recognizer import ENROLLMENT_MAX_SIDE, ENROLLMENT_UPSAMPLE, EnrollmentRejected, Recognition, Recognizer
from model.tracking import FaceTracker

log = logging.getLogger(__name__)

# How long a request waits for the model to finish loading before answering 503.
LOAD_WAIT_S = 60.0
# A stored photo's face is found again when a detection overlaps its stored box this much.
STORED_FACE_IOU = 0.3
# Guided-enrollment preview frames are detected without upsampling (about 30 ms a frame).
ASSESS_UPSAMPLE = 0


class ModelNotReady(RuntimeError):
    """The model is still loading or failed to load; the message says which."""


@dataclass
class Candidate:
    """One uploaded photo after analysis: accepted (face, features, embedding) or rejected (reason).

    `faces` lists the boxes to choose from when the photo was rejected for
    holding several faces; `face_index` picks one of them on a resubmission.
    """

    file: str
    reason: str | None = None
    photo: NDArray[np.uint8] | None = None
    box: list[int] | None = None
    features: NDArray[np.float32] | None = None
    embedding: NDArray[np.float32] | None = None
    faces: list[list[int]] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) of the decoded photo, when it decoded
    pose: str | None = None  # which way the accepted face looks (model.quality.POSES)

    def __post_init__(self) -> None:
        if self.photo is not None and self.size is None:
            self.size = (int(self.photo.shape[1]), int(self.photo.shape[0]))

    @property
    def accepted(self) -> bool:
        return self.reason is None

    def release(self) -> None:
        """Let the decoded photo go (its size stays): a request holds one decoded photo at a time."""
        self.photo = None


class _AllLocks:
    """A `with` block holding every lock of a growing list of (recognizer, lock) pairs, taken in order."""

    def __init__(self, pairs: list[tuple[Recognizer, threading.Lock]]):
        self.pairs = pairs
        self._held = threading.local()  # what this thread took (the list may grow inside the block)

    def __enter__(self) -> None:
        held = list(self.pairs)
        for _, lock in held:
            lock.acquire()
        self._held.pairs = held

    def __exit__(self, *exc) -> None:
        for _, lock in reversed(self._held.pairs):
            lock.release()


class FaceService:
    """Recognizer + Gallery + names, with lazy loading and one lock around the model.

    :param recognizer: a Recognizer (loaded or not; load() is idempotent).
    :param min_face: enrollment photos need a face at least this many pixels on a side.
    :param live_max_side: live frames are detected on a copy scaled to this side.
    :param live_upsample: detector upsampling for live frames.
    :param recognize_upsample: detector upsampling for uploaded images (/api/recognize).
    :param max_frame_bytes: live frames larger than this are refused.
    :param gallery_options: model.gallery.Gallery options (ann_min_photos, correction_level) from the settings.
    """

    def __init__(
        self,
        recognizer: Recognizer,
        *,
        min_face: int,
        live_max_side: int,
        live_upsample: int,
        recognize_upsample: int,
        max_frame_bytes: int,
        gallery_options: dict | None = None,
    ):
        self.recognizer = recognizer
        self.gallery = Gallery(dim=128, **(gallery_options or {}))
        self.names: dict[int, str] = {}
        self.min_face = min_face
        self.live_max_side = live_max_side
        self.live_upsample = live_upsample
        # Bumped on every gallery change, so live streams drop labels that may be stale.
        self.gallery_version = 0
        self.head_version = 0  # bumped by swap_head (live worker processes load the new head)
        self.head_sha: str | None = None  # the stored head's fingerprint when it is the one in use (swap_head)
        self.recognize_upsample = recognize_upsample
        self.max_frame_bytes = max_frame_bytes
        self._model_lock = threading.Lock()
        # One twin per live worker (see live_twin), each with its own lock; they load on first use.
        self._live_twins: list[tuple[Recognizer, threading.Lock]] = [(recognizer.twin(), threading.Lock())]
        self._live_lock = _AllLocks(self._live_twins)  # every live twin's lock: for changes between two frames
        self._loaded = threading.Event()
        self._load_error: str | None = None

    # --- loading -----------------------------------------------------------------

    @property
    def backbone(self) -> str:
        return self.recognizer.backbone.name

    @property
    def state(self) -> str:
        """'ready', 'loading' or 'failed'."""
        if not self._loaded.is_set():
            return "loading"
        return "failed" if self._load_error else "ready"

    @property
    def load_error(self) -> str | None:
        return self._load_error

    def start_loading(self) -> threading.Thread:
        """Load the model on a daemon thread; `wait_ready` blocks until it is done."""
        thread = threading.Thread(target=self._load, name="faces-model-load", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            with self._model_lock:
                self.recognizer.load()
            log.info("model %s loaded in %.1f s", self.backbone, time.perf_counter() - started)
        except (BackboneUnavailable, HeadUnavailable, ValueError) as exc:
            self._load_error = str(exc)
            log.error("the model cannot be loaded: %s", exc)
        except Exception as exc:  # a broken install must show up on the pages, not kill a thread silently
            self._load_error = f"the model failed to load: {exc}"
            log.exception("the model failed to load")
        finally:
            self._loaded.set()

    def wait_ready(self, timeout: float = LOAD_WAIT_S) -> None:
        """Return when the model is loaded. :raises ModelNotReady: still loading after timeout, or failed."""
        if not self._loaded.wait(timeout):
            raise ModelNotReady("the face model is still loading; try again in a moment")
        if self._load_error:
            raise ModelNotReady(self._load_error)

    # --- the gallery -------------------------------------------------------------

    def add_person(self, person_id: int, name: str) -> None:
        self.names[person_id] = name

    def add_photo(self, photo_id: int, person_id: int, embedding: NDArray[np.float32]) -> None:
        self.gallery.add(photo_id, person_id, embedding)
        self.gallery_version += 1

    def remove_photo(self, photo_id: int) -> None:
        self.gallery.remove_photo(photo_id)
        self.gallery_version += 1

    def swap_head(self, head: Head, gallery: Gallery | None = None, sha: str | None = None) -> None:
        """Use a new head and the gallery it embedded, together, between two frames.

        :param gallery: None keeps the gallery, whose embeddings are the new head's already (a process starting
            with the stored head).
        :param sha: the head's fingerprint in the store (webapp.head_store), None for a file never stored.
        """
        with self.swapping_head(head, sha):
            if gallery is not None:
                self.gallery = gallery

    @contextmanager
    def swapping_head(self, head: Head, sha: str | None = None) -> Iterator[None]:
        """Hold off every frame and upload for the block, and swap the head in at its end (not when it raises):
        gallery changes made in the block (another process's reload: its embeddings) come with the head."""
        with self._model_lock, self._live_lock:
            yield
            self.recognizer.set_head(head)
            for twin, _ in self._live_twins:
                twin.set_head(head)
            self.head_sha = sha
            self.gallery_version += 1
            self.head_version += 1

    def set_strictness(self, offset: float) -> None:
        """The user's strictness (webapp.strictness) on the model and every live twin, from the next frame on."""
        with self._live_lock:
            self.recognizer.strictness = offset
            for twin, _ in self._live_twins:
                twin.strictness = offset
            self.gallery_version += 1  # live tracks decide again under the new rule

    def add_correction(self, correction_id: int, person_id: int, embedding: NDArray[np.float32]) -> None:
        """A face marked "not person_id": matched against from the next frame on."""
        self.gallery.add_correction(correction_id, person_id, embedding)
        self.gallery_version += 1

    def remove_correction(self, correction_id: int) -> None:
        self.gallery.remove_correction(correction_id)
        self.gallery_version += 1

    def set_corrections(self, items: list[tuple[int, int, NDArray[np.float32]]]) -> None:
        """Every correction (correction_id, person_id, embedding) of this backbone, replacing the gallery's."""
        self.gallery.set_corrections(items)
        self.gallery_version += 1

    def move_photos(self, moves: list[tuple[int, int, NDArray[np.float32]]], *, drop_person: int | None = None,
                    corrections: list[tuple[int, int, NDArray[np.float32]]] | None = None):
        """Give photos (photo_id, new person_id, embedding) to other people, and forget drop_person's name, in one
        step: the model lock and every live lock are held, so no frame or upload sees half a merge or move."""
        with self._model_lock, self._live_lock:
            self.gallery.add_many(moves)  # an existing photo keeps its row and changes person
            if corrections is not None:  # a merge: the merged person's corrections are the other's now
                self.gallery.set_corrections(corrections)
            if drop_person is not None:
                self.gallery.remove_person(drop_person)  # nothing left normally; a race's leftovers go too
                self.names.pop(drop_person, None)
            self.gallery_version += 1

    def remove_person(self, person_id: int) -> None:
        self.gallery.remove_person(person_id)
        self.names.pop(person_id, None)
        self.gallery_version += 1

    # --- enrollment --------------------------------------------------------------

    def analyse(self, file: str, data: bytes, face_index: int | None = None) -> Candidate:
        """Decode one enrollment photo, find its face and embed it.

        A photo with several big enough faces is rejected with their boxes,
        unless face_index picks one of them (index into those boxes, largest first).
        """
        try:
            photo = decode_image(data)
        except ImageError as exc:
            return Candidate(file, reason=f"unreadable file: {exc}")
        self.wait_ready()
        with self._model_lock:
            try:
                faces = self.recognizer.enrollment_faces(photo, min_face=self.min_face)
            except EnrollmentRejected as exc:
                return Candidate(file, reason=str(exc), photo=photo)
            boxes = [face.box.tolist() for face in faces]
            if face_index is None and len(faces) > 1:
                return Candidate(file, reason=f"several faces ({len(faces)})", photo=photo, faces=boxes)
            index = face_index or 0
            if not 0 <= index < len(faces):
                return Candidate(
                    file, reason=f"no face number {index + 1} (found {len(faces)})", photo=photo, faces=boxes
                )
            features = self.recognizer.features(photo, [faces[index]])
            embedding = self.recognizer.embed(features)
        pose = pose_bin(*head_pose(faces[index].landmarks))
        return Candidate(file, photo=photo, box=boxes[index], features=features[0], embedding=embedding[0], pose=pose)

    def face_at(self, frame: NDArray[np.uint8], box: list[int]) -> Recognition | None:
        """The face in a (live) frame that overlaps `box` [left, top, right, bottom] most, embedded and matched.

        Detects with the live settings, so the boxes match what the live page drew.
        :return: None when no face overlaps the box.
        """
        self.wait_ready()
        with self._model_lock:
            faces = self.recognizer.find_faces(frame, upsample=self.live_upsample, max_side=self.live_max_side)
            overlaps = [box_iou(face.box, box) for face in faces]
            if not overlaps or max(overlaps) <= 0:
                return None
            face = faces[int(np.argmax(overlaps))]
            features = self.recognizer.features(frame, [face])
            embedding = self.recognizer.embed(features)
        match = self.gallery.match(embedding, self.recognizer.rule)[0]
        return Recognition(face, match, features=features[0], embedding=embedding[0])

    def embed_stored(self, photo: NDArray[np.uint8], box: list[int]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Features and embedding of a stored photo's face with this service's model (after a backbone change).

        The face is found again (the detected face that overlaps the stored box most), or fitted in the
        stored box when the detector finds none there. :return: (features float32 [D], embedding float32 [128]).
        """
        self.wait_ready()
        with self._model_lock:
            faces = self.recognizer.find_faces(photo, upsample=ENROLLMENT_UPSAMPLE, max_side=ENROLLMENT_MAX_SIDE)
            overlaps = [box_iou(face.box, box) for face in faces]
            if overlaps and max(overlaps) >= STORED_FACE_IOU:
                face = faces[int(np.argmax(overlaps))]
            else:
                face = self.recognizer.detector.face_in(photo, box)
            features = self.recognizer.features(photo, [face])
            return features[0], self.recognizer.embed(features)[0]

    def assess(self, frame: NDArray[np.uint8], *, want: str | None = None) -> Assessment:
        """Score a guided-enrollment preview frame (model.quality.assess); detects at upsample 0, about 30 ms."""
        self.wait_ready()
        with self._model_lock:
            faces = self.recognizer.find_faces(frame, upsample=ASSESS_UPSAMPLE)
        return assess(frame, faces, want=want)

    # --- recognition -------------------------------------------------------------

    def recognize(self, frame: NDArray[np.uint8], *, live: bool) -> list[Recognition]:
        """Everyone in one frame, recognised on its own (no tracking).

        live=True uses the live settings (downscaled detection, no upsampling);
        live=False the settings for uploaded images.
        """
        self.wait_ready()
        upsample = self.live_upsample if live else self.recognize_upsample
        max_side = self.live_max_side if live else None
        with self._model_lock:
            return self.recognizer.recognize_frame(frame, self.gallery, upsample=upsample, max_side=max_side)

    @property
    def live_recognizer(self) -> Recognizer:
        """The first live worker's twin."""
        return self._live_twins[0][0]

    def live_twin(self, index: int) -> Recognizer:
        """Live worker `index`'s recognizer: a twin of the main one (same head, own dlib objects), made on first ask."""
        with self._live_lock:  # no frame runs while the pool grows
            while len(self._live_twins) <= index:
                self._live_twins.append((self.recognizer.twin(), threading.Lock()))
            return self._live_twins[index][0]

    def new_tracker(self, recognizer: Recognizer | None = None, **options) -> FaceTracker:
        """Face tracks for one live stream on a live twin (default: the first); options go to FaceTracker."""
        options = {"max_side": self.live_max_side, "upsample": self.live_upsample, **options}
        return FaceTracker(recognizer or self.live_recognizer, **options)

    def track(self, tracker: FaceTracker, frame: NDArray[np.uint8], now: float | None = None) -> list[Recognition]:
        """The next frame of a live stream through its tracker (see `new_tracker`), under its twin's lock.

        :param now: the frame's stream time in seconds (see FaceTracker.update).
        """
        self.wait_ready()
        lock = next((lock for twin, lock in self._live_twins if twin is tracker.recognizer), self._live_twins[0][1])
        with lock:
            return tracker.update(frame, self.gallery, now)

    def name_of(self, person_id: int | None) -> str | None:
        return None if person_id is None else self.names.get(person_id)
