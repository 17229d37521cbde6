"""The live workers, admission and the socket handlers, in process (Flask-SocketIO's test client) on the fakes."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image
from web_helpers import log_in, prepare_data_dir

from fakes import fake_recognizer
from webapp import create_app
from webapp.events import NAMESPACE
from webapp.live_admission import allocate
from webapp.extensions import socketio
from webapp.live_stream import LiveStream

ANSWER_TIMEOUT_S = 10


def jpeg(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "JPEG", quality=90)
    return out.getvalue()


def face_frame(seed: int = 0, size=(480, 640), at=(100, 200)) -> np.ndarray:
    """A plain frame with a textured square where the fake detector finds one face."""
    frame = np.full((*size, 3), 120, np.uint8)
    texture = np.random.default_rng(seed).integers(0, 100, (200, 200, 3), dtype=np.uint8)  # darker: a change
    top, left = at
    frame[top : top + 200, left : left + 200] = texture
    return frame


@pytest.fixture
def make_app(tmp_path):
    def make(**config):
        data_dir = prepare_data_dir(tmp_path / f"data{len(list(tmp_path.iterdir()))}")
        app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test",
                          "RECOGNIZER": fake_recognizer(threshold=0.9), **config})
        app.extensions["faces"].wait_ready()
        return app

    return make


def connect(app, fps: float | None = None):
    client = socketio.test_client(app, namespace=NAMESPACE, flask_test_client=log_in(app.test_client()),
                                  auth=None if fps is None else {"fps": fps})
    assert client.is_connected(NAMESPACE)
    return client


def sid_of(client) -> str:
    return socketio.server.manager.sid_from_eio_sid(client.eio_sid, NAMESPACE)


def wait_for(client, name: str, timeout: float = ANSWER_TIMEOUT_S) -> list[dict]:
    """Everything `client` got until an event `name` arrived; the `name` events' payloads."""
    deadline = time.monotonic() + timeout
    got = []
    while time.monotonic() < deadline:
        got += client.get_received(NAMESPACE)
        found = [event["args"][0] for event in got if event["name"] == name]
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"no {name!r} event within {timeout} s; got {got}")


def rates(client) -> list[dict]:
    return [e["args"][0] for e in client.get_received(NAMESPACE) if e["name"] == "rate"]


def test_two_streams_are_served_by_different_workers(make_app):
    app = make_app(LIVE_WORKERS=2)
    live = app.extensions["live"]
    first, second = connect(app), connect(app)
    a, b = sid_of(first), sid_of(second)
    assert {live.worker_of(a), live.worker_of(b)} == {0, 1}
    # each on its own worker's recognizer twin, so no dlib object runs on two threads
    assert live._streams[a].tracker.recognizer is not live._streams[b].tracker.recognizer
    threads = {}
    for sid in (a, b):
        stream = live._streams[sid]
        answer = stream.answer

        def spy(*args, _sid=sid, _answer=answer):
            threads[_sid] = threading.current_thread().name
            return _answer(*args)

        stream.answer = spy
    first.emit("frame", jpeg(face_frame(1)), namespace=NAMESPACE)
    second.emit("frame", jpeg(face_frame(2)), namespace=NAMESPACE)
    for client in (first, second):
        [answer] = wait_for(client, "faces")
        assert answer["frame_id"] == 0 and len(answer["faces"]) == 1
    assert threads[a] != threads[b]
    first.disconnect(NAMESPACE)
    second.disconnect(NAMESPACE)


def test_streams_are_spread_evenly_and_rebalanced_when_one_leaves(make_app):
    app = make_app(LIVE_WORKERS=2)
    live = app.extensions["live"]
    clients = [connect(app) for _ in range(3)]
    sids = [sid_of(c) for c in clients]
    assert [live.worker_of(s) for s in sids] == [0, 1, 0]
    clients[1].disconnect(NAMESPACE)  # worker 1 is left with nobody, worker 0 with two
    assert sorted(live.worker_of(s) for s in (sids[0], sids[2])) == [0, 1]
    moved = sids[2]
    assert live.worker_of(moved) == 1 and live._streams[moved].tracker.recognizer is live._twins[1]
    clients[2].emit("frame", jpeg(face_frame(3)), namespace=NAMESPACE)
    assert wait_for(clients[2], "faces")[0]["frame_id"] == 0
    for client in (clients[0], clients[2]):
        client.disconnect(NAMESPACE)


def test_a_full_server_slows_the_newest_streams_first_and_says_so(make_app):
    app = make_app(LIVE_WORKERS=1, LIVE_CAPACITY_FPS=15, LIVE_MAX_FPS=30, LIVE_MIN_FPS=5)
    first = connect(app, fps=10)
    assert rates(first) == [{"fps": 10.0, "reason": None}]
    second = connect(app, fps=10)
    assert rates(second) == [{"fps": 5.0, "reason": "server busy: 2 streams"}]
    assert rates(first) == []  # the older stream keeps its rate
    third = connect(app, fps=10)  # the newer ones are at the minimum: now the oldest gives up some
    assert rates(third) == [{"fps": 5.0, "reason": "server busy: 3 streams"}]
    assert rates(first) == [{"fps": 5.0, "reason": "server busy: 3 streams"}]
    fourth = connect(app, fps=10)
    assert rates(fourth) == [{"fps": 0.0, "reason": "server full: 4 streams"}]

    # The server takes a stream's frames no faster than its rate, whatever the client sends.
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        second.emit("frame", jpeg(face_frame(4)), namespace=NAMESPACE)
        time.sleep(0.02)
    time.sleep(0.3)
    answered = [e for e in second.get_received(NAMESPACE) if e["name"] == "faces"]
    # About 1.3 s at 5 fps; twice that allows a busy machine's timing, far below the ~50 frames sent.
    assert 1 <= len(answered) <= 2 * (1 + 1.3 * 5), len(answered)
    fourth.emit("frame", jpeg(face_frame(5)), namespace=NAMESPACE)
    time.sleep(0.5)
    assert [e for e in fourth.get_received(NAMESPACE) if e["name"] == "faces"] == []  # it waits for a place

    first.disconnect(NAMESPACE)  # a place is free
    assert rates(fourth) == [{"fps": 5.0, "reason": "server busy: 3 streams"}]
    assert wait_for(fourth, "faces")[0]["frame_id"] == 0  # its waiting frame is answered now
    second.disconnect(NAMESPACE)
    assert rates(third)[-1] == {"fps": 10.0, "reason": None}
    assert rates(fourth)[-1] == {"fps": 5.0, "reason": "server busy: 2 streams"}
    third.disconnect(NAMESPACE)
    fourth.disconnect(NAMESPACE)


def test_a_new_streams_first_second_does_not_count_toward_the_capacity(make_app):
    """Its first frames (a whole closer look, new faces embedded) are a one-off, not what the server can do."""
    from webapp.live_admission import NEW_STREAM_S

    app = make_app(LIVE_WORKERS=1)
    live = app.extensions["live"]
    client = connect(app)
    for i in range(3):
        client.emit("frame", jpeg(face_frame(i)), namespace=NAMESPACE)
        wait_for(client, "faces")
    time.sleep(0.2)
    assert len(live.capacity._costs) == 0
    live._connections[sid_of(client)].opened -= NEW_STREAM_S  # as if its first second had passed
    client.emit("frame", jpeg(face_frame(3)), namespace=NAMESPACE)
    wait_for(client, "faces")
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while not live.capacity._costs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(live.capacity._costs) == 1
    client.disconnect(NAMESPACE)


def test_allocate_keeps_older_streams_and_floors_newer_ones():
    assert allocate([15, 15], 100, 8) == [15, 15]
    assert allocate([30, 30, 30], 60, 8) == [30, 22, 8]
    assert allocate([15] * 4, 40, 8) == [15, 9, 8, 8]
    assert allocate([15] * 4, 20, 8) == [12, 8, 0, 0]
    assert allocate([5, 15], 13, 8) == [5, 8]  # a stream asking for less than the floor gets what it asks
    assert allocate([5, 15, 3], 12, 8) == [5, 0, 0]  # one that cannot have the floor waits, and so do later ones
    assert allocate([], 10, 8) == []
    # Streams already let in keep their floor when the capacity shrinks; only newcomers wait.
    assert allocate([15] * 3, 10, 5, admitted=[True, True, True]) == [5, 5, 5]
    assert allocate([15] * 3, 10, 5, admitted=[True, False, True]) == [5, 0, 5]


@pytest.mark.parametrize("event", ["connect", "disconnect"])
def test_clients_cannot_emit_the_reserved_connect_and_disconnect_events(make_app, event):
    app = make_app(LIVE_WORKERS=1)
    live = app.extensions["live"]
    client = connect(app)
    sid = sid_of(client)
    stream = live._streams[sid]
    client.emit("frame", jpeg(face_frame(6)), namespace=NAMESPACE)
    assert wait_for(client, "faces")[0]["frame_id"] == 0
    client.emit(event, {"fps": 1}, namespace=NAMESPACE)
    client.emit(event, namespace=NAMESPACE)
    assert live._streams.get(sid) is stream and live.rate_of(sid) == (30.0, None)  # neither reset nor ended
    client.emit("frame", jpeg(face_frame(6)), namespace=NAMESPACE)
    assert wait_for(client, "faces")[0]["frame_id"] == 1  # the same connection's count goes on
    client.disconnect(NAMESPACE)
    assert sid not in live._streams  # a real disconnect still ends it


def test_a_blank_frame_ends_the_track_and_another_size_gets_no_old_box(make_app):
    app = make_app()
    stream = LiveStream(app.extensions["faces"])
    assert len(stream.process(face_frame(7), now=0.0)) == 1
    assert stream.process(np.full((480, 640, 3), 120, np.uint8), now=0.07) == []  # the next frame already
    assert len(stream.process(face_frame(7), now=0.13)) == 1
    moved = stream.process(face_frame(7, size=(240, 320), at=(20, 60)), now=0.2)
    [face] = moved
    assert face["box"][2] <= 320 and face["box"][3] <= 240  # found in the new frame, not carried over


def test_capacity_follows_the_time_frames_take_lately():
    from webapp.live_admission import COST_WINDOW_S, LOAD_TARGET, PRIOR_COST_S, Capacity

    capacity = Capacity(workers=2)
    assert capacity.step(now=0.0) == pytest.approx(2 * LOAD_TARGET / PRIOR_COST_S)  # nothing timed yet
    for i in range(100):
        capacity.answered(0.01, now=i * 0.02)
    assert capacity.step(now=2.0) == pytest.approx(2 * LOAD_TARGET / 0.01)  # two workers, 10 ms a frame
    for i in range(100):  # frames got slower (another program took a core, or the workers wait on the GIL);
        capacity.answered(1.0 if i < 5 else 0.02, now=2.0 + i * 0.02)  # a few new faces took long
    assert capacity.step(now=2.0 + COST_WINDOW_S) == pytest.approx(2 * LOAD_TARGET / 0.02)  # the old ones are out
    assert capacity.step(now=100.0) == pytest.approx(2 * LOAD_TARGET / 0.02)  # too few new frames: it stands
    assert Capacity(workers=2, fixed_fps=40).step() == 40
