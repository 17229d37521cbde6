"""The /live Socket.IO contract, with the python-socketio client over a real WebSocket to `python server.py`."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image
from web_helpers import (
    ENROLLED,
    STRANGER,
    LiveClient,
    data_dir_with_ada,
    on_background,
    running_server,
)

ANSWER_TIMEOUT_S = 15
pytestmark = pytest.mark.dlib  # a real server.py, so the real model


@pytest.fixture(scope="module")
def server(tmp_path_factory, dlib_recognizer, celeba_dir):
    """A server whose database already holds Ada (celeb_7201, photos 1-3), enrolled through the app."""
    data_dir = data_dir_with_ada(tmp_path_factory.mktemp("live") / "data", dlib_recognizer, celeba_dir)
    with running_server(data_dir) as url:
        yield url


@pytest.fixture
def live(server):
    client = LiveClient(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def frames(celeba_dir):
    def frame(person: str, index: int) -> bytes:
        return on_background((celeba_dir / person / f"{person}_{index:04d}.jpg").read_bytes())

    return frame


def test_the_transport_is_a_real_websocket(live):
    assert live.sio.transport() == "websocket"
    assert live.sio.eio.ws is not None  # a websocket-client connection, not long polling


def test_a_frame_is_answered_with_named_faces(live, frames):
    event, answer = live.ask(frames(ENROLLED, 10))
    assert event == "faces"
    assert set(answer) == {"frame_id", "width", "height", "faces", "ms"}
    assert answer["frame_id"] == 0 and (answer["width"], answer["height"]) == (640, 480)
    assert isinstance(answer["ms"], float) and 0 < answer["ms"] < 5000
    [face] = answer["faces"]
    assert set(face) == {"box", "name", "person_id", "similarity", "margin", "reason"} and face["reason"] is None
    assert face["name"] == "Ada" and isinstance(face["person_id"], int) and face["similarity"] > 0.9
    left, top, right, bottom = face["box"]
    assert 195 - 20 < left < right < 445 + 20 and 115 - 20 < top < bottom < 365 + 20  # where the portrait was pasted

    event, answer = live.ask(frames(STRANGER, 2))
    assert event == "faces" and answer["frame_id"] == 1
    [face] = answer["faces"]
    assert face["name"] is None and face["person_id"] is None and face["similarity"] < 0.9


def test_an_empty_frame_has_no_faces(live):
    blank = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 120, 150)).save(blank, "JPEG")
    event, answer = live.ask(blank.getvalue())
    assert event == "faces" and answer["faces"] == [] and (answer["width"], answer["height"]) == (320, 240)


@pytest.mark.parametrize(
    "payload, message",
    [
        ("a text frame", "binary payload"),
        ({"jpeg": "base64..."}, "binary payload"),
        (b"garbage, not a JPEG", "bad frame: live frames must be JPEG"),
        (b"\xff\xd8" + b"\x00" * (3 * 1024 * 1024), "too large"),
    ],
    ids=["text", "object", "garbage", "oversized"],
)
def test_bad_payloads_get_an_error_and_the_connection_stays_usable(live, frames, payload, message):
    event, answer = live.ask(payload)
    assert event == "error" and message in answer["error"] and answer["frame_id"] == 0
    assert live.sio.connected
    event, answer = live.ask(frames(ENROLLED, 11))
    assert event == "faces" and answer["frame_id"] == 1 and answer["faces"][0]["name"] == "Ada"


def test_a_truncated_jpeg_gets_an_error(live, frames):
    jpeg = frames(ENROLLED, 12)
    event, answer = live.ask(jpeg[: len(jpeg) // 3])
    assert event == "error" and answer["error"].startswith("bad frame:")


def test_a_burst_is_not_queued_stale_frames_are_dropped(live, frames):
    sent = 12
    jpegs = [frames(ENROLLED, 13 + i % 4) for i in range(sent)]
    for jpeg in jpegs:
        live.send(jpeg)
    got = live.drain()
    assert all(event == "faces" for event, _ in got)
    ids = [answer["frame_id"] for _, answer in got]
    assert 1 <= len(ids) < sent, ids
    assert ids == sorted(set(ids)), ids
    assert ids[-1] == sent - 1  # the newest frame is always answered


def test_two_connections_each_get_their_own_answers(server, frames):
    first, second = LiveClient(server), LiveClient(server)
    try:
        first.send(frames(ENROLLED, 20))
        second.send(frames(STRANGER, 3))
        (event1, a1), (event2, a2) = first.next(), second.next()
        assert event1 == event2 == "faces"
        assert a1["faces"][0]["name"] == "Ada" and a2["faces"][0]["name"] is None
        assert a1["frame_id"] == a2["frame_id"] == 0
        time.sleep(0.5)
        assert first.answers.empty() and second.answers.empty()
    finally:
        first.close()
        second.close()


def test_a_connection_is_told_the_rate_it_is_given(server):
    import socketio

    from web_helpers import cookie_header, server_session

    rates = []
    sio = socketio.Client(reconnection=False)
    sio.on("rate", rates.append, namespace="/live")
    sio.connect(server, transports=["websocket"], namespaces=["/live"], wait_timeout=10,
                headers=cookie_header(server_session(server)), auth={"fps": 12})
    try:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not rates and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rates == [{"fps": 12, "reason": None}]  # what it asked for: the server is not full
    finally:
        threading.Thread(target=sio.disconnect, daemon=True).start()


def test_emitting_connect_or_disconnect_does_not_reset_or_end_the_stream(live, frames):
    event, answer = live.ask(frames(ENROLLED, 21))
    assert event == "faces" and answer["frame_id"] == 0
    live.sio.emit("connect", namespace="/live")
    live.sio.emit("disconnect", namespace="/live")
    event, answer = live.ask(frames(ENROLLED, 22))
    assert event == "faces" and answer["frame_id"] == 1 and answer["faces"][0]["name"] == "Ada"
