"""Cameras on the server, against real streams: an MJPEG stream over HTTP from a local http.server thread, a
video file written with cv2.VideoWriter, and an RTSP stream pushed by ffmpeg (tests/webapp/test_cameras_rtsp.py).

These run on the fake models (tests/fakes.py): the camera shows the very frame that was enrolled, so the fake
backbone names it, and anything else comes out unknown. What the real model names is checked in
test_cameras_real.py. The helpers here (MjpegServer, camera_app, wait_for) are used by the other camera tests.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from web_helpers import (
    ENROLLED, STRANGER, TEST_THRESHOLD, enroll_json, free_port, log_in, on_background, prepare_data_dir, wait_until,
)

from fakes import fake_recognizer
from webapp import create_app
from webapp import db as app_db

pytestmark = pytest.mark.both_engines  # the camera store and what cameras write, on SQLite and PostgreSQL

BOUNDARY = "faceframe"
WAIT_S = 15.0
# Camera timings for the tests: a drop is seen within a second, and tried again soon after.
FAST = {"CAMERA_TIMEOUT_S": 1.0, "CAMERA_RETRY_MIN_S": 0.2, "CAMERA_RETRY_MAX_S": 1.0, "CAMERA_FPS": 10.0,
        "LIVE_UNKNOWN_FRAMES": 3}
PASSWORD = "s3cret-Pa55word"


# --- a local HTTP camera -----------------------------------------------------------------------


class MjpegServer:
    """An HTTP camera on loopback: /stream.mjpg sends `jpeg` again and again as multipart/x-mixed-replace at
    fps; /page.html is a web page; with login=(user, password) both need HTTP basic auth.

    stop() closes every open stream (the camera drops); start() again serves on the same port.
    stall=True keeps streams open but sends nothing more (a stream that hangs).
    """

    def __init__(self, jpeg: bytes, fps: float = 15.0, login: tuple[str, str] | None = None):
        self.jpeg, self.fps, self.login = jpeg, fps, login
        self.port = 0
        self.stall = False
        self.served = 0  # frames sent, over all connections
        self._stopped = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/stream.mjpg", login: tuple[str, str] | None = None) -> str:
        user = f"{login[0]}:{login[1]}@" if login else ""
        return f"http://{user}127.0.0.1:{self.port}{path}"

    def start(self) -> "MjpegServer":
        self._stopped.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if camera.login and not self._authorised():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/page.html":
                    body = b"<!doctype html><title>Camera admin</title><p>Log in"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                try:
                    self._stream()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _authorised(self) -> bool:
                expected = base64.b64encode(":".join(camera.login).encode()).decode()
                return self.headers.get("Authorization") == f"Basic {expected}"

            def _stream(self):
                while not camera._stopped.is_set():
                    if not camera.stall:
                        jpeg = camera.jpeg
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        camera.served += 1
                    camera._stopped.wait(1.0 / camera.fps)

        return Handler


def wait_for(check, timeout: float = WAIT_S):
    """Cameras take longer to come round than the other waits here."""
    return wait_until(check, timeout, step=0.1)


def make_camera_app(data_dir: Path, recognizer, **config):
    app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test", "RECOGNIZER": recognizer,
                      **FAST, **config})
    app.extensions["faces"].wait_ready()
    return app


@pytest.fixture
def videos(tmp_path) -> Path:
    path = tmp_path / "videos"
    path.mkdir()
    return path


@pytest.fixture
def camera_app(tmp_path, videos, database_url):
    """An app on the fake models with fast camera timings; video files may be cameras from `videos`."""
    app = make_camera_app(prepare_data_dir(tmp_path / "data"), fake_recognizer(threshold=TEST_THRESHOLD),
                          CAMERA_FILE_DIRS=str(videos), DATABASE_URL=database_url)
    yield app
    app.extensions["cameras"].stop()


@pytest.fixture
def api(camera_app):
    return log_in(camera_app.test_client())


@pytest.fixture
def frames(celeba_dir):
    """frames(person, index) -> a 640x480 JPEG frame with that CelebA portrait in the middle."""
    return lambda person, index: on_background((celeba_dir / person / f"{person}_{index:04d}.jpg").read_bytes())


@pytest.fixture
def enrolled_frame(api, frames) -> bytes:
    """A frame enrolled as "Ada": the fake models name exactly this picture."""
    frame = frames(ENROLLED, 10)
    assert enroll_json(api, "Ada", [("frame.jpg", frame)]).status_code == 201
    return frame


@pytest.fixture
def stream(request):
    """stream(jpeg, **options) -> a started MjpegServer, stopped after the test."""
    started = []

    def start(jpeg: bytes, **options) -> MjpegServer:
        server = MjpegServer(jpeg, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if not server._stopped.is_set():
            server.stop()


def add(api, name: str, url: str, **extra) -> dict:
    answer = api.post("/api/cameras", json={"name": name, "url": url, **extra})
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.get_json()


def status(api, camera_id: int) -> dict:
    return api.get(f"/api/cameras/{camera_id}").get_json()["status"]


def named(api, camera_id: int, name: str | None):
    """The camera's newest answer when it holds one face named `name` (None: unknown), else None."""
    answer = api.get(f"/api/cameras/{camera_id}/faces").get_json()
    faces = answer["faces"]
    return answer if len(faces) == 1 and faces[0]["name"] == name and faces[0]["reason"] is None else None


def sightings(app) -> list[tuple]:
    conn = app_db.connect(app.config["DATABASE"])
    try:
        return [tuple(row) for row in conn.execute("SELECT name, person_id, frames FROM sightings")]
    finally:
        conn.close()


# --- the API: what may be added -----------------------------------------------------------------


def test_a_camera_is_added_listed_changed_and_removed(api):
    camera = add(api, "Front door", "rtsp://admin:hunter22@192.0.2.10:554/stream1", fps=2)
    assert camera["name"] == "Front door" and camera["url"] == "rtsp://***@192.0.2.10:554/stream1"
    assert camera["fps"] == 2 and camera["enabled"] is True and camera["status"]["state"] in ("connecting", "offline")
    listed = api.get("/api/cameras").get_json()["cameras"]
    assert [c["id"] for c in listed] == [camera["id"]]

    changed = api.patch(f"/api/cameras/{camera['id']}", json={"enabled": False, "fps": 7.5, "name": "Porch"})
    assert changed.status_code == 200
    body = changed.get_json()
    assert (body["enabled"], body["fps"], body["name"]) == (False, 7.5, "Porch")
    assert body["status"]["state"] == "disabled"

    assert api.delete(f"/api/cameras/{camera['id']}").get_json() == {"deleted": camera["id"]}
    assert api.get(f"/api/cameras/{camera['id']}").status_code == 404
    assert api.get("/api/cameras").get_json()["cameras"] == []


@pytest.mark.parametrize("body, words", [
    ({"url": "rtsp://192.0.2.1/x"}, "name is missing"),
    ({"name": "Door"}, "url is missing"),
    ({"name": "Door", "url": "ftp://192.0.2.1/video"}, "unsupported camera address"),
    ({"name": "Door", "url": "concat:/etc/passwd|/etc/hosts"}, "unsupported camera address"),
    ({"name": "Door", "url": "udp://192.0.2.1:1234"}, "unsupported camera address"),
    ({"name": "Door", "url": "http:///no-host"}, "names no host"),
    ({"name": "Door", "url": "/etc/passwd"}, "outside the folders allowed"),
    ({"name": "Door", "url": "rtsp://192.0.2.1/x", "fps": 0}, "fps must be"),
    ({"name": "Door", "url": "rtsp://192.0.2.1/x", "fps": 1000}, "fps must be"),
    ({"name": "Door", "url": "rtsp://192.0.2.1/x", "fps": "fast"}, "fps must be"),
    ({"name": "Door", "url": "rtsp://192.0.2.1/x", "min_face_px": 2}, "min_face_px must be"),
    ({"name": "Door", "url": "rtsp://192.0.2.1/x", "enabled": "yes"}, "enabled must be"),
    ({"name": "Door", "url": "rtsp://192.0.2.1/x", "colour": "red"}, "unknown field"),
    ({"name": "x" * 61, "url": "rtsp://192.0.2.1/x"}, "name must be"),
    ({"name": "Door", "url": "rtsp://192.0.2.1/x\nHost: evil"}, "one line"),
])
def test_bad_cameras_are_refused_with_a_reason(api, body, words):
    answer = api.post("/api/cameras", json=body)
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert words in answer.get_json()["error"]
    assert api.get("/api/cameras").get_json()["cameras"] == []


def test_a_duplicate_name_and_bad_bodies_are_4xx(api):
    add(api, "Door", "rtsp://192.0.2.1/x", enabled=False)
    duplicate = api.post("/api/cameras", json={"name": "door", "url": "rtsp://192.0.2.2/y"})
    assert duplicate.status_code == 409 and "already a camera called" in duplicate.get_json()["error"]
    assert api.post("/api/cameras", data="not json", content_type="application/json").status_code == 400
    assert api.patch("/api/cameras/999", json={"fps": 3}).status_code == 404
    assert api.delete("/api/cameras/999").status_code == 404
    assert api.post("/api/cameras/test", json={"url": "gopher://192.0.2.1/"}).status_code == 400
    assert api.get("/api/cameras/1/frame.jpg?frame_id=abc").status_code == 400
    no_frame = api.get("/api/cameras/1/frame.jpg")
    assert no_frame.status_code == 404 and "no analysed frame yet" in no_frame.get_json()["error"]


def test_cameras_need_a_login(camera_app):
    anonymous = camera_app.test_client()
    assert anonymous.get("/api/cameras").status_code == 401
    assert anonymous.post("/api/cameras", json={"name": "x", "url": "rtsp://192.0.2.1/"}).status_code == 401


# --- real streams -----------------------------------------------------------------------------


def test_an_mjpeg_camera_names_the_enrolled_face_and_records_a_sighting(camera_app, api, enrolled_frame, stream):
    server = stream(enrolled_frame)
    camera = add(api, "Hall", server.url())
    answer = wait_for(lambda: named(api, camera["id"], "Ada"))
    assert (answer["width"], answer["height"]) == (640, 480) and answer["status"]["state"] == "online"
    left, top, right, bottom = answer["faces"][0]["box"]
    assert 150 < left < right < 490 and 90 < top < bottom < 390  # where the portrait sits in the frame

    picture = api.get(answer["frame_url"])
    assert picture.status_code == 200 and picture.mimetype == "image/jpeg"
    assert picture.headers["X-Frame-Id"] == str(answer["frame_id"])
    assert Image.open(io.BytesIO(picture.data)).size == (640, 480)

    wait_for(lambda: [row for row in sightings(camera_app) if row[0] == "Ada" and row[2] >= 2])
    rate = wait_for(lambda: status(api, camera["id"])["fps"] >= 5 and status(api, camera["id"])["fps"])
    assert rate <= 10 * 1.3  # at most the camera's fps (10 here), though the stream sends 15


def test_a_stranger_on_a_camera_is_unknown_and_goes_to_the_inbox(camera_app, api, enrolled_frame, stream, frames):
    server = stream(frames(STRANGER, 2))
    camera = add(api, "Gate", server.url())
    wait_for(lambda: named(api, camera["id"], None))

    def inbox_faces():
        conn = app_db.connect(camera_app.config["DATABASE"])
        try:
            return conn.execute("SELECT COUNT(*) FROM unknown_faces").fetchone()[0]
        finally:
            conn.close()

    assert wait_for(inbox_faces) == 1  # one face per track, not per frame
    assert not [row for row in sightings(camera_app) if row[0] == "Ada"]


def test_a_video_file_camera_plays_and_names(camera_app, api, enrolled_frame, videos):
    import cv2

    picture = cv2.imdecode(np.frombuffer(enrolled_frame, np.uint8), cv2.IMREAD_COLOR)
    path = videos / "door.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for _ in range(20):  # 2 s, played again and again
        writer.write(picture)
    writer.release()
    camera = add(api, "Recording", str(path))
    wait_for(lambda: named(api, camera["id"], "Ada"))
    first = status(api, camera["id"])["frames"]
    assert wait_for(lambda: status(api, camera["id"])["frames"] >= first + 25, timeout=10)  # past its end: it loops


def test_a_dropped_camera_comes_back_online(api, enrolled_frame, stream):
    server = stream(enrolled_frame)
    camera = add(api, "Yard", server.url())
    wait_for(lambda: status(api, camera["id"])["state"] == "online")
    server.stop()
    dropped = wait_for(lambda: (s := status(api, camera["id"]))["state"] != "online" and s)
    assert dropped["error"]
    offline = wait_for(lambda: "connection refused" in (status(api, camera["id"])["error"] or "") and
                       status(api, camera["id"]))
    assert offline["state"] in ("offline", "connecting")
    frames_before = offline["frames"]
    server.start()  # the same port
    wait_for(lambda: status(api, camera["id"])["state"] == "online")
    wait_for(lambda: status(api, camera["id"])["frames"] > frames_before + 3)
    assert named(api, camera["id"], "Ada")


def test_a_stalled_stream_reconnects(api, enrolled_frame, stream):
    server = stream(enrolled_frame)
    camera = add(api, "Shed", server.url())
    wait_for(lambda: status(api, camera["id"])["state"] == "online")
    server.stall = True  # the connection stays open, nothing comes
    stalled = wait_for(lambda: (s := status(api, camera["id"]))["state"] != "online" and s, timeout=8)
    assert "stopped after" in stalled["error"] or "stalled" in stalled["error"]
    server.stall = False
    wait_for(lambda: status(api, camera["id"])["state"] == "online")


def test_unreachable_cameras_are_offline_with_a_reason_and_stall_nothing(api, enrolled_frame, stream):
    closed_port = free_port()  # nothing listens there
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        refused = add(api, "Refused", f"http://127.0.0.1:{closed_port}/stream.mjpg")
        mute = add(api, "Mute", f"rtsp://127.0.0.1:{silent.getsockname()[1]}/live")
        working = add(api, "Working", stream(enrolled_frame).url())
        wait_for(lambda: named(api, working["id"], "Ada"))
        error = wait_for(lambda: status(api, refused["id"])["error"])
        assert status(api, refused["id"])["state"] in ("offline", "connecting")
        assert "unreachable" in error and "connection refused" in error
        mute_error = wait_for(lambda: status(api, mute["id"])["error"], timeout=10)
        assert "did not answer" in mute_error or "no answer" in mute_error

        started = time.monotonic()
        listed = api.get("/api/cameras").get_json()["cameras"]
        page = api.get("/cameras")
        assert time.monotonic() - started < 1.0 and page.status_code == 200
        assert {c["name"]: c["status"]["state"] for c in listed}["Working"] == "online"
        before = status(api, working["id"])["frames"]
        wait_for(lambda: status(api, working["id"])["frames"] >= before + 10)  # still analysed meanwhile
    finally:
        silent.close()


def test_the_test_button_says_why_an_address_does_not_work(api, stream, enrolled_frame):
    server = stream(enrolled_frame)
    works = api.post("/api/cameras/test", json={"url": server.url()}).get_json()
    assert works["ok"] is True and (works["width"], works["height"]) == (640, 480)
    page = api.post("/api/cameras/test", json={"url": server.url("/page.html")}).get_json()
    assert page["ok"] is False and page["error"].startswith("not a video") and "text/html" in page["error"]
    missing = api.post("/api/cameras/test", json={"url": server.url("/nothing.mjpg")}).get_json()
    assert missing["ok"] is False and "HTTP 404" in missing["error"]
    refused = api.post("/api/cameras/test", json={"url": f"rtsp://127.0.0.1:{free_port()}/x"}).get_json()
    assert refused["ok"] is False and "connection refused" in refused["error"]
    unknown = api.post("/api/cameras/test", json={"url": "http://camera.invalid/stream"}).get_json()
    assert unknown["ok"] is False and "does not resolve" in unknown["error"]
    camera = add(api, "Stored", server.url(), enabled=False)
    assert api.post(f"/api/cameras/{camera['id']}/test").get_json()["ok"] is True


def test_credentials_are_used_but_never_shown_or_logged(camera_app, api, enrolled_frame, stream, caplog, capfd):
    caplog.set_level("DEBUG")
    server = stream(enrolled_frame, login=("viewer", PASSWORD))
    camera = add(api, "Locked", server.url(login=("viewer", PASSWORD)))
    wrong = add(api, "Wrong", server.url(login=("viewer", "not-the-" + PASSWORD)))
    wait_for(lambda: named(api, camera["id"], "Ada"))  # the password worked
    error = wait_for(lambda: status(api, wrong["id"])["error"])
    assert "HTTP 401" in error and "user name or password" in error

    answers = [
        api.get("/api/cameras").get_data(as_text=True),
        api.get(f"/api/cameras/{camera['id']}").get_data(as_text=True),
        api.get(f"/api/cameras/{wrong['id']}").get_data(as_text=True),
        api.patch(f"/api/cameras/{camera['id']}", json={"fps": 4}).get_data(as_text=True),
        api.post(f"/api/cameras/{wrong['id']}/test").get_data(as_text=True),
        api.post("/api/cameras/test", json={"url": server.url(login=("viewer", PASSWORD))}).get_data(as_text=True),
        api.get("/cameras").get_data(as_text=True),
        api.get(f"/api/cameras/{camera['id']}/faces").get_data(as_text=True),
    ]
    assert f"http://***@127.0.0.1:{server.port}/stream.mjpg" in answers[0]
    server.stop()  # a drop, so the log has something to say about it
    wait_for(lambda: status(api, camera["id"])["state"] != "online")
    camera_app.extensions["cameras"].stop()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    native = capfd.readouterr()  # what OpenCV and FFmpeg printed themselves
    assert "Locked" in logged  # the cameras did log
    for text in [*answers, logged, native.out, native.err]:
        assert PASSWORD not in text
        assert base64.b64encode(f"viewer:{PASSWORD}".encode()).decode() not in text


def test_disabling_stops_the_camera_and_enabling_starts_it(api, enrolled_frame, stream):
    server = stream(enrolled_frame)
    camera = add(api, "Porch", server.url())
    wait_for(lambda: status(api, camera["id"])["state"] == "online")
    api.patch(f"/api/cameras/{camera['id']}", json={"enabled": False})
    assert status(api, camera["id"])["state"] == "disabled"
    served = server.served
    time.sleep(0.5)
    assert server.served - served <= 2  # the stream was closed
    api.patch(f"/api/cameras/{camera['id']}", json={"enabled": True})
    wait_for(lambda: named(api, camera["id"], "Ada"))


def test_cameras_are_started_again_when_the_app_starts(tmp_path, enrolled_frame, stream, camera_app, api):
    server = stream(enrolled_frame)
    add(api, "Kept", server.url())
    camera_app.extensions["cameras"].stop()
    again = make_camera_app(camera_app.config["DATA_DIR"], fake_recognizer(threshold=TEST_THRESHOLD),
                            DATABASE_URL=camera_app.config["DATABASE_URL"])
    try:
        client = log_in(again.test_client())
        [camera] = client.get("/api/cameras").get_json()["cameras"]
        wait_for(lambda: named(client, camera["id"], "Ada"))
    finally:
        again.extensions["cameras"].stop()


def test_the_pages_list_cameras_and_offer_them_on_live(api):
    add(api, "Back door", "rtsp://user:pw-secret@192.0.2.7/stream", enabled=False)
    page = api.get("/cameras").get_data(as_text=True)
    assert "Back door" in page and "rtsp://***@192.0.2.7/stream" in page and "pw-secret" not in page
    assert 'id="camera-form"' in page and "js/cameras.js" in page
    live = api.get("/live").get_data(as_text=True)
    assert 'id="live-source"' in live and "js/camera_view.js" in live
    assert 'href="/cameras"' in api.get("/people").get_data(as_text=True)


def test_a_cameras_track_events_carry_its_name(camera_app, api, enrolled_frame, stream):
    events = []
    camera_app.extensions["cameras"].stream_options["on_event"] = events.append  # what MQTT and webhooks get
    add(api, "Porch", stream(enrolled_frame).url())
    event = wait_for(lambda: next((e for e in events if e["person"] == "Ada"), None))
    assert event["camera"] == "Porch" and event["unknown"] is False
    time.sleep(1.0)
    assert len([e for e in events if e["person"] == "Ada"]) == 1  # one per track, not per frame


@pytest.mark.parametrize("url, shown, secret", [
    ("rtsp://admin:pw1234@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live", "pw1234"),
    ("http://viewer:p%40ss@cam.local/video.mjpg", "http://***@cam.local/video.mjpg", "p@ss"),
    ("https://cam.local/mjpg?user=admin&pwd=x%40y&channel=2", "https://cam.local/mjpg?user=***&pwd=***&channel=2",
     "x@y"),
    ("rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live", None),
    ("/dev/video0", "/dev/video0", None),
])
def test_urls_are_shown_without_their_credentials(url, shown, secret):
    from webapp.cameras_store import mask_url, scrub

    assert mask_url(url) == shown
    message = scrub(f"could not open {url} (password: {secret})", url)
    assert message.startswith(f"could not open {shown} ")
    if secret:
        assert secret not in message and "***" in message.split("(")[1]


def test_a_reader_stuck_past_its_timeouts_is_replaced(api, enrolled_frame, stream, monkeypatch, caplog):
    import webapp.cameras

    real_open, release, opened = webapp.cameras.open_capture, threading.Event(), []

    def first_open_hangs(source, timeout_s):  # like a backend that ignores OpenCV's timeouts
        opened.append(time.monotonic())
        if len(opened) == 1:
            release.wait(30)
        return real_open(source, timeout_s)

    monkeypatch.setattr(webapp.cameras, "open_capture", first_open_hangs)
    caplog.set_level("INFO")
    try:
        camera = add(api, "Stuck", stream(enrolled_frame).url())
        wait_for(lambda: named(api, camera["id"], "Ada"))
        assert len(opened) == 2 and opened[1] - opened[0] >= 3 * 1.0  # three timeouts of FAST, then a new reader
        assert any("no sign of life" in record.getMessage() for record in caplog.records)
    finally:
        release.set()
    time.sleep(0.5)  # the stuck reader returns, sees it was replaced and leaves the camera alone
    assert status(api, camera["id"])["state"] == "online" and named(api, camera["id"], "Ada")
