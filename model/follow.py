"""Following a face between detections: its landmarks refitted in the next frame, and what it looks like.

FaceTracker (model.tracking) uses these on every frame; they cost about 1 ms a face.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from model.detect import Face, FaceDetector

APPEARANCE_SIDE = 24
# The whole frame as a grey thumbnail this size (cells of 20x20 pixels at 640x480), to see whether it changed.
SCENE_SIZE = (32, 24)
# Following, a face whose landmarks moved less than this (pixels, mean of the 5, either axis) inside its predicted
# box keeps that one fit; FaceDetector.refit fits again inside the moved box. On bench/live.py's sliding face 72%
# of the frames stay under it, and their points are then at most 2 px (95%) from the second fit's, a detection's
# one fit inside YuNet's jittering box being no closer.
STILL_FIT_PX = 1.5


def appearance(frame: NDArray[np.uint8], face: Face) -> NDArray[np.float32] | None:
    """A tiny zero-mean, unit-length grayscale picture of the face (None when it is off the frame or blank).

    The square is placed from the landmarks, not the box: detector boxes jitter
    by several pixels between frames, the landmarks much less.
    """
    centre = face.landmarks.mean(axis=0)
    spread = float(np.ptp(face.landmarks[:, 0]))
    half = max(4.0, 0.9 * spread)
    left, top = (int(round(v - half)) for v in centre)
    right, bottom = (int(round(v + half)) for v in centre)
    crop = frame[max(0, top) : max(0, bottom), max(0, left) : max(0, right)]
    if crop.size == 0:
        return None
    gray = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (APPEARANCE_SIDE, APPEARANCE_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = small.ravel() - small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 1.0 else None  # under 1 grey level of contrast in all: nothing is there


def scene(frame: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The frame as a float32 [24, 32] grey thumbnail (see SCENE_SIZE)."""
    small = cv2.resize(np.ascontiguousarray(frame), SCENE_SIZE, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def follow_face(detector, frame: NDArray[np.uint8], face: Face) -> Face | None:
    """The face refitted in the next frame (FaceDetector.refit), with its second fit only when the first moved
    the points by STILL_FIT_PX or more; None when the box left the frame. Other detectors: their own refit."""
    if not isinstance(detector, FaceDetector):
        return detector.refit(frame, face)
    first = detector.face_in(frame, face.box)
    shift = (first.landmarks - face.landmarks).mean(axis=0)
    box = face.box.astype(np.float64) + np.r_[shift, shift]
    height, width = frame.shape[:2]
    if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
        return None
    keypoints = None if face.keypoints is None else (face.keypoints + shift).astype(np.float32)
    if np.abs(shift).max() < STILL_FIT_PX:
        left, top, right, bottom = (int(round(v)) for v in box)
        clipped = np.array([max(0, left), max(0, top), min(width, right), min(height, bottom)], dtype=np.int32)
        return Face(box=clipped, landmarks=first.landmarks, score=face.score, keypoints=keypoints)
    second = detector.face_in(frame, box)
    return Face(box=second.box, landmarks=second.landmarks, score=face.score, keypoints=keypoints)
