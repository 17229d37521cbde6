"""Faults: kill -9 the real server in the middle of a large enrollment, restart it, and find everything whole.

An enrollment writes its files first (each to .<name>.tmp, then renamed) and
commits all its rows in one transaction after. A server killed in between
leaves files without rows; the next start sweeps them. The people committed
before are untouched, and SQLite's integrity check passes.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from web_helpers import ENROLLED, enroll_json, log_in, prepare_data_dir, server_session, start_server, stop_server

from webapp import create_app

BIG = 40  # photos in the enrollment that gets killed
POLL_S = 0.002


def stored(data_dir: Path) -> dict:
    """Rows and files, read with the server stopped."""
    conn = sqlite3.connect(data_dir / "faces.db")
    try:
        people = dict(conn.execute("SELECT name, id FROM people").fetchall())
        rows = {file for (file,) in conn.execute("SELECT file FROM photos")}
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()
    files = {folder: {p.name for p in (data_dir / folder).iterdir()} for folder in ("photos", "thumbs")}
    return {"people": people, "rows": rows, "files": files, "integrity": integrity, "foreign": foreign}


def big_upload(celeba_dir: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """BIG portraits, from several people (enrollment does not compare faces), as requests' files."""
    paths = [p for folder in sorted(celeba_dir.iterdir())[10:30] for p in sorted(folder.glob("*.jpg"))[:2]][:BIG]
    assert len(paths) == BIG
    return [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


@pytest.mark.slow
@pytest.mark.dlib  # a real server.py, so the real model
def test_kill_9_during_a_large_enrollment_leaves_no_orphans(tmp_path, celeba_dir):
    data_dir = tmp_path / "data"
    process, url, log_path = start_server(data_dir)
    try:
        session = server_session(url)
        ada = [("photos", (p.name, p.read_bytes(), "image/jpeg"))
               for p in sorted((celeba_dir / ENROLLED).glob("*.jpg"))[:3]]
        answer = session.post(f"{url}/people/new", data={"name": "Ada"}, files=ada,
                              headers={"Accept": "application/json"}, timeout=60)
        assert answer.status_code == 201
        ada_files = set(os.listdir(data_dir / "photos"))

        outcome = {}

        def enroll_big():
            try:
                outcome["status"] = session.post(
                    f"{url}/people/new", data={"name": "Big"}, files=big_upload(celeba_dir),
                    headers={"Accept": "application/json"}, timeout=120,
                ).status_code
            except OSError as exc:  # the connection dies with the server
                outcome["error"] = exc

        sender = threading.Thread(target=enroll_big)
        sender.start()
        deadline = time.monotonic() + 120
        # Kill once the enrollment has written a quarter of its files: after its analysis, before its commit.
        while len(set(os.listdir(data_dir / "photos")) - ada_files) < BIG // 4:
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(POLL_S)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        sender.join(30)
        assert "error" in outcome, outcome  # the request never got an answer
    finally:
        if process.poll() is None:
            stop_server(process)

    crashed = stored(data_dir)
    assert crashed["integrity"] == [("ok",)] and crashed["foreign"] == []
    assert set(crashed["people"]) == {"Ada"}  # Big's rows were never committed
    left_behind = [f"{folder}/{name}" for folder, names in crashed["files"].items() for name in names - crashed["rows"]]
    assert left_behind, "the kill came before any file was written; nothing was tested"

    process, url, log_path = start_server(data_dir)  # the restart sweeps
    try:
        session = server_session(url)
        people = session.get(f"{url}/api/people", timeout=10).json()["people"]
        assert [(p["name"], p["photo_count"]) for p in people] == [("Ada", 3)]
        assert session.get(f"{url}/api/status", timeout=10).json()["photos"] == 3
        assert "left by an interrupted enrollment" in log_path.read_text()
        again = session.post(f"{url}/people/new", data={"name": "Big"}, files=big_upload(celeba_dir)[:3],
                             headers={"Accept": "application/json"}, timeout=60)
        assert again.status_code == 201  # the name was never taken
    finally:
        stop_server(process)

    after = stored(data_dir)
    assert after["integrity"] == [("ok",)] and after["foreign"] == []
    assert after["files"]["photos"] == after["files"]["thumbs"] == after["rows"]  # no orphans, no .tmp, none missing
    assert len(after["rows"]) == 6 and set(after["people"]) == {"Ada", "Big"}
    print(f"\nkill -9 mid-enrollment: {len(left_behind)} file(s) left behind, swept at restart")


def test_the_start_sweeps_orphans_and_unfinished_files(tmp_path, web_recognizer, photo, caplog):
    data_dir = prepare_data_dir(tmp_path / "data")
    app = create_app({"TESTING": True, "DATA_DIR": data_dir, "RECOGNIZER": web_recognizer})
    enroll_json(log_in(app.test_client()), "Ada", [photo(ENROLLED, i) for i in (1, 2)])
    kept = {p.relative_to(data_dir) for p in data_dir.rglob("*.jpg")}
    junk = ["photos/0123456789abcdef0123456789abcdef.jpg", "thumbs/0123456789abcdef0123456789abcdef.jpg",
            "photos/.fedcba9876543210fedcba9876543210.jpg.tmp", ".admin_password.k2j3h4.tmp"]
    for name in junk:
        (data_dir / name).write_bytes(b"\xff\xd8 half a photo")

    with caplog.at_level(logging.WARNING, logger="webapp"):
        again = create_app({"TESTING": True, "DATA_DIR": data_dir, "RECOGNIZER": web_recognizer})
    assert not any((data_dir / name).exists() for name in junk)
    assert {p.relative_to(data_dir) for p in data_dir.rglob("*.jpg")} == kept
    assert "removed 4 file(s) left by an interrupted enrollment" in caplog.text
    assert len(again.extensions["faces"].gallery) == 2

    # A row whose file is gone is reported, never deleted: the row (and its embedding) is the data.
    victim = sorted((data_dir / "photos").iterdir())[0]
    victim.unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="webapp"):
        third = create_app({"TESTING": True, "DATA_DIR": data_dir, "RECOGNIZER": web_recognizer})
    assert "1 photo(s) have no image file" in caplog.text
    assert len(third.extensions["faces"].gallery) == 2
