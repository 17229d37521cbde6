"""Reloading a retrained head in the running app: stored features are re-embedded, no photo is read."""

from __future__ import annotations

import numpy as np
import pytest
from web_helpers import ENROLLED, STRANGER, files_field, prepare_data_dir

from model.head import Head, save_head
from model.recognizer import Recognizer
from webapp import create_app


pytestmark = pytest.mark.dlib  # what a retrained head changes in the real model's decisions


@pytest.fixture
def weights_dir(tmp_path):
    return tmp_path / "weights"


@pytest.fixture
def app(tmp_path, recognizer, weights_dir):
    """An app with its own Recognizer (a reload swaps its head) and no pinned threshold."""
    own = Recognizer(backbone=recognizer.backbone, detector=recognizer.detector, weights_dir=weights_dir)
    data_dir = prepare_data_dir(tmp_path / "data")
    app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test", "RECOGNIZER": own})
    app.extensions["faces"].wait_ready()
    return app


def enroll_ada(client, photo) -> int:
    person = client.post("/api/people", json={"name": "Ada"}).get_json()
    files = files_field([photo(ENROLLED, i) for i in (1, 2, 3)])
    assert client.post(f"/api/people/{person['id']}/photos", data=files).status_code == 200
    return person["id"]


def recognize(client, photo_bytes):
    name, data = photo_bytes
    import io

    return client.post("/api/recognize", data={"image": (io.BytesIO(data), name)}).get_json()["faces"]


def test_reload_applies_the_new_head_and_its_threshold(client, photo, weights_dir):
    person_id = enroll_ada(client, photo)
    before = recognize(client, photo(ENROLLED, 5))[0]
    assert before["person_id"] == person_id
    assert recognize(client, photo(STRANGER, 1))[0]["person_id"] is None

    # A random rotation: every similarity stays the same, every stored embedding changes.
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(128, 128)))
    save_head(Head(rotation.astype(np.float32), "dlib-resnet", threshold=0.5, info={"loss": "test"}),
              weights_dir / "head_dlib-resnet.h5")
    answer = client.post("/api/head/reload")
    assert answer.status_code == 200
    summary = answer.get_json()
    assert summary["photos"] == 3 and summary["threshold"] == pytest.approx(0.5)
    assert summary["head"]["loss"] == "test"

    service = client.application.extensions["faces"]
    assert service.live_recognizer.head is service.recognizer.head  # the live twin got it too
    after = recognize(client, photo(ENROLLED, 5))[0]
    assert after["person_id"] == person_id
    assert after["similarity"] == pytest.approx(before["similarity"], abs=1e-3)
    # The new threshold (0.5) now names a stranger the default (0.932) left unknown: proof it is in use.
    assert recognize(client, photo(STRANGER, 1))[0]["person_id"] == person_id


def test_a_bad_head_file_changes_nothing(client, photo, weights_dir):
    person_id = enroll_ada(client, photo)
    weights_dir.mkdir()
    (weights_dir / "head_dlib-resnet.h5").write_bytes(b"not a head")
    answer = client.post("/api/head/reload")
    assert answer.status_code == 422 and "cannot read head file" in answer.get_json()["error"]
    assert recognize(client, photo(ENROLLED, 5))[0]["person_id"] == person_id


def test_the_people_page_has_a_reload_button(client, photo, weights_dir):
    enroll_ada(client, photo)
    page = client.get("/people").get_data(as_text=True)
    assert 'action="/head/reload"' in page
    answer = client.post("/head/reload", follow_redirects=True)
    assert "Head reloaded: 3 photo(s) re-embedded" in answer.get_data(as_text=True)
