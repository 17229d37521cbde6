"""Cut aligned face chips out of a frame, using the landmarks found by `detect.py`.

dlib's chip extractor rotates and scales each face so the eyes and nose land
on fixed positions, the alignment dlib's ResNet was trained with. VGG-16 takes
bigger, slightly looser chips made the same way. SFace takes 112x112 chips in
the ArcFace layout: a similarity transform putting the eyes, nose tip and
mouth corners on a fixed template (YuNet's 5 points, or for HOG faces the
eyes and nose from dlib's landmarks).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from model.detect import Face


def face_chips(
    frame: NDArray[np.uint8], faces: Sequence[Face], *, size: int, padding: float
) -> NDArray[np.uint8]:
    """Aligned face crops.

    :param frame: uint8 [H, W, 3] RGB, the frame the faces were found in.
    :param size: output side in pixels (150 for dlib's ResNet, 224 for VGG-16).
    :param padding: border around the landmark template, as a fraction of its size
        (dlib's default 0.25 frames the face the way its ResNet expects).
    :return: uint8 [N, size, size, 3] RGB; N = 0 gives an empty batch.
    """
    import dlib

    if not faces:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    frame = np.ascontiguousarray(frame)
    shapes = dlib.full_object_detections()
    for face in faces:
        left, top, right, bottom = (int(v) for v in face.box)
        points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks])
        shapes.append(dlib.full_object_detection(dlib.rectangle(left, top, right, bottom), points))
    chips = dlib.get_face_chips(frame, shapes, size=size, padding=padding)
    return np.stack([np.asarray(chip, dtype=np.uint8) for chip in chips])


def mirrored(chips: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Left-right mirror images of a chip batch (for test-time flip averaging)."""
    return np.ascontiguousarray(chips[:, :, ::-1, :])


# Where the ArcFace layout puts the 5 points in a 112x112 chip: eye centres (image left first),
# nose tip, mouth corners (image left first). The numbers are the layout's published ones.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_SIDE = 112


# YuNet's 5 points lag behind a tilted face (on faces rolled 45 degrees its eye line said 15-37); dlib's eyes follow
# it (40-56). When the two eye lines differ by more than this, YuNet's points are turned to dlib's eye line.
EYE_LINES_AGREE_DEG = 10.0


def arcface_points(face: Face) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(points in the frame, the template points they go to): YuNet's 5 (turned to dlib's eye line when they
    lag behind a tilted face), or eyes and nose from dlib's 5 for a detector without its own points."""
    marks = face.landmarks  # dlib: two corners of one eye, two of the other, nose base
    eyes = sorted([marks[0:2].mean(axis=0), marks[2:4].mean(axis=0)], key=lambda point: point[0])
    if face.keypoints is None:
        return np.array([*eyes, marks[4]], dtype=np.float32), ARCFACE_TEMPLATE[:3]
    lag = _angle(*eyes) - _angle(*face.keypoints[:2])
    if abs(lag) <= EYE_LINES_AGREE_DEG:
        return face.keypoints, ARCFACE_TEMPLATE
    return _turned(face.keypoints, lag), ARCFACE_TEMPLATE


def _turned(points: NDArray[np.float32], degrees: float) -> NDArray[np.float32]:
    """Points turned about their mean by `degrees` (clockwise on the image, as y points down)."""
    theta = np.radians(degrees)
    turn = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], dtype=np.float32)
    centre = points.mean(axis=0)
    return ((points - centre) @ turn.T + centre).astype(np.float32)


def _angle(first: NDArray[np.float32], second: NDArray[np.float32]) -> float:
    """The line's angle from first to second, degrees (image y down)."""
    return float(np.degrees(np.arctan2(second[1] - first[1], second[0] - first[0])))


def arcface_chips(frame: NDArray[np.uint8], faces: Sequence[Face], *, size: int = ARCFACE_SIDE) -> NDArray[np.uint8]:
    """Faces warped into the ArcFace layout: uint8 [N, size, size, 3] RGB (N = 0 gives an empty batch)."""
    chips = np.zeros((len(faces), size, size, 3), dtype=np.uint8)
    for i, face in enumerate(faces):
        points, template = arcface_points(face)
        matrix, _ = cv2.estimateAffinePartial2D(points, template * (size / ARCFACE_SIDE), method=cv2.LMEDS)
        if matrix is not None:
            chips[i] = cv2.warpAffine(np.ascontiguousarray(frame), matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)
    return chips
