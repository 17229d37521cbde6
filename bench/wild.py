"""Recognition in the wild: small and tilted faces pasted into 640x480 frames, streamed over /live.

    python bench/wild.py [--people 20] [--enroll 3] [--strangers 40] [--sizes 30,40,56,80,120]
                         [--tilts 0,30,45] [--frames 3] [--gap 0.25] [--parallel 4] [--seed 0]
                         [--max-seconds 600] [--strictness 0]

Starts `python server.py` on a free loopback port with a fresh temporary data
dir and a random FACES_ADMIN_PASSWORD (every other environment variable,
FACES_DETECTOR and FACES_BACKBONE included, passes through, so detectors and
backbones can be compared), waits until /api/status says the model is ready,
logs in and enrolls --people CelebA people (chosen by --seed among those with
at least --enroll + 3 photos) with their first --enroll photos each, through
POST /api/people and POST /api/people/<id>/photos. A rejected photo is
replaced by the person's next one. A --strictness other than 0 is then
applied as a user would (PUT /api/strictness: every threshold raised by it).

Probe faces. For every condition (face width S in --sizes x tilt A in --tilts)
each enrolled person gives one probe from a photo that was not enrolled, and
--strangers people who were never enrolled (default: twice --people) give one
each; the photos are drawn afresh per condition. A probe is made from the
250x250 portrait: rotated by A degrees (left or right at random) about its
centre, cut to its middle 60% (150 px, mostly face), scaled so that the face
is S px wide (the detectors' face boxes on these portraits are 107 px wide
median, HOG and YuNet alike, so the cut is 1.4 S px), and pasted with a
feathered edge at a random place into a 640x480 frame whose background is
another photo's colours (shrunk to 16x12, pixels shuffled, stretched back and
blurred with sigma 30 px: a blurred photo kept in order still holds a face
that YuNet finds), darkened to 60%, with a little noise. The truth box is the
S x S square centred on the face. Frames go out as JPEG at quality 80, like
the live page's. Everything is drawn from --seed, each condition from its own
generator, so a condition's probes do not depend on which others run.

Streaming. Each probe gets its own /live connection (a fresh LiveStream, so no
track can carry a name from one probe to the next) and --frames copies of its
frame, --gap seconds apart (and each only after the answer to the one before,
so none is dropped); --parallel probes stream at once. The answer to the last
frame counts, since the live path decides on tracks, from the evidence of all
their frames. The tracker works in stream seconds (a frame's arrival time),
not frames: it re-embeds a track every 0.2 s and names it once the embeddings'
weight reaches 1, a face with a box side s under FACES_LIVE_FULL_FACE_PX (40)
weighing (s / 40)^2. Frames sent back to back (--gap 0) are one embedding; the
default 0.25 s makes each of the 3 frames count, a face in view for half a
second, so a face boxed 30 px is named on its second frame. A stream's first frame is
searched at twice the size (FACES_LIVE_SEARCH_EVERY_S), as every 3 s of a
real stream is. A face counts as
boxed when an answered box overlaps its truth box with IoU >= 0.3 (the best-
overlapping box is the one judged); named right / wrong compare that box's
person_id with the probe's. Boxes elsewhere in the frame count as false boxes.

Prints a table per condition (size x tilt): share of probe faces boxed
(members and strangers), of enrolled people's faces named right and named
wrong, of strangers' faces given a name, false boxes per frame, and the best
similarity answered for boxed faces (members' median, strangers' highest;
compare with the threshold). The last line is JSON: settings (detector,
backbone, threshold, strictness, people, enroll, strangers, frames, gap_s, parallel, seed,
sizes, tilts),
`conditions` (one entry each with counts and shares), `summary` (boxed_at_30px
and named_right_at_40px_and_more pooled over tilts, strangers_named_max over
conditions, strangers_named_all pooled), `wrong_names` (each face named as
someone else: condition, identity, photo, name given, similarity; at most 50),
frames sent, seconds, and `stopped` (null, "time limit", "interrupted" or
"server exited"; then the numbers cover the probes done).

Bounded: at most --max-frames frames (refused before starting otherwise), a
--max-seconds time limit (streaming stops there, results so far are
printed), one server on loopback, stopped on exit, Ctrl-C or an error; the
data dir is deleted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
FACES_DIR = Path(os.environ.get("FACES_TEST_DATA", PROJECT_DIR.parent / "shared" / "faces"))
PASSWORD = secrets.token_urlsafe(16)
FRAME_W, FRAME_H = 640, 480
CUT_SHARE = 0.6  # the middle 60% of the portrait is pasted
FACE_PX_IN_PORTRAIT = 107.0  # median detector box width on the 250x250 CelebA portraits (HOG 108, YuNet 106)
MIN_IOU = 0.3
JPEG_QUALITY = 80
READY_TIMEOUT_S = 180
ANSWER_TIMEOUT_S = 60
# Server-side variables the benchmark sets itself: a user's value must not point the server at their own data.
OWN_SETTINGS = ("FACES_DATA_DIR", "FACES_DATABASE", "FACES_HOST", "FACES_PORT", "FACES_ADMIN_PASSWORD")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- probes


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def background(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photo's colours without its face: shrunk to 16x12, its pixels shuffled, stretched to 640x480 and
    blurred (sigma 30 px), darkened to 60%, with a little noise. A blurred photo kept in order still holds a
    face that YuNet finds, and a less blurred shuffle gives it blobs it takes for eyes; on 200 of these
    backgrounds YuNet boxed nothing and HOG one."""
    tiny = cv2.resize(photo, (16, 12), interpolation=cv2.INTER_AREA).reshape(-1, 3)
    tiny = tiny[rng.permutation(len(tiny))].reshape(12, 16, 3)
    # blurred at a quarter of the size (sigma 7.5 there), which is cheaper and the same once stretched
    quarter = cv2.resize(tiny, (FRAME_W // 4, FRAME_H // 4), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    smooth = cv2.resize(cv2.GaussianBlur(quarter, (0, 0), 7.5), (FRAME_W, FRAME_H), interpolation=cv2.INTER_LINEAR)
    smooth = smooth * 0.6 + rng.standard_normal(smooth.shape, dtype=np.float32) * 3
    return np.clip(smooth, 0, 255).astype(np.uint8)


def face_cut(portrait: np.ndarray, size: int, tilt: float) -> np.ndarray:
    """The portrait rotated by `tilt` degrees about its centre, its middle 60%, scaled so the face is `size` px wide."""
    h, w = portrait.shape[:2]
    if tilt:
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), tilt, 1.0)
        portrait = cv2.warpAffine(portrait, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    side = int(round(min(h, w) * CUT_SHARE))
    top, left = (h - side) // 2, (w - side) // 2
    cut = portrait[top : top + side, left : left + side]
    out = max(8, int(round(side * size / FACE_PX_IN_PORTRAIT)))
    interpolation = cv2.INTER_AREA if out < side else cv2.INTER_LINEAR
    return cv2.resize(cut, (out, out), interpolation=interpolation)


def paste(frame: np.ndarray, cut: np.ndarray, left: int, top: int) -> None:
    """Blend `cut` into `frame` at (left, top) with edges feathered over 8% of its side."""
    side = cut.shape[0]
    ramp = np.minimum(np.arange(side) + 0.5, side - np.arange(side) - 0.5) / max(1.0, 0.08 * side)
    ramp = np.clip(ramp, 0, 1).astype(np.float32)
    alpha = np.minimum.outer(ramp, ramp)[:, :, None]
    region = frame[top : top + side, left : left + side].astype(np.float32)
    frame[top : top + side, left : left + side] = (alpha * cut + (1 - alpha) * region).round().astype(np.uint8)


def paste_face(frame: np.ndarray, cut: np.ndarray, left: int, top: int, size: int) -> list[int]:
    """Paste a face_cut of a `size` px face at (left, top); returns the face's S x S truth box."""
    paste(frame, cut, left, top)
    cx, cy = left + cut.shape[0] / 2, top + cut.shape[0] / 2
    return [int(round(cx - size / 2)), int(round(cy - size / 2)), int(round(cx + size / 2)), int(round(cy + size / 2))]


@dataclass
class Probe:
    size: int
    tilt: int
    identity: str  # CelebA identity of the face
    photo: str  # file name
    enrolled: bool
    truth: list[int]  # [left, top, right, bottom] of the S x S face square
    jpeg: bytes = field(repr=False)


def make_probe(size: int, tilt: int, identity: str, photo: Path, enrolled: bool, back_photo: Path,
               rng: np.random.Generator) -> Probe:
    angle = float(tilt) * (1 if rng.random() < 0.5 else -1)
    cut = face_cut(read_rgb(photo), size, angle)
    frame = background(read_rgb(back_photo), rng)
    side = cut.shape[0]
    left = int(rng.integers(0, FRAME_W - side + 1))
    top = int(rng.integers(0, FRAME_H - side + 1))
    truth = paste_face(frame, cut, left, top, size)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return Probe(size, tilt, identity, photo.name, enrolled, truth, jpeg.tobytes())


def box_iou(a, b) -> float:
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------- the server


class Server:
    """`python server.py` on a free loopback port with a temporary data dir; stop() always ends it."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        data_dir = workdir / "data"
        data_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS}
        env["FACES_ADMIN_PASSWORD"] = PASSWORD
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir)],
            cwd=PROJECT_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S):
        """Log in once the server answers, then wait for /api/status to say the model is ready; returns (session, status)."""
        import requests

        deadline = time.monotonic() + timeout
        session = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server.py exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if session is None:
                    session = requests.Session()
                    answer = session.post(f"{self.url}/api/login", json={"password": PASSWORD}, timeout=10)
                    answer.raise_for_status()
                    session.headers["X-CSRFToken"] = answer.json()["csrf_token"]
                status = session.get(f"{self.url}/api/status", timeout=10).json()
                if status.get("model") == "ready":
                    return session, status
                if status.get("model") == "failed" or status.get("error"):
                    raise SystemExit(f"the model failed to load: {status.get('error')}\n{self.log_tail()}")
            except OSError:  # not listening yet (requests' ConnectionError is an OSError)
                session = None
            time.sleep(0.2)
        raise SystemExit(f"server.py was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def enroll(session, url: str, identity: str, photos: list[Path], want: int) -> tuple[int, list[Path], int]:
    """Create `identity` and upload photos until `want` are accepted; returns (person id, enrolled photos, rejected)."""
    person = session.post(f"{url}/api/people", json={"name": identity}, timeout=60)
    person.raise_for_status()
    person_id = person.json()["id"]
    accepted: list[Path] = []
    rejected = 0
    candidates = list(photos)
    while len(accepted) < want and candidates:
        batch, candidates = candidates[: want - len(accepted)], candidates[want - len(accepted) :]
        files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
        answer = session.post(f"{url}/api/people/{person_id}/photos", files=files, timeout=300)
        if answer.status_code >= 400 and answer.status_code != 422:
            raise SystemExit(f"enrolling {identity} failed: {answer.status_code} {answer.text[:500]}")
        by_name = {p.name: p for p in batch}
        for photo in answer.json().get("photos", []):
            if photo.get("accepted"):
                accepted.append(by_name[photo["file"]])
            else:
                rejected += 1
    return person_id, accepted, rejected


# ---------------------------------------------------------------- streaming


class Connection:
    """One /live connection that sends a frame and waits for its answer."""

    def __init__(self, url: str, cookie: str, fps: float | None = None):
        import socketio

        self.answers: queue.Queue = queue.Queue()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("faces", lambda data: self.answers.put(("faces", data)), namespace="/live")
        self.sio.on("error", lambda data: self.answers.put(("error", data)), namespace="/live")
        self.sio.connect(url, namespaces=["/live"], transports=["websocket"], headers={"Cookie": cookie},
                         auth={"fps": fps} if fps else None, wait_timeout=30)
        self.sent = 0

    def ask(self, jpeg: bytes, stop: threading.Event) -> tuple[str, dict] | None:
        """Send one frame and wait for its answer; None when stopped, disconnected or after ANSWER_TIMEOUT_S."""
        frame_id = self.sent
        self.sio.emit("frame", jpeg, namespace="/live")
        self.sent += 1
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while time.monotonic() < deadline and not stop.is_set() and self.sio.connected:
            try:
                event, data = self.answers.get(timeout=0.5)
            except queue.Empty:
                continue
            if data.get("frame_id") == frame_id:
                return event, data
        return None

    def close(self) -> threading.Thread:
        # websocket-client waits up to 3 s for the server's half of the close handshake, which Werkzeug's
        # threaded server often skips; nothing depends on it, so the benchmark does not wait.
        thread = threading.Thread(target=self.sio.disconnect, daemon=True)
        thread.start()
        return thread


def judge(probe: Probe, answer: dict | None, person_ids: dict[str, int]) -> dict:
    faces = answer["faces"] if answer else []
    scored = sorted(((box_iou(f["box"], probe.truth), f) for f in faces), key=lambda x: x[0], reverse=True)
    hit = scored[0][1] if scored and scored[0][0] >= MIN_IOU else None
    named = hit is not None and hit.get("person_id") is not None
    right = named and probe.enrolled and hit["person_id"] == person_ids[probe.identity]
    return {
        "boxed": hit is not None,
        "named": named,
        "right": right,
        "wrong": named and not right,
        "false_boxes": len(faces) - (hit is not None),
        "error": answer is None,
        "named_as": hit.get("name") if named else None,
        "similarity": hit.get("similarity") if hit is not None else None,
        "margin": hit.get("margin") if hit is not None else None,
        "reason": hit.get("reason") if hit is not None else None,
    }


def shares(results: list[dict]) -> dict:
    enrolled = [r for r in results if r["enrolled"]]
    strangers = [r for r in results if not r["enrolled"]]

    def share(rows, key):
        return round(sum(r[key] for r in rows) / len(rows), 4) if rows else None

    def similarities(rows):
        return [r["similarity"] for r in rows if r["similarity"] is not None]

    mated, unmated = similarities(enrolled), similarities(strangers)

    return {
        "probes": len(results),
        "enrolled_probes": len(enrolled),
        "stranger_probes": len(strangers),
        "boxed": share(results, "boxed"),
        "named_right": share(enrolled, "right"),
        "named_wrong": share(enrolled, "wrong"),
        "strangers_named": share(strangers, "named"),
        "false_boxes_per_frame": share(results, "false_boxes"),
        # the best similarity answered for boxed faces: members' median, strangers' highest
        "similarity_enrolled_p50": round(float(np.median(mated)), 4) if mated else None,
        "similarity_strangers_max": round(max(unmated), 4) if unmated else None,
        "errors": sum(r["error"] for r in results),
    }


def run_probe(spec: tuple, args, url: str, cookie: str, person_ids: dict[str, int], stop: threading.Event) -> dict:
    """One probe on its own /live connection: --frames copies, --gap seconds apart, each after the last answer."""
    import socketio

    size, tilt, name, photo, is_enrolled, back, seed = spec
    probe = make_probe(size, tilt, name, photo, is_enrolled, back, np.random.default_rng(seed))
    answer = None
    try:
        connection = Connection(url, cookie, fps=1 / args.gap if args.gap > 0 else None)
    except socketio.exceptions.ConnectionError:
        connection = None
    if connection is not None:
        try:
            first = time.monotonic()
            for k in range(args.frames):
                time.sleep(max(0.0, first + k * args.gap - time.monotonic()))
                got = connection.ask(probe.jpeg, stop)
                answer = got[1] if got is not None and got[0] == "faces" else None
                if got is None:
                    break
        finally:
            connection.close()
    row = judge(probe, answer, person_ids)
    row.update(size=size, tilt=tilt, enrolled=is_enrolled, identity=name, photo=photo.name,
               sent=connection.sent if connection is not None else 0)
    return row


def stream_probes(plan: list[tuple], args, server: Server, cookie: str, person_ids: dict[str, int],
                  deadline: float) -> tuple[list[dict], str | None]:
    """Run the plan, --parallel probes at a time, until done, the deadline, Ctrl-C or the server's end.

    :return: (a row per probe done, in plan order; why it stopped early or None).
    """
    stop = threading.Event()
    rows: dict[int, dict] = {}
    stopped = None
    pending = iter(enumerate(plan))
    running: dict[concurrent.futures.Future, int] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        try:
            while True:
                while len(running) < args.parallel and stopped is None:
                    if time.monotonic() > deadline:
                        stopped = "time limit"
                        break
                    if server.process.poll() is not None:
                        stopped = "server exited"
                        break
                    item = next(pending, None)
                    if item is None:
                        break
                    running[pool.submit(run_probe, item[1], args, server.url, cookie, person_ids, stop)] = item[0]
                if not running:
                    break
                done, _ = concurrent.futures.wait(running, timeout=1.0,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    rows[running.pop(future)] = future.result()
        except KeyboardInterrupt:
            stopped = "interrupted"
            stop.set()
            for future in running:
                future.cancel()
        if stopped is not None:
            stop.set()
    return [rows[i] for i in sorted(rows)], stopped


# ---------------------------------------------------------------- main


def parse_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def choose_people(args) -> tuple[list[tuple[str, list[Path]]], list[tuple[str, list[Path]]]]:
    root = FACES_DIR / "celeba"
    if not root.is_dir():
        raise SystemExit(f"needs the CelebA photos at {root} (set FACES_TEST_DATA)")
    folders = [(d.name, sorted(d.glob("*.jpg"))) for d in sorted(root.iterdir()) if d.is_dir()]
    folders = [(name, photos) for name, photos in folders if photos]
    random.Random(args.seed).shuffle(folders)
    enrolled = [f for f in folders if len(f[1]) >= args.enroll + 3][: args.people]
    if len(enrolled) < args.people:
        raise SystemExit(f"only {len(enrolled)} people have {args.enroll + 3} photos or more")
    chosen = {name for name, _ in enrolled}
    strangers = [f for f in folders if f[0] not in chosen]
    if not strangers and args.strangers:
        raise SystemExit("no people left to be strangers")
    return enrolled, strangers


def plan_probes(args, enrolled, enrolled_photos, strangers) -> list[tuple]:
    """(size, tilt, identity, photo, is enrolled, background photo, seed) for every probe, condition by condition.

    Each condition draws from its own generator (seeded with --seed, size and tilt), so its probes are the
    same whichever other conditions run.
    """
    plan = []
    all_photos = [p for _, photos in strangers for p in photos]
    for size in args.sizes:
        for tilt in args.tilts:
            rng = random.Random(f"{args.seed}/{size}/{tilt}")
            for name, photos in enrolled:
                left = [p for p in photos if p not in enrolled_photos[name]] or photos
                plan.append((size, tilt, name, rng.choice(left), True, rng.choice(all_photos), rng.randrange(2**32)))
            for name, photos in rng.sample(strangers, min(args.strangers, len(strangers))):
                back = rng.choice(all_photos)
                while back in photos and len(all_photos) > len(photos):  # the background is someone else's
                    back = rng.choice(all_photos)
                plan.append((size, tilt, name, rng.choice(photos), False, back, rng.randrange(2**32)))
    return plan


def print_table(conditions: list[dict]) -> None:
    print(f"{'size':>5} {'tilt':>5} {'probes':>6} {'boxed':>7} {'right':>7} {'wrong':>7} {'strangers':>10} "
          f"{'false/fr':>8} {'sim p50':>8} {'str max':>8}", file=sys.stderr)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    for c in conditions:
        print(f"{c['size']:>4}px {c['tilt']:>4}° {c['probes']:>6} {pct(c['boxed']):>7} {pct(c['named_right']):>7} "
              f"{pct(c['named_wrong']):>7} {pct(c['strangers_named']):>10} {c['false_boxes_per_frame'] or 0:>8.2f} "
              f"{num(c['similarity_enrolled_p50']):>8} {num(c['similarity_strangers_max']):>8}",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20, help="people enrolled (default %(default)s)")
    parser.add_argument("--enroll", type=int, default=3, help="photos enrolled per person (default %(default)s)")
    parser.add_argument("--strangers", type=int, default=None,
                        help="never-enrolled people per condition, one probe each (default: twice --people)")
    parser.add_argument("--sizes", type=parse_list, default=[30, 40, 56, 80, 120], help="face widths in px")
    parser.add_argument("--tilts", type=parse_list, default=[0, 30, 45], help="in-plane rotations in degrees")
    parser.add_argument("--frames", type=int, default=3, help="frames per probe; the last answer counts")
    parser.add_argument("--gap", type=float, default=0.25,
                        help="seconds between a probe's frames (default %(default)s: each frame adds evidence)")
    parser.add_argument("--parallel", type=int, default=4, help="probes streamed at once, each on its own connection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=600, help="stop streaming after this long")
    parser.add_argument("--max-frames", type=int, default=5000, help="refuse a plan with more frames than this")
    parser.add_argument("--strictness", type=float, default=0.0,
                        help="raise every threshold by this much after enrolling, as the Strictness page does")
    parser.add_argument("--save", type=Path, default=None, help="write every probe's row to this JSON file")
    args = parser.parse_args(argv)
    if args.strangers is None:
        args.strangers = 2 * args.people
    if min(args.people, args.enroll, args.frames, args.parallel) < 1 or args.strangers < 0 or args.gap < 0:
        parser.error("--people, --enroll, --frames and --parallel must be at least 1, --strangers and --gap not negative")
    if not args.sizes or not args.tilts or min(args.sizes) < 8:
        parser.error("--sizes (8 px or more) and --tilts must not be empty")
    if round(250 * CUT_SHARE * max(args.sizes) / FACE_PX_IN_PORTRAIT) > FRAME_H:
        parser.error(f"a face of {max(args.sizes)} px does not fit a {FRAME_W}x{FRAME_H} frame")
    n_frames = len(args.sizes) * len(args.tilts) * (args.people + args.strangers) * args.frames
    if n_frames > args.max_frames:
        parser.error(f"that is {n_frames} frames, more than --max-frames {args.max_frames}")

    enrolled, strangers = choose_people(args)
    started = time.monotonic()
    rejected = 0

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    with tempfile.TemporaryDirectory(prefix="faces-wild-") as workdir:
        server = Server(Path(workdir))
        try:
            session, status = server.wait_ready()
            from webapp import settings as app_settings  # the server's effective settings, where /api/status is silent

            env_settings = app_settings.from_env()
            detector = status.get("detector") or env_settings["DETECTOR"]
            backbone = status.get("backbone") or env_settings["BACKBONE"]
            ready_s = time.monotonic() - started
            print(f"server ready in {ready_s:.1f} s: detector {detector}, backbone {backbone}, "
                  f"threshold {status.get('threshold')}", file=sys.stderr)

            person_ids: dict[str, int] = {}
            enrolled_photos: dict[str, list[Path]] = {}
            for name, photos in enrolled:
                # the first --enroll photos, then more if some are rejected; at least 2 stay for probes
                person_ids[name], enrolled_photos[name], bad = enroll(
                    session, server.url, name, photos[: len(photos) - 2], args.enroll)
                rejected += bad
                if not enrolled_photos[name]:
                    raise SystemExit(f"no photo of {name} was accepted")
            enroll_s = time.monotonic() - started - ready_s
            print(f"enrolled {len(enrolled)} people in {enroll_s:.1f} s ({rejected} photos rejected)", file=sys.stderr)
            if args.strictness:
                answer = session.put(f"{server.url}/api/strictness", json={"strictness": args.strictness}, timeout=60)
                if answer.status_code != 200:
                    raise SystemExit(f"strictness {args.strictness} refused: {answer.text[:200]}")

            cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
            plan = plan_probes(args, enrolled, enrolled_photos, strangers)
            deadline = started + args.max_seconds
            results, stopped = stream_probes(plan, args, server, cookie, person_ids, deadline)
            if server.process.poll() is not None:
                print(f"server.py exited early:\n{server.log_tail()}", file=sys.stderr)
        finally:
            server.stop()

    conditions = []
    for size in args.sizes:
        for tilt in args.tilts:
            rows = [r for r in results if r["size"] == size and r["tilt"] == tilt]
            if rows:
                conditions.append({"size": size, "tilt": tilt, **shares(rows)})
    print_table(conditions)

    def pooled(rows, key):
        return shares(rows)[key] if rows else None

    at_30 = [r for r in results if r["size"] == 30]
    from_40 = [r for r in results if r["size"] >= 40]
    strangers_named = [c["strangers_named"] for c in conditions if c["strangers_named"] is not None]
    result = {
        "detector": detector,
        "backbone": backbone,
        "threshold": status.get("threshold"),
        "strictness": args.strictness,
        "people": args.people,
        "enroll": args.enroll,
        "strangers": args.strangers,
        "frames": args.frames,
        "gap_s": args.gap,
        "parallel": args.parallel,
        "seed": args.seed,
        "sizes": args.sizes,
        "tilts": args.tilts,
        "enroll_rejected": rejected,
        "conditions": conditions,
        "summary": {
            "boxed_at_30px": pooled(at_30, "boxed"),
            "named_right_at_40px_and_more": pooled(from_40, "named_right"),
            "strangers_named_max": max(strangers_named) if strangers_named else None,
            "strangers_named_all": pooled(results, "strangers_named"),
            "named_wrong_all": pooled(results, "named_wrong"),
            "boxed_all": pooled(results, "boxed"),
        },
        # every face given a name that is not its own (strangers named and members named wrong), at most 50
        "wrong_names": [{k: r[k] for k in ("size", "tilt", "identity", "photo", "named_as", "similarity")}
                        for r in results if r["wrong"]][:50],
        "probes": len(results),
        "frames_sent": sum(r["sent"] for r in results),
        "errors": sum(r["error"] for r in results),
        "seconds": round(time.monotonic() - started, 1),
        "stopped": stopped,
    }
    if args.save is not None:
        args.save.write_text(json.dumps(results))
    s = result["summary"]
    print(f"boxed at 30 px: {s['boxed_at_30px']}, named right at 40 px and more: {s['named_right_at_40px_and_more']}, "
          f"strangers named (worst condition): {s['strangers_named_max']}, all: {s['strangers_named_all']}; "
          f"{result['probes']} probes in {result['seconds']} s{'; stopped: ' + stopped if stopped else ''}",
          file=sys.stderr)
    print(json.dumps(result), flush=True)
    if stopped == "interrupted":
        sys.exit(130)
    return result


if __name__ == "__main__":
    main()
