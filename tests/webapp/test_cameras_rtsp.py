"""An RTSP camera: ffmpeg pushes a stream made from a photo to a small RTSP relay (Debian's librtsp-server-perl,
run with perl), and the app reads it like an IP camera (fake models, see test_cameras.py).

ffmpeg cannot serve RTSP to players by itself (its `listen` flag is for receiving), hence the relay. The relay
sends RTP over UDP only, while OpenCV asks for TCP unless told otherwise, so these tests set
OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;udp (what a user does for such a camera too).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_cameras import add, api, camera_app, enrolled_frame, frames, named, status, videos, wait_for  # noqa: F401
from web_helpers import free_port, stop_process

RELAY = "use AnyEvent; use RTSP::Server; RTSP::Server->new_with_options->listen; AnyEvent->condvar->recv"


def _relay_missing() -> str | None:
    if shutil.which("ffmpeg") is None:
        return "ffmpeg not found; install Debian's ffmpeg (scripts/setup.sh does with WITH_BROWSER=1)"
    if subprocess.run(["perl", "-MRTSP::Server", "-e", "1"], capture_output=True).returncode != 0:
        return "perl's RTSP::Server not found; install Debian's librtsp-server-perl (scripts/setup.sh does)"
    return None


pytestmark = pytest.mark.skipif(_relay_missing() is not None, reason=_relay_missing() or "")


class RtspCamera:
    """The relay on two free loopback ports, and an ffmpeg pushing `picture` (a JPEG file) to it at 10 fps."""

    def __init__(self, picture: Path, log_dir: Path):
        self.picture, self.log_dir = picture, log_dir
        self.client_port, self.source_port = free_port(), free_port()
        self.relay = self._start(["perl", "-e", RELAY, "--", "--clientport", str(self.client_port),
                                  "--serverport", str(self.source_port), "--client_listen_address", "127.0.0.1",
                                  "--source_listen_address", "127.0.0.1", "--loglevel", "1"], "relay.log")
        self.pusher: subprocess.Popen | None = None

    def url(self, login: str = "") -> str:
        return f"rtsp://{login}127.0.0.1:{self.client_port}/cam"

    def _start(self, command: list[str], log_name: str) -> subprocess.Popen:
        with open(self.log_dir / log_name, "ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def push(self) -> None:
        """Start ffmpeg pushing, and wait until the relay describes the stream."""
        wait_for(lambda: self._answers(self.source_port) is not None)
        self.pusher = self._start(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-loop", "1", "-framerate", "10",
             "-i", str(self.picture), "-c:v", "mpeg4", "-q:v", "3", "-g", "10", "-pix_fmt", "yuv420p",
             "-f", "rtsp", f"rtsp://127.0.0.1:{self.source_port}/cam"], "ffmpeg.log")
        wait_for(lambda: self._answers(self.client_port) == "200")

    def _answers(self, port: int) -> str | None:
        """The RTSP status code of a DESCRIBE of the stream, or None when nothing listens."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"DESCRIBE rtsp://127.0.0.1:{port}/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
                return sock.recv(128).split(b" ")[1].decode()
        except (OSError, IndexError):
            return None

    def stop_pushing(self) -> None:
        stop_process(self.pusher)
        self.pusher = None

    def close(self) -> None:
        stop_process(self.pusher)
        stop_process(self.relay)


@pytest.fixture
def rtsp(tmp_path, enrolled_frame, monkeypatch):
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;udp")
    picture = tmp_path / "frame.jpg"
    picture.write_bytes(enrolled_frame)
    camera = RtspCamera(picture, tmp_path)
    try:
        camera.push()
        yield camera
    finally:
        camera.close()


def test_an_rtsp_camera_names_the_enrolled_face(api, rtsp):
    camera = add(api, "Door", rtsp.url("admin:rtsp-Secret9@"))  # this relay takes any login
    assert camera["url"] == f"rtsp://***@127.0.0.1:{rtsp.client_port}/cam"
    answer = wait_for(lambda: named(api, camera["id"], "Ada"), timeout=20)
    assert (answer["width"], answer["height"]) == (640, 480)
    assert "rtsp-Secret9" not in api.get("/api/cameras").get_data(as_text=True)


def test_an_rtsp_camera_that_stops_comes_back(api, rtsp):
    camera = add(api, "Drive", rtsp.url())
    wait_for(lambda: named(api, camera["id"], "Ada"), timeout=20)
    rtsp.stop_pushing()
    gone = wait_for(lambda: (s := status(api, camera["id"]))["state"] != "online" and s, timeout=10)
    assert gone["error"]
    time.sleep(0.5)
    rtsp.push()
    wait_for(lambda: status(api, camera["id"])["state"] == "online", timeout=20)
    before = status(api, camera["id"])["frames"]
    wait_for(lambda: status(api, camera["id"])["frames"] > before + 3)
