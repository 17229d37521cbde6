"""The "Who is this?" inbox, the History page, and their retention purge."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from web_helpers import ENROLLED, STRANGER, enroll_json, webcam_frame

from model.images import load_image
from webapp import create_app, files, inbox_store
from webapp.db import connect
from webapp.inbox_store import Archive, Sighting, UnknownFace
from webapp.live_stream import LiveStream

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL

DAY = 86400
STRANGERS = ["celeb_7210", "celeb_7215"]  # never enrolled


def _db(app):
    return connect(app.config["DATABASE"])


def _archive(app) -> Archive:
    return app.extensions["live"].archive


def _seed(app, celeba_dir, people=STRANGERS, photos=3, seen_at=None) -> dict[str, list[int]]:
    """Inbox faces of real photos, stored the way the live path stores them; returns {person: [face ids]}."""
    recognizer = app.extensions["faces"].recognizer
    ids: dict[str, list[int]] = {}
    conn = _db(app)
    for person in people:
        for path in sorted((celeba_dir / person).glob("*.jpg"))[:photos]:
            image = load_image(path)
            face, _ = recognizer.portrait_face(image)
            features = recognizer.features(image, [face])
            embedding = recognizer.embed(features)[0]
            unknown = UnknownFace(f"seed:{path.stem}", image, face.box.tolist(), features[0], embedding,
                                  time.time() if seen_at is None else seen_at)
            ids.setdefault(person, []).append(inbox_store.save_unknown(conn, app.config["DATA_DIR"], unknown,
                                                                     recognizer.backbone.name))
    conn.close()
    return ids


def _groups(html: str) -> list[list[int]]:
    sections = html.split('class="inbox-group"')[1:]
    return [sorted({int(v) for v in re.findall(r'name="face" value="(\d+)"', section)}) for section in sections]


def _inbox_files(app) -> list[str]:
    folder = Path(app.config["DATA_DIR"]) / files.INBOX_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_pages_need_a_login(anonymous):
    for path in ["/inbox", "/history", "/inbox/faces/1.jpg"]:
        assert anonymous.get(path).status_code == 302, path
    assert anonymous.post("/inbox/dismiss", data={"face": "1"}).status_code in (302, 400, 401)


@pytest.mark.dlib
def test_the_live_path_keeps_one_face_per_unknown_track_and_one_sighting_per_track(app, client, photo, celeba_dir):
    enroll_json(client, "Known", [photo(ENROLLED, i) for i in (1, 2, 3)])
    service = app.extensions["faces"]
    stream = LiveStream(service, _archive(app), unknown_frames=3)
    stranger = webcam_frame(celeba_dir / STRANGER / f"{STRANGER}_0001.jpg")
    known = webcam_frame(celeba_dir / ENROLLED / f"{ENROLLED}_0004.jpg")
    for index in range(6):
        faces = stream.process(stranger)
        assert [f["person_id"] for f in faces] == [None]
        # captured once, at the third unknown frame, and written at once
        assert len(_inbox_files(app)) == (1 if index >= 2 else 0)
    assert not stream.recorder.faces
    unknown_reports = 6
    for _ in range(10):  # nobody: the stranger's track is followed until the next detection frame, then ends
        faces = stream.process(np.full_like(stranger, 200))
        if not faces:
            break
        unknown_reports += 1
    assert not faces
    for _ in range(4):
        assert [f["name"] for f in stream.process(known)] == ["Known"]
    stream.close()

    conn = _db(app)
    faces = conn.execute("SELECT * FROM unknown_faces").fetchall()
    rows = conn.execute("SELECT * FROM sightings ORDER BY id").fetchall()
    conn.close()
    assert len(faces) == 1 and _inbox_files(app) == [faces[0]["file"]]
    assert len(faces[0]["embedding"]) == 128 * 4  # float32 [128]
    expected = [(True, None, unknown_reports), (False, "Known", 4)]
    assert [(r["person_id"] is None, r["name"], r["frames"]) for r in rows] == expected
    assert rows[1]["best_similarity"] >= 0.9 and rows[0]["first_seen"] <= rows[0]["last_seen"]

    page = client.get("/history").get_data(as_text=True)
    assert "Known" in page and "unknown" in page
    known_id = rows[1]["person_id"]
    page = client.get(f"/history?person={known_id}").get_data(as_text=True)
    assert page.count("<tr>") == 2  # the header and Known's row
    page = client.get("/history?person=unknown&from=2000-01-01&to=2000-01-02").get_data(as_text=True)
    assert 'id="history-empty"' in page
    assert client.get("/history?from=yesterday").status_code == 400


@pytest.mark.dlib
def test_name_a_group_as_a_new_person_add_one_to_them_and_dismiss_the_other(app, client, celeba_dir):
    ids = _seed(app, celeba_dir)
    page = client.get("/inbox").get_data(as_text=True)
    groups = _groups(page)
    assert sorted(groups) == sorted(sorted(v) for v in ids.values())

    first, second = ids[STRANGERS[0]], ids[STRANGERS[1]]
    answer = client.post("/inbox/name", data={"face": first[:2], "name": "Alice"})
    assert answer.status_code == 302
    person = client.get("/api/people").get_json()
    people = person["people"] if isinstance(person, dict) else person
    alice = next(p for p in people if p["name"] == "Alice")
    assert alice["photo_count"] == 2
    page = client.get(f"/people/{alice['id']}").get_data(as_text=True)
    for photo_id in re.findall(r"/photos/(\d+)/thumb.jpg", page):
        assert client.get(f"/photos/{photo_id}.jpg").status_code == 200

    answer = client.post("/inbox/add", data={"face": first[2:], "person_id": alice["id"]})
    assert answer.status_code == 302
    assert next(p for p in client.get("/api/people").get_json()["people"] if p["id"] == alice["id"])["photo_count"] == 3
    # Alice is now recognised from her inbox photos.
    other = load_image(sorted((celeba_dir / STRANGERS[0]).glob("*.jpg"))[4])
    service = app.extensions["faces"]
    assert [service.name_of(seen.match.person_id) for seen in service.recognize(other, live=False)] == ["Alice"]

    conn = _db(app)
    left = [r["id"] for r in conn.execute("SELECT id FROM unknown_faces")]
    conn.close()
    assert sorted(left) == sorted(second) and len(_inbox_files(app)) == 3

    answer = client.post("/inbox/dismiss", data={"face": second})
    assert answer.status_code == 302
    conn = _db(app)
    assert conn.execute("SELECT COUNT(*) FROM unknown_faces").fetchone()[0] == 0
    conn.close()
    assert _inbox_files(app) == []
    assert 'id="inbox-empty"' in client.get("/inbox").get_data(as_text=True)
    assert client.post("/inbox/name", data={"face": second, "name": "Bob"}).status_code == 302  # gone: a flash


def test_bad_inbox_requests(client):
    assert client.post("/inbox/dismiss", data={}).status_code == 400
    assert client.post("/inbox/dismiss", data={"face": "x"}).status_code == 400
    assert client.get("/inbox/faces/99.jpg").status_code == 404


def test_retention_purge_deletes_old_rows_and_files(app, tmp_path, web_recognizer, celeba_dir):
    now = time.time()
    old = _seed(app, celeba_dir, people=STRANGERS[:1], photos=2, seen_at=now - 8 * DAY)
    new = _seed(app, celeba_dir, people=STRANGERS[1:], photos=1, seen_at=now - 1 * DAY)
    conn = _db(app)
    inbox_store.write_sightings(conn, [
        Sighting(None, None, now - 40 * DAY, now - 31 * DAY, frames=5),
        Sighting(None, None, now - 2 * DAY, now - 2 * DAY, frames=7),
    ])
    assert len(_inbox_files(app)) == 3

    assert inbox_store.purge(conn, app.config["DATA_DIR"], inbox_days=7, history_days=30) == (2, 1)
    assert [r["id"] for r in conn.execute("SELECT id FROM unknown_faces")] == new[STRANGERS[1]]
    assert [r["frames"] for r in conn.execute("SELECT frames FROM sightings")] == [7]
    assert len(_inbox_files(app)) == 1
    assert not set(old[STRANGERS[0]]) & {r["id"] for r in conn.execute("SELECT id FROM unknown_faces")}

    # At start the app purges with its settings, and sweeps inbox files without rows.
    stray = Path(app.config["DATA_DIR"]) / files.INBOX_DIR / "stray.jpg"
    stray.write_bytes(b"x")
    os.utime(stray, (now - 2 * 3600, now - 2 * 3600))  # PostgreSQL is shared: the sweep spares files under an hour
    create_app({"TESTING": True, "DATA_DIR": app.config["DATA_DIR"], "DATABASE_URL": app.config["DATABASE_URL"],
                "SECRET_KEY": "test", "RECOGNIZER": web_recognizer, "INBOX_RETENTION_DAYS": 0.5,
                "HISTORY_RETENTION_DAYS": 1})
    assert conn.execute("SELECT COUNT(*) FROM unknown_faces").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM sightings").fetchone()[0] == 0
    assert _inbox_files(app) == []
    conn.close()
