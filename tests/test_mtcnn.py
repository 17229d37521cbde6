"""The MTCNN detector ("mtcnn"): real detections in the project's box and keypoint layout, thin frames,
and the three places it is selectable (evaluation tool, trainers' caches, the app).

TensorFlow must stay out of a process that only names the detector; it loads with the detector.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.detect import MTCNNDetector, get_detector

pytest.importorskip("mtcnn", reason="mtcnn==1.0.0 is in requirements.txt")
pytestmark = pytest.mark.slow  # loads TensorFlow (about 10 s) and MTCNN's three networks
PROJECT_DIR = Path(__file__).resolve().parent.parent
PORTRAIT = ("celeb_7201", 1)


@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    return get_detector("mtcnn").load()


@pytest.fixture(scope="module")
def portrait(celeba_dir):
    from model.images import load_image

    person, index = PORTRAIT
    return load_image(celeba_dir / person / f"{person}_{index:04d}.jpg")


def test_naming_the_detector_does_not_load_tensorflow():
    script = """
import sys
from model.detect import get_detector
detector = get_detector("mtcnn")
print(detector.name, sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "mtcnn")))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mtcnn", "[]"]


def test_a_portrait_gives_one_face_with_yunets_keypoint_layout(mtcnn, portrait):
    faces = mtcnn.detect(portrait)
    assert len(faces) == 1
    face = faces[0]
    assert face.box.dtype == np.int32 and 0 <= face.box[0] < face.box[2] <= portrait.shape[1]
    assert 0 <= face.box[1] < face.box[3] <= portrait.shape[0] and face.score > 0.9
    assert face.keypoints.shape == (5, 2) and face.keypoints.dtype == np.float32
    left_eye, right_eye, nose, mouth_left, mouth_right = face.keypoints
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # image left first, as YuNet
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    yunet = get_detector("yunet").detect(portrait)[0]
    assert np.abs(face.keypoints - yunet.keypoints).max() < 0.1 * yunet.width  # the same five points
    assert face.landmarks.shape == (5, 2)  # dlib's, fitted in the box, for dlib's chips
    inside = (face.landmarks >= face.box[:2]) & (face.landmarks <= face.box[2:])
    assert inside.all()


def test_arcface_chips_from_mtcnn_points_match_yunets(mtcnn, portrait):
    from model.align import arcface_chips

    ours = arcface_chips(portrait, mtcnn.detect(portrait)).astype(np.float32)
    theirs = arcface_chips(portrait, get_detector("yunet").detect(portrait)).astype(np.float32)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("shape", [(0, 0, 3), (1, 400, 3), (400, 1, 3), (11, 11, 3), (12, 300, 3), (480, 640, 3)])
def test_thin_empty_and_blank_frames_give_no_faces(mtcnn, shape):
    assert mtcnn.detect(np.zeros(shape, np.uint8)) == []


def test_boxes_of_a_scaled_down_copy_come_back_in_the_frames_pixels(mtcnn, portrait):
    import cv2

    frame = np.zeros((480, 640, 3), np.uint8)
    frame[100:350, 200:450] = portrait
    big = cv2.resize(frame, (1280, 960), interpolation=cv2.INTER_LINEAR)
    small_box = mtcnn.detect(frame)[0].box.astype(float)
    big_box = mtcnn.detect(big, max_side=640)[0].box.astype(float)
    assert np.abs(big_box / 2 - small_box).max() < 4
    assert mtcnn.clone().name == "mtcnn" and mtcnn.clone()._mtcnn is None  # a twin loads its own networks


def test_evaluation_tool_and_feature_cache_take_mtcnn(celeba_dir, tmp_path, capsys):
    from model.training import evaluate
    from model.training.datasets import cache_file

    people = sorted(p for p in celeba_dir.iterdir() if len(list(p.glob("*.jpg"))) >= 3)[:4]
    for person in people:
        (tmp_path / "set" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:3]:
            shutil.copy(photo, tmp_path / "set" / person.name)
    result = evaluate.main(["identify", "--images", str(tmp_path / "set"), "--enroll", "2", "--detector", "mtcnn",
                            "--backbone", "dlib-resnet", "--cache", str(tmp_path / "cache")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["detector"] == "mtcnn" and result["no_face"] == 0 and result["rank1"] >= 0.75
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert [p.name for p in cached] == [cache_file(tmp_path / "set", "dlib-resnet", tmp_path / "cache", flip=True,
                                                   detector="mtcnn").name]
    assert "-mtcnn-" in cached[0].name


def test_the_app_recognises_with_faces_detector_mtcnn(celeba_dir, tmp_path):
    from webapp import create_app

    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "x",
                      "ADMIN_PASSWORD": "long enough pw", "DETECTOR": "mtcnn", "BACKBONE": "dlib-resnet"})
    app.extensions["faces"].wait_ready()
    assert app.extensions["faces"].recognizer.detector.name == "mtcnn"
    client = app.test_client()
    token = client.post("/api/login", json={"password": "long enough pw"}).get_json()["csrf_token"]
    person, index = PORTRAIT
    photo = (celeba_dir / person / f"{person}_{index:04d}.jpg").read_bytes()
    answer = client.post("/api/recognize", data={"image": (io.BytesIO(photo), "a.jpg")},
                         headers={"X-CSRFToken": token}, content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_json()
    faces = answer.get_json()["faces"]
    assert len(faces) == 1 and faces[0]["name"] is None  # nobody enrolled
    left, top, right, bottom = faces[0]["box"]
    assert 40 < right - left < 160 and 40 < bottom - top < 200
