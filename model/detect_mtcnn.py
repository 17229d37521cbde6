"""MTCNN (Zhang et al. 2016) through the PyPI package `mtcnn` 1.0.0: P-, R- and O-net on TensorFlow.

The package's wheel ships the three networks' weights, so nothing is downloaded.
This module only wraps the package: it turns one RGB frame into rows of numbers.
`model.detect.MTCNNDetector` (name "mtcnn") makes them `Face`s, refitting dlib's
5 landmarks in each box as it does for YuNet. TensorFlow is imported by
`load_mtcnn` alone, so importing this module costs nothing and a server that
never selects "mtcnn" never loads TensorFlow.
"""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import NDArray

# MTCNN's smallest face at upsample 0, in pixels (the package's default); upsample > 0 goes down to
# P-net's own 12 px window, which makes the image pyramid start at full size.
MIN_FACE_PX = 20
SMALLEST_FACE_PX = 12
# O-net's confidence needed to keep a face: the package's default. On 240 frames of bench/detectors.py,
# 0.8 / 0.9 / 0.95 found 229 / 227 / 220 faces with 1 / 1 / 0 false boxes.
SCORE_THRESHOLD = 0.8


def load_mtcnn():
    """The three networks on the CPU, weights from the wheel. Costs `import tensorflow` (about 9 s) once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from mtcnn import MTCNN
    except ImportError as exc:
        raise RuntimeError(
            "the mtcnn detector needs the PyPI packages mtcnn==1.0.0 and tensorflow (see requirements.txt)"
        ) from exc
    return MTCNN(device="CPU:0")


def mtcnn_rows(net, frame: NDArray[np.uint8], *, min_face_px: int = MIN_FACE_PX,
               score_threshold: float = SCORE_THRESHOLD) -> NDArray[np.float32]:
    """Faces MTCNN finds in one frame.

    :param net: what `load_mtcnn` returned.
    :param frame: uint8 [H, W, 3] RGB.
    :param min_face_px: smallest face searched for (12 or more).
    :return: float32 [N, 15]: left, top, right, bottom, confidence, then 5 (x, y) points in the
        order YuNet gives them: eye centres (image left first), nose tip, mouth corners (image left
        first). N = 0 for frames too thin to hold a face of SMALLEST_FACE_PX and for empty frames.
    """
    if frame.ndim != 3 or min(frame.shape[:2]) < max(SMALLEST_FACE_PX, 1):
        return np.zeros((0, 15), np.float32)
    found = net.detect_faces(
        np.ascontiguousarray(frame), box_format="xyxy", output_type="numpy",
        min_face_size=max(SMALLEST_FACE_PX, int(min_face_px)), threshold_onet=score_threshold,
    )
    # Each row: image id, left, top, right, bottom, score, then the 5 points' x (left eye, right eye, nose,
    # mouth left, mouth right) followed by their 5 y.
    found = np.asarray(found, dtype=np.float32).reshape(-1, 16)
    rows = np.zeros((len(found), 15), np.float32)
    rows[:, :5] = found[:, 1:6]
    points = np.stack([found[:, 6:11], found[:, 11:16]], axis=-1)  # [N, 5, 2]
    rows[:, 5:] = np.stack([_yunet_order(p) for p in points]).reshape(-1, 10) if len(points) else rows[:, 5:]
    return rows


def _yunet_order(points: NDArray[np.float32]) -> NDArray[np.float32]:
    """[5, 2] eyes, nose, mouth corners with each pair sorted by x (image left first), as model.align expects."""
    eyes = points[0:2][np.argsort(points[0:2, 0])]
    mouth = points[3:5][np.argsort(points[3:5, 0])]
    return np.concatenate([eyes, points[2:3], mouth])
