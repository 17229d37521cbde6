"""Cut aligned face chips out of a frame, using the 5 landmarks found by `detect.py`.

dlib's chip extractor rotates and scales each face so the eyes and nose land
on fixed positions, the alignment dlib's ResNet was trained with. VGG-16 takes
bigger, slightly looser chips made the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

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
