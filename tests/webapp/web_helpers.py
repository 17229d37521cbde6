"""Helpers for the web app tests: constants, multipart bodies, frames, and a real server process.

The threshold is pinned for these tests so they check the app, not the model's
calibration: on these photos celeb_7201 scores at least 0.95 against their own
enrolled photos and celeb_7229 at most 0.80.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parents[2]
TEST_THRESHOLD = 0.9
ENROLLED = "celeb_7201"  # enrolled from photos 1-3; other photos of them must be named
STRANGER = "celeb_7229"  # never enrolled; must come out as unknown
SERVER_START_TIMEOUT_S = 60


def files_field(files: list[tuple[str, bytes]], field: str = "photos") -> dict:
    """Multipart form data for Flask's test client: several files under one field."""
    return {field: [(io.BytesIO(data), name) for name, data in files]}


def enroll_json(client, name: str, files: list[tuple[str, bytes]], **extra):
    """POST the add-person form the way the page's script does; returns the response."""
    data = {"name": name, **files_field(files), **extra}
    return client.post("/people/new", data=data, headers={"Accept": "application/json"})


def on_background(jpeg: bytes, quality: int = 85) -> bytes:
    """A portrait pasted in the middle of a plain 640x480 frame, as JPEG (what a webcam frame looks like here)."""
    out = io.BytesIO()
    Image.fromarray(webcam_frame(io.BytesIO(jpeg))).save(out, "JPEG", quality=quality)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(data_dir: Path) -> Iterator[str]:
    """`python server.py` on a free loopback port, as a user starts it; yields its base URL once the model is ready."""
    port = free_port()
    env = dict(os.environ, FACES_THRESHOLD=str(TEST_THRESHOLD))
    log_path = data_dir.parent / f"server-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server.py exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                if json.load(response)["model"] == "ready":
                    return
        except OSError:
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


def webcam_frame(portrait, size: tuple[int, int] = (640, 480), grey: int = 200):
    """A portrait (path or file object) in the middle of a plain frame, as an RGB uint8 array."""
    import numpy as np

    image = Image.open(portrait).convert("RGB")
    frame = Image.new("RGB", size, (grey, grey, grey))
    frame.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return np.asarray(frame)
