"""A fast, deterministic detector and backbone that stand in for dlib in tests of the app (not of the model).

`fake_recognizer()` builds a `Recognizer` from them. It loads in no time and
needs no weights, so the web, security, socket and fuzz tests run without
dlib's models; tests that check what the real model decides are marked
`dlib` and get the real one.

- FakeDetector finds one face per frame: the square in the middle of whatever
  differs from the frame's border colour (a portrait pasted on a plain frame,
  or a whole photo), or nothing in a plain frame. Landmarks sit at fixed
  places in the box. It never looks for faces the way HOG does, so "no face"
  on a real photo without one is a dlib test.
- FakeBackbone embeds a chip as a fixed random projection of its 16x16
  grey-level picture (mean removed): the same picture always gives the same
  vector, a slightly moved one a very similar vector, and a different
  picture a different one.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model.backbones import Backbone
from model.detect import Face
from model.recognizer import Recognizer

# Where the 5 landmarks sit, as fractions of the box (x, y): dlib's order (eye corners, nose base).
LANDMARKS = np.array([[0.78, 0.38], [0.60, 0.38], [0.22, 0.38], [0.40, 0.38], [0.50, 0.66]], dtype=np.float32)
# Pixels whose grey level differs from the border's by more than this count as "something there".
FOREGROUND_LEVEL = 12
# The face box is this fraction of the foreground's shorter side (a portrait's face fills about half of it).
FACE_FRACTION = 0.5
PICTURE_SIDE = 16
# Like HOG, it finds no face smaller than this (box side, pixels).
MIN_FACE_SIDE = 40


class FakeDetector:
    """Stands in for model.detect.FaceDetector (same methods, no dlib)."""

    predictor_path = None
    name = "fake"

    def __init__(self) -> None:
        self.detections = 0

    def load(self) -> "FakeDetector":
        return self

    def clone(self) -> "FakeDetector":
        return FakeDetector()

    def detect(self, frame: NDArray[np.uint8], *, upsample: int = 0, max_side: int | None = None) -> list[Face]:
        self.detections += 1
        grey = frame.mean(axis=2) if frame.ndim == 3 else frame.astype(np.float64)
        border = np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))
        rows, cols = np.nonzero(np.abs(grey - border) > FOREGROUND_LEVEL)
        if len(rows) < 64:
            return []
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        face = self._face_in(frame, left, top, right, bottom, score=1.0)
        return [face] if min(face.width, face.height) >= MIN_FACE_SIDE else []

    def centre_face(self, frame: NDArray[np.uint8], *, fraction: float = 0.45) -> Face:
        height, width = frame.shape[:2]
        return self._face_in(frame, 0, 0, width, height, score=float("-inf"))

    def face_in(self, frame: NDArray[np.uint8], box) -> Face:
        box = np.asarray(box, dtype=np.float64)
        landmarks = (box[:2] + LANDMARKS * (box[2:] - box[:2])).astype(np.float32)
        return Face(box=np.asarray(box, dtype=np.int32), landmarks=landmarks, score=float("-inf"))

    def refit(self, frame: NDArray[np.uint8], face: Face) -> Face | None:
        height, width = frame.shape[:2]
        box = face.box
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            return None
        return face

    @staticmethod
    def _face_in(frame, left, top, right, bottom, *, score: float) -> Face:
        height, width = frame.shape[:2]
        side = FACE_FRACTION * min(right - left, bottom - top)
        cx, cy = (left + right) / 2, (top + bottom) / 2
        box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        landmarks = (box[:2] + LANDMARKS * (box[2:] - box[:2])).astype(np.float32)
        clipped = np.array([max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])], dtype=np.int32)
        return Face(box=clipped, landmarks=landmarks, score=score)


class FakeBackbone(Backbone):
    """Stands in for dlib's ResNet: 128-D unit vectors from a fixed projection of the chip's pixels."""

    name = "fake"
    dim = 128
    chip_size = 150
    chip_padding = 0.25

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.embedded = 0
        self._projection = np.random.default_rng(seed).standard_normal((PICTURE_SIDE * PICTURE_SIDE, self.dim))

    def _load(self) -> None:
        pass

    def _embed_batch(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.embedded += len(chips)
        n, size = len(chips), chips.shape[1]
        step = size // PICTURE_SIDE
        grey = chips[:, : step * PICTURE_SIDE, : step * PICTURE_SIDE].mean(axis=3)
        small = grey.reshape(n, PICTURE_SIDE, step, PICTURE_SIDE, step).mean(axis=(2, 4)).reshape(n, -1)
        small -= small.mean(axis=1, keepdims=True)
        return (small @ self._projection).astype(np.float32)


def fake_recognizer(threshold: float | None = None) -> Recognizer:
    """A loaded Recognizer on the fakes, with the identity head."""
    return Recognizer(FakeBackbone(), detector=FakeDetector(), threshold=threshold).load()
