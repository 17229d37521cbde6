"""Benchmark several app processes behind HAProxy (scripts/cluster.py): change propagation, fps, a kill -9.

    python bench/cluster.py [--runs 20] [--clients 4] [--fps 10] [--seconds 15] [--no-pin] [--postgres]
                            [--kill-clients 2] [--kill-fps 4] [--parts poll,propagation,fps,redis,postgres,kill]

1. The change poller's own cost, in this process: one poll that finds nothing, and one that applies an
   enrollment (1 person, 3 photos), on a database of 1,000 people and 3,000 photos.
2. Two processes on one data folder: --runs times, one person with one CelebA photo is enrolled through
   process A; the time until process B's gallery holds it (B's /api/status, asked every 10 ms), counted
   from A's answer (a lower bound: the rows were committed just before) and from the request (an upper one).
3. Total answered fps at a fixed offered load (--clients cameras at --fps each, bench/live.py's Client),
   with one process (all cores, a live worker each), two (half the cores each; pinned unless --no-pin) and
   three (a third of the cores each; with fewer cores than processes, they share them),
   each straight to the processes' ports (clients spread evenly) and through HAProxy (one login per client,
   as separate browsers; leastconn).
4. kill -9 of one of two processes while --kill-clients stream through HAProxy: for each client it held, the
   time from the kill to its next answer (it reconnects through HAProxy, as the live page does); frames
   sent and never answered, and camera frames it could not send while it had no connection. Meanwhile
   one person a second is enrolled through HAProxy: every enrollment answered 200 must be in the
   database afterwards (photos_missing), and SQLite's integrity check must pass (PostgreSQL: no photo
   without its person).
5. The same cameras and enrollments while Redis is stopped ("redis"), or the PostgreSQL server is restarted
   ("postgres", with --postgres): each camera's longest wait for an answer, its fps after the fault, the
   first enrollment answered after it, nothing missing, and no app process restarted.

--postgres runs everything on a private PostgreSQL store instead of SQLite in the data folder.
The machine is shared: figures vary with what else runs (the load average is in the JSON). Prints
figures, then one JSON line: poll, propagation, fps (one object per run), redis, postgres, kill, load_avg,
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "bench"))

import live  # noqa: E402  (bench/live.py: the camera client and the frames)

from model.images import load_image  # noqa: E402


def _script(name: str):
    """A module of scripts/ by its path (this file is bench/cluster.py: the name alone would find itself)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"scripts_{name}", PROJECT_DIR / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


Cluster = _script("cluster").Cluster

FACES_DIR = Path(os.environ.get("FACES_TEST_DATA", PROJECT_DIR.parent / "shared" / "faces"))
ENV = {"FACES_ADMIN_PASSWORD": live.BENCH_PASSWORD}
STATUS_EVERY_S = 0.01
SEEN_TIMEOUT_S = 10.0
KILL_AFTER_S = 5.0
AFTER_KILL_S = 10.0
WARMUP_S = 4.0
ENROLL_EVERY_S = 1.0  # during the kill: an enrollment a second, so the survivor keeps room for video


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


# --- 1. the poller's cost --------------------------------------------------------------------------------


def poll_cost(people: int = 1000, photos_each: int = 3, repeats: int = 2000) -> dict:
    """Microseconds per empty poll and milliseconds per poll applying one enrollment, on a real FaceService."""
    from model.recognizer import Recognizer
    from webapp import changes, db
    from webapp.service import FaceService

    service = FaceService(Recognizer(backbone="dlib-resnet", detector="hog"), min_face=60, live_max_side=640,
                          live_upsample=0, recognize_upsample=0, max_frame_bytes=1 << 20)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        conn = db.connect(Path(folder) / "faces.db")
        db.migrate(conn)

        def enroll(index: int) -> None:
            with db.transaction(conn):
                person = conn.execute("INSERT INTO people (name) VALUES (?)", (f"p{index}",)).lastrowid
                for k in range(photos_each):
                    vector = rng.standard_normal(128).astype(np.float32)
                    conn.execute("INSERT INTO photos (person_id, file, box, width, height, embedding, features, "
                                 "backbone) VALUES (?, ?, '[0,0,1,1]', 1, 1, ?, ?, ?)",
                                 (person, f"{index}-{k}.jpg", db.to_blob(vector / np.linalg.norm(vector)),
                                  db.to_blob(vector), service.backbone))

        for index in range(people):
            enroll(index)
        applied = changes.catch_up(conn, service, 0)
        started = time.perf_counter()
        for _ in range(repeats):
            changes.catch_up(conn, service, applied)
        empty_us = 1e6 * (time.perf_counter() - started) / repeats
        timings = []
        for index in range(people, people + 50):
            enroll(index)
            started = time.perf_counter()
            applied = changes.catch_up(conn, service, applied)
            timings.append(1000 * (time.perf_counter() - started))
        conn.close()
    return {"empty_us": round(empty_us, 1), "one_enrollment_ms": percentile(timings, 50),
            "gallery_photos": len(service.gallery), "idle_cpu_percent_at_0.5s": round(100 * 2 * empty_us / 1e6, 4)}


# --- 2. propagation --------------------------------------------------------------------------------------


def propagation(cluster: Cluster, runs: int) -> dict:
    a, b = cluster.apps[:2]
    on_a, on_b = live.login(a.url), live.login(b.url)
    people = sorted(p for p in (FACES_DIR / "celeba").iterdir() if p.is_dir())[:runs]
    after_answer, after_request = [], []
    for index, folder in enumerate(people):
        expected = on_b.get(f"{b.url}/api/status", timeout=10).json()["photos"] + 1
        photo = sorted(folder.glob("*.jpg"))[0]
        sent = time.perf_counter()
        person = on_a.post(f"{a.url}/api/people", json={"name": f"Run {index}"}, timeout=30).json()["id"]
        answer = on_a.post(f"{a.url}/api/people/{person}/photos",
                           files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg"))], timeout=60)
        answered = time.perf_counter()
        if not answer.ok:
            print(f"run {index}: {folder.name} not enrolled ({answer.status_code}); skipped", file=sys.stderr)
            continue
        while on_b.get(f"{b.url}/api/status", timeout=10).json()["photos"] < expected:
            if time.perf_counter() - answered > SEEN_TIMEOUT_S:
                raise SystemExit(f"run {index}: B never saw the photo")
            time.sleep(STATUS_EVERY_S)
        seen = time.perf_counter()
        after_answer.append(seen - answered)
        after_request.append(seen - sent)
    return {"runs": len(after_answer), "p50_s": percentile(after_answer, 50), "max_s": percentile(after_answer, 100),
            "p50_from_request_s": percentile(after_request, 50), "max_from_request_s": percentile(after_request, 100),
            "poll_s": 0.5}


# --- 3. fps ------------------------------------------------------------------------------------------------


def clients_for(cluster: Cluster, count: int, via: str, frames, fps: float) -> list:
    """`count` cameras: through HAProxy (a login each, so leastconn places each), or spread over the ports."""
    clients = []
    for i in range(count):
        base = cluster.url if via == "haproxy" else cluster.apps[i % len(cluster.apps)].url
        session = live.login(base)
        clients.append(live.Client(base, frames, fps, live.cookie_header(session), offset=live.CAMERA_OFFSET * i,
                                   phase=i / count / fps))
    return clients


def stream(clients: list, seconds: float) -> dict:
    time.sleep(0.5)  # every client has its rate
    threads = [threading.Thread(target=c.run, args=(seconds,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    latencies = np.concatenate([c.latencies for c in clients])
    return {"answered_fps": round(len(latencies) / seconds, 1), "p50_ms": live.percentile(latencies, 50),
            "p95_ms": live.percentile(latencies, 95), "sent": sum(c.sent for c in clients),
            "errors": sum(c.errors for c in clients),
            "named_share": round(float(np.mean([n for c in clients for n in c.named] or [0])), 3)}


def fps_runs(cluster: Cluster, args, frames) -> list[dict]:
    # Unmeasured: every live worker of every process loads its model on its first frame.
    stream(clients_for(cluster, max(args.clients, 2 * len(cluster.apps)), "direct", frames, args.fps), WARMUP_S)
    runs = []
    for via in ("direct", "haproxy"):
        run = stream(clients_for(cluster, args.clients, via, frames, args.fps), args.seconds)
        run.update(processes=len(cluster.apps), via=via, offered_fps=args.clients * args.fps,
                   workers_per_process=int(cluster.app_env(cluster.apps[0].cores)["FACES_LIVE_WORKERS"]),
                   pinned=cluster.pin)
        print(json.dumps(run), file=sys.stderr)
        runs.append(run)
        time.sleep(1.0)
    return runs


# --- 4. kill -9 --------------------------------------------------------------------------------------------


class Reconnecting(live.Client):
    """A camera that reconnects through HAProxy when its process goes away (the live page does too)."""

    def __init__(self, *args, **kwargs):
        import socketio

        super().__init__(*args, **kwargs)
        self.sio.reconnection, self.sio.reconnection_delay = True, 0.1
        self.sio.reconnection_delay_max, self.sio.randomization_factor = 0.5, 0.0
        self.dropped_at: float | None = None
        self.back_at: float | None = None  # the first answer after the drop
        self.unsent = 0  # camera frames it could not send while it had no connection
        self.answered_at: list[float] = []
        self.sio.on("disconnect", self._on_drop, namespace="/live")
        self.sio.on("connect", self._on_back, namespace="/live")
        send = self.sio.emit

        def emit(*a, **k):
            try:
                send(*a, **k)
            except socketio.exceptions.SocketIOError:  # not connected right now: try the next camera frame
                self.sent_at.pop(self.sent, None)  # run() filed it under this id just before
                self.unsent += 1
                self._in_flight = None

        self.sio.emit = emit

    def _on_drop(self, *reason) -> None:
        self.dropped_at = self.dropped_at or time.perf_counter()
        self._in_flight = None

    def _on_back(self) -> None:
        self._in_flight = None  # the frame sent before the drop is never answered: send the next one
        self._answered.set()

    def _on_faces(self, data: dict) -> None:
        now = time.perf_counter()
        if self.dropped_at is not None and self.back_at is None:
            self.back_at = now
        self.answered_at.append(now)
        super()._on_faces(data)


def keep_enrolling(url: str, seconds: float, counts: dict, accepted_at: list | None = None,
                   label: str = "Kill") -> None:
    """Enroll one CelebA photo a second through HAProxy for `seconds`; count the answers 200 and the others.

    Every photo answered 200 must be in the database afterwards, whichever process took it.
    """
    import requests

    accepted_at = [] if accepted_at is None else accepted_at

    folders = sorted(p for p in (FACES_DIR / "celeba").iterdir() if p.is_dir())[100:]
    session, started = live.login(url), time.perf_counter()
    for index, folder in enumerate(folders):
        if time.perf_counter() - started > seconds:
            return
        time.sleep(ENROLL_EVERY_S)
        photo = sorted(folder.glob("*.jpg"))[0]
        try:
            person = session.post(f"{url}/api/people", json={"name": f"{label} {index}"}, timeout=30)
            if person.status_code != 201:
                counts["failed"] += 1
                counts.setdefault("failed_statuses", []).append(person.status_code)
                continue
            answer = session.post(f"{url}/api/people/{person.json()['id']}/photos", timeout=60,
                                  files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg"))])
            key = "accepted" if answer.status_code == 200 else "failed"  # one photo: 200 means it was stored
            counts[key] += 1
            if key == "failed":
                counts.setdefault("failed_statuses", []).append(answer.status_code)
            if key == "accepted":
                accepted_at.append(time.perf_counter())
        except (requests.RequestException, ValueError, KeyError):
            counts["failed"] += 1


def integrity(cluster: Cluster) -> tuple[int, str]:
    """Photos in the store, and SQLite's integrity check (PostgreSQL: photos whose person is gone, as text)."""
    if cluster.pg is not None:
        import psycopg

        with psycopg.connect(cluster.env["FACES_DATABASE_URL"]) as conn:
            photos = conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
            orphans = conn.execute("SELECT COUNT(*) FROM photos WHERE person_id NOT IN "
                                   "(SELECT id FROM people)").fetchone()[0]
            return photos, "ok" if orphans == 0 else f"{orphans} photos without a person"
    conn = sqlite3.connect(cluster.data_dir / "faces.db")
    try:
        return conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0], conn.execute(
            "PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def cameras_through_haproxy(cluster: Cluster, args, frames) -> list:
    clients = []
    for i in range(args.kill_clients):
        session = live.login(cluster.url)
        clients.append(Reconnecting(cluster.url, frames, args.kill_fps, live.cookie_header(session),
                                    offset=live.CAMERA_OFFSET * i, phase=i / args.kill_clients / args.kill_fps))
    return clients


def kill_one(cluster: Cluster, args, frames) -> dict:
    before = integrity(cluster)
    clients = cameras_through_haproxy(cluster, args, frames)
    seconds = KILL_AFTER_S + AFTER_KILL_S
    enrolled = {"accepted": 0, "failed": 0}
    threads = [threading.Thread(target=c.run, args=(seconds,)) for c in clients]
    threads.append(threading.Thread(target=keep_enrolling, args=(cluster.url, seconds, enrolled)))
    for t in threads:
        t.start()
    time.sleep(KILL_AFTER_S)
    victim = cluster.apps[1]
    os.kill(victim.process.pid, signal.SIGKILL)
    killed = time.perf_counter()
    for t in threads:
        t.join()
    ended = time.perf_counter()
    held = [c for c in clients if c.dropped_at is not None and c.dropped_at < ended]  # not our own close()
    for c in clients:
        c.close()
    back = [c.back_at - killed for c in held if c.back_at is not None]
    until = killed + max(back, default=AFTER_KILL_S)
    # Frames sent from just before the kill until the last client was answered again, never answered (the
    # dead process had them), and camera frames not sent meanwhile (no connection).
    lost = sum(1 for c in held for sent in c.sent_at.values() if killed - 1.0 <= sent <= until)
    after = integrity(cluster)
    return {"clients": len(clients), "clients_on_killed": len(held), "answered_again": len(back),
            "answered_again_p50_s": percentile(back, 50), "answered_again_max_s": percentile(back, 100),
            "frames_lost": lost, "frames_not_sent": sum(c.unsent for c in held), "photos_before": before[0],
            "photos_after": after[0], "integrity": after[1], "enrollments_meanwhile": enrolled,
            "photos_missing": enrolled["accepted"] - (after[0] - before[0]),
            "client_fps": args.kill_fps, "busy_after": [c.busy for c in held]}  # the survivor's admission said


# --- 5. Redis stopped, PostgreSQL restarted ------------------------------------------------------------------


def outage(cluster: Cluster, args, frames, what: str) -> dict:
    """Stop Redis ("redis") or restart PostgreSQL ("postgres") while cameras stream and people are enrolled.

    Per camera: the longest wait between two answers around the fault and the answered fps after it; the
    enrollments answered 200 must all be in the store; no app process may have exited or been restarted.
    """
    pids, before = [app.process.pid for app in cluster.apps], integrity(cluster)
    clients = cameras_through_haproxy(cluster, args, frames)
    seconds = KILL_AFTER_S + AFTER_KILL_S
    enrolled, accepted_at = {"accepted": 0, "failed": 0}, []
    threads = [threading.Thread(target=c.run, args=(seconds,)) for c in clients]
    threads.append(threading.Thread(target=keep_enrolling, args=(cluster.url, seconds, enrolled, accepted_at, what)))
    for t in threads:
        t.start()
    time.sleep(KILL_AFTER_S)
    faulted = time.perf_counter()
    if what == "redis":
        cluster.stop_redis()
    else:
        cluster.pg.restart()  # pg_ctl restart -m fast: every connection is cut
    back = time.perf_counter()
    for t in threads:
        t.join()
    ended = time.perf_counter()
    for c in clients:
        c.close()
    gaps = [max(np.diff([faulted - 0.001] + [t for t in c.answered_at if t >= faulted] + [ended]))
            for c in clients]
    after = integrity(cluster)
    first_enrolled = min((t for t in accepted_at if t >= back), default=None)
    result = {"fault": what, "fault_took_s": round(back - faulted, 2), "clients": len(clients),
              "longest_gap_s": round(float(max(gaps)), 2),
              "fps_before": [round(sum(t < faulted for t in c.answered_at) / KILL_AFTER_S, 1) for c in clients],
              "fps_after": [round(sum(t >= back for t in c.answered_at) / (ended - back), 1) for c in clients],
              "errors": sum(c.errors for c in clients), "enrollments_meanwhile": enrolled,
              "first_enrollment_after_s": None if first_enrolled is None else round(first_enrolled - back, 2),
              "photos_missing": enrolled["accepted"] - (after[0] - before[0]), "integrity": after[1],
              "processes_exited": sum(app.process.poll() is not None for app in cluster.apps),
              "pids_unchanged": pids == [app.process.pid for app in cluster.apps]}
    if what == "redis":
        cluster.start_redis()  # on the same port: the processes reconnect
    return result


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--no-pin", action="store_true")
    # The kill: as many cameras as the surviving process can take on alone (else its admission keeps the
    # newcomers waiting, "server full", which is what it should do but not what this measures).
    parser.add_argument("--kill-clients", type=int, default=2)
    parser.add_argument("--kill-fps", type=float, default=4)
    parser.add_argument("--parts", default="poll,propagation,fps,kill",
                        help="what to measure, comma-separated: poll, propagation, fps, redis, postgres, kill")
    parser.add_argument("--postgres", action="store_true", help="a private PostgreSQL as the store (not SQLite)")
    args = parser.parse_args()
    person_dir = FACES_DIR / "celeba" / live.PERSON
    if not person_dir.is_dir():
        raise SystemExit(f"needs the shared photos at {person_dir} (set FACES_TEST_DATA)")
    paths = sorted(person_dir.glob("*.jpg"))
    frames = live.make_frames([load_image(p) for p in paths[3:8]], 270)

    parts = set(args.parts.split(","))
    result = {"poll": poll_cost() if "poll" in parts else None, "fps": []}
    print(json.dumps(result["poll"]), file=sys.stderr)
    for processes in (1, 2, 3):
        wanted = parts & ({"fps", "propagation", "redis", "postgres", "kill"} if processes == 2 else {"fps"})
        if not wanted:
            continue
        with tempfile.TemporaryDirectory() as run_dir:
            cluster = Cluster(processes=processes, run_dir=Path(run_dir), env=ENV, pin=not args.no_pin,
                              postgres=args.postgres).start()
            try:
                enroller = live.login(cluster.apps[0].url)
                live.enroll(enroller, cluster.apps[0].url, paths[:3])
                time.sleep(1.0)  # every process has the person
                if "propagation" in wanted:
                    result["propagation"] = propagation(cluster, args.runs)
                    print(json.dumps(result["propagation"]), file=sys.stderr)
                if "fps" in wanted:
                    result["fps"] += fps_runs(cluster, args, frames)
                elif wanted & {"redis", "postgres", "kill"}:  # the live workers load their models first
                    stream(clients_for(cluster, 2 * len(cluster.apps), "direct", frames, args.fps), WARMUP_S)
                for fault in ("redis", "postgres"):
                    if fault in wanted:
                        if fault == "postgres" and not args.postgres:
                            raise SystemExit("--parts postgres needs --postgres")
                        result[fault] = outage(cluster, args, frames, fault)
                        print(json.dumps(result[fault]), file=sys.stderr)
                if "kill" in wanted:  # last: it leaves one process
                    result["kill"] = kill_one(cluster, args, frames)
                    print(json.dumps(result["kill"]), file=sys.stderr)
            finally:
                cluster.stop()
    result.update(load_avg=[round(v, 2) for v in os.getloadavg()], cores=len(os.sched_getaffinity(0)))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
