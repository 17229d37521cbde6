"""Benchmark live recognition over Socket.IO on loopback: many camera-like clients, against the naive per-frame loop.

    python bench/live.py [--clients 1,2,4,8,16] [--seconds S] [--fps F] [--naive-seconds 10]

Starts `server.py` on a free port with a fresh data dir and a random admin password, logs in, enrolls one person
from 3 CelebA photos through the JSON API. Then, for each client count in --clients, connects that many
python-socketio clients (WebSocket transport) and runs them together for S seconds. Each is a camera: a
new 640x480 JPEG frame every 1/F s (other photos of that person, the face sliding across the frame;
client i CAMERA_OFFSET * i frames into that video and its clock i/N of a frame interval late, so cameras
are not in step), with
at most one frame in flight (a frame is sent when the camera has one not sent yet and no answer is awaited,
or after FRAME_TIMEOUT_S), no faster than the server's `rate` event allows. It asks for F fps in its
Socket.IO auth. It measures the time from sending a frame to receiving its `faces`. A --warmup
run comes first, unmeasured.

After the clients, it times the naive loop (HOG at upsample 0, 5 landmarks, dlib descriptor on every
frame) on the same frames in this process (--naive-seconds 0 skips it).

Prints figures, then one JSON line: {"runs": [one object per client count: clients, client_fps (asked),
fps_min and fps_mean (answered frames per second of each client), fps_min_after_start (the slowest
client's, counting frames sent from START_S seconds into the run: all cameras start at once, and each
stream's first frames cost the most), p50_ms, p95_ms, p99_ms, server_p50_ms, answered, sent,
camera_frames, errors, named_share (share of answers naming the person), given_fps_min (the lowest rate
the server gave), busy (the last reason it gave, if any), cpu_percent (the server, 100 = one core),
rss_mb], naive_fps, speedup (single run's fps_mean over naive_fps), start_s}.
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
NAME = "Bench Person"
# The server is started with this admin password (FACES_ADMIN_PASSWORD); `login` uses it.
BENCH_PASSWORD = secrets.token_urlsafe(16)
# A frame not answered by then is given up (the live page's FACES_FRAME_TIMEOUT_MS).
FRAME_TIMEOUT_S = 3.0
# Client i starts this many frames into the video after client i - 1.
CAMERA_OFFSET = 37
# fps_min_after_start counts the frames sent from this many seconds into a run.
START_S = 2.0


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


def start_server(data_dir: str, port: int, command: str = "server.py", env: dict | None = None
                 ) -> tuple[subprocess.Popen, float]:
    """Start the app (`command`: a script in the project and its arguments); returns it and its time to HTTP."""
    env = dict(os.environ, FACES_DATA_DIR=data_dir, FACES_PORT=str(port), FACES_ADMIN_PASSWORD=BENCH_PASSWORD,
               **(env or {}))
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
    person = session.post(f"{base}/api/people", json={"name": NAME}, timeout=60)
    person.raise_for_status()
    files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    result = session.post(f"{base}/api/people/{person.json()['id']}/photos", files=files, timeout=120).json()
    if not all(photo["accepted"] for photo in result["photos"]):
        raise SystemExit(f"enrollment failed: {result}")


class Client:
    """One live connection acting as a camera at `fps`, one frame in flight, obeying the server's rate."""

    def __init__(self, url: str, frames: list[bytes], fps: float, headers: dict | None = None, offset: int = 0,
                 phase: float = 0.0):
        import socketio

        self.sio = socketio.Client(reconnection=False)
        self.frames, self.fps, self.offset, self.phase = frames, fps, offset, phase
        self.given: float | None = None  # the server's rate (None: not told)
        self.given_min: float | None = None
        self.busy: str | None = None
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.server_ms: list[float] = []
        self.answered_at: list[float] = []  # per answer: when its frame was sent, seconds into the run
        self.started = 0.0
        self.named: list[bool] = []  # per answer: was the person named
        self.errors = 0
        self.sent = 0
        self.camera_frames = 0
        self._in_flight: tuple[int, float] | None = None
        self._answered = threading.Event()
        self.sio.on("faces", self._on_faces, namespace="/live")
        self.sio.on("error", self._on_error, namespace="/live")
        self.sio.on("rate", self._on_rate, namespace="/live")
        self.sio.connect(url, namespaces=["/live"], transports=["websocket"], headers=headers or {},
                         auth={"fps": fps}, wait_timeout=30)

    def _on_faces(self, data: dict) -> None:
        sent = self.sent_at.pop(data["frame_id"], None)
        if sent is not None:
            self.latencies.append(1000 * (time.perf_counter() - sent))
            self.server_ms.append(data["ms"])
            self.answered_at.append(sent - self.started)
            self.named.append(any(face["name"] == NAME for face in data["faces"]))
        self._settle(data["frame_id"])

    def _on_error(self, data: dict) -> None:
        self.errors += 1
        self._settle(data.get("frame_id"))

    def _on_rate(self, data: dict) -> None:
        self.given, self.busy = float(data["fps"]), data.get("reason")
        self.given_min = self.given if self.given_min is None else min(self.given_min, self.given)
        self._answered.set()

    def _settle(self, frame_id) -> None:
        if self._in_flight is not None and self._in_flight[0] == frame_id:
            self._in_flight = None
        self._answered.set()

    def run(self, seconds: float) -> None:
        """Be a camera for `seconds`: send the newest unsent camera frame whenever nothing is in flight."""
        self.started = time.perf_counter()
        start = self.started - self.phase  # its camera's clock ticks `phase` seconds out of step
        last_index, tokens, filled = -1, 2.0, start
        period = 1.0 / self.fps
        while True:
            self._answered.clear()  # before looking: an answer from now on wakes the wait below (no busy loop)
            now = time.perf_counter()
            if now - start >= seconds + self.phase:
                break
            index = int((now - start) / period)  # the camera's newest frame
            if self._in_flight is not None and now - self._in_flight[1] > FRAME_TIMEOUT_S:
                self._in_flight = None  # given up, as the live page does
            rate = self.fps if self.given is None else min(self.fps, self.given)
            tokens, filled = min(2.0, tokens + (now - filled) * rate), now  # the given rate as a token bucket
            if self._in_flight is None and index > last_index and tokens >= 1.0:
                last_index = index
                tokens -= 1.0
                frame_id = self.sent
                self.sent_at[frame_id] = now
                self._in_flight = (frame_id, now)
                self.sio.emit("frame", self.frames[(index + self.offset) % len(self.frames)], namespace="/live")
                self.sent += 1
                continue
            wake = start + (index + 1) * period
            if rate > 0 and tokens < 1.0:
                wake = max(wake, now + (1.0 - tokens) / rate)
            self._answered.wait(max(0.0, min(wake - now, 0.05)))
        self.camera_frames = int(seconds * self.fps)
        time.sleep(0.5)  # let the last answers arrive

    def close(self) -> None:
        threading.Thread(target=self.sio.disconnect, daemon=True).start()


def process_usage(pid: int) -> tuple[float, float]:
    """(cpu seconds used, resident MB) of a process and its children (live worker processes), from /proc."""
    cpu = rss_kb = 0.0
    for member in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:  # gone meanwhile
            continue
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss_kb += next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return cpu, rss_kb / 1024


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


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


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def run_clients(base: str, headers: dict, frames: list[bytes], count: int, fps: float, seconds: float,
                pid: int) -> dict:
    """`count` camera clients for `seconds` against the running server; their figures and the server's usage."""
    # Each camera is at its own place in the video and ticks at its own moments: cameras are not in step.
    clients = [Client(base, frames, fps, headers, offset=CAMERA_OFFSET * i, phase=i / count / fps)
               for i in range(count)]
    try:
        time.sleep(0.5)  # every client has its rate before the cameras start
        cpu0, _ = process_usage(pid)
        wall0 = time.perf_counter()
        threads = [threading.Thread(target=c.run, args=(seconds,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu1, rss_mb = process_usage(pid)
        cpu_percent = 100 * (cpu1 - cpu0) / (time.perf_counter() - wall0)
    finally:
        for c in clients:
            c.close()
    latencies = np.concatenate([c.latencies for c in clients])
    server_ms = np.concatenate([c.server_ms for c in clients])
    per_client = [len(c.latencies) / seconds for c in clients]
    # Without the first START_S seconds, when every stream's first frames (a whole closer look, the first
    # embeddings) come at once: the rate the machine keeps up.
    later = max(seconds - START_S, 1e-9)
    per_client_later = [sum(t >= START_S for t in c.answered_at) / later for c in clients]
    named = [n for c in clients for n in c.named]
    given = [c.given_min for c in clients if c.given_min is not None]
    return {
        "clients": count,
        "client_fps": fps,
        "fps_min": round(min(per_client), 1),
        "fps_mean": round(float(np.mean(per_client)), 1),
        "fps_min_after_start": round(min(per_client_later), 1),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "server_p50_ms": percentile(server_ms, 50),
        "answered": len(latencies),
        "sent": sum(c.sent for c in clients),
        "camera_frames": sum(c.camera_frames for c in clients),
        "errors": sum(c.errors for c in clients),
        "named_share": round(sum(named) / max(len(named), 1), 3),
        "given_fps_min": min(given) if given else None,
        "busy": next((c.busy for c in reversed(clients) if c.busy), None),
        "cpu_percent": round(cpu_percent, 1),
        "rss_mb": round(rss_mb, 1),
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1", help="client counts, comma-separated (one run each)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fps", type=float, default=30, help="each client's camera rate")
    parser.add_argument("--naive-seconds", type=float, default=10)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of streaming before the first run (the workers load their models)")
    parser.add_argument("--server", default="server.py", help="script (and args) that starts the app")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]

    person_dir = FACES_DIR / "celeba" / PERSON
    if not person_dir.is_dir():
        raise SystemExit(f"needs the shared photos at {person_dir} (set FACES_TEST_DATA)")
    photo_paths = sorted(person_dir.glob("*.jpg"))
    frames = make_frames([load_image(p) for p in photo_paths[3:8]], 270)

    runs = []
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        proc, start_s = start_server(data_dir, port, args.server)
        try:
            base = f"http://127.0.0.1:{port}"
            session = login(base)
            enroll(session, base, photo_paths[:3])
            if args.warmup > 0:
                run_clients(base, cookie_header(session), frames, min(max(counts), 4), args.fps, args.warmup, proc.pid)
            for count in counts:
                time.sleep(args.pause)
                run = run_clients(base, cookie_header(session), frames, count, args.fps, args.seconds, proc.pid)
                print(json.dumps(run), file=sys.stderr)
                runs.append(run)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    naive = naive_fps(frames, args.naive_seconds) if args.naive_seconds > 0 else None
    result = {
        "runs": runs,
        "naive_fps": None if naive is None else round(naive, 1),
        "speedup": round(runs[0]["fps_mean"] / naive, 2) if naive else None,
        "start_s": round(start_s, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
