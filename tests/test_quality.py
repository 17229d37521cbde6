"""model.quality on real photos: pose from landmarks, sharpness, light and the face count."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model.detect import FaceDetector
from model.images import decode_image
from model.quality import MIN_FACE, assess


@pytest.fixture(scope="module")
def detector():
    return FaceDetector().load()


@pytest.fixture(scope="module")
def portrait(celeba_dir):
    """A frontal CelebA portrait (250x250, face about 104 px)."""
    return decode_image((celeba_dir / "celeb_7204" / "celeb_7204_0001.jpg").read_bytes())


def test_frontal_portrait_is_front_and_good(detector, portrait):
    result = assess(portrait, detector.detect(portrait))
    assert result.faces == 1
    assert result.pose == "front"
    assert all(result.checks.values())
    assert result.score > 0.8
    assert result.hints == []


def test_mirrored_portrait_has_the_opposite_yaw(detector, portrait):
    mirrored = np.ascontiguousarray(portrait[:, ::-1])
    yaw = assess(portrait, detector.detect(portrait)).yaw
    yaw_mirrored = assess(mirrored, detector.detect(mirrored)).yaw
    assert yaw * yaw_mirrored < 0


def test_turned_landmarks_give_side_poses_and_hints(detector, portrait):
    face = detector.detect(portrait)[0]
    width = abs(face.landmarks[0, 0] - face.landmarks[2, 0])

    def with_nose(dx: float, dy: float):
        landmarks = face.landmarks.copy()
        landmarks[4] = landmarks[4] + [dx * width, dy * width]
        return assess(portrait, [type(face)(face.box, landmarks, face.score)], want="front")

    assert with_nose(0.5, 0).pose == "left"  # the person's left: the nose moves to the image's right
    assert with_nose(-0.5, 0).pose == "right"
    assert with_nose(0, -0.5).pose == "up"
    assert with_nose(0, 0.5).pose == "down"
    assert "look straight at the camera" in with_nose(0.5, 0).hints


def test_blurred_copy_is_less_sharp(detector, portrait):
    faces = detector.detect(portrait)
    sharp = assess(portrait, faces)
    blurred = assess(cv2.GaussianBlur(portrait, (0, 0), 3), faces)
    assert blurred.sharpness < sharp.sharpness / 2
    assert blurred.score < sharp.score
    assert "hold still" in blurred.hints


def test_darkened_copy_asks_for_more_light(detector, portrait):
    faces = detector.detect(portrait)
    result = assess((portrait * 0.25).astype(np.uint8), faces)
    assert not result.checks["light"]
    assert "more light" in result.hints


def test_small_face_asks_to_move_closer(detector, portrait):
    result = assess(portrait, detector.detect(portrait), min_face=2 * MIN_FACE)
    assert "move closer" in result.hints


def test_two_people_asks_for_one_face(detector, samples_dir):
    photo = decode_image((samples_dir / "two_people.jpg").read_bytes())
    result = assess(photo, detector.detect(photo, upsample=1))
    assert result.faces == 2
    assert result.pose is None and result.score == 0
    assert "only one face, please" in result.hints
