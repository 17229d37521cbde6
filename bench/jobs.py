"""Benchmark the batch-work queue (webapp/jobs.py): enqueue -> start latency, and an import in the worker vs here.

    python bench/jobs.py [--runs 20] [--photos 60]

Starts a private Redis (scripts/cluster.py's) and the job worker (`python -m webapp.jobs`) on a fresh data
folder, both with the dlib model the tests use (dlib-resnet, HOG), and an app in this process on it.
1. --runs times, a purge job is submitted through the app; the time from the enqueue to the worker's
   start of it (RQ's started_at) and to its outcome read back through the app (asked every 5 ms).
2. After a warm-up import of 6 other photos in both places, one import of --photos CelebA portraits (one
   folder per person) through the worker, and the same zip in this process (an app without FACES_REDIS_URL on another fresh folder, the same loaded model): seconds
   from the submit to the outcome read back, and photos per second.
Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(PROJECT_DIR / "scripts")]
FACES_DIR = Path(os.environ.get("FACES_TEST_DATA", PROJECT_DIR.parent / "shared" / "faces"))
MODEL = {"BACKBONE": "dlib-resnet", "DETECTOR": "hog"}
WARM_UP = 6  # photos imported first in both places, not counted


def portraits_zip(count: int, skip: int = 0) -> bytes:
    out = io.BytesIO()
    folders = sorted(p for p in (FACES_DIR / "celeba").iterdir() if p.is_dir())
    paths = [path for folder in folders for path in sorted(folder.glob("*.jpg"))[:3]][skip:skip + count]
    with zipfile.ZipFile(out, "w") as z:
        for path in paths:
            z.writestr(f"{path.parent.name}/{path.name}", path.read_bytes())
    return out.getvalue()


def until_done(imports, job_id: str, every_s: float = 0.005) -> dict:
    while True:
        answer = imports.get(job_id).json()
        if answer["state"] != "running":
            return answer
        time.sleep(every_s)


def timed_import(app, data: bytes) -> dict:
    from webapp import import_jobs

    imports = import_jobs.for_app(app)
    started = time.monotonic()
    job = imports.start(io.BytesIO(data))
    answer = until_done(imports, job.id)
    seconds = time.monotonic() - started
    assert answer["state"] == "done", answer
    added = answer["result"]["photos_added"]
    return {"photos": answer["total"], "added": added, "seconds": round(seconds, 2),
            "photos_per_s": round(answer["total"] / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--photos", type=int, default=60)
    args = parser.parse_args()
    from cluster import Cluster
    from rq.job import Job

    from webapp import create_app, jobs

    run_dir = Path(tempfile.mkdtemp(prefix="faces-bench-jobs-"))
    cluster = Cluster(run_dir=run_dir, data_dir=run_dir / "data",
                      env={"FACES_BACKBONE": MODEL["BACKBONE"], "FACES_DETECTOR": MODEL["DETECTOR"]})
    cluster.start_redis()
    try:
        started = time.monotonic()
        cluster.start_worker()
        worker_start_s = time.monotonic() - started
        app = create_app({"TESTING": True, "DATA_DIR": run_dir / "data", "SECRET_KEY": "b",
                          "REDIS_URL": cluster.redis_url, **MODEL})
        app.extensions["faces"].wait_ready(timeout=None)
        queue = jobs.for_app(app)
        to_start, to_read = [], []
        for i in range(args.runs):
            submitted = time.time()
            record, fresh = queue.submit(jobs.purge, f"bench-purge-{i}")
            assert fresh and record.queued, record
            while (read := queue.read(record.id)).state not in ("done", "failed"):
                time.sleep(0.005)
            to_read.append(time.time() - submitted)
            job = Job.fetch(record.id, connection=queue.redis, serializer=queue.queue().serializer)
            to_start.append(job.started_at.timestamp() - submitted)
        data, warm_up = portraits_zip(args.photos), portraits_zip(WARM_UP, skip=args.photos)
        here = create_app({"TESTING": True, "DATA_DIR": run_dir / "here", "SECRET_KEY": "b",
                           "RECOGNIZER": app.extensions["faces"].recognizer, **MODEL})
        here.extensions["faces"].wait_ready(timeout=None)
        timed_import(app, warm_up)  # the model's first calls, and the photo files read once, in both
        timed_import(here, warm_up)
        through_worker = timed_import(app, data)
        in_process = timed_import(here, data)
        assert cluster.worker.process.poll() is None, f"the worker died; see {cluster.worker.log}"
    finally:
        cluster.stop()
    ms = [round(s * 1000, 1) for s in to_start]
    figures = {
        "worker_start_s": round(worker_start_s, 1),
        "enqueue_to_start_ms": {"median": statistics.median(ms), "max": max(ms)},
        "enqueue_to_outcome_read_ms": {"median": round(statistics.median(to_read) * 1000, 1),
                                       "max": round(max(to_read) * 1000, 1)},
        "import_worker": through_worker, "import_in_process": in_process,
        "load_avg": os.getloadavg()[0], "cores": len(os.sched_getaffinity(0)),
    }
    print(f"worker up (model loaded, registered) in {figures['worker_start_s']} s")
    print(f"enqueue -> start: median {figures['enqueue_to_start_ms']['median']} ms, max "
          f"{figures['enqueue_to_start_ms']['max']} ms over {args.runs} jobs; outcome read back: median "
          f"{figures['enqueue_to_outcome_read_ms']['median']} ms")
    print(f"import of {through_worker['photos']} photos: worker {through_worker['seconds']} s "
          f"({through_worker['photos_per_s']}/s), in-process {in_process['seconds']} s "
          f"({in_process['photos_per_s']}/s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
