"""Deleting a person leaves nothing of them: history, look-alike inbox faces and corrections go too;
the data folder is for its owner alone."""

from __future__ import annotations

import pytest

import stat
import time

import numpy as np
from web_helpers import ENROLLED, STRANGER, enroll_json

from model.images import load_image
from webapp import inbox_store
from webapp.db import connect
from webapp.inbox_store import Sighting, UnknownFace

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL


def _face(app, path):
    recognizer = app.extensions["faces"].recognizer
    image = load_image(path)
    face = recognizer.find_faces(image)[0]
    features = recognizer.features(image, [face])
    return image, face, features[0], recognizer.embed(features)[0]


def test_delete_removes_history_lookalike_inbox_faces_and_corrections(app, client, photo, celeba_dir):
    ada = enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2)]).get_json()["person"]
    bob = enroll_json(client, "Bob", [photo(STRANGER, 1)]).get_json()["person"]
    conn = connect(app.config["DATABASE"])
    backbone = app.extensions["faces"].backbone
    inbox_store.write_sightings(conn, [Sighting(ada["id"], "Ada", time.time(), time.time(), frames=3),
                                       Sighting(bob["id"], "Bob", time.time(), time.time(), frames=4)])
    kept = {}
    for key, path in (("ada", celeba_dir / ENROLLED / f"{ENROLLED}_0001.jpg"),
                      ("bob", celeba_dir / STRANGER / f"{STRANGER}_0001.jpg")):
        image, face, features, embedding = _face(app, path)
        kept[key] = inbox_store.save_unknown(conn, app.config["DATA_DIR"], UnknownFace(
            f"t:{key}", image, face.box.tolist(), features, embedding, time.time()), backbone)
        # A correction "this face is not Bob" for Ada's face, and one for Bob's own face against Ada.
        target = bob["id"] if key == "ada" else ada["id"]
        conn.execute("INSERT INTO corrections (person_id, embedding, features, backbone) VALUES (?, ?, ?, ?)",
                     (target, embedding.astype("<f4").tobytes(), features.astype("<f4").tobytes(), backbone))

    assert client.delete(f"/api/people/{ada['id']}").status_code == 200

    assert [r["name"] for r in conn.execute("SELECT name FROM sightings")] == ["Bob"]
    assert [r["id"] for r in conn.execute("SELECT id FROM unknown_faces")] == [kept["bob"]]
    assert conn.execute("SELECT COUNT(*) FROM corrections").fetchone()[0] == 0  # Ada's look-alike; Bob's went by cascade
    inbox = app.config["DATA_DIR"] / "inbox"
    assert len(list(inbox.iterdir())) == 1
    conn.close()


def test_a_sighting_written_after_the_delete_keeps_no_name(app, client, photo):
    ada = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    late = Sighting(ada["id"], "Ada", time.time(), time.time(), frames=2)
    assert client.delete(f"/api/people/{ada['id']}").status_code == 200
    conn = connect(app.config["DATABASE"])
    inbox_store.write_sightings(conn, [late])
    assert [tuple(r) for r in conn.execute("SELECT person_id, name FROM sightings")] == [(None, None)]
    conn.close()


def test_the_data_folder_and_its_files_are_the_owners_alone(app, client, photo):
    enroll_json(client, "Ada", [photo(ENROLLED, 1)])
    data_dir = app.config["DATA_DIR"]
    modes = {path.relative_to(data_dir).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in [data_dir, *data_dir.rglob("*")]}
    assert modes["."] == 0o700 and modes["photos"] == 0o700
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    assert np.all([modes[name] == 0o600 for name in modes if name.startswith("photos/")])
