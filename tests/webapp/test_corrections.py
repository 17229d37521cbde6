"""Corrections: "not this person" on the person page and from the live page (POST /api/corrections)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from web_helpers import ENROLLED, STRANGER, enroll_json, on_background

from webapp import db as app_db


@pytest.fixture
def ada(client, photo):
    """Ada, with two of her photos and, wrongly, one of a stranger's (the last photo)."""
    answer = enroll_json(client, "Ada", [photo(ENROLLED, 1), photo(ENROLLED, 2), photo(STRANGER, 1)])
    assert answer.status_code == 201
    return client.get(f"/api/people/{answer.get_json()['person']['id']}").get_json()


def _corrections(app) -> list:
    conn = app_db.connect(app.config["DATABASE"])
    try:
        return conn.execute("SELECT * FROM corrections ORDER BY id").fetchall()
    finally:
        conn.close()


def test_the_person_page_marks_a_photo_not_this_person(app, client, ada):
    wrong = ada["photos"][-1]["id"]
    html = client.get(f"/people/{ada['id']}").get_data(as_text=True)
    assert f'action="/photos/{wrong}/not-this-person"' in html and "Not this person" in html

    conn = app_db.connect(app.config["DATABASE"])
    stored = conn.execute("SELECT file, features, embedding FROM photos WHERE id = ?", (wrong,)).fetchone()
    conn.close()
    answer = client.post(f"/photos/{wrong}/not-this-person")
    assert answer.status_code == 302 and answer.headers["Location"] == f"/people/{ada['id']}"

    assert [p["id"] for p in client.get(f"/api/people/{ada['id']}").get_json()["photos"]] == [
        p["id"] for p in ada["photos"][:-1]
    ]
    assert not (app.config["DATA_DIR"] / "photos" / stored["file"]).exists()
    assert len(app.extensions["faces"].gallery) == len(ada["photos"]) - 1
    (correction,) = _corrections(app)
    assert correction["person_id"] == ada["id"] and correction["photo_id"] == wrong
    assert correction["features"] == stored["features"] and correction["embedding"] == stored["embedding"]
    assert client.post("/photos/999/not-this-person").status_code == 404


def test_the_live_page_reports_a_wrong_match(app, client, ada, photo):
    frame = on_background(photo(STRANGER, 2)[1])
    (face,) = client.post("/api/recognize", data={"image": (io.BytesIO(frame), "frame.jpg")}).get_json()["faces"]
    answer = client.post("/api/corrections", data={
        "image": (io.BytesIO(frame), "frame.jpg"), "person_id": str(ada["id"]), "box": json.dumps(face["box"]),
    })
    assert answer.status_code == 201, answer.get_json()
    result = answer.get_json()
    (correction,) = _corrections(app)
    assert result["correction_id"] == correction["id"] and correction["person_id"] == ada["id"]
    assert correction["photo_id"] is None and correction["backbone"] == app.extensions["faces"].backbone
    features = np.frombuffer(correction["features"], "<f4")
    assert features.shape == (app.extensions["faces"].recognizer.backbone.dim,) and np.isfinite(features).all()
    assert 'data-corrections-url="/api/corrections"' in client.get("/live").get_data(as_text=True)


def test_bad_corrections_answer_4xx_json(app, client, ada, photo):
    frame = on_background(photo(STRANGER, 2)[1])

    def post(image=frame, person_id=str(ada["id"]), box="[250, 150, 390, 330]"):
        data = {"person_id": person_id, "box": box}
        if image is not None:
            data["image"] = (io.BytesIO(image), "frame.jpg")
        return client.post("/api/corrections", data=data)

    for answer, status in [
        (post(person_id="999"), 404),
        (post(person_id="x"), 400),
        (post(box="[1, 2, 3]"), 400),
        (post(box="not json"), 400),
        (post(image=None), 400),
        (post(image=b"not an image"), 400),
        (post(box="[0, 0, 20, 20]"), 422),  # no face there
    ]:
        assert answer.status_code == status and "error" in answer.get_json(), (status, answer.get_json())
    assert _corrections(app) == []
