"""Soak test on loopback: live clients stream frames while another client enrolls people.

    python bench/soak.py [--seconds 60] [--clients 16] [--fps 15] [--photos 3] [--enroll-pause 1]

Starts `server.py` on 127.0.0.1 with a fresh data dir and an admin password,
logs in and waits for the model. Then N python-socketio clients, each a camera
of 640x480 JPEG frames (CelebA portraits sliding across a grey background) at F
fps with one frame in flight and the server's rate obeyed (bench/live.py's
Client), stream while one more client enrolls people from the CelebA folders, --photos
photos each, one after another with --enroll-pause seconds between. The first
--warmup seconds run every path once (first-use allocations are not growth);
the next --seconds are measured, the server's RSS sampled every second.

Bounded: one server on loopback, a fixed duration, at most --max-enrollments
enrollments; the data dir is deleted at the end.

Prints figures, then one JSON line: rss_before_warmup_mb (model loaded, idle),
rss_start_mb (after the warm-up), rss_end_mb, rss_growth_mb, rss_max_mb, rss_every_10s_mb, errors (error events,
failed enrollments, tracebacks or errors in the server log, a dead server),
p50/p95/p99_ms (frame sent to its `faces` received; frames replaced before
their turn are never answered and not counted), answered, sent, fps (answered
per client per second) and fps_min (the slowest client's), named_share (answers
naming the streamed person), given_fps_min (the lowest rate the server gave),
enrollments, enroll_p50_ms, enroll_p99_ms, and the settings. ws_close_noise
counts werkzeug log lines from closing WebSockets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live import (  # noqa: E402
    FACES_DIR,
    PERSON,
    Client,
    cookie_header,
    free_port,
    login,
    make_frames,
    process_usage,
    start_server,
)

from model.images import load_image  # noqa: E402

READY_TIMEOUT_S = 120


class Enroller:
    """Enrolls one CelebA person after another through the add-person form's JSON answer."""

    def __init__(self, base: str, session, folders: list[Path], photos: int, limit: int, pause: float = 0.0):
        self.base, self.session, self.photos, self.limit, self.pause = base, session, photos, limit, pause
        self.folders = [f for f in folders if len(list(f.glob("*.jpg"))) >= photos]
        self.done = 0
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()

    def run(self) -> None:
        for i, folder in enumerate(self.folders[: self.limit]):
            if self._stop.is_set():
                return
            files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in sorted(folder.glob("*.jpg"))[: self.photos]]
            started = time.perf_counter()
            try:
                answer = self.session.post(
                    f"{self.base}/people/new", data={"name": f"Soak {i} {folder.name}"}, files=files,
                    headers={"Accept": "application/json"}, timeout=120,
                )
            except OSError as exc:
                self.failures.append(f"{folder.name}: {exc}")
                continue
            self.latencies.append(1000 * (time.perf_counter() - started))
            if answer.status_code == 201:
                self.done += 1
            elif answer.status_code != 422:  # 422: no photo had a usable face, which CelebA can do
                self.failures.append(f"{folder.name}: {answer.status_code} {answer.text[:200]}")
            self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()


class ServerLog:
    """Reads the server's stderr (so the pipe never fills) and counts tracebacks and errors in it."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def problems(self) -> list[str]:
        return [line for line in self.lines if ("Traceback" in line or " ERROR " in line) and not _close_noise(line)]

    @property
    def close_noise(self) -> int:
        return sum(map(_close_noise, self.lines))


def _close_noise(line: str) -> bool:
    """Werkzeug reading the last bytes of a closing WebSocket (a close frame, 0x88...) as an HTTP request line.

    It happens at disconnects, after the WebSocket handler has ended; the
    connection is closing anyway and nothing is lost.
    """
    return "ERROR werkzeug" in line and ("code 400, message Bad request" in line or "Bad HTTP/0.9 request type" in line)


def wait_ready(base: str, session) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if session.get(f"{base}/api/status", timeout=10).json()["model"] == "ready":
            return
        time.sleep(0.2)
    raise SystemExit(f"the model was not ready within {READY_TIMEOUT_S} s")


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fps", type=float, default=15)
    parser.add_argument("--photos", type=int, default=3, help="photos per enrolled person")
    parser.add_argument("--max-enrollments", type=int, default=200)
    parser.add_argument("--enroll-pause", type=float, default=1.0, help="seconds between enrollments (0: back to back)")
    parser.add_argument("--warmup", type=float, default=30,
                        help="seconds of streaming and enrolling before memory is measured (RSS settles in 20-30 s)")
    args = parser.parse_args()

    celeba = FACES_DIR / "celeba"
    if not (celeba / PERSON).is_dir():
        raise SystemExit(f"needs the shared photos at {celeba} (set FACES_TEST_DATA)")
    frames = make_frames([load_image(p) for p in sorted((celeba / PERSON).glob("*.jpg"))[3:8]], 270)
    folders = sorted(p for p in celeba.iterdir() if p.is_dir() and p.name != PERSON)

    os.environ["FACES_HOST"] = "127.0.0.1"  # loopback only, whatever the caller's environment says
    with tempfile.TemporaryDirectory(prefix="faces-soak-") as data_dir:
        port = free_port()
        proc, _ = start_server(data_dir, port)
        log = ServerLog(proc.stderr)
        try:
            base = f"http://127.0.0.1:{port}"
            session = login(base)
            wait_ready(base, session)
            headers = cookie_header(session)
            rss_before = process_usage(proc.pid)[1]
            clients = [Client(base, frames, args.fps, headers) for _ in range(args.clients)]
            enroller = Enroller(base, session, folders, args.photos, args.max_enrollments, args.enroll_pause)
            threads = [threading.Thread(target=c.run, args=(args.warmup + args.seconds,)) for c in clients]
            threads.append(threading.Thread(target=enroller.run))
            started = time.perf_counter()
            for thread in threads:
                thread.start()

            # The warm-up runs every path (frames, enrollments) so first-use allocations are not counted as growth.
            time.sleep(args.warmup)
            rss_start = process_usage(proc.pid)[1]
            marks = [(len(c.latencies), c.sent, c.errors) for c in clients]
            enroll_mark = (enroller.done, len(enroller.latencies), len(enroller.failures))
            samples = []
            while (left := started + args.warmup + args.seconds - time.perf_counter()) > 0:
                time.sleep(min(1.0, left))
                samples.append(process_usage(proc.pid)[1])
            rss_end = samples[-1]
            enroller.stop()
            for thread in threads:
                thread.join(150)
            for client in clients:
                client.close()
            alive = proc.poll() is None
            people = session.get(f"{base}/api/status", timeout=10).json()["people"] if alive else None
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    latencies = np.concatenate([c.latencies[m[0]:] for c, m in zip(clients, marks)])
    answered = len(latencies)
    sent = sum(c.sent - m[1] for c, m in zip(clients, marks))
    enroll_latencies = enroller.latencies[enroll_mark[1]:]
    failures = enroller.failures[enroll_mark[2]:]
    errors = sum(c.errors - m[2] for c, m in zip(clients, marks)) + len(failures) + len(log.problems) + (not alive)
    result = {
        "rss_before_warmup_mb": round(rss_before, 1),
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_max_mb": round(max(samples + [rss_start]), 1),
        "rss_every_10s_mb": [round(v) for v in samples[9::10]],
        "errors": errors,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "answered": answered,
        "sent": sent,
        "fps": round(answered / args.clients / args.seconds, 1),
        "fps_min": round(min(len(c.latencies) - m[0] for c, m in zip(clients, marks)) / args.seconds, 1),
        "named_share": round(float(np.mean([n for c, m in zip(clients, marks) for n in c.named[m[0]:]] or [0])), 3),
        "given_fps_min": min((c.given_min for c in clients if c.given_min is not None), default=None),
        "enrollments": enroller.done - enroll_mark[0],
        "people": people,
        "enroll_p50_ms": percentile(enroll_latencies, 50),
        "enroll_p99_ms": percentile(enroll_latencies, 99),
        "enroll_pause_s": args.enroll_pause,
        "ws_close_noise": log.close_noise,
        "clients": args.clients,
        "client_fps": args.fps,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
    }
    for key, value in result.items():
        print(f"{key}: {value}", file=sys.stderr)
    for problem in (enroller.failures + log.problems)[:10]:
        print(f"problem: {problem}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
