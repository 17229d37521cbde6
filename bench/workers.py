"""Threads or processes for the live workers? The live path's frames per second either way.

    python bench/workers.py [--workers N] [--streams 8] [--seconds 10] [--backbone NAME] [--detector NAME]

Each worker (a thread, or a process) has its own recognizer and one FaceTracker per stream it serves,
and runs the live path (decode the JPEG, track: follow, detect when due, embed when due) on the
bench's sliding-face frames as fast as it can, each stream's clock moving 1/15 s a frame. It reports
frames per second for 1 thread (and its CPU ms a frame, which a busy machine inflates far less than its
wall time), N threads and N processes (default N: the cores), and for each step
of the live path the share of its time it holds the GIL (a thread beside it records when it could not
run; on a busy machine that reads high for every step). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live import FACES_DIR, PERSON, make_frames  # noqa: E402

from model.gallery import Gallery  # noqa: E402
from model.images import decode_image, load_image  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402
from model.tracking import FaceTracker  # noqa: E402

STREAM_FPS = 15


def frames_and_gallery(recognizer: Recognizer) -> tuple[list[bytes], Gallery]:
    photos = sorted((FACES_DIR / "celeba" / PERSON).glob("*.jpg"))
    gallery = Gallery(dim=128)
    for i, path in enumerate(photos[:3]):
        photo = load_image(path)
        gallery.add(i, 1, recognizer.embed_faces(photo, recognizer.enrollment_faces(photo)[:1])[0])
    return make_frames([load_image(p) for p in photos[3:8]], 270), gallery


def serve(options: dict, streams: int, seconds: float, out=None) -> tuple[int, float]:
    """One worker: its own recognizer and trackers, frames answered until `seconds` pass; returns how many, and
    the CPU seconds its process spent on them (all its threads: for one worker, its own)."""
    recognizer = Recognizer(options["backbone"], detector=options["detector"]).load()
    frames, gallery = frames_and_gallery(recognizer)
    trackers = [FaceTracker(recognizer, max_side=640) for _ in range(streams)]
    for tracker in trackers:  # first frames (new tracks) are not what a worker mostly does
        tracker.update(decode_image(frames[0]), gallery, now=0.0)
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        for s, tracker in enumerate(trackers):
            k = done // streams + 1
            tracker.update(decode_image(frames[(k + 37 * s) % len(frames)]), gallery, now=k / STREAM_FPS)
            done += 1
    cpu = time.process_time() - cpu
    if out is not None:
        out.put((done, cpu))
    return done, cpu


def threads(options: dict, workers: int, streams: int, seconds: float) -> tuple[float, float]:
    """Frames per second of `workers` threads, and the process's CPU ms per frame."""
    counts: list[tuple[int, float]] = []
    pool = [threading.Thread(target=lambda: counts.append(serve(options, streams // workers, seconds)))
            for _ in range(workers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    done = sum(count for count, _ in counts)
    return done / seconds, 1000 * counts[0][1] / done


def processes(options: dict, workers: int, streams: int, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    pool = [context.Process(target=serve, args=(options, streams // workers, seconds, out)) for _ in range(workers)]
    for process in pool:
        process.start()
    counts = [out.get() for _ in pool]
    for process in pool:
        process.join()
    return sum(count for count, _ in counts) / seconds


def gil_held(options: dict, seconds: float = 1.0) -> dict[str, float]:
    """For each step of the live path, the share of its time another Python thread could not run (GIL held)."""
    import numpy as np

    recognizer = Recognizer(options["backbone"], detector=options["detector"]).load()
    frames, _ = frames_and_gallery(recognizer)
    jpeg = frames[0]
    frame = decode_image(jpeg)
    faces = recognizer.find_faces(frame, max_side=640)
    steps = {
        "decode": lambda: decode_image(jpeg),
        "detect": lambda: recognizer.find_faces(frame, max_side=640),
        "follow (landmarks refitted)": lambda: [recognizer.detector.refit(frame, faces[0]) for _ in range(10)],
        "embed (backbone features)": lambda: recognizer.features(frame, faces),
    }
    parts = getattr(recognizer.backbone, "parts", [recognizer.backbone])
    for part in parts:  # each network of a fused backbone on its own
        steps[f"embed: {part.name}"] = lambda part=part: part.features(frame, faces)
    shares = {}
    for name, step in steps.items():
        step()
        stop, blocked = threading.Event(), [0.0]

        def watch() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                now = time.perf_counter()
                if now - last > 0.0005:
                    blocked[0] += now - last
                last = now

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.01)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            step()
        elapsed = time.perf_counter() - started
        stop.set()
        watcher.join()
        shares[name] = round(float(np.clip(blocked[0] / elapsed, 0, 1)), 2)
    return shares


def main() -> dict:
    from webapp.live_admission import cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--backbone", default=Recognizer().backbone.name)
    parser.add_argument("--detector", default=Recognizer().detector.name)
    args = parser.parse_args()
    options = {"backbone": args.backbone, "detector": args.detector}
    result = {
        "backbone": args.backbone,
        "detector": args.detector,
        "workers": args.workers,
        "streams": args.streams,
        **dict(zip(("one_thread_fps", "cpu_ms_per_frame"),
                   (round(v, 2) for v in threads(options, 1, args.streams, args.seconds)))),
        "threads_fps": round(threads(options, args.workers, args.streams, args.seconds)[0], 1),
        "processes_fps": round(processes(options, args.workers, args.streams, args.seconds), 1),
        "gil_held": gil_held(options),
    }
    for key, value in result.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
