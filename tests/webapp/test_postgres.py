"""PostgreSQL as the store (FACES_DATABASE_URL): migrations, several processes, change notification, faults.

The store behaviour itself runs on both engines in the suites marked `both_engines` (merge, forget, inbox,
strictness, corrections, API keys, the JSON API); this file tests what is PostgreSQL's own.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from web_helpers import ENROLLED, PROJECT_DIR, enroll_json, free_port, prepare_data_dir, wait_until

from fakes import fake_recognizer
from webapp import changes, create_app, db

# sha256 (first 16 hex digits) of each shipped SQLite step as it was written before the steps were shared
# with PostgreSQL: existing data folders must see exactly the same history.
SHIPPED_SQLITE_STEPS = ("ee81b524c8c9a463", "a7aa8cbaafb74373", "17470887bd5faac6", "bc2edff7c03efcf3",
                        "d7c66ffb21c7c2e9", "ce0eefe2c3e58cec", "66effad67f56b9b3", "a5a3f15d41015ef9",
                        "e3b0c44298fc1c14", "78e2d43bfb943f0b")


@pytest.fixture
def engine() -> str:
    """The `app` fixture's engine in this file: PostgreSQL."""
    return "postgres"


def test_the_shipped_sqlite_steps_render_as_they_were():
    rendered = [hashlib.sha256(db.render(step, "sqlite").encode()).hexdigest()[:16] for step in db.MIGRATIONS]
    assert tuple(rendered[:len(SHIPPED_SQLITE_STEPS)]) == SHIPPED_SQLITE_STEPS


def test_an_empty_database_is_migrated_and_its_version_recorded(postgres):
    conn = db.connect(postgres.new_database())
    assert db.migrate(conn) == 0
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(db.SCHEMA_VERSION,)]
    assert db.migrate(conn) == db.SCHEMA_VERSION  # nothing left to do
    tables = {row["table_name"] for row in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"people", "photos", "corrections", "cameras", "api_keys", "stored_settings", "changes"} <= tables
    conn.close()


def test_a_newer_schema_is_refused(postgres):
    conn = db.connect(postgres.new_database())
    db.migrate(conn)
    conn.execute("UPDATE schema_version SET version = ?", (db.SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this app"):
        db.migrate(conn)
    conn.close()


def test_two_processes_starting_together_migrate_once(postgres):
    url = postgres.new_database()
    script = "import sys; from webapp import db; print(db.migrate(db.connect(sys.argv[1])))"
    starts = [subprocess.Popen([sys.executable, "-c", script, url], cwd=PROJECT_DIR, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    found = sorted(int(process.communicate(timeout=60)[0]) for process in starts)
    assert found == [0, db.SCHEMA_VERSION]  # the second waited for the lock, then found the schema done
    conn = db.connect(url)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(db.SCHEMA_VERSION,)]
    conn.close()


def test_names_are_unique_ignoring_case(postgres):
    conn = db.connect(postgres.new_database())
    db.migrate(conn)
    conn.execute("INSERT INTO people (name) VALUES (?)", ("Ada",))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO people (name) VALUES (?)", ("ADA",))
    conn.close()


def test_an_enrollment_reaches_another_process_within_a_second(app, client, photo):
    # The other process polls only every 5 s, so only the NOTIFY can bring the change in time.
    other = create_app({"TESTING": True, "DATA_DIR": app.config["DATA_DIR"], "SECRET_KEY": "test",
                        "DATABASE_URL": app.config["DATABASE_URL"], "RECOGNIZER": fake_recognizer(),
                        "CHANGES_POLL_S": 5.0})
    try:
        poller = other.extensions[changes.EXTENSION]
        wait_until(lambda: poller._listener is not None)  # its first poll listens
        started = time.monotonic()
        person = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
        wait_until(lambda: person["id"] in other.extensions["faces"].names, timeout=2, step=0.01)
        assert time.monotonic() - started < 1.0
    finally:
        poller.stop()


def test_a_malformed_url_is_one_clear_error(tmp_path):
    for url, message in (("mysql://u:secret@host/db", "must look like postgresql://"),
                         ("postgresql://u:secret@host:port/db", "malformed"),
                         ("postgresql://u:secret@host:5432", "must look like postgresql://")):
        with pytest.raises(ValueError, match=message) as raised:
            create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "DATABASE_URL": url,
                        "RECOGNIZER": fake_recognizer()})
        assert "secret" not in str(raised.value)


def test_a_server_that_is_down_is_one_clear_error(tmp_path):
    url = f"postgresql://faces:secret@127.0.0.1:{free_port()}/faces"
    with pytest.raises(db.Unavailable, match="cannot reach the database") as raised:
        create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "DATABASE_URL": url,
                    "RECOGNIZER": fake_recognizer()})
    assert "secret" not in str(raised.value) and "faces:***@127.0.0.1" in str(raised.value)


def test_server_py_exits_with_one_line_when_the_database_is_down(tmp_path):
    env = dict(os.environ, FACES_DATABASE_URL=f"postgresql://faces:secret@127.0.0.1:{free_port()}/faces")
    done = subprocess.run([sys.executable, "server.py", "--data-dir", str(tmp_path / "data"), "--port",
                           str(free_port())], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "error: cannot reach the database" in done.stderr and "Traceback" not in done.stderr
    assert "secret" not in done.stderr + done.stdout


def test_a_database_lost_mid_run_answers_503(app, client, monkeypatch):

    def refuse(target):
        raise sqlite3.OperationalError("connection refused")

    monkeypatch.setattr(db, "connect", refuse)
    answer = client.get("/api/people")
    assert answer.status_code == 503 and "database" in answer.get_json()["error"]
