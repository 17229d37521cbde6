"""A data folder enrolled with one backbone keeps working after the app moves to another."""

from __future__ import annotations

import time

import pytest
from fakes import FakeBackbone, FakeDetector
from web_helpers import ENROLLED, TEST_THRESHOLD, enroll_json, files_field, log_in, prepare_data_dir

from model.recognizer import Recognizer
from webapp import create_app
from webapp.db import connect

pytestmark = pytest.mark.both_engines  # the re-embedding's reads and writes on SQLite and PostgreSQL


class OldBackbone(FakeBackbone):
    """The backbone the photos were enrolled with: other features, another name."""

    name = "old"

    def __init__(self):
        super().__init__(seed=1)


def recognizer(backbone) -> Recognizer:
    return Recognizer(backbone, detector=FakeDetector(), threshold=TEST_THRESHOLD).load()


def wait_done(app, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while app.extensions["reembed"].progress["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return app.extensions["reembed"].progress


def test_photos_of_another_backbone_are_embedded_again_in_the_background(tmp_path, photo, database_url):
    data_dir = prepare_data_dir(tmp_path / "data")
    base = {"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "t", "DATABASE_URL": database_url}
    old = create_app({**base, "RECOGNIZER": recognizer(OldBackbone())})
    old.extensions["faces"].wait_ready()
    client = log_in(old.test_client())
    assert enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2)]).status_code == 201
    conn = connect(old.config["DATABASE"])
    before = conn.execute("SELECT id, features FROM photos ORDER BY id").fetchall()
    conn.close()

    new = create_app({**base, "RECOGNIZER": recognizer(FakeBackbone())})
    progress = wait_done(new)
    assert progress == {"state": "done", "done": 2, "total": 2, "failed": 0}
    conn = connect(new.config["DATABASE"])
    after = conn.execute("SELECT id, features, backbone FROM photos ORDER BY id").fetchall()
    conn.close()
    assert [r["backbone"] for r in after] == ["fake", "fake"]
    assert all(a["features"] != b["features"] for a, b in zip(after, before))
    assert len(new.extensions["faces"].gallery) == 2
    client = log_in(new.test_client())
    status = client.get("/api/status").get_json()
    assert status["photos"] == 2 and status["reembed"]["state"] == "done"
    name, data = photo(ENROLLED, 1)
    [face] = client.post("/api/recognize", data=files_field([(name, data)], "image")).get_json()["faces"]
    assert face["name"] == "Ada"  # the same picture, now embedded with the new backbone


def test_nothing_to_do_starts_nothing(app):
    assert app.extensions["reembed"].progress == {"state": "idle", "done": 0, "total": 0, "failed": 0}
