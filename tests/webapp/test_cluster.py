"""Several app processes on one data folder: the change log, the health check, Redis and HAProxy.

The first tests run two apps in this process on one data folder (the fakes; seconds). The ones marked
`dlib` start what scripts/cluster.py starts, once for the module: a private redis-server, two server.py
processes and HAProxy on free loopback ports; they end with Redis stopped and one process killed.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import threading
import time

import pytest
from cluster_helpers import health, in_gallery, names_seen, portrait_files, start_cluster, wait_for
from web_helpers import ENROLLED, STRANGER, TEST_THRESHOLD, LiveClient, log_in, on_background, prepare_data_dir
from web_helpers import server_session

from fakes import FakeBackbone, FakeDetector, fake_recognizer
from model.recognizer import Recognizer
from webapp import changes, create_app, db, redis_link, strictness
from webapp.service import FaceService

POLL_S = 0.05  # the in-process apps' poll interval: the tests wait a few of them
PROPAGATION_S = 1.0  # what the issue asks of an enrollment, rename or delete on another process


def two_apps(tmp_path, database_url=None, **config):
    """Two apps on one data folder (and one PostgreSQL database, given its URL), as two processes would be, each
    with its own recognizer and gallery."""
    data_dir = prepare_data_dir(tmp_path / "data")
    base = {"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test", "PROCESSES": 2, "CHANGES_POLL_S": POLL_S,
            "DATABASE_URL": database_url, **config}
    apps = [create_app({**base, "RECOGNIZER": fake_recognizer(threshold=TEST_THRESHOLD)}) for _ in range(2)]
    for app in apps:
        app.extensions["faces"].wait_ready()
    return apps


def recognised(app, data: bytes) -> list:
    answer = log_in(app.test_client()).post("/api/recognize", data={"image": (io.BytesIO(data), "probe.jpg")})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return [face["name"] for face in answer.get_json()["faces"]]


def settled(app) -> bool:
    """Whether the app's poller has applied every change in the database."""
    poller = app.extensions["changes"]
    return poller.applied == changes.newest_in(app.config["DATABASE"])


def store_strictness(app, value: float) -> None:
    conn = db.connect(app.config["DATABASE"])
    try:
        strictness.store(conn, value)
    finally:
        conn.close()


def change_kinds(app) -> list[str]:
    conn = db.connect(app.config["DATABASE"])
    try:
        return [row["kind"] for row in conn.execute("SELECT kind FROM changes ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def portrait(photo):
    """A webcam-like frame of one of ENROLLED's photos (the fake detector finds the pasted portrait)."""
    return lambda index: on_background(photo(ENROLLED, index)[1])


# --- the change log and the poller (in this process, fakes) -------------------------------------------


@pytest.mark.both_engines
def test_triggers_log_every_change_that_shapes_matching(app, client, portrait):
    person = client.post("/api/people", json={"name": "Ada"}).get_json()["id"]
    enrolled = client.post(f"/api/people/{person}/photos",
                           data={"photos": [(io.BytesIO(portrait(1)), "a.jpg"), (io.BytesIO(portrait(2)), "b.jpg")]})
    assert enrolled.status_code == 200, enrolled.get_data(as_text=True)
    photo_id = enrolled.get_json()["photos"][0]["photo_id"]
    client.patch(f"/api/people/{person}", json={"name": "Ada L"})
    client.delete(f"/api/photos/{photo_id}")
    store_strictness(app, 0.02)  # what PUT /api/strictness stores (refused here: the tests fix the threshold)
    client.delete(f"/api/people/{person}")
    kinds = change_kinds(app)
    assert kinds[:6] == ["person", "photo", "photo", "person", "photo", "setting"]
    assert sorted(kinds[6:]) == ["person", "photo"]  # the delete and its cascade, in the engine's order
    conn = db.connect(app.config["DATABASE"])
    try:
        assert {type(row[0]) for row in conn.execute("SELECT row_id FROM changes WHERE kind != 'setting'")} == {
            int}  # ids only: no names or vectors stay behind in the log after a delete
    finally:
        conn.close()


def test_one_process_does_not_poll(app, anonymous):
    assert "changes" not in app.extensions
    assert anonymous.get("/api/health").get_json()["changes"] is None


@pytest.mark.both_engines
def test_an_enrollment_rename_and_delete_on_one_app_reach_the_other(tmp_path, database_url, portrait):
    first, second = two_apps(tmp_path, database_url)
    client = log_in(first.test_client())
    person = client.post("/api/people", json={"name": "Ada"}).get_json()["id"]
    files = {"photos": [(io.BytesIO(portrait(i)), f"{i}.jpg") for i in (1, 2, 3)]}
    assert client.post(f"/api/people/{person}/photos", data=files).status_code == 200
    assert wait_for(lambda: len(second.extensions["faces"].gallery) == 3, PROPAGATION_S) is not None
    assert recognised(second, portrait(1)) == ["Ada"]

    client.patch(f"/api/people/{person}", json={"name": "Ada Lovelace"})
    assert wait_for(lambda: second.extensions["faces"].name_of(person) == "Ada Lovelace", PROPAGATION_S) is not None
    assert recognised(second, portrait(1)) == ["Ada Lovelace"]

    assert client.delete(f"/api/people/{person}").status_code == 200
    assert wait_for(lambda: len(second.extensions["faces"].gallery) == 0, PROPAGATION_S) is not None
    assert second.extensions["faces"].names == {} and recognised(second, portrait(1)) == [None]


@pytest.mark.both_engines
def test_moves_merges_corrections_and_strictness_reach_the_other(tmp_path, database_url, portrait, photo):
    first, second = two_apps(tmp_path, database_url)
    client = log_in(first.test_client())
    ada = client.post("/api/people", json={"name": "Ada"}).get_json()["id"]
    bea = client.post("/api/people", json={"name": "Bea"}).get_json()["id"]
    added = client.post(f"/api/people/{ada}/photos", data={"photos": [
        (io.BytesIO(portrait(i)), f"{i}.jpg") for i in (1, 2)]}).get_json()["photos"]
    client.post(f"/api/people/{bea}/photos", data={"photos": [(io.BytesIO(on_background(photo(STRANGER, 1)[1])), "s.jpg")]})
    assert client.patch(f"/api/photos/{added[0]['photo_id']}", json={"person_id": bea}).status_code == 200
    correction = client.post(f"/photos/{added[1]['photo_id']}/not-this-person")
    assert correction.status_code == 302, correction.get_data(as_text=True)
    store_strictness(first, 0.03)
    assert wait_for(lambda: settled(second), PROPAGATION_S) is not None
    mine, theirs = first.extensions["faces"], second.extensions["faces"]
    assert theirs.gallery.person_ids == mine.gallery.person_ids == {bea}
    assert theirs.gallery.correction_ids == mine.gallery.correction_ids and len(theirs.gallery.correction_ids) == 1
    assert theirs.recognizer.strictness == pytest.approx(0.03)

    assert client.post(f"/api/people/{bea}/merge", json={"into": ada}).status_code == 200
    assert wait_for(lambda: settled(second), PROPAGATION_S) is not None
    assert theirs.gallery.person_ids == {ada} and theirs.names == {ada: "Ada"} and len(theirs.gallery) == 2


@pytest.mark.both_engines
def test_catching_up_twice_or_on_ones_own_changes_changes_nothing(tmp_path, database_url, portrait):
    first, second = two_apps(tmp_path, database_url)
    client = log_in(first.test_client())
    person = client.post("/api/people", json={"name": "Ada"}).get_json()["id"]
    client.post(f"/api/people/{person}/photos", data={"photos": [(io.BytesIO(portrait(i)), f"{i}.jpg") for i in (1, 2)]})
    assert wait_for(lambda: settled(second) and settled(first), PROPAGATION_S) is not None
    service = second.extensions["faces"]
    probe = service.gallery._vectors[:1].copy()  # an enrolled vector: the match says whether templates moved

    def state():
        match = service.gallery.match(probe, service.recognizer.rule)[0]
        return len(service.gallery), service.gallery.person_ids, dict(service.names), round(match.similarity, 6)

    before = state()
    conn = db.connect(second.config["DATABASE"])
    try:
        assert changes.catch_up(conn, service, 0) == changes.newest(conn)  # every change again, from the start
    finally:
        conn.close()
    assert state() == before
    assert first.extensions["faces"].gallery.person_ids == {person} and len(first.extensions["faces"].gallery) == 2


@pytest.mark.both_engines
def test_a_process_that_starts_later_loads_everything_and_follows_from_the_newest_change(tmp_path, database_url, portrait):
    first, _ = two_apps(tmp_path, database_url)
    client = log_in(first.test_client())
    person = client.post("/api/people", json={"name": "Ada"}).get_json()["id"]
    client.post(f"/api/people/{person}/photos", data={"photos": [(io.BytesIO(portrait(1)), "1.jpg")]})
    late = create_app({"TESTING": True, "DATA_DIR": first.config["DATA_DIR"], "SECRET_KEY": "test", "PROCESSES": 2,
                       "DATABASE_URL": database_url,
                       "CHANGES_POLL_S": POLL_S, "RECOGNIZER": fake_recognizer(threshold=TEST_THRESHOLD)})
    assert late.extensions["changes"].applied == changes.newest_in(late.config["DATABASE"]) > 0
    assert late.extensions["faces"].names == {person: "Ada"} and len(late.extensions["faces"].gallery) == 1


def test_old_change_rows_are_purged_and_ids_never_reused(tmp_path):
    conn = db.connect(tmp_path / "faces.db")
    db.migrate(conn)
    conn.execute("INSERT INTO people (name) VALUES ('Ada'), ('Bea')")
    conn.execute("UPDATE changes SET changed_at = '2020-01-01T00:00:00Z' WHERE row_id = 1")
    assert changes.purge(conn) == 1
    assert [row["row_id"] for row in conn.execute("SELECT row_id FROM changes")] == [2]
    conn.execute("DELETE FROM changes")
    conn.execute("INSERT INTO people (name) VALUES ('Cy')")
    assert changes.newest(conn) == 3  # AUTOINCREMENT: a process that applied up to 2 still sees this one


def test_the_poller_ends_with_its_service_and_says_once_when_it_cannot_read(tmp_path, caplog):
    service = FaceService(fake_recognizer(), min_face=40, live_max_side=640, live_upsample=0, recognize_upsample=0,
                          max_frame_bytes=1 << 20)
    poller = changes.ChangePoller(str(tmp_path / "missing" / "faces.db"), service, after=0, every_s=POLL_S)
    poller.start()
    assert wait_for(lambda: poller.error is not None, 2.0) is not None
    time.sleep(5 * POLL_S)
    assert poller.polls == 0 and caplog.text.count("cannot read other processes' changes") == 1  # once per outage
    del service
    poller._thread.join(2.0)
    assert not poller._thread.is_alive()  # the service is gone: so is the thread


@pytest.mark.parametrize(("config", "message"), [
    ({"PROCESSES": 0}, "FACES_PROCESSES"),
    ({"CHANGES_POLL_S": 0}, "FACES_CHANGES_POLL_S"),
    ({"REDIS_URL": "http://127.0.0.1:6379"}, "FACES_REDIS_URL"),
    ({"REDIS_URL": "redis://:hunter2secret@127.0.0.1:notaport"}, "FACES_REDIS_URL"),
])
def test_bad_cluster_settings_stop_the_start_with_their_name(tmp_path, config, message):
    with pytest.raises(ValueError, match=message) as raised:
        create_app({"TESTING": True, "DATA_DIR": tmp_path / "data", "RECOGNIZER": fake_recognizer(), **config})
    assert "hunter2secret" not in str(raised.value)


def test_a_redis_that_is_down_at_start_is_logged_once_and_logins_still_answer(tmp_path, caplog):
    from web_helpers import free_port

    url = f"redis://:pw-not-logged@127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "SECRET_KEY": "t",
                      "REDIS_URL": url, "CHANGES_POLL_S": POLL_S, "RECOGNIZER": fake_recognizer()})
    watch = app.extensions["redis"]
    try:
        assert wait_for(lambda: watch.state == "down", 5.0) is not None
        anonymous = app.test_client()
        body = anonymous.get("/api/health").get_json()
        assert body["status"] == "ok" and body["redis"] == "down" and body["changes"] is not None
        wrong = anonymous.post("/api/login", json={"password": "wrong password"})
        assert wrong.status_code == 401  # counted in this process's memory meanwhile, not a 500
        log_in(app.test_client())
        assert caplog.text.count("is unreachable") == 1 and "pw-not-logged" not in caplog.text
    finally:
        watch.stop()
        app.extensions["changes"].stop()


# --- the health check ---------------------------------------------------------------------------------


def test_health_needs_no_login_and_is_503_until_the_model_is_loaded(tmp_path):
    gate = threading.Event()

    class SlowBackbone(FakeBackbone):
        def _load(self) -> None:
            gate.wait(10)

    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "SECRET_KEY": "t",
                      "RECOGNIZER": Recognizer(SlowBackbone(), detector=FakeDetector(), threshold=TEST_THRESHOLD)})
    anonymous = app.test_client()
    loading = anonymous.get("/api/health")
    assert loading.status_code == 503 and loading.get_json()["status"] == "starting"
    gate.set()
    app.extensions["faces"].wait_ready()
    ready = anonymous.get("/api/health")
    body = ready.get_json()
    assert ready.status_code == 200 and body["status"] == "ok" and body["process"] == os.getpid()
    assert ready.headers["Cache-Control"] == "no-store" and "people" not in body
    assert anonymous.get("/api/status").status_code == 401  # the rest of the API still needs a login


def test_health_is_503_error_when_the_model_failed_or_the_poller_stalled(tmp_path):
    from model.backbones import VGG16Face

    missing = Recognizer(backbone=VGG16Face(weights_path=tmp_path / "vgg_face_weights.h5"))
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": missing})
    app.extensions["faces"]._loaded.wait(10)
    failed = app.test_client().get("/api/health")
    assert failed.status_code == 503 and failed.get_json()["status"] == "error"
    assert "weights" not in failed.get_data(as_text=True)  # no paths to anonymous callers

    first, _ = two_apps(tmp_path / "two")
    first.extensions["changes"]._last_ok -= 3600  # as if it had not read the database for an hour
    stalled = first.test_client().get("/api/health")
    assert stalled.status_code == 503 and stalled.get_json()["changes"]["stalled"] is True


# --- the Socket.IO manager keeps one client's answers in its process --------------------------------------


def test_an_emit_to_a_client_of_this_process_is_not_published_but_a_broadcast_is():
    import socketio as python_socketio

    manager = redis_link.client_manager("redis://127.0.0.1:1/0")  # never contacted below
    server = python_socketio.Server(client_manager=manager, async_mode="threading")
    sent, published = [], []
    server._send_eio_packet = lambda eio_sid, packet: sent.append(eio_sid)
    manager._publish = published.append
    sid = manager.connect("eio-1", "/live")
    server.emit("faces", {"frame_id": 1}, to=sid, namespace="/live")
    assert sent == ["eio-1"] and published == []
    server.emit("news", {"x": 1}, namespace="/live")  # every client, of every process
    assert sent == ["eio-1", "eio-1"] and [message["event"] for message in published] == ["news"]
    server.emit("faces", {"frame_id": 2}, to="someone-elses-sid", namespace="/live")
    assert len(published) == 2  # a client of another process is reached through Redis


# --- against real services: Redis, two server.py processes, HAProxy -------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.dlib
def test_health_through_haproxy_reaches_both_processes(cluster):
    answers = [health(cluster.url) for _ in range(12)]
    assert all(code == 200 and body["status"] == "ok" for code, body in answers), answers
    assert {body["process"] for _, body in answers} == {app.process.pid for app in cluster.apps}
    assert all(body["redis"] == "ok" and body["changes"]["stalled"] is False for _, body in answers)


@pytest.mark.dlib
def test_an_enrollment_rename_and_delete_on_one_process_reach_the_other_within_1s(cluster, celeba_dir):
    enrollment_rename_and_delete_reach_the_other(cluster, celeba_dir)


@pytest.mark.dlib
def test_on_postgresql_too(tmp_path, celeba_dir):
    """scripts/cluster.py --postgres: the same, with the changes brought by LISTEN/NOTIFY."""
    running = start_cluster(tmp_path, postgres=True)
    try:
        enrollment_rename_and_delete_reach_the_other(running, celeba_dir)
    finally:
        running.stop()  # leaves PostgreSQL's folder, as for a user
        if running.pg is not None:
            shutil.rmtree(running.pg.dir, ignore_errors=True)


def enrollment_rename_and_delete_reach_the_other(cluster, celeba_dir) -> None:
    a, b = cluster.apps
    on_a, on_b = server_session(a.url), server_session(b.url)
    probe = celeba_dir / ENROLLED / f"{ENROLLED}_0010.jpg"
    person = on_a.post(f"{a.url}/api/people", json={"name": "Ada"}, timeout=10).json()["id"]
    assert on_a.post(f"{a.url}/api/people/{person}/photos", files=portrait_files(celeba_dir), timeout=60).ok
    took = wait_for(lambda: in_gallery(on_b, b.url) == (1, 3), 3 * PROPAGATION_S)
    print(f"enrollment on A in B's gallery after {took} s")
    assert took is not None and took < PROPAGATION_S
    assert names_seen(on_b, b.url, probe) == ["Ada"]

    assert on_b.patch(f"{b.url}/api/people/{person}", json={"name": "Ada Lovelace"}, timeout=10).ok
    time.sleep(PROPAGATION_S)
    assert names_seen(on_a, a.url, probe) == ["Ada Lovelace"]

    assert on_a.delete(f"{a.url}/api/people/{person}", timeout=10).ok
    took = wait_for(lambda: in_gallery(on_b, b.url) == (0, 0), 3 * PROPAGATION_S)
    print(f"delete on A out of B's gallery after {took} s")
    assert took is not None and took < PROPAGATION_S
    assert names_seen(on_b, b.url, probe) == [None]


@pytest.mark.dlib
def test_failed_logins_are_counted_across_processes(cluster):
    import requests

    a, b = cluster.apps
    # One client address (believed from X-Forwarded-For: the processes trust one proxy), not the tests' own.
    client = {"X-Forwarded-For": "198.51.100.7"}
    codes = [requests.post(f"{app.url}/api/login", json={"password": "wrong password"}, headers=client,
                           timeout=10).status_code for app in (a, b, a, b, a)]
    assert codes == [401] * 5
    for app in (b, a):  # B saw two of them itself: the other three were counted through Redis
        assert requests.post(f"{app.url}/api/login", json={"password": "wrong password"}, headers=client,
                             timeout=10).status_code == 429


@pytest.mark.dlib
def test_with_redis_stopped_live_frames_are_answered_and_the_log_says_so(cluster, celeba_dir):
    import requests

    a, b = cluster.apps
    frame = on_background((celeba_dir / ENROLLED / f"{ENROLLED}_0010.jpg").read_bytes())
    cluster.stop_redis()
    try:
        assert wait_for(lambda: "is unreachable" in a.log.read_text(), 3 * redis_link.WATCH_EVERY_S, 0.1) is not None
        live = LiveClient(a.url)  # logging in works too: the limit counts in this process meanwhile
        try:
            answers = [live.ask(frame) for _ in range(5)]
        finally:
            live.close()
        assert [event for event, _ in answers] == ["faces"] * 5
        assert all(len(payload["faces"]) == 1 for _, payload in answers)
        wrong = requests.post(f"{b.url}/api/login", json={"password": "wrong password"},
                              headers={"X-Forwarded-For": "198.51.100.8"}, timeout=10)
        assert wrong.status_code == 401  # counted in B's memory, not a 500
        code, body = health(a.url)
        assert code == 200 and body["redis"] == "down"
    finally:
        cluster.start_redis()
    assert wait_for(lambda: health(a.url)[1]["redis"] == "ok", 3 * redis_link.WATCH_EVERY_S, 0.1) is not None


@pytest.mark.dlib
def test_a_killed_process_gets_no_new_connections_within_seconds(cluster, celeba_dir):
    """Last: it kills one process for good."""
    a, b = cluster.apps
    frame = on_background((celeba_dir / ENROLLED / f"{ENROLLED}_0010.jpg").read_bytes())
    os.kill(b.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    b.process.wait(5)
    answers = []

    def only_the_survivor_answers() -> bool:
        code, body = health(cluster.url)  # a new connection each time
        answers.append((code, body and body["process"]))
        return len(answers) >= 10 and answers[-10:] == [(200, a.process.pid)] * 10

    took = wait_for(only_the_survivor_answers, 10, 0.05)
    routed_s = time.monotonic() - killed
    live = LiveClient(cluster.url)  # and a new live connection through HAProxy is answered
    try:
        assert live.ask(frame)[0] == "faces"
    finally:
        live.close()
    print(f"after kill -9: 10 new connections in a row answered by the other process {routed_s:.2f} s after "
          f"({answers.count((0, None))} refused, {len(answers)} tried); a new live connection (login included) "
          f"answered {time.monotonic() - killed:.2f} s after")
    assert took is not None and routed_s < 5.0
    assert all(code in (200, 0) for code, _ in answers)  # never another process's error page
