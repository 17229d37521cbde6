"""Helpers for the web app tests: constants, logging in, multipart bodies, frames, and a real server process.

The threshold is pinned for these tests so they check the app, not the model's
calibration: on these photos celeb_7201 scores at least 0.95 against their own
enrolled photos and celeb_7229 at most 0.80.

Every test app gets the admin password TEST_PASSWORD, stored with a cheap
pbkdf2 hash (the app's own is scrypt, about 0.15 s per check) so that logging
in costs the suite nothing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import queue
import socket
import subprocess
import threading
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parents[2]
TEST_THRESHOLD = 0.9
ENROLLED = "celeb_7201"  # enrolled from photos 1-3; other photos of them must be named
STRANGER = "celeb_7229"  # never enrolled; must come out as unknown
SERVER_START_TIMEOUT_S = 60
TEST_PASSWORD = "correct horse battery"


@functools.cache
def cheap_password_hash() -> str:
    from werkzeug.security import generate_password_hash

    return generate_password_hash(TEST_PASSWORD, method="pbkdf2:sha256:1000")


def prepare_data_dir(data_dir: Path) -> Path:
    """A data dir whose admin password is already TEST_PASSWORD."""
    from webapp.auth import password_path

    data_dir.mkdir(parents=True, exist_ok=True)
    password_path(data_dir).write_text(cheap_password_hash() + "\n")
    return data_dir


def log_in(client, password: str = TEST_PASSWORD):
    """Log a Flask test client in through the API and send the CSRF token on its every request."""
    answer = client.post("/api/login", json={"password": password})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    client.environ_base["HTTP_X_CSRFTOKEN"] = answer.get_json()["csrf_token"]
    return client


def server_session(url: str, password: str = TEST_PASSWORD):
    """A requests.Session logged in to a running server, sending the CSRF token on every request."""
    import requests

    session = requests.Session()
    answer = session.post(f"{url}/api/login", json={"password": password}, timeout=10)
    answer.raise_for_status()
    session.headers["X-CSRFToken"] = answer.json()["csrf_token"]
    return session


def cookie_header(session) -> dict:
    """Headers that carry a requests session's login to a python-socketio Client.connect."""
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in session.cookies.items())}


def files_field(files: list[tuple[str, bytes]], field: str = "photos") -> dict:
    """Multipart form data for Flask's test client: several files under one field."""
    return {field: [(io.BytesIO(data), name) for name, data in files]}


def enroll_json(client, name: str, files: list[tuple[str, bytes]], **extra):
    """POST the add-person form the way the page's script does; returns the response."""
    data = {"name": name, **files_field(files), **extra}
    return client.post("/people/new", data=data, headers={"Accept": "application/json"})


def data_dir_with_ada(data_dir: Path, recognizer, celeba_dir: Path) -> Path:
    """A data dir whose database holds Ada (ENROLLED, photos 1-3), enrolled through the app with `recognizer`."""
    from webapp import create_app

    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(data_dir), "RECOGNIZER": recognizer})
    photos = [(p.name, p.read_bytes()) for p in (celeba_dir / ENROLLED / f"{ENROLLED}_{i:04d}.jpg" for i in (1, 2, 3))]
    assert enroll_json(log_in(app.test_client()), "Ada", photos).status_code == 201
    if "cameras" in app.extensions:
        app.extensions["cameras"].stop()
    return data_dir


def on_background(jpeg: bytes, quality: int = 85) -> bytes:
    """A portrait pasted in the middle of a plain 640x480 frame, as JPEG (what a webcam frame looks like here)."""
    out = io.BytesIO()
    Image.fromarray(webcam_frame(io.BytesIO(jpeg))).save(out, "JPEG", quality=quality)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float = 10, step: float = 0.05):
    """condition()'s first truthy value within timeout seconds; AssertionError with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not true within {timeout} s; last seen: {value!r}")


@contextlib.contextmanager
def running_server(data_dir: Path) -> Iterator[str]:
    """`python server.py` on a free loopback port, as a user starts it; yields its base URL once the model is ready.

    The admin password is TEST_PASSWORD (FACES_ADMIN_PASSWORD): log in with `server_session`.
    """
    process, url, _ = start_server(data_dir)
    try:
        yield url
    finally:
        stop_server(process)


def start_server(data_dir: Path, port: int | None = None, extra_env: dict | None = None
                 ) -> tuple[subprocess.Popen, str, Path]:
    """Start server.py and wait until its model is ready; returns (process, base URL, log file).

    extra_env overrides the environment (e.g. {"FACES_BACKBONE": "dlib-sface"}).
    """
    port = port or free_port()
    # The model of the `dlib_recognizer` fixture, which some tests enroll with before the server starts.
    env = dict(os.environ, FACES_THRESHOLD=str(TEST_THRESHOLD), FACES_ADMIN_PASSWORD=TEST_PASSWORD,
               FACES_BACKBONE="dlib-resnet", FACES_DETECTOR="hog")
    env.update(extra_env or {})
    log_path = data_dir.parent / f"server-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log_path)
    except BaseException:
        stop_server(process)
        raise
    return process, url, log_path


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; None is nothing to stop."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


stop_server = stop_process


def _wait_until_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    session = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server.py exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            session = session or server_session(url)
            if session.get(f"{url}/api/status", timeout=2).json()["model"] == "ready":
                return
        except OSError:  # requests' ConnectionError is an OSError
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server.py did not get ready in {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()}")


def write_y4m(path: Path, frames: list, fps: int) -> None:
    """Frames (uint8 [H, W, 3] RGB, all one size) as a YUV4MPEG2 4:2:0 file, what Chromium's fake camera plays."""
    import cv2

    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())


CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def chromium_with_camera(camera: Path):
    """Headless Chromium whose fake camera plays `camera` (a .y4m, looped); skips the test without Chromium."""
    import pytest

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found; install Debian's chromium (scripts/setup.sh does with WITH_BROWSER=1)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}",
                "--use-fake-ui-for-media-stream",
            ],
        )
        yield browser
        browser.close()


def webcam_frame(portrait, size: tuple[int, int] = (640, 480), grey: int = 200):
    """A portrait (path or file object) in the middle of a plain frame, as an RGB uint8 array."""
    import numpy as np

    image = Image.open(portrait).convert("RGB")
    frame = Image.new("RGB", size, (grey, grey, grey))
    frame.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return np.asarray(frame)


class LiveClient:
    """A /live connection (logged in unless `headers` says otherwise) that collects what the server sends."""

    def __init__(self, url: str, headers: dict | None = None, answer_timeout_s: float = 15):
        import socketio

        self.answers: queue.Queue = queue.Queue()
        self.refusals: list = []
        self.answer_timeout_s = answer_timeout_s
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("faces", lambda data: self.answers.put(("faces", data)), namespace="/live")
        self.sio.on("error", lambda data: self.answers.put(("error", data)), namespace="/live")
        self.sio.on("connect_error", self.refusals.append, namespace="/live")
        self.sio.connect(
            url, transports=["websocket"], namespaces=["/live"], wait_timeout=10,
            headers=cookie_header(server_session(url)) if headers is None else headers,
        )

    def send(self, payload) -> None:
        self.sio.emit("frame", payload, namespace="/live")

    def next(self, timeout: float | None = None) -> tuple[str, dict]:
        return self.answers.get(timeout=timeout or self.answer_timeout_s)

    def ask(self, payload) -> tuple[str, dict]:
        self.send(payload)
        return self.next()

    def drain(self, quiet_s: float = 2.0) -> list[tuple[str, dict]]:
        """Everything that arrives until nothing has come for quiet_s."""
        got = []
        while True:
            try:
                got.append(self.answers.get(timeout=quiet_s))
            except queue.Empty:
                return got

    def close(self) -> None:
        # websocket-client waits up to 3 s for the server's half of the close
        # handshake, which Werkzeug's threaded server often skips; nothing here
        # depends on it, so the tests do not wait.
        threading.Thread(target=self.sio.disconnect, daemon=True).start()
