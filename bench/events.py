"""Benchmark track events: the time from a live frame to its MQTT message on a real broker.

    python bench/events.py [--model fake|real] [--trials 30] [--fps 15]

Starts a private mosquitto on a free loopback port (tests/webapp/mqtt_helpers.py), builds the app in this
process with FACES_MQTT_URL pointing at it (fresh data dir; --model fake: tests/fakes.py, real: the
default YuNet + dlib-sface), enrolls celeb_7201 from photo 1 (fake) or photos 1-3 (real), and subscribes
to faces/events with paho. Each trial is a new stream (a camera, as the cameras feed them), so a new
track: 640x480 JPEG frames of the person (photo 1 for the fakes, photo 4 for the real model) or of a
stranger (celeb_7229) every 1/fps s until the event arrives. Per trial:

- decide_ms: from the start of the frame that decided the track (the frame during which the event was
  published) to the message at the subscriber: the path the hook adds (Notifier, paho, broker);
- appear_ms: from the first frame with the face to the message: what a user waits, evidence included
  (a stranger needs FACES_LIVE_UNKNOWN_FRAMES decided frames);
- hook_ms: from the hook's publish call (during that frame) to the message: the Notifier, paho and the broker.

Prints figures, then one JSON line: {"model", "fps", "named": {p50/p95 of both, frames, trials},
"unknown": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "tests"))
sys.path.insert(0, str(PROJECT_DIR / "tests" / "webapp"))

from mqtt_helpers import Broker, Subscriber, wait_until  # noqa: E402
from web_helpers import log_in, on_background, prepare_data_dir  # noqa: E402

FACES_DIR = Path(os.environ.get("FACES_TEST_DATA", PROJECT_DIR.parent / "shared" / "faces"))
PERSON, STRANGER = "celeb_7201", "celeb_7229"
EVENT_TIMEOUT_S = 10.0


def photo(person: str, index: int) -> tuple[str, bytes]:
    path = FACES_DIR / "celeba" / person / f"{person}_{index:04d}.jpg"
    return path.name, path.read_bytes()


def make_app(model: str, broker_url: str, data_dir: Path):
    from webapp import create_app

    config = {"TESTING": True, "DATA_DIR": prepare_data_dir(data_dir), "SECRET_KEY": "bench",
              "MQTT_URL": broker_url}
    if model == "fake":
        from fakes import fake_recognizer

        config["RECOGNIZER"] = fake_recognizer(threshold=0.9)
    app = create_app(config)
    app.extensions["faces"].wait_ready()
    return app


def enroll(app, model: str) -> None:
    from web_helpers import enroll_json

    photos = [photo(PERSON, 1)] if model == "fake" else [photo(PERSON, i) for i in (1, 2, 3)]
    answer = enroll_json(log_in(app.test_client()), "Bench Person", photos)
    assert answer.status_code == 201, answer.get_data(as_text=True)


class Trial:
    """One stream, fed frames every 1/fps s until its first event arrives at the subscriber."""

    def __init__(self, app, frame: bytes, fps: float, subscriber: Subscriber):
        from webapp.live_stream import LiveStream

        self.frame, self.fps, self.subscriber = frame, fps, subscriber
        self.frame_started = 0.0
        self.decided_at: float | None = None
        self.published_at: float | None = None
        self.frames = 0
        notifier = app.extensions["notifier"]

        def publish(event: dict) -> None:
            if self.decided_at is None:
                self.decided_at, self.published_at = self.frame_started, time.time()
            notifier.publish(event)

        self.stream = LiveStream(app.extensions["faces"], camera="bench", on_event=publish,
                                 unknown_frames=app.config["LIVE_UNKNOWN_FRAMES"],
                                 max_frame_bytes=app.config["MAX_FRAME_BYTES"])

    def run(self) -> dict:
        seen_before = len(self.subscriber.on("faces/events"))
        first = time.time()
        start = time.monotonic()
        while self.decided_at is None and time.monotonic() - start < EVENT_TIMEOUT_S:
            self.frame_started = time.time()
            self.stream.answer(self.frames, self.frame, now=time.monotonic())
            self.frames += 1
            next_at = start + self.frames / self.fps
            time.sleep(max(0.0, next_at - time.monotonic()))
        [message] = self.subscriber.wait_for("faces/events", count=seen_before + 1, timeout=EVENT_TIMEOUT_S)[-1:]
        return {"decide_ms": (message.arrived - self.decided_at) * 1000, "appear_ms": (message.arrived - first) * 1000,
                "hook_ms": (message.arrived - self.published_at) * 1000,
                "frames": self.frames, "event": json.loads(message.text)}


def summary(results: list[dict]) -> dict:
    def pct(key: str, q: float) -> float:
        return round(float(np.percentile([r[key] for r in results], q)), 1)

    return {"trials": len(results), "decide_p50_ms": pct("decide_ms", 50), "decide_p95_ms": pct("decide_ms", 95),
            "appear_p50_ms": pct("appear_ms", 50), "appear_p95_ms": pct("appear_ms", 95),
            "hook_p50_ms": pct("hook_ms", 50), "hook_p95_ms": pct("hook_ms", 95),
            "frames_median": float(np.median([r["frames"] for r in results]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["fake", "real"], default="fake")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker").start()
        subscriber = Subscriber(broker.port, ("faces/events",))
        app = make_app(args.model, broker.url, Path(tmp) / "data")
        try:
            enroll(app, args.model)
            wait_until(lambda: app.extensions["notifier"].status()["sinks"][0]["state"] == "connected")
            probe = photo(PERSON, 1 if args.model == "fake" else 4)[1]
            frames = {"named": on_background(probe), "unknown": on_background(photo(STRANGER, 1)[1])}
            Trial(app, frames["named"], args.fps, subscriber).run()  # warm-up, unmeasured
            report = {"model": args.model, "fps": args.fps}
            for kind, frame in frames.items():
                results = [Trial(app, frame, args.fps, subscriber).run() for _ in range(args.trials)]
                wrong = [r["event"] for r in results if r["event"]["unknown"] != (kind == "unknown")]
                report[kind] = {**summary(results), "wrong_events": len(wrong)}
                print(f"{kind}: {report[kind]}", file=sys.stderr)
        finally:
            app.extensions["notifier"].close()
            subscriber.close()
            broker.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
