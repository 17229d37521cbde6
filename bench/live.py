"""Benchmark live recognition over Socket.IO on loopback, against the naive per-frame loop.

    python bench/live.py [--clients N] [--seconds S] [--fps F]

Starts `server.py` on a free port with a fresh data dir and a random admin password, logs in, enrolls one person
from 3 CelebA photos through the JSON API, then connects N python-socketio
clients (WebSocket transport). Each sends 640x480 JPEG frames at F fps, made
from other photos of that person with the face moving across the frame, and
measures the time from sending a frame to receiving its `faces`. It also times
the naive loop (HOG at upsample 0, 5 landmarks, dlib descriptor on every frame)
on the same frames in this process, after the clients stop.

Prints figures, then one JSON line: fps (answered frames per second per
client), p50_ms, p95_ms, p99_ms, answered, sent, errors, naive_fps, speedup,
clients, rss_mb, cpu_percent, start_s (seconds until the server answered HTTP).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from model.images import load_image  # noqa: E402

FACES_DIR = Path(os.environ.get("FACES_TEST_DATA", PROJECT_DIR.parent / "shared" / "faces"))
PERSON = "celeb_7201"
# The server is started with this admin password (FACES_ADMIN_PASSWORD); `login` uses it.
BENCH_PASSWORD = secrets.token_urlsafe(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_frames(photos: list[np.ndarray], count: int) -> list[bytes]:
    """JPEG frames 640x480: a portrait sliding left and right across a grey background."""
    frames = []
    for k in range(count):
        photo = photos[(k // 30) % len(photos)]
        frame = np.full((480, 640, 3), 100, np.uint8)
        x = int(195 + 150 * np.sin(2 * np.pi * k / 90))
        frame[115:365, x : x + 250] = photo
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        frames.append(jpeg.tobytes())
    return frames


def start_server(data_dir: str, port: int, command: str = "server.py") -> tuple[subprocess.Popen, float]:
    """Start the app (`command`: a script in the project and its arguments); returns it and its time to HTTP."""
    env = dict(os.environ, FACES_DATA_DIR=data_dir, FACES_PORT=str(port), FACES_ADMIN_PASSWORD=BENCH_PASSWORD)
    started = time.perf_counter()
    script, *args = command.split()
    proc = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / script), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while time.perf_counter() - started < 60:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc, time.perf_counter() - started
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not answer HTTP within 60 s")


def login(base: str):
    """A requests.Session logged in as the admin, sending the CSRF token with every request."""
    import requests

    session = requests.Session()
    answer = session.post(f"{base}/api/login", json={"password": BENCH_PASSWORD}, timeout=30)
    answer.raise_for_status()
    session.headers["X-CSRFToken"] = answer.json()["csrf_token"]
    return session


def cookie_header(session) -> dict:
    """The session's login as headers for a python-socketio Client.connect."""
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in session.cookies.items())}


def enroll(session, base: str, photos: list[Path]) -> None:
    person = session.post(f"{base}/api/people", json={"name": "Bench Person"}, timeout=60)
    person.raise_for_status()
    files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    result = session.post(f"{base}/api/people/{person.json()['id']}/photos", files=files, timeout=120).json()
    if not all(photo["accepted"] for photo in result["photos"]):
        raise SystemExit(f"enrollment failed: {result}")


class Client:
    """One live connection sending frames at a fixed rate and timing each answer."""

    def __init__(self, url: str, frames: list[bytes], fps: float, headers: dict | None = None):
        import socketio

        self.sio = socketio.Client(reconnection=False)
        self.frames, self.period = frames, 1.0 / fps
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.server_ms: list[float] = []
        self.names: list[str | None] = []
        self.errors = 0
        self.sent = 0
        self.sio.on("faces", self._on_faces, namespace="/live")
        self.sio.on("error", self._on_error, namespace="/live")
        self.sio.connect(url, namespaces=["/live"], transports=["websocket"], headers=headers or {})

    def _on_faces(self, data: dict) -> None:
        sent = self.sent_at.pop(data["frame_id"], None)
        if sent is not None:
            self.latencies.append(1000 * (time.perf_counter() - sent))
            self.server_ms.append(data["ms"])
            self.names.extend(face["name"] for face in data["faces"])

    def _on_error(self, data: dict) -> None:
        self.errors += 1

    def run(self, seconds: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.sent_at[self.sent] = time.perf_counter()
            self.sio.emit("frame", self.frames[self.sent % len(self.frames)], namespace="/live")
            self.sent += 1
            next_at = start + self.sent * self.period
            time.sleep(max(0.0, next_at - time.perf_counter()))
        time.sleep(0.5)  # let the last answers arrive
        self.sio.disconnect()


def process_usage(pid: int) -> tuple[float, float]:
    """(cpu seconds used, resident MB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
    return cpu, rss_kb / 1024


def naive_fps(frames: list[bytes], seconds: float = 10.0) -> float:
    """The reference loop: decode, HOG (upsample 0), 5 landmarks and the descriptor on every frame."""
    import dlib
    import face_recognition_models

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(frames[done % len(frames)], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        for rect in detector(rgb, 0):
            net.compute_face_descriptor(rgb, predictor(rgb, rect))
        done += 1
    return done / (time.perf_counter() - start)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--naive-seconds", type=float, default=10)
    parser.add_argument("--server", default="server.py", help="script (and args) that starts the app")
    args = parser.parse_args()

    person_dir = FACES_DIR / "celeba" / PERSON
    if not person_dir.is_dir():
        raise SystemExit(f"needs the shared photos at {person_dir} (set FACES_TEST_DATA)")
    photo_paths = sorted(person_dir.glob("*.jpg"))
    frames = make_frames([load_image(p) for p in photo_paths[3:8]], 270)

    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        proc, start_s = start_server(data_dir, port, args.server)
        try:
            base = f"http://127.0.0.1:{port}"
            session = login(base)
            enroll(session, base, photo_paths[:3])
            clients = [Client(base, frames, args.fps, cookie_header(session)) for _ in range(args.clients)]
            cpu0, _ = process_usage(proc.pid)
            wall0 = time.perf_counter()
            threads = [threading.Thread(target=c.run, args=(args.seconds,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            cpu1, rss_mb = process_usage(proc.pid)
            cpu_percent = 100 * (cpu1 - cpu0) / (time.perf_counter() - wall0)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    latencies = np.concatenate([c.latencies for c in clients]) if clients else np.zeros(0)
    answered = sum(len(c.latencies) for c in clients)
    sent = sum(c.sent for c in clients)
    names = [n for c in clients for n in c.names]
    server_ms = np.concatenate([c.server_ms for c in clients]) if clients else np.zeros(0)
    naive = naive_fps(frames, args.naive_seconds)
    fps = answered / args.clients / args.seconds
    result = {
        "fps": round(fps, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if answered else None,
        "p95_ms": round(float(np.percentile(latencies, 95)), 1) if answered else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if answered else None,
        "server_p50_ms": round(float(np.percentile(server_ms, 50)), 1) if answered else None,
        "answered": answered,
        "sent": sent,
        "errors": sum(c.errors for c in clients),
        "named_share": round(sum(n == "Bench Person" for n in names) / max(len(names), 1), 3),
        "naive_fps": round(naive, 1),
        "speedup": round(fps / naive, 2),
        "clients": args.clients,
        "rss_mb": round(rss_mb, 1),
        "cpu_percent": round(cpu_percent, 1),
        "start_s": round(start_s, 2),
    }
    for key, value in result.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
