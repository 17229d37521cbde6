"""How good a webcam frame is as an enrollment photo: one face, big, sharp, well lit, and which way it looks.

Plain numpy + OpenCV, no Flask, no model: it works on the faces `FaceDetector`
found. Guided enrollment scores preview frames with `assess` and coaches the
user with its hints until it has a good shot of every pose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from model.detect import Face

POSES = ("front", "left", "right", "up", "down")

# A face box side below this (pixels of the frame assessed) is too small.
MIN_FACE = 80
# The face crop is scaled to this side before measuring sharpness, so the measure does not depend on face size.
SHARP_SIDE = 128
# Variance of the Laplacian of that crop counted as fully sharp (CelebA portraits: 150-450; blurred sigma 3: under 10).
SHARP_VAR = 100.0
# Sharpness (0..1) below this is "hold still".
MIN_SHARPNESS = 0.3
# Mean gray of the face crop outside [DARK, BRIGHT] is badly lit.
DARK = 60.0
BRIGHT = 200.0
# Yaw: the nose's offset along the eye line from the eyes' midpoint, over the inter-eye distance.
# Beyond YAW_TURN the face counts as turned.
YAW_TURN = 0.25
# Pitch: the nose's distance below the eye line over the inter-eye distance; about 0.72 for frontal CelebA portraits.
PITCH_FRONT = 0.72
# Pitch more than this above / below the frontal baseline counts as looking down / up.
PITCH_TURN = 0.2


@dataclass(frozen=True)
class Assessment:
    """One frame's verdict.

    faces: how many faces were found. pose: one of POSES, None without exactly one face.
    yaw: positive when the nose is right of the eyes' midpoint in the image. pitch: relative to PITCH_FRONT,
    positive when the nose is lower (looking down). score: 0..1, 0 unless exactly one face.
    checks: name -> passed (one_face, size, sharp, light). hints: what to tell the user, most important first.
    """

    faces: int
    pose: str | None = None
    yaw: float = 0.0
    pitch: float = 0.0
    size: int = 0
    sharpness: float = 0.0
    brightness: float = 0.0
    score: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)


def assess(
    frame: NDArray[np.uint8], faces: list[Face], *, min_face: int = MIN_FACE, want: str | None = None
) -> Assessment:
    """Score an RGB uint8 [H, W, 3] frame and the faces found in it.

    :param want: a pose from POSES the caller still needs; adds a hint to turn that way.
    """
    if len(faces) != 1:
        hint = "no face: look at the camera" if not faces else "only one face, please"
        return Assessment(faces=len(faces), checks={"one_face": False}, hints=[hint])
    face = faces[0]
    size = min(face.width, face.height)
    gray = _gray_crop(frame, face.box)
    if gray is None:  # a box of less than 2x2 pixels
        return Assessment(faces=1, size=size, checks={"one_face": True, "size": False}, hints=["move closer"])
    sharpness = min(1.0, float(cv2.Laplacian(gray, cv2.CV_64F).var()) / SHARP_VAR)
    brightness = float(gray.mean())
    yaw, pitch = head_pose(face.landmarks)
    pose = pose_bin(yaw, pitch)

    checks = {
        "one_face": True,
        "size": size >= min_face,
        "sharp": sharpness >= MIN_SHARPNESS,
        "light": DARK <= brightness <= BRIGHT,
    }
    hints = []
    if not checks["size"]:
        hints.append("move closer")
    if brightness < DARK:
        hints.append("more light")
    elif brightness > BRIGHT:
        hints.append("less light")
    if not checks["sharp"]:
        hints.append("hold still")
    if want is not None and want != pose:
        hints.append(_turn_hint(want))
    score = min(1.0, size / min_face) * sharpness * _light_score(brightness)
    return Assessment(
        faces=1, pose=pose, yaw=yaw, pitch=pitch, size=size, sharpness=sharpness,
        brightness=brightness, score=float(score), checks=checks, hints=hints,
    )


def head_pose(landmarks: NDArray[np.float32]) -> tuple[float, float]:
    """(yaw, pitch) from dlib's 5 points [5, 2] (x, y): 0-1 one eye's corners, 2-3 the other's, 4 the nose base.

    Both are measured in the eye line's frame, so a tilted (rolled) head keeps its yaw and pitch.
    """
    first, second = landmarks[0:2].mean(axis=0), landmarks[2:4].mean(axis=0)
    left, right = (first, second) if first[0] <= second[0] else (second, first)
    axis = right - left
    distance = float(np.linalg.norm(axis)) or 1.0
    along = axis / distance
    down = np.array([-along[1], along[0]])  # the eye line turned 90 degrees, pointing down the image
    offset = landmarks[4] - (left + right) / 2
    yaw = float(offset @ along) / distance
    pitch = float(offset @ down) / distance - PITCH_FRONT
    return yaw, pitch


def pose_bin(yaw: float, pitch: float) -> str:
    """One of POSES, from the person's point of view: turning to their left moves the nose to the
    image's right (an unmirrored camera faces them). Turning wins over nodding."""
    if yaw >= YAW_TURN:
        return "left"
    if yaw <= -YAW_TURN:
        return "right"
    if pitch <= -PITCH_TURN:
        return "up"
    if pitch >= PITCH_TURN:
        return "down"
    return "front"


def _turn_hint(want: str) -> str:
    return {
        "front": "look straight at the camera",
        "left": "turn slightly left",
        "right": "turn slightly right",
        "up": "tilt your head slightly up",
        "down": "tilt your head slightly down",
    }[want]


# Blur: a face crop is shrunk to DETAIL_SIDE px and its Laplacian's variance divided by its own variance, so the
# measure depends on neither face size nor contrast. CelebA faces at 40-110 px: 1st percentile 0.25 sharp, median
# 0.04-0.06 under a Gaussian blur of sigma 5% of the face's side (0.02 at 7%); below MIN_DETAIL is too blurred.
DETAIL_SIDE = 32
MIN_DETAIL = 0.05


def face_detail(frame: NDArray[np.uint8], box: NDArray[np.int32]) -> float:
    """How much fine detail a face has (see MIN_DETAIL): frame RGB uint8 [H, W, 3], box [left, top, right, bottom]."""
    small = _gray_crop(frame, box, DETAIL_SIDE)
    if small is None:
        return 0.0
    small = small.astype(np.float32)
    return float(cv2.Laplacian(small, cv2.CV_32F).var() / (small.var() + 1.0))


def _gray_crop(frame: NDArray[np.uint8], box: NDArray[np.int32], side: int = SHARP_SIDE) -> NDArray[np.uint8] | None:
    """The box's grey crop scaled to side x side; None when the box holds less than 2x2 pixels of the frame."""
    left, top, right, bottom = (int(v) for v in box)
    crop = np.ascontiguousarray(frame[max(0, top):bottom, max(0, left):right])
    if crop.shape[0] < 2 or crop.shape[1] < 2:
        return None
    return cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (side, side), interpolation=cv2.INTER_AREA)


def _light_score(brightness: float) -> float:
    """1 inside [DARK, BRIGHT], falling linearly to 0 at black and white."""
    if brightness < DARK:
        return brightness / DARK
    if brightness > BRIGHT:
        return (255.0 - brightness) / (255.0 - BRIGHT)
    return 1.0
