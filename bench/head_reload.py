"""Benchmark a head reload on one app process until another process on the same store uses the new head.

    python bench/head_reload.py [--runs 10] [--people 100] [--engines sqlite,postgres]

Two apps in this process on one store (SQLite with FACES_PROCESSES=2; PostgreSQL: a private server from
scripts/private_postgres.py), each with its own poller at the default FACES_CHANGES_POLL_S, on the fakes
(tests/fakes.py: a reload re-embeds stored features, so the backbone does not matter). --people people x 3
photos with random stored features. Each run writes another head file to A's weights folder, reloads it
on A (what POST /api/head/reload does) and times until B's service holds that head (checked every 2 ms),
from A's answer and from the request. Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "tests"))
sys.path.insert(0, str(PROJECT_DIR / "scripts"))

from fakes import FakeBackbone, FakeDetector  # noqa: E402

from model.head import Head, save_head  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402
from webapp import create_app, db, head_store, people_store  # noqa: E402


def fill(database: str, people: int) -> None:
    """people x 3 photo rows of the fake backbone, random unit features (the embedding: the identity head's)."""
    conn = db.connect(database)
    db.migrate(conn)
    rng = np.random.default_rng(0)
    with db.transaction(conn):
        for person in range(people):
            person_id = conn.execute("INSERT INTO people (name) VALUES (?) RETURNING id", (f"p{person}",)).fetchone()[0]
            for photo in range(3):
                vector = rng.normal(size=128).astype(np.float32)
                vector /= np.linalg.norm(vector)
                conn.execute("INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone)"
                             " VALUES (?, ?, '[0, 0, 10, 10]', 10, 10, ?, ?, 'fake')",
                             (person_id, f"p{person}-{photo}.jpg", db.to_blob(vector), db.to_blob(vector)))
    conn.close()


def run_engine(database_url: str | None, root: Path, runs: int, people: int) -> dict:
    data_dir = root / "data"
    data_dir.mkdir()
    weights = [root / "weights-a", root / "weights-b"]
    weights[0].mkdir()
    fill(database_url or str(data_dir / "faces.db"), people)
    apps = [create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "bench", "PROCESSES": 2,
                        "DATABASE_URL": database_url,
                        "RECOGNIZER": Recognizer(FakeBackbone(), detector=FakeDetector(), weights_dir=folder)})
            for folder in weights]
    first, second = (app.extensions["faces"] for app in apps)
    for service in (first, second):
        service.wait_ready()
    from_answer, from_request, reload_s = [], [], []
    conn = db.connect(apps[0].config["DATABASE"])
    for run in range(runs):
        kernel = np.linalg.qr(np.random.default_rng(run + 1).normal(size=(128, 128)))[0].astype(np.float32)
        save_head(Head(kernel, "fake", threshold=0.5, info={"run": run}), weights[0] / "head_fake.h5")
        started = time.perf_counter()
        people_store.reload_head(conn, first)
        answered = time.perf_counter()
        sha = head_store.read(conn, "fake").sha256
        while second.head_sha != sha:
            if time.perf_counter() - answered > 10:
                raise RuntimeError("B did not take the new head within 10 s")
            time.sleep(0.002)
        seen = time.perf_counter()
        from_answer.append(seen - answered)
        from_request.append(seen - started)
        reload_s.append(answered - started)
        time.sleep(0.3)  # apart from the last poll, so runs do not line up with the timer
    conn.close()
    for app in apps:
        app.extensions["changes"].stop()
    return {"photos": 3 * people, "from_answer_s": from_answer, "from_request_s": from_request,
            "reload_s": reload_s, "poll_s": apps[0].config["CHANGES_POLL_S"]}


def summary(values: list[float]) -> str:
    return f"p50 {np.median(values):.3f} s, max {max(values):.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args()
    logging.getLogger("webapp").setLevel(logging.CRITICAL)  # the bench's rows have no image files; no password
    results = {}
    with tempfile.TemporaryDirectory(prefix="faces-head-bench-") as tmp:
        for engine in args.engines.split(","):
            root = Path(tmp) / engine
            root.mkdir()
            if engine == "postgres":
                from private_postgres import PrivatePostgres

                server = PrivatePostgres(fast=True).start()
                try:
                    server.admin("CREATE DATABASE bench")
                    results[engine] = run_engine(server.url("bench"), root, args.runs, args.people)
                finally:
                    server.stop()
            else:
                results[engine] = run_engine(None, root, args.runs, args.people)
            got = results[engine]
            print(f"{engine}: {got['photos']} photos, poll {got['poll_s']} s; B uses the new head "
                  f"{summary(got['from_answer_s'])} after A's answer ({summary(got['from_request_s'])} from the "
                  f"request); A's reload {summary(got['reload_s'])}")
    print(json.dumps({**results, "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
