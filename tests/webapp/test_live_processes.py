"""Live workers as processes (FACES_LIVE_POOL=processes, the default): a real server.py and its children."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from web_helpers import (ENROLLED, STRANGER, LiveClient, data_dir_with_ada, on_background, prepare_data_dir,
                         server_session, start_server, stop_server, wait_until)

from fakes import fake_recognizer
from webapp import create_app

WORKERS = 2


def children(pid: int) -> list[int]:
    """The live worker processes of server `pid` (its children started by multiprocessing's spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat, command = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return sorted(found)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frame_of(celeba_dir: Path, person: str, index: int) -> bytes:
    return on_background((celeba_dir / person / f"{person}_{index:04d}.jpg").read_bytes())


def names(client: LiveClient, frame: bytes) -> list:
    event, answer = client.ask(frame)
    assert event == "faces", answer
    return [face["name"] for face in answer["faces"]]


@pytest.fixture
def server(tmp_path, dlib_recognizer, celeba_dir):
    data_dir = data_dir_with_ada(tmp_path / "data", dlib_recognizer, celeba_dir)
    process, url, log_path = start_server(data_dir, extra_env={"FACES_LIVE_WORKERS": str(WORKERS)})
    try:
        yield process, url, log_path
    finally:
        stop_server(process)


@pytest.mark.slow
@pytest.mark.dlib
def test_streams_are_recognised_in_worker_processes_that_follow_the_gallery(server, celeba_dir):
    process, url, log_path = server
    workers = wait_until(lambda: len(children(process.pid)) == WORKERS and children(process.pid), timeout=20)
    before = {pid: cpu_s(pid) for pid in workers}
    first, second = LiveClient(url, answer_timeout_s=60), LiveClient(url, answer_timeout_s=60)
    try:
        ada = frame_of(celeba_dir, ENROLLED, 10)
        for client in (first, second):  # one stream on each worker
            assert names(client, ada) == ["Ada"], log_path.read_text()[-3000:]
        assert all(cpu_s(pid) > before[pid] + 0.05 for pid in workers), "each worker process recognised a stream"

        # An enrollment on the page is named by the workers from the next frame on; a delete likewise.
        session = server_session(url)
        bob = session.post(f"{url}/api/people", json={"name": "Bob"}, timeout=10).json()
        photos = [("photos", (p.name, p.read_bytes(), "image/jpeg"))
                  for p in (celeba_dir / STRANGER / f"{STRANGER}_{i:04d}.jpg" for i in (1, 2, 3))]
        assert session.post(f"{url}/api/people/{bob['id']}/photos", files=photos, timeout=60).status_code == 200
        stranger = frame_of(celeba_dir, STRANGER, 5)
        for client in (first, second):
            assert names(client, stranger) == ["Bob"]
        assert session.delete(f"{url}/api/people/{bob['id']}", timeout=10).status_code in (200, 204)
        for client in (first, second):
            assert names(client, stranger) == [None]
    finally:
        first.close()
        second.close()


@pytest.mark.slow
@pytest.mark.dlib
def test_a_worker_process_that_dies_is_started_again_and_its_streams_are_answered(server, celeba_dir):
    process, url, _ = server
    workers = wait_until(lambda: len(children(process.pid)) == WORKERS and children(process.pid), timeout=20)
    client = LiveClient(url, answer_timeout_s=60)
    try:
        ada = frame_of(celeba_dir, ENROLLED, 10)
        assert names(client, ada) == ["Ada"]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        event, answer = client.ask(ada)  # the worker's death is this frame's error, or it is already restarted
        assert event in ("faces", "error"), answer
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            event, answer = client.ask(ada)
            if event == "faces":
                break
        assert event == "faces" and [face["name"] for face in answer["faces"]] == ["Ada"]
        fresh = set(children(process.pid))
        assert fresh and not fresh & set(workers)  # the stream's worker is a new process (idle ones: on first use)
    finally:
        client.close()


def test_the_pool_setting_is_checked_and_a_given_recognizer_means_threads(tmp_path):
    with pytest.raises(ValueError, match="FACES_LIVE_POOL='forks'"):
        create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "a"), "SECRET_KEY": "t",
                    "RECOGNIZER": fake_recognizer(), "LIVE_POOL": "forks"})
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "b"), "SECRET_KEY": "t",
                      "RECOGNIZER": fake_recognizer(), "LIVE_POOL": "processes"})
    assert app.extensions["live"].worker_pids == []  # threads: nothing to spawn


@pytest.mark.slow
@pytest.mark.dlib
def test_worker_processes_follow_a_postgresql_store(tmp_path, postgres, celeba_dir):
    """FACES_DATABASE_URL: the workers read the gallery and its changes from PostgreSQL too."""
    url = postgres.new_database()
    process, base, log_path = start_server(prepare_data_dir(tmp_path / "data"),
                                           extra_env={"FACES_DATABASE_URL": url, "FACES_LIVE_WORKERS": "1"})
    client = None
    try:
        session = server_session(base)
        ada = session.post(f"{base}/api/people", json={"name": "Ada"}, timeout=10).json()
        photos = [("photos", (p.name, p.read_bytes(), "image/jpeg"))
                  for p in (celeba_dir / ENROLLED / f"{ENROLLED}_{i:04d}.jpg" for i in (1, 2, 3))]
        assert session.post(f"{base}/api/people/{ada['id']}/photos", files=photos, timeout=60).status_code == 200
        client = LiveClient(base, answer_timeout_s=60)
        frame = frame_of(celeba_dir, ENROLLED, 10)
        assert names(client, frame) == ["Ada"], log_path.read_text()[-3000:]
        assert session.patch(f"{base}/api/people/{ada['id']}", json={"name": "Ada L."}, timeout=10).ok
        assert names(client, frame) == ["Ada L."]
    finally:
        if client is not None:
            client.close()
        stop_server(process)
