"""Benchmark server cameras: the CPU one camera costs at a given analysed frame rate, with the real model.

    python bench/cameras.py [--fps 5,15] [--cameras 1] [--seconds S] [--source-fps 25]

Starts `server.py` (the default model, YuNet + dlib-sface) on a free port with a fresh data dir, enrolls one
person from 3 CelebA photos, and serves an MJPEG stream over HTTP from this process: 640x480 JPEG frames at
--source-fps (other photos of that person, the face sliding across the frame, as bench/live.py makes them).
First the server's idle CPU is measured (model loaded, no camera); then for each analysed rate in --fps and
each camera count in --cameras, that many cameras on that stream are added through the API, run --warmup s
unmeasured, then --seconds s measured, and are removed. CPU is the server process's CPU time over wall time
(100 = one core), read from /proc.

Prints figures, then one JSON line: {"idle_cpu_percent", "runs": [{cameras, fps (asked), analysed_fps (mean
of the cameras' own measure), cpu_percent (the server), cpu_per_camera (above idle, per camera),
named_share (of the analysed answers polled that held a face, the share naming the person), rss_mb}],
"source_fps", "frame", "load_1min", "cores"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from live import FACES_DIR, NAME, PERSON, enroll, free_port, login, make_frames, process_usage, start_server  # noqa: E402

from model.images import load_image  # noqa: E402

BOUNDARY = "benchframe"


class MjpegStream:
    """multipart/x-mixed-replace JPEG frames over HTTP on loopback, at fps, every connection from the start."""

    def __init__(self, frames: list[bytes], fps: float):
        self.frames, self.fps = frames, fps
        self.stopped = threading.Event()
        stream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                started, k = time.monotonic(), 0
                try:
                    while not stream.stopped.is_set():
                        jpeg = stream.frames[k % len(stream.frames)]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                         f"\r\n\r\n".encode() + jpeg + b"\r\n")
                        k += 1
                        time.sleep(max(0.0, started + k / stream.fps - time.monotonic()))
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def cpu_over(pid: int, seconds: float, during=None) -> tuple[float, float]:
    """(CPU percent of the process over `seconds` of wall time, its RSS MB at the end); during() is called
    about every 0.5 s meanwhile."""
    cpu0, _ = process_usage(pid)
    wall0 = time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        if during:
            during()
        time.sleep(0.5)
    cpu1, rss = process_usage(pid)
    return 100 * (cpu1 - cpu0) / (time.perf_counter() - wall0), rss


def run(session, base: str, pid: int, stream_url: str, cameras: int, fps: float, seconds: float,
        warmup: float) -> dict:
    ids = []
    for i in range(cameras):
        answer = session.post(f"{base}/api/cameras", json={"name": f"bench {fps:g} fps #{i}", "url": stream_url,
                                                           "fps": fps}, timeout=30)
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    deadline = time.monotonic() + 60
    while not all(session.get(f"{base}/api/cameras/{i}", timeout=30).json()["status"]["fps"] > 0 for i in ids):
        if time.monotonic() > deadline:
            raise SystemExit("the cameras did not start analysing within 60 s")
        time.sleep(0.5)
    time.sleep(warmup)
    polled = {"faces": 0, "named": 0}
    seen_frames: set = set()

    def poll():
        for i in ids:
            answer = session.get(f"{base}/api/cameras/{i}/faces", timeout=30).json()
            if answer["faces"] and (i, answer["frame_id"]) not in seen_frames:
                seen_frames.add((i, answer["frame_id"]))
                polled["faces"] += 1
                polled["named"] += any(face["name"] == NAME for face in answer["faces"])

    cpu, rss = cpu_over(pid, seconds, poll)
    rates = [session.get(f"{base}/api/cameras/{i}", timeout=30).json()["status"]["fps"] for i in ids]
    for i in ids:
        session.delete(f"{base}/api/cameras/{i}", timeout=30)
    return {"cameras": cameras, "fps": fps, "analysed_fps": round(sum(rates) / len(rates), 2),
            "cpu_percent": round(cpu, 1), "named_share": round(polled["named"] / max(1, polled["faces"]), 3),
            "rss_mb": round(rss, 1)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", default="5,15", help="analysed rates, comma-separated (one run each)")
    parser.add_argument("--cameras", default="1", help="camera counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--source-fps", type=float, default=25, help="the stream's own frame rate")
    args = parser.parse_args()

    photos = [FACES_DIR / "celeba" / PERSON / f"{PERSON}_{i:04d}.jpg" for i in (1, 2, 3)]
    probes = [load_image(FACES_DIR / "celeba" / PERSON / f"{PERSON}_{i:04d}.jpg") for i in (10, 11, 12)]
    stream = MjpegStream(make_frames(probes, 270), args.source_fps)
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        server, _ = start_server(data_dir, port)
        base = f"http://127.0.0.1:{port}"
        try:
            session = login(base)
            enroll(session, base, photos)
            while session.get(f"{base}/api/status", timeout=30).json()["model"] != "ready":
                time.sleep(0.2)
            time.sleep(2)
            idle, _ = cpu_over(server.pid, min(10.0, args.seconds))
            print(f"idle server: {idle:.1f}% CPU", file=sys.stderr)
            runs = []
            for cameras in [int(c) for c in args.cameras.split(",")]:
                for fps in [float(f) for f in args.fps.split(",")]:
                    result = run(session, base, server.pid, stream.url, cameras, fps, args.seconds, args.warmup)
                    result["cpu_per_camera"] = round((result["cpu_percent"] - idle) / cameras, 1)
                    runs.append(result)
                    print(f"{cameras} camera(s) at {fps:g} fps: analysed {result['analysed_fps']} fps, server "
                          f"{result['cpu_percent']}% CPU, {result['cpu_per_camera']}% per camera above idle, named "
                          f"{result['named_share']:.0%}, {result['rss_mb']} MB", file=sys.stderr)
                    time.sleep(2)
        finally:
            server.terminate()
            server.wait(timeout=10)
            stream.close()
    return {"idle_cpu_percent": round(idle, 1), "runs": runs, "source_fps": args.source_fps, "frame": "640x480",
            "load_1min": round(os.getloadavg()[0], 2), "cores": len(os.sched_getaffinity(0))}


if __name__ == "__main__":
    print(json.dumps(main()))
