"""Batch work with FACES_REDIS_URL: queued once in a private Redis and run by the job worker (webapp.jobs).

Apps run in this process on one data folder, as several server.py processes would; the worker runs in a
process of its own (tests/webapp/jobs_worker.py: `python -m webapp.jobs` on the fakes) where a test kills
it, or in this process (burst: until the queue is empty).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
from cluster_helpers import wait_for
from web_helpers import ENROLLED, STRANGER, TEST_THRESHOLD, free_port, log_in, prepare_data_dir

from fakes import FakeBackbone, FakeDetector, fake_recognizer
from model.recognizer import Recognizer
from webapp import create_app, db, inbox_store, jobs
from webapp.inbox_store import Sighting

sys.path.insert(0, str(os.path.join(os.path.dirname(__file__), "..", "..", "scripts")))
from cluster import Cluster  # noqa: E402

POLL_S = 0.05
DAY = 86400.0
WORKER = os.path.join(os.path.dirname(__file__), "jobs_worker.py")


@pytest.fixture
def redis_url(tmp_path):
    """A private redis-server on a free loopback port, with a password (scripts/cluster.py's)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (Debian package; ./test.sh installs it)")
    cluster = Cluster(run_dir=tmp_path)
    cluster.start_redis()
    yield cluster.redis_url
    cluster.stop_redis()


def new_app(data_dir, recognizer=None, **config):
    app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "t", "CHANGES_POLL_S": POLL_S,
                      "RECOGNIZER": recognizer or fake_recognizer(threshold=TEST_THRESHOLD), **config})
    app.extensions["faces"].wait_ready()
    return app


def stop(*apps) -> None:
    for app in apps:
        for name in ("redis", "changes"):
            if name in app.extensions:
                app.extensions[name].stop()


def start_worker(tmp_path, data_dir, url: str, slow_s: float = 0.0, database_url: str | None = None):
    log = open(tmp_path / "worker.log", "ab")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if database_url:
        env["FACES_DATABASE_URL"] = database_url
    return subprocess.Popen([sys.executable, WORKER, str(data_dir), url, str(slow_s)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


def zip_of(photo, people: dict[str, list[int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for person, indices in people.items():
            for i in indices:
                z.writestr(f"{person}/{i}.jpg", photo(person, i)[1])
    return out.getvalue()


def start_import(client, data: bytes) -> dict:
    answer = client.post("/api/import", data={"archive": (io.BytesIO(data), "people.zip"), "background": "1"})
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def progress(client, url: str) -> dict:
    answer = client.get(url)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def count(where, table: str) -> int:
    """Rows in a table of the data folder's SQLite file, or of an app's database."""
    conn = db.connect(where.config["DATABASE"] if hasattr(where, "config") else where / "faces.db")
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


class OldBackbone(FakeBackbone):
    name = "old"

    def __init__(self):
        super().__init__(seed=1)


def test_three_apps_starting_on_one_folder_queue_the_purge_and_the_reembedding_once(tmp_path, redis_url, photo):
    data_dir = prepare_data_dir(tmp_path / "data")
    old = new_app(data_dir, Recognizer(OldBackbone(), detector=FakeDetector(), threshold=TEST_THRESHOLD).load())
    client = log_in(old.test_client())
    person = client.post("/api/people", json={"name": "Ada"}).get_json()["id"]
    for i in (1, 2):
        name, data = photo(ENROLLED, i)
        answer = client.post(f"/api/people/{person}/photos", data={"photos": [(io.BytesIO(data), name)]})
        assert answer.status_code == 200
    conn = db.connect(data_dir / "faces.db")
    now = time.time()
    inbox_store.write_sightings(conn, [Sighting(None, None, now - 40 * DAY, now - 31 * DAY, frames=5),
                                       Sighting(None, None, now - 2 * DAY, now - 2 * DAY, frames=7)])
    conn.close()

    apps = [new_app(data_dir, REDIS_URL=redis_url) for _ in range(3)]  # the new backbone, one Redis
    try:
        queue = jobs.for_app(apps[0]).queue()
        assert sorted(queue.job_ids) == ["purge", "reembed-fake"]  # three starts, each job queued once
        assert count(data_dir, "sightings") == 2  # not purged in the apps
        assert [a.extensions["reembed"].progress["state"] for a in apps] == ["running"] * 3

        started = time.monotonic()
        assert jobs.work({"DATA_DIR": data_dir, "REDIS_URL": redis_url,
                          "RECOGNIZER": fake_recognizer(threshold=TEST_THRESHOLD)}, burst=True)
        print(f"\nburst worker: start and 2 jobs in {time.monotonic() - started:.2f} s")
        assert count(data_dir, "sightings") == 1  # the one past FACES_HISTORY_RETENTION_DAYS (30)
        purge = jobs.for_app(apps[2]).read("purge")
        assert (purge.state, purge.outcome) == ("done", {"inbox_faces": 0, "sightings": 1})
        for app in apps:  # any process reads the same progress
            assert app.extensions["reembed"].progress == {"state": "done", "done": 2, "total": 2, "failed": 0}
            assert wait_for(lambda app=app: len(app.extensions["faces"].gallery) == 2, 5.0) is not None
        conn = db.connect(data_dir / "faces.db")
        assert [r[0] for r in conn.execute("SELECT backbone FROM photos")] == ["fake", "fake"]
        conn.close()

        late = new_app(data_dir, REDIS_URL=redis_url)  # within PURGE_KEEP_S of the last purge: none queued
        apps.append(late)
        assert queue.job_ids == [] and late.extensions["reembed"].progress["state"] == "idle"
    finally:
        stop(old, *apps)


@pytest.mark.both_engines
def test_an_import_through_one_app_runs_in_the_worker_and_its_progress_is_read_through_another(
        tmp_path, redis_url, photo, database_url):
    data_dir = prepare_data_dir(tmp_path / "data")
    a, b = (new_app(data_dir, REDIS_URL=redis_url, DATABASE_URL=database_url) for _ in range(2))
    worker = start_worker(tmp_path, data_dir, redis_url, database_url=database_url)
    try:
        client_a, client_b = log_in(a.test_client()), log_in(b.test_client())
        data = zip_of(photo, {ENROLLED: [1, 2, 3], STRANGER: [1, 2]})
        submitted = time.monotonic()
        job = start_import(client_a, data)
        assert job["state"] == "running" and job["url"] == f"/api/import/{job['job']}"
        assert client_b.post("/api/import", data={"archive": (io.BytesIO(data), "again.zip")}).status_code == 409
        assert wait_for(lambda: progress(client_b, job["url"])["state"] != "running", 60.0, every=0.01) is not None
        seconds = time.monotonic() - submitted
        answer = progress(client_b, job["url"])
        assert answer == progress(client_a, job["url"])
        assert (answer["state"], answer["status"], answer["error"]) == ("done", 200, None)
        assert (answer["done"], answer["total"]) == (5, 5) and answer["result"]["photos_added"] == 5
        assert sorted(answer["result"]["people"]) == sorted([ENROLLED, STRANGER])
        print(f"\nimport of 5 photos through the worker: {seconds:.2f} s from the POST to done")
        assert count(a, "photos") == 5 and list(data_dir.glob(".import-*")) == []
        assert wait_for(lambda: len(b.extensions["faces"].gallery) == 5, 5.0) is not None  # the change log
        again = start_import(client_b, data)  # the lock is free again; everything is a duplicate now
        assert wait_for(lambda: progress(client_a, again["url"])["state"] != "running", 60.0) is not None
        assert progress(client_a, again["url"])["result"]["duplicates"] == 5
        assert client_a.get("/api/import/0123456789abcdef").status_code == 404
    finally:
        worker.terminate()
        worker.wait(20)
        stop(a, b)


@pytest.mark.both_engines
def test_a_worker_killed_mid_import_leaves_the_job_failed_and_no_rows(tmp_path, redis_url, photo, database_url):
    data_dir = prepare_data_dir(tmp_path / "data")
    a, b = (new_app(data_dir, REDIS_URL=redis_url, DATABASE_URL=database_url) for _ in range(2))
    worker = start_worker(tmp_path, data_dir, redis_url, slow_s=0.3, database_url=database_url)
    try:
        client_a, client_b = log_in(a.test_client()), log_in(b.test_client())
        data = zip_of(photo, {ENROLLED: [1, 2, 3, 4, 5, 6]})
        job = start_import(client_a, data)
        assert wait_for(lambda: progress(client_b, job["url"])["done"] >= 2, 60.0) is not None
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        killed = time.monotonic()
        assert progress(client_b, job["url"])["state"] == "running"  # its heartbeat has not expired yet
        assert wait_for(lambda: progress(client_b, job["url"])["state"] == "failed", 3 * jobs.HEARTBEAT_TTL_S,
                        every=0.2) is not None
        print(f"\nkilled worker's job read as failed {time.monotonic() - killed:.1f} s after the kill")
        failed = progress(client_a, job["url"])
        assert "worker stopped" in failed["error"] and failed["status"] == 500 and failed["result"] is None
        assert count(a, "photos") == 0 and count(a, "people") == 0  # one transaction, never reached

        worker = start_worker(tmp_path, data_dir, redis_url, database_url=database_url)  # submitted again: the lock was freed with the job
        retry = start_import(client_b, data)
        assert wait_for(lambda: progress(client_a, retry["url"])["state"] != "running", 60.0) is not None
        assert progress(client_a, retry["url"])["result"]["photos_added"] == 6 and count(a, "photos") == 6
    finally:
        worker.terminate()
        worker.wait(20)
        stop(a, b)


def test_redis_down_runs_the_batch_work_in_the_process_and_says_so_once(tmp_path, photo, caplog):
    url = f"redis://:pw-not-logged@127.0.0.1:{free_port()}/0"  # nothing listens there
    data_dir = prepare_data_dir(tmp_path / "data")
    conn = db.connect(data_dir / "faces.db")
    db.migrate(conn)
    now = time.time()
    inbox_store.write_sightings(conn, [Sighting(None, None, now - 40 * DAY, now - 31 * DAY, frames=5)])
    conn.close()
    app = new_app(data_dir, REDIS_URL=url)
    try:
        assert count(data_dir, "sightings") == 0  # purged at start, here
        client = log_in(app.test_client())
        for people in ({ENROLLED: [1, 2]}, {STRANGER: [1]}):
            job = start_import(client, zip_of(photo, people))
            assert wait_for(lambda job=job: progress(client, job["url"])["state"] != "running", 30.0) is not None
            assert progress(client, job["url"])["result"]["photos_added"] == len(next(iter(people.values())))
        assert count(data_dir, "photos") == 3 and list(data_dir.glob(".import-*")) == []
        assert caplog.text.count("the job queue at") == 1 and "pw-not-logged" not in caplog.text
        # A queued import another process asks about while Redis is away: 503, not a 500.
        assert client.get("/api/import/0123456789abcdef").status_code == 503
    finally:
        stop(app)


def test_without_redis_the_jobs_run_here_and_the_worker_refuses_to_start(tmp_path):
    app = new_app(prepare_data_dir(tmp_path / "data"))
    queue = jobs.for_app(app)
    assert queue.redis is None and queue.read("purge").state == "done"  # the start-up purge, run here
    with pytest.raises(ValueError, match="FACES_REDIS_URL"):
        jobs.worker_app({"DATA_DIR": tmp_path / "data"})
