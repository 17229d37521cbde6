"""The /live socket under bad input, against a real `python server.py`: strangers, junk, huge messages and floods.

Memory is the server process's VmRSS (and VmHWM, its peak) from /proc.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import socketio
import websocket
from PIL import Image
from web_helpers import (
    ENROLLED,
    STRANGER,
    LiveClient,
    cookie_header,
    on_background,
    prepare_data_dir,
    server_session,
    start_server,
    stop_server,
)

from webapp.events import MAX_ERROR_REPLIES_PER_S

FLOOD = 2000
ANSWER_TIMEOUT_S = 15
pytestmark = pytest.mark.dlib  # a real server.py, so the real model
# RSS may grow this much over a flood (allocator slack, socket buffers); a queue of 2,000 frames would be ~70 MB.
RSS_SLACK_MB = 30


def memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, celeba_dir):
    # Every connection is let in whatever this machine's speed: admission has its own tests (test_live_workers).
    process, url, _ = start_server(prepare_data_dir(tmp_path_factory.mktemp("socket") / "data"),
                                   extra_env={"FACES_LIVE_CAPACITY_FPS": "10000"})
    try:
        yield process, url
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def frames(celeba_dir) -> list[bytes]:
    chosen = [(ENROLLED, i) for i in (10, 11, 12, 13)] + [(STRANGER, i) for i in (4, 5, 6, 7)]
    return [on_background((celeba_dir / p / f"{p}_{i:04d}.jpg").read_bytes()) for p, i in chosen]


def drain_all(clients: list[LiveClient], quiet_s: float = 2.0) -> list[list[tuple[str, dict]]]:
    """What each client receives until none has received anything for quiet_s."""
    got = [[] for _ in clients]
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        for i, client in enumerate(clients):
            while not client.answers.empty():
                got[i].append(client.answers.get_nowait())
                last = time.monotonic()
        time.sleep(0.05)
    return got


@pytest.fixture
def live(server):
    client = LiveClient(server[1])
    yield client
    client.close()


# --- who may connect -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Cookie": "faces_session=forged.by.hand"}, {"Cookie": "session=eyJhZG1pbiI6IngifQ.x.y"}],
    ids=["no cookie", "forged", "other cookie"],
)
def test_a_connection_without_a_login_is_refused(server, headers):
    with pytest.raises(socketio.exceptions.ConnectionError):
        LiveClient(server[1], headers=headers)
    # Not even the Engine.IO handshake underneath is open to strangers.
    with pytest.raises(websocket.WebSocketBadStatusException, match="401"):
        websocket.create_connection(server[1].replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                    timeout=10, header=[f"{k}: {v}" for k, v in headers.items()])


def test_a_login_from_another_site_is_refused(server):
    headers = {**cookie_header(server_session(server[1])), "Origin": "https://evil.example"}
    with pytest.raises(socketio.exceptions.ConnectionError):
        LiveClient(server[1], headers=headers)


def test_a_logged_in_connection_works(live, frames):
    event, answer = live.ask(frames[0])
    assert event == "faces" and answer["frame_id"] == 0 and len(answer["faces"]) == 1


# --- junk --------------------------------------------------------------------------------


JUNK = [
    "text", "", 42, 3.14, None, True, [1, 2], {"jpeg": "...", "frame_id": 1}, [b"\xff\xd8"],
    b"", b"\x00", b"\xff\xd8\xff", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"<svg/>", bytes(range(256)) * 40,
]


def test_junk_payloads_each_get_an_error_and_change_nothing(live, frames):
    for i, payload in enumerate(JUNK):
        event, answer = live.ask(payload)
        assert event == "error" and answer["frame_id"] == i, payload
        assert answer["error"].startswith(("a frame must be JPEG bytes", "bad frame:")), (payload, answer)
        if i % (MAX_ERROR_REPLIES_PER_S - 1) == 0:
            time.sleep(1.05)  # stay under the error-reply budget
    event, answer = live.ask(frames[0])
    assert event == "faces" and answer["frame_id"] == len(JUNK)


def test_other_events_and_extra_arguments_are_ignored(live, frames):
    live.sio.emit("nonsense", {"x": 1}, namespace="/live")
    live.sio.emit("frame", (frames[0], "extra", 3), namespace="/live")
    event, answer = live.answers.get(timeout=ANSWER_TIMEOUT_S)
    assert event == "faces" and answer["frame_id"] == 0
    assert live.drain(1.0) == []
    assert live.ask(frames[1])[0] == "faces"


@pytest.mark.parametrize("name", ["connect", "disconnect"])
def test_reserved_event_names_sent_by_a_client_change_nothing(live, frames, name):
    """A client may send `connect` or `disconnect` as ordinary events (browsers' library refuses, a raw one need
    not): the stream must not restart or end, so its frame count and tracks go on."""
    assert live.ask(frames[0])[1]["frame_id"] == 0
    live.sio._send_packet(live.sio.packet_class(socketio.packet.EVENT, namespace="/live", data=[name]))
    event, answer = live.ask(frames[1])
    assert event == "faces" and answer["frame_id"] == 1


def test_an_oversized_frame_gets_an_error(live, frames):
    event, answer = live.ask(b"\xff\xd8" + b"\x00" * (3 * 1024 * 1024))
    assert event == "error" and "too large" in answer["error"]
    assert live.ask(frames[0])[0] == "faces"


def test_a_frame_that_is_not_jpeg_is_refused_unread(live, frames):
    """A 29 KB PNG of 4K took its worker 0.6 s to decode, holding up every stream on that worker."""
    bomb = io.BytesIO()
    Image.new("RGB", (3840, 2160), (200, 180, 160)).save(bomb, "PNG")
    event, answer = live.ask(bomb.getvalue())
    assert event == "error" and answer["error"] == "bad frame: live frames must be JPEG"
    assert live.ask(frames[0])[0] == "faces"


def test_a_frame_of_more_pixels_than_4k_is_refused_from_its_header(live, frames):
    bomb = io.BytesIO()
    Image.new("RGB", (6000, 4000), (200, 180, 160)).save(bomb, "JPEG", quality=20)
    event, answer = live.ask(bomb.getvalue())
    assert event == "error" and "too large (6000x4000" in answer["error"]
    assert live.ask(frames[0])[0] == "faces"


def test_a_message_over_the_buffer_is_not_read_into_memory(server, live, frames):
    """Engine.IO's buffer is 4x the frame cap (8 MB): the server stops reading there and drops the connection,
    so 64 MB never pass through memory. (Our send then fails, or stalls until the timeout: either way, cut off.)"""
    process, url = server
    before = memory_mb(process.pid)
    ws = websocket.create_connection(
        url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket", timeout=10,
        header=[f"Cookie: {cookie_header(server_session(url))['Cookie']}"],
    )
    try:
        assert ws.recv().startswith("0{")  # Engine.IO's open packet
        with pytest.raises((OSError, websocket.WebSocketException)):
            ws.send_binary(b"\x00" * (64 * 1024 * 1024))
            ws.recv()
    finally:
        ws.shutdown()
    after = memory_mb(process.pid)
    assert after["VmHWM"] - before["VmHWM"] < 40, (before, after)
    assert live.ask(frames[0])[0] == "faces"  # the others go on


# --- floods ------------------------------------------------------------------------------


def test_a_flood_of_frames_is_shed_and_memory_stays_flat(server, live, frames):
    process, _ = server
    for i in range(20):  # warm up: the tracker, buffers and the allocator reach their working size
        assert live.ask(frames[i % len(frames)])[0] == "faces"
    before = memory_mb(process.pid)
    started = time.perf_counter()
    for i in range(FLOOD):
        live.sio.emit("frame", frames[i % len(frames)], namespace="/live")
    got = live.drain(3.0)
    took_s = time.perf_counter() - started - 3.0
    after = memory_mb(process.pid)

    ids = [answer["frame_id"] for event, answer in got]
    assert all(event == "faces" for event, _ in got)
    assert len(ids) < FLOOD / 4, len(ids)  # most frames were replaced before their turn
    assert ids == sorted(set(ids)) and ids[-1] == 20 + FLOOD - 1  # in order, and the newest is answered
    growth = after["VmRSS"] - before["VmRSS"]
    megabytes = sum(len(frames[i % len(frames)]) for i in range(FLOOD)) / 1e6
    print(f"\nflood: {FLOOD} frames ({megabytes:.0f} MB) in {took_s:.1f} s, {len(ids)} answered, "
          f"RSS {before['VmRSS']:.0f} -> {after['VmRSS']:.0f} MB")
    assert growth < RSS_SLACK_MB, (before, after)
    event, answer = live.ask(frames[0])  # still usable
    assert event == "faces" and answer["frame_id"] == 20 + FLOOD


def test_a_flood_of_junk_gets_few_answers(server, live, frames):
    """Text junk is refused by the handler, at most MAX_ERROR_REPLIES_PER_S answers a second; binary junk
    takes the connection's one slot like any frame, so most of it is replaced before the worker sees it."""
    process, _ = server
    live.ask(frames[0])
    before = memory_mb(process.pid)
    started = time.perf_counter()
    for i in range(FLOOD):
        live.sio.emit("frame", "junk" if i % 2 else b"junk" * (i % 7), namespace="/live")
    got = live.drain(2.0)
    elapsed = time.perf_counter() - started
    after = memory_mb(process.pid)
    assert all(event == "error" for event, _ in got)
    refused = [answer for _, answer in got if answer["error"].startswith("a frame must be JPEG bytes")]
    undecodable = [answer for _, answer in got if answer["error"].startswith("bad frame:")]
    assert len(refused) + len(undecodable) == len(got)
    assert 1 <= len(refused) <= MAX_ERROR_REPLIES_PER_S * (elapsed + 1), (len(refused), elapsed)
    assert len(undecodable) < FLOOD / 4
    assert after["VmRSS"] - before["VmRSS"] < RSS_SLACK_MB
    print(f"\njunk flood: {FLOOD} frames, {len(refused)} + {len(undecodable)} error replies in {elapsed:.1f} s")
    event, answer = live.ask(frames[0])
    assert event == "faces" and answer["frame_id"] == 1 + FLOOD


def test_many_connections_each_keep_one_slot(server, frames):
    process, url = server
    clients = [LiveClient(url) for _ in range(6)]
    try:
        for client in clients:  # every live worker has loaded its model twin before the baseline
            client.ask(frames[0])
        before = memory_mb(process.pid)
        for _ in range(100):
            for client in clients:
                client.sio.emit("frame", frames[0], namespace="/live")
        answered = drain_all(clients)
        after = memory_mb(process.pid)
        assert all(got and got[-1][1]["frame_id"] == 100 for got in answered)  # 0 was the warm-up frame
        assert after["VmRSS"] - before["VmRSS"] < RSS_SLACK_MB
    finally:
        for client in clients:
            client.close()


def test_a_blank_frame_after_all_that(live):
    blank = io.BytesIO()
    Image.new("RGB", (64, 48)).save(blank, "JPEG")
    event, answer = live.ask(blank.getvalue())
    assert event == "faces" and answer["faces"] == []
