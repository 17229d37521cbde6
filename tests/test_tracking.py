"""Tracking faces across frames of a synthetic video made from real photos."""

from __future__ import annotations

import numpy as np
import pytest

from model.gallery import Gallery
from model.images import load_image
from model.detect import box_iou
from model.recognizer import Recognizer
from model.tracking import FaceTracker


def portrait(celeba_dir, person: str, index: int):
    return load_image(celeba_dir / person / f"{person}_{index:04d}.jpg")


def video(photos, steps: int = 20, step_px: int = 6):
    """Frames 640x480 with each photo sliding right, side by side; returns frames and photo offsets."""
    frames, offsets = [], []
    for k in range(steps):
        frame = np.full((480, 640, 3), 80, np.uint8)
        placed = []
        for j, photo in enumerate(photos):
            x, y = 20 + 320 * j + k * step_px, 115
            frame[y : y + 250, x : x + 250] = photo[:, : max(0, min(250, 640 - x))]
            placed.append((x, y))
        frames.append(frame)
        offsets.append(placed)
    return frames, offsets


@pytest.fixture(scope="module")
def gallery(recognizer, celeba_dir):
    gallery = Gallery()
    for index in (6, 7, 8):
        photo = portrait(celeba_dir, "celeb_7201", index)
        face, _ = recognizer.portrait_face(photo)
        gallery.add(index, 7201, recognizer.embed_faces(photo, [face])[0])
    return gallery


class CountingRecognizer:
    """Wraps the real recognizer and counts detector and embedding calls."""

    def __init__(self, recognizer):
        self._r = recognizer
        self.detections = 0
        self.embedded_faces = 0
        self.detector = recognizer.detector
        self.threshold = recognizer.threshold
        self.rule = recognizer.rule

    def find_faces(self, frame, **kw):
        self.detections += 1
        return self._r.find_faces(frame, **kw)

    def features(self, frame, faces):
        self.embedded_faces += len(faces)
        return self._r.features(frame, faces)

    def embed(self, features):
        return self._r.embed(features)

    def unrecognisable(self, face):
        return self._r.unrecognisable(face)

    def decide(self, frame, faces, gallery):  # the real decision, through the counting features()
        return Recognizer.decide(self, frame, faces, gallery)


def test_one_face_is_followed_with_one_track_and_few_embeddings(recognizer, celeba_dir, gallery):
    counting = CountingRecognizer(recognizer)
    tracker = FaceTracker(counting, detect_every=5, reembed_every=15)
    frames, offsets = video([portrait(celeba_dir, "celeb_7201", 1)])
    ids = set()
    first_box = None
    for frame, placed in zip(frames, offsets):
        faces = tracker.update(frame, gallery)
        assert len(faces) == 1
        ids.add(faces[0].track_id)
        assert faces[0].match.person_id == 7201
        if first_box is None:
            first_box = faces[0].face.box.copy()
        dx = placed[0][0] - offsets[0][0][0]
        expected = first_box + np.array([dx, 0, dx, 0])
        assert box_iou(faces[0].face.box, expected) > 0.6  # the box follows the sliding face
    assert len(ids) == 1
    assert counting.detections == 4  # frames 0, 5, 10, 15 of 20
    assert counting.embedded_faces <= 3


def test_known_and_unknown_side_by_side(recognizer, celeba_dir, gallery):
    tracker = FaceTracker(recognizer, detect_every=3)
    frames, _ = video([portrait(celeba_dir, "celeb_7201", 2), portrait(celeba_dir, "celeb_7205", 1)], steps=8, step_px=3)
    for frame in frames:
        faces = tracker.update(frame, gallery)
    labels = [f.match.person_id for f in sorted(faces, key=lambda f: f.face.box[0])]
    assert labels == [7201, None]


def test_a_face_that_leaves_is_dropped(recognizer, celeba_dir, gallery):
    tracker = FaceTracker(recognizer, detect_every=2, max_misses=1)
    frames, _ = video([portrait(celeba_dir, "celeb_7201", 1)], steps=2)
    for frame in frames:
        assert len(tracker.update(frame, gallery)) == 1
    empty = np.full((480, 640, 3), 80, np.uint8)
    for _ in range(4):
        faces = tracker.update(empty, gallery)
    assert faces == [] and tracker.tracks == []


def test_a_different_person_in_the_same_place_is_noticed(recognizer, celeba_dir, gallery):
    tracker = FaceTracker(recognizer, detect_every=5, recheck_every=5, reembed_every=15, votes=3)
    known, _ = video([portrait(celeba_dir, "celeb_7201", 1)], steps=1)
    stranger, _ = video([portrait(celeba_dir, "celeb_7205", 1)], steps=1)
    for _ in range(20):
        faces = tracker.update(known[0], gallery)
    assert faces[0].match.person_id == 7201
    labels = [tracker.update(stranger[0], gallery)[0].match.person_id for _ in range(30)]
    # The face no longer looks like the one embedded: re-identified on the very next frame.
    assert labels == [None] * 30
