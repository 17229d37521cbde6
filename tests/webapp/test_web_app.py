"""The app itself: settings, start-up (data dir, schema, gallery), a model that cannot load, server.py options."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from web_helpers import ENROLLED, STRANGER, log_in, prepare_data_dir, server_session, start_server, stop_server

from model.backbones import VGG16Face
from model.recognizer import Recognizer
from webapp import create_app, db, settings
from webapp.events import LiveFrames


def test_settings_come_from_env_vars():
    config = settings.from_env(
        {"FACES_PORT": "8080", "FACES_THRESHOLD": "0.91", "FACES_LIVE_MAX_SIDE": "480", "FACES_DATA_DIR": "/srv/faces"}
    )
    assert config["PORT"] == 8080 and config["THRESHOLD"] == 0.91 and config["LIVE_MAX_SIDE"] == 480
    assert config["DATA_DIR"] == "/srv/faces" and config["HOST"] == "127.0.0.1"
    defaults = settings.from_env({})
    assert defaults["THRESHOLD"] is None and defaults["BACKBONE"] == "dlib-sface" and defaults["DETECTOR"] == "yunet" and defaults["MIN_FACE_PX"] == 60
    assert defaults["DATA_DIR"].endswith("data")


def test_a_bad_env_var_is_named_in_the_error():
    with pytest.raises(ValueError, match="FACES_PORT='eighty'"):
        settings.from_env({"FACES_PORT": "eighty"})


def test_every_env_var_is_in_the_readme_table():
    table = settings.markdown_table()
    for setting in settings.SETTINGS:
        if setting.env:
            assert f"`{setting.env}`" in table


def test_start_creates_data_dir_database_and_key(tmp_path, web_recognizer):
    data_dir = tmp_path / "new" / "data"
    app = create_app({"DATA_DIR": data_dir, "RECOGNIZER": web_recognizer})
    assert app.config["DATABASE"] == str(data_dir / "faces.db")
    conn = db.connect(app.config["DATABASE"])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"people", "photos"} <= tables
    key = (data_dir / "secret_key").read_text()
    assert len(key) == 64 and (data_dir / "secret_key").stat().st_mode & 0o077 == 0
    again = create_app({"DATA_DIR": data_dir, "RECOGNIZER": web_recognizer})
    assert again.config["SECRET_KEY"] == key


def test_migrate_is_idempotent_and_refuses_a_newer_schema(tmp_path):
    conn = db.connect(tmp_path / "faces.db")
    assert db.migrate(conn) == 0
    assert db.migrate(conn) == db.SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this app"):
        db.migrate(conn)


def test_deleting_a_person_cascades_to_photo_rows(tmp_path):
    conn = db.connect(tmp_path / "faces.db")
    db.migrate(conn)
    conn.execute("INSERT INTO people (id, name) VALUES (1, 'Ada')")
    conn.execute(
        "INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone) "
        "VALUES (1, 'a.jpg', '[0,0,1,1]', 1, 1, x'00', x'00', 'dlib-resnet')"
    )
    conn.execute("DELETE FROM people WHERE id = 1")
    assert conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == 0
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO people (name) VALUES ('x'), ('X')")


def test_a_model_that_cannot_load_is_reported_not_fatal(tmp_path, photo):
    missing = Recognizer(backbone=VGG16Face(weights_path=tmp_path / "vgg_face_weights.h5"))
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": missing})
    service = app.extensions["faces"]
    with pytest.raises(Exception, match="VGG-Face weights"):
        service.wait_ready()
    client = log_in(app.test_client())
    status = client.get("/api/status").get_json()
    assert status["model"] == "failed" and "vgg_face_weights.h5" in status["error"]
    assert "The face model is unavailable" in client.get("/people").get_data(as_text=True)
    name, data = photo(ENROLLED, 1)
    answer = client.post("/api/recognize", data={"image": (io.BytesIO(data), name)})
    assert answer.status_code == 503 and "VGG-Face weights" in answer.get_json()["error"]


def test_an_unknown_backbone_stops_the_start(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        create_app({"DATA_DIR": tmp_path, "BACKBONE": "nope"})


def test_live_frames_keep_only_the_newest_per_connection():
    frames = LiveFrames(service=None, server=None, max_bytes=100)
    assert frames.put("a", b"old") == (0, None)
    assert frames.put("b", b"only") == (0, None)
    assert frames.put("a", b"new") == (1, None)
    assert frames.put("a", "text")[1] == "a frame must be JPEG bytes sent as a binary payload"
    assert "too large" in frames.put("a", b"x" * 101)[1]
    assert frames._take() == ("a", 1, b"new", None)  # a filled its slot first, and keeps its turn (no stream: not connected)
    assert frames._take() == ("b", 0, b"only", None)
    assert frames.dropped == 1


def test_server_options_default_to_env_vars(monkeypatch):
    import server

    monkeypatch.setenv("FACES_PORT", "5123")
    monkeypatch.setenv("FACES_DATA_DIR", "/tmp/faces-here")
    args = server.parse_args([])
    assert (args.host, args.port, args.data_dir) == ("127.0.0.1", 5123, "/tmp/faces-here")
    args = server.parse_args(["--host", "0.0.0.0", "--port", "6000", "--data-dir", "elsewhere"])
    assert (args.host, args.port, args.data_dir) == ("0.0.0.0", 6000, "elsewhere")


@pytest.mark.dlib
def test_a_running_server_has_no_tensorflow_loaded(tmp_path):
    """server.py as users start it, model ready: no TensorFlow library is mapped into the process."""
    process, _, _ = start_server(prepare_data_dir(tmp_path / "data"))
    try:
        maps = Path(f"/proc/{process.pid}/maps").read_text()
    finally:
        stop_server(process)
    assert "dlib" in maps  # the check sees the libraries that are loaded
    assert "tensorflow" not in maps


@pytest.mark.dlib
def test_the_default_model_names_the_enrolled_and_not_a_stranger(tmp_path, celeba_dir):
    """server.py with its own defaults (YuNet, dlib-sface, the open-set rule; no pinned threshold)."""
    defaults = {"FACES_BACKBONE": "dlib-sface", "FACES_DETECTOR": "yunet", "FACES_THRESHOLD": ""}
    process, url, _ = start_server(prepare_data_dir(tmp_path / "data"), extra_env=defaults)
    try:
        session = server_session(url)
        status = session.get(f"{url}/api/status", timeout=10).json()
        assert status["backbone"] == "dlib-sface"
        person = session.post(f"{url}/api/people", json={"name": "Ada"}, timeout=10).json()
        enrolled = [("photos", (p.name, p.read_bytes(), "image/jpeg"))
                    for p in (celeba_dir / ENROLLED / f"{ENROLLED}_{i:04d}.jpg" for i in (1, 2, 3))]
        assert session.post(f"{url}/api/people/{person['id']}/photos", files=enrolled, timeout=60).status_code == 200

        def names(person_dir: str, index: int) -> list:
            path = celeba_dir / person_dir / f"{person_dir}_{index:04d}.jpg"
            answer = session.post(f"{url}/api/recognize", files={"image": (path.name, path.read_bytes())}, timeout=30)
            return [face["name"] for face in answer.json()["faces"]]

        assert names(ENROLLED, 10) == ["Ada"] and names(ENROLLED, 12) == ["Ada"]
        assert names(STRANGER, 1) == [None] and names(STRANGER, 2) == [None]
    finally:
        stop_server(process)
