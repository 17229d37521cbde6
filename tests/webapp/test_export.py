"""Export (a person or the whole gallery as a zip) and delete (rows, files and embeddings, scanned on disk)."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest
from web_helpers import ENROLLED, STRANGER, enroll_json, log_in

from webapp import create_app, people_store
from webapp.db import from_blob
from webapp.db import connect

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL

# What the data dir holds besides people's data.
# The app's own files; the two locks are empty (processes sharing the folder take turns on them).
INSTANCE_FILES = {"faces.db", "faces.db-wal", "faces.db-shm", "secret_key", "admin_password", "sessions",
                  "sessions.lock", "faces.db.migrate-lock"}


@pytest.fixture
def two(client, photo):
    """Ada (celeb_7201, 3 photos), Bob (celeb_7229, 2 photos) and Cy (no photos)."""
    ada = enroll_json(client, "Ada Lovelace", [photo(ENROLLED, i) for i in (1, 2, 3)]).get_json()["person"]
    bob = enroll_json(client, "Bob <b>", [photo(STRANGER, i) for i in (1, 2)]).get_json()["person"]
    cy = client.post("/api/people", json={"name": "Cy"}).get_json()
    return ada, bob, cy


def read_zip(answer) -> tuple[zipfile.ZipFile, dict]:
    assert answer.status_code == 200 and answer.mimetype == "application/zip"
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    archive = zipfile.ZipFile(io.BytesIO(answer.data))
    assert archive.testzip() is None
    return archive, json.loads(archive.read("people.json"))


def test_a_person_exports_as_a_zip_of_photos_thumbnails_and_data(app, client, two):
    ada, _, _ = two
    answer = client.get(f"/people/{ada['id']}/export")
    assert f"faces-person-{ada['id']}.zip" in answer.headers["Content-Disposition"]
    archive, document = read_zip(answer)
    assert document["format"] == 1 and document["backbone"] == app.extensions["faces"].backbone
    [person] = document["people"]
    assert (person["id"], person["name"]) == (ada["id"], "Ada Lovelace") and len(person["photos"]) == 3
    assert sorted(archive.namelist()) == sorted(
        ["people.json"] + [p["photo"] for p in person["photos"]] + [p["thumb"] for p in person["photos"]]
    )
    db = connect(app.config["DATABASE"])
    data_dir = app.config["DATA_DIR"]
    for entry in person["photos"]:
        row = db.execute("SELECT * FROM photos WHERE id = ?", (entry["id"],)).fetchone()
        assert archive.read(entry["photo"]) == people_store.photo_path(data_dir, row).read_bytes()
        assert archive.read(entry["thumb"]) == people_store.photo_path(data_dir, row, thumb=True).read_bytes()
        embedding = np.asarray(entry["embedding"], dtype=np.float32)
        assert embedding.shape == (128,) and np.array_equal(embedding, from_blob(row["embedding"]))
        assert np.array_equal(np.asarray(entry["features"], dtype=np.float32), from_blob(row["features"]))
        assert abs(np.linalg.norm(embedding) - 1) < 1e-4
        assert entry["box"] == json.loads(row["box"]) and (entry["width"], entry["height"]) == (250, 250)
        assert "missing" not in entry


def test_the_whole_gallery_exports_in_one_zip(client, two):
    ada, bob, cy = two
    archive, document = read_zip(client.get("/export"))
    assert re.search(r"faces-gallery-\d{8}-\d{6}\.zip", client.get("/export").headers["Content-Disposition"])
    people = {p["name"]: p for p in document["people"]}
    assert set(people) == {"Ada Lovelace", "Bob <b>", "Cy"}
    assert [len(people[n]["photos"]) for n in ("Ada Lovelace", "Bob <b>", "Cy")] == [3, 2, 0]
    assert len([n for n in archive.namelist() if n.startswith("photos/")]) == 5
    assert len([n for n in archive.namelist() if n.startswith("thumbs/")]) == 5


def test_export_buttons_and_refusals(client, anonymous, two):
    ada, _, _ = two
    assert f'href="/people/{ada["id"]}/export"' in client.get(ada["url"]).get_data(as_text=True)
    assert 'href="/export"' in client.get("/people").get_data(as_text=True)
    assert client.get("/people/999/export").status_code == 404
    assert anonymous.get(f"/people/{ada['id']}/export").headers["Location"].startswith("/login")
    assert anonymous.get("/export").status_code == 302


def test_a_missing_file_is_listed_not_fatal(app, client, two):
    ada, _, _ = two
    first = sorted((app.config["DATA_DIR"] / "photos").iterdir())[0]
    first.unlink()
    archive, document = read_zip(client.get("/export"))
    missing = [p for person in document["people"] for p in person["photos"] if p.get("missing")]
    assert len(missing) == 1 and missing[0]["photo"] == f"photos/{first.name}"


def scan(data_dir) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("how", ["api", "page"])
def test_deleting_a_person_leaves_nothing_of_them_in_the_data_folder(app, client, two, web_recognizer, how):
    ada, bob, _ = two
    data_dir = app.config["DATA_DIR"]
    db = connect(app.config["DATABASE"])
    ada_rows = db.execute("SELECT file, embedding, features FROM photos WHERE person_id = ?", (ada["id"],)).fetchall()
    bob_files = {row["file"] for row in db.execute("SELECT file FROM photos WHERE person_id = ?", (bob["id"],))}
    db.close()
    service = app.extensions["faces"]
    assert len(service.gallery) == 5

    if how == "api":
        assert client.delete(f"/api/people/{ada['id']}").get_json() == {"deleted": ada["id"]}
    else:
        assert client.post(f"/people/{ada['id']}/delete").status_code == 302

    files = scan(data_dir)
    image_files = {name for name in files if name.startswith(("photos/", "thumbs/"))}
    assert image_files == {f"{folder}/{file}" for folder in ("photos", "thumbs") for file in bob_files}
    assert set(files) - image_files <= INSTANCE_FILES
    everything = b"".join(files.values())
    for row in ada_rows:  # not in any file of the data folder: SQLite zeroes rows (secure_delete), empties the WAL
        # (PostgreSQL keeps its rows elsewhere: README, "What stays on disk after a delete")
        assert row["file"].encode() not in everything
        assert row["embedding"] not in everything and row["features"][:64] not in everything
    assert "Ada Lovelace".encode() not in everything

    # The in-memory gallery, and one rebuilt from the database, hold Bob alone.
    assert len(service.gallery) == 2 and ada["id"] not in service.names
    again = create_app({"TESTING": True, "DATA_DIR": data_dir, "DATABASE_URL": app.config["DATABASE_URL"],
                        "RECOGNIZER": web_recognizer})
    assert len(again.extensions["faces"].gallery) == 2 and set(again.extensions["faces"].names) == {bob["id"], two[2]["id"]}
    people = log_in(again.test_client()).get("/api/people").get_json()["people"]
    assert [p["name"] for p in people] == ["Bob <b>", "Cy"]
