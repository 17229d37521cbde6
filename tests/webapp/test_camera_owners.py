"""Several processes on one store: each enabled server camera is read by exactly one of them
(webapp.camera_claims), the others answer that it is read elsewhere, and a camera whose owner stops or is
killed is taken over. Also: the start-up sweep spares the files of an enrollment another process is writing.

Two apps in this process stand for two processes (each claim is its own lock file descriptor or its own
PostgreSQL session, so they exclude each other as two processes would); the kill -9 test runs two real
server.py.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_cameras import add, enrolled_frame, frames, make_camera_app, named, sightings, status, wait_for  # noqa: F401
from web_helpers import (
    ENROLLED, TEST_THRESHOLD, enroll_json, free_port, log_in, prepare_data_dir, server_session, start_server,
    stop_process,
)

from fakes import fake_recognizer
from webapp import camera_manager, camera_relay, create_app

# A camera left by its owner is taken over on the other's next claim round, plus its first frame.
TAKE_OVER_S = camera_manager.CLAIM_EVERY_S + 4.0
ME = f"process {os.getpid()} on {os.uname().nodename}"  # both apps of a test run in this process


def write_video(path: Path, picture: np.ndarray, frames_n: int = 20) -> Path:
    """A 10 fps MJPEG .avi of one picture (BGR), which the camera plays again and again."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (picture.shape[1], picture.shape[0]))
    for _ in range(frames_n):
        writer.write(picture)
    writer.release()
    return path


@pytest.fixture
def two_apps(tmp_path, database_url, engine):
    """Two apps on one data folder and one store (SQLite with FACES_PROCESSES=2, or one PostgreSQL database)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    data_dir = prepare_data_dir(tmp_path / "data")
    config = {"CAMERA_FILE_DIRS": str(videos), "DATABASE_URL": database_url, "PROCESSES": 2}
    apps = [make_camera_app(data_dir, fake_recognizer(threshold=TEST_THRESHOLD), **config) for _ in range(2)]
    yield apps, videos
    for app in apps:
        app.extensions["cameras"].stop()
        app.extensions["changes"].stop()


def readers(apps) -> list[int]:
    """Which of the apps read camera 1 now."""
    return [i for i, app in enumerate(apps) if app.extensions["cameras"].feed(1) is not None]


@pytest.mark.both_engines
def test_one_process_reads_a_camera_and_the_other_takes_it_over(two_apps, frames):
    apps, videos = two_apps
    clients = [log_in(app.test_client()) for app in apps]
    frame = frames(ENROLLED, 10)
    assert enroll_json(clients[0], "Ada", [("frame.jpg", frame)]).status_code == 201
    picture = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    camera = add(clients[0], "Door", str(write_video(videos / "door.avi", picture)))
    assert camera["id"] == 1
    # The other app sees the new row on its next claim round and finds the camera taken.
    assert wait_for(lambda: status(clients[1], 1)["reader"], timeout=TAKE_OVER_S)
    assert wait_for(lambda: named(clients[0], 1, "Ada"))
    assert readers(apps) == [0]
    # The other answers with the owner's frames, relayed through the data folder.
    relayed = wait_for(lambda: named(clients[1], 1, "Ada"))
    other = status(clients[1], 1)
    assert other["reader"] == status(clients[0], 1)["reader"] == ME
    assert other["state"] == "online" and other["frames"] > 0
    picture = clients[1].get(relayed["frame_url"])
    assert picture.status_code == 200 and picture.mimetype == "image/jpeg"
    assert int(picture.headers["X-Frame-Id"]) >= relayed["frame_id"]
    assert cv2.imdecode(np.frombuffer(picture.data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (480, 640)
    assert "Door" in clients[1].get("/cameras").get_data(as_text=True)
    time.sleep(2 * camera_manager.CLAIM_EVERY_S)  # several claim rounds: nothing changes hands
    assert readers(apps) == [0]

    # A change made on the process that does not read the camera reaches the one that does.
    assert clients[1].patch("/api/cameras/1", json={"enabled": False}).status_code == 200
    assert wait_for(lambda: readers(apps) == [], timeout=TAKE_OVER_S)
    assert status(clients[0], 1)["state"] == status(clients[1], 1)["state"] == "disabled"
    assert clients[1].patch("/api/cameras/1", json={"enabled": True}).status_code == 200
    assert wait_for(lambda: len(readers(apps)) == 1 and all(status(c, 1)["reader"] for c in clients),
                    timeout=TAKE_OVER_S)
    [owner] = readers(apps)
    other = 1 - owner
    assert wait_for(lambda: named(clients[owner], 1, "Ada"))

    # The owner stops (its lock goes with it): the other reads the camera within a claim round.
    stopped_at = time.monotonic()
    apps[owner].extensions["cameras"].stop()
    assert wait_for(lambda: readers(apps) == [other] and named(clients[other], 1, "Ada"), timeout=TAKE_OVER_S)
    took_s = time.monotonic() - stopped_at
    apps[other].extensions["cameras"].stop()
    # Each stretch of reading was one track, written once: one reader at a time, never two sightings at once.
    ada = [row for row in sightings(apps[0]) if row[0] == "Ada"]
    assert len(ada) == 3, ada
    print(f"\ntaken over {took_s:.2f} s after the owner stopped")


def test_without_fresh_frames_the_other_says_who_reads_the_camera(two_apps, monkeypatch):
    apps, videos = two_apps
    clients = [log_in(app.test_client()) for app in apps]
    add(clients[0], "Door", str(write_video(videos / "door.avi", np.full((240, 320, 3), 90, np.uint8))))
    assert wait_for(lambda: status(clients[0], 1)["state"] == "online")
    monkeypatch.setattr(camera_relay, "FRESH_S", -1.0)  # every relayed frame is too old, as after a kill -9
    assert wait_for(lambda: status(clients[1], 1)["state"] == "elsewhere", timeout=TAKE_OVER_S)
    assert status(clients[1], 1)["error"] == f"read by {ME}; no frame from it yet"
    faces = clients[1].get("/api/cameras/1/faces").get_json()
    assert faces["faces"] == [] and faces["frame_url"] is None and faces["status"]["state"] == "elsewhere"
    answer = clients[1].get("/api/cameras/1/frame.jpg")
    assert answer.status_code == 404 and "read by process" in answer.get_json()["error"]
    assert readers(apps) == [0]


def test_the_other_shows_why_a_camera_is_offline(two_apps):
    apps, _ = two_apps
    clients = [log_in(app.test_client()) for app in apps]
    add(clients[0], "Gone", f"http://127.0.0.1:{free_port()}/stream.mjpg")  # nothing listens there
    assert wait_for(lambda: status(clients[0], 1)["state"] == "offline")
    # The owner gives no frames; its claim round hands over its status while the other asks.
    assert wait_for(lambda: status(clients[1], 1)["reader"] and status(clients[1], 1)["state"] == "offline",
                    timeout=TAKE_OVER_S)
    seen = status(clients[1], 1)
    assert "refused" in seen["error"] and seen["reader"] == ME
    assert readers(apps) == [0] and clients[1].get("/api/cameras/1/frame.jpg").status_code == 404


@pytest.mark.both_engines
def test_a_camera_deleted_elsewhere_stops_and_its_lock_is_free(two_apps, frames):
    apps, videos = two_apps
    clients = [log_in(app.test_client()) for app in apps]
    add(clients[0], "Door", str(write_video(videos / "door.avi", np.full((240, 320, 3), 90, np.uint8))))
    assert wait_for(lambda: status(clients[1], 1)["reader"], timeout=TAKE_OVER_S)
    assert clients[1].delete("/api/cameras/1").status_code == 200
    assert wait_for(lambda: readers(apps) == [], timeout=TAKE_OVER_S)
    assert apps[1].extensions["cameras"].claims.claim(1)  # the owner let go of it
    apps[1].extensions["cameras"].claims.release(1)


def test_one_process_alone_holds_no_locks(tmp_path, frames):
    """The default (SQLite, one process): every camera is read here, no lock files, no `reader` in the status."""
    videos = tmp_path / "videos"
    videos.mkdir()
    app = make_camera_app(prepare_data_dir(tmp_path / "data"), fake_recognizer(threshold=TEST_THRESHOLD),
                          CAMERA_FILE_DIRS=str(videos))
    try:
        client = log_in(app.test_client())
        add(client, "Door", str(write_video(videos / "door.avi", np.full((240, 320, 3), 90, np.uint8))))
        assert wait_for(lambda: status(client, 1)["state"] == "online")
        assert "reader" not in status(client, 1) and not (app.config["DATA_DIR"] / "cameras").exists()
    finally:
        app.extensions["cameras"].stop()


# --- kill -9 of the owner, real processes -----------------------------------------------------------------


def own_state(session, url: str, pid: int) -> str | None:
    """The camera's state on this process when this process reads it, else None."""
    camera = session.get(f"{url}/api/cameras/1", timeout=5).json()
    reader = camera["status"]["reader"] or ""
    return camera["status"]["state"] if reader.startswith(f"process {pid} ") else None


@pytest.mark.slow
@pytest.mark.dlib  # real server.py processes, so the real model
@pytest.mark.parametrize("engine", ["sqlite", "postgres"], indirect=True)
def test_kill_9_of_the_owner_hands_the_camera_over(tmp_path, database_url):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "door.avi", np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8))
    env = {"FACES_PROCESSES": "2", "FACES_CAMERA_FILE_DIRS": str(videos), "FACES_LIVE_WORKERS": "1"}
    if database_url:
        env["FACES_DATABASE_URL"] = database_url
    data_dir = tmp_path / "data"
    servers = [start_server(data_dir, extra_env=env)[:2]]
    try:
        session = server_session(servers[0][1])
        assert session.post(f"{servers[0][1]}/api/cameras", json={"name": "Door", "url": str(videos / "door.avi")},
                            timeout=10).status_code == 201
        servers.append(start_server(data_dir, extra_env=env)[:2])
        took = []
        for _ in range(3):
            (owner, owner_url), (other, other_url) = servers
            if own_state(session, other_url, other.pid) is not None:  # the other one reads it: swap
                (owner, owner_url), (other, other_url) = (other, other_url), (owner, owner_url)
            assert wait_for(lambda: own_state(session, owner_url, owner.pid) == "online")
            seen = session.get(f"{other_url}/api/cameras/1", timeout=5).json()["status"]  # relayed
            assert seen["reader"].startswith(f"process {owner.pid} "), seen
            killed_at = time.monotonic()
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait()
            assert wait_for(lambda: own_state(session, other_url, other.pid) == "online", timeout=TAKE_OVER_S)
            took.append(time.monotonic() - killed_at)
            servers = [(other, other_url), start_server(data_dir, extra_env=env)[:2]]
        print(f"\nkill -9 of the owner -> the other reads the camera: {', '.join(f'{t:.2f}' for t in took)} s "
              f"(p50 {statistics.median(took):.2f} s, max {max(took):.2f} s)")
    finally:
        for process, _ in servers:
            stop_process(process)


# --- the start-up sweep ------------------------------------------------------------------------------------


@pytest.mark.parametrize("processes, fresh_kept", [(2, True), (1, False)])
def test_the_sweep_spares_fresh_files_when_processes_share_the_folder(tmp_path, processes, fresh_kept):
    data_dir = prepare_data_dir(tmp_path / "data")
    config = {"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test", "PROCESSES": processes,
              "RECOGNIZER": fake_recognizer(threshold=TEST_THRESHOLD)}
    first = create_app(config)
    old_at = time.time() - 2 * 3600
    orphans = {}
    for folder in ("photos", "thumbs", "inbox"):
        (data_dir / folder).mkdir(exist_ok=True)
        for age in ("fresh", "old"):
            path = data_dir / folder / f"{age}{'0' * 27}.jpg"
            path.write_bytes(b"\xff\xd8 being written")
            if age == "old":
                os.utime(path, (old_at, old_at))
            orphans[path] = age
    second = create_app(config)  # another process starting while the first one enrolls
    for path, age in orphans.items():
        assert path.exists() == (age == "fresh" and fresh_kept), path
    for app in (first, second):
        if "changes" in app.extensions:
            app.extensions["changes"].stop()
        app.extensions["cameras"].stop()
