"""Batch work, run once per installation: an RQ queue on Redis when FACES_REDIS_URL is set, else a thread here.

The jobs: the start-up retention purge (`purge`, below), re-embedding the photos of another backbone
(webapp.reembed) and background imports (webapp.import_jobs). Each is one function `fn(run, *args) -> dict`
that reports progress with `run.progress(done, total)` and returns its outcome (an "error" key: it failed).
The same function runs on a daemon thread of the app that submitted it (no FACES_REDIS_URL, or Redis
unreachable: one log line per outage) or in the worker, `python -m webapp.jobs`, a process that builds the
model from the same FACES_* settings as the app processes (scripts/cluster.py starts one).

A job's id names its work ("purge", "reembed-dlib-resnet"): RQ's unique enqueue refuses a second job of that
id while one is queued, running, or finished less than its `keep_s` ago, so three processes starting together
run one purge; a failed one may be submitted again. The worker keeps a job's progress in its meta in Redis,
so any process can answer for it (GET /api/import/<job>).

A worker that dies mid-job stops beating (every HEARTBEAT_S): the job reads as failed HEARTBEAT_TTL_S later
(RQ's abandoned-job cleanup, run by whoever reads it and by the worker's maintenance). Imports write their
rows in one transaction at the end and re-embedding one row per transaction, so nothing is half-written.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from flask import Flask, current_app
from redis.exceptions import WatchError
from rq import Queue, SimpleWorker, get_current_job
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from webapp import db, inbox_store, redis_link, settings

log = logging.getLogger(__name__)

EXTENSION = "jobs"
QUEUE = "faces-batch"
JOB_TIMEOUT_S = 12 * 3600  # the longest a job may run: an import of 100 000 photos at ~3 photos/s
HEARTBEAT_S = 2
HEARTBEAT_TTL_S = 10  # a running job whose worker has not beaten for this long is marked failed
KEEP_FINISHED_S = 3600  # a finished job's counts stay readable this long (and stop a new job of its id)
KEEP_FAILED_S = 24 * 3600
PROGRESS_EVERY_S = 0.2  # the worker writes a job's progress to Redis at most this often (and at the end)
PURGE_KEEP_S = 600  # app processes starting within this of a purge do not run another one
LOCK_PREFIX = "faces:jobs:lock:"
CLAIM_GRACE_S = 10.0  # a lock whose job is not in Redis yet is held this long (the upload is being copied)
WORKER_DEQUEUE_S = 5  # the worker's blocking wait for a job; its connection's socket timeout is above it
ABANDONED = "the worker stopped while running it (killed, or out of memory); submit it again"


@dataclass
class Record:
    """A job as its pages see it: state 'queued', 'running', 'done' or 'failed', progress, then outcome or error."""

    id: str
    state: str = "queued"
    done: int = 0
    total: int = 0
    outcome: dict | None = None
    error: str | None = None
    queued: bool = False  # in Redis (any process can read it), not on a thread of this process
    extra: dict = field(default_factory=dict)  # a job's own counters beside done/total (re-embedding: failed)


class Run:
    """Handed to a job function: it reports progress here. :param save: persists the record (the worker's)."""

    def __init__(self, record: Record, save: Callable[[Record], None] | None = None):
        self.record = record
        self._save = save
        self._saved = 0.0

    def progress(self, done: int, total: int, **extra: Any) -> None:
        self.record.done, self.record.total = done, total
        self.record.extra.update(extra)
        now = time.monotonic()
        if self._save is not None and (done >= total or now - self._saved >= PROGRESS_EVERY_S):
            self._saved = now
            self._save(self.record)


def perform(fn: Callable[..., dict | None], run: Run, args: tuple) -> dict:
    """Run one job function; its record ends 'done' or 'failed'. An exception is logged and raised."""
    record = run.record
    record.state = "running"
    try:
        outcome = fn(run, *args) or {}
    except Exception as exc:
        log.exception("job %s failed", record.id)
        record.state, record.error = "failed", str(exc) or type(exc).__name__
        raise
    record.outcome, record.error = outcome, outcome.get("error")
    record.state = "failed" if record.error else "done"
    return outcome


def name_of(fn: Callable) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def run_queued(function: str, *args: Any) -> dict:
    """What RQ runs in the worker: the job function by name, its progress and error in the job's meta."""
    job = get_current_job()
    module, _, attribute = function.partition(":")
    if not module.startswith("webapp."):  # the name came through Redis: only the app's own job functions
        raise ValueError(f"not a job of this app: {function!r}")
    fn = getattr(importlib.import_module(module), attribute)

    def save(record: Record) -> None:
        job.meta.update(done=record.done, total=record.total, error=record.error, extra=record.extra)
        job.save_meta()

    run = Run(Record(job.id, queued=True), save)
    try:
        return perform(fn, run, args)
    finally:
        save(run.record)


class Jobs:
    """The app's batch work (`app.extensions["jobs"]`): submit() runs a job once, read() says how it is going."""

    def __init__(self, app: Flask, url: str | None):
        self.app = app
        self.url = url
        self.redis = None
        self._down = False
        self._here: dict[str, Record] = {}
        if url:
            self.redis = redis.Redis.from_url(url, socket_connect_timeout=redis_link.TIMEOUT_S,
                                              socket_timeout=redis_link.TIMEOUT_S)

    def queue(self, connection=None) -> Queue:
        # JSON, not pickle: nothing read back from Redis can run code; arguments and outcomes are plain data.
        return Queue(QUEUE, connection=connection or self.redis, serializer=JSONSerializer,
                     default_timeout=JOB_TIMEOUT_S)

    def submit(self, fn: Callable[..., dict | None], job_id: str, *args: Any, keep_s: float = KEEP_FINISHED_S,
               on_end: Callable[[], None] | None = None, inline: bool = False) -> tuple[Record, bool]:
        """Run fn(run, *args) once, in the worker when Redis answers, else on a daemon thread here.

        :param keep_s: a queued job's outcome is kept this long after it ends; meanwhile it stops a new one of
            its id.
        :param on_end: called when a job run here ends (not for a queued one).
        :param inline: run here in the calling thread (and return when done) instead of on a new one.
        :return: the job's record and whether this call started it (False: one of that id is under way).
        """
        if self.redis is not None:
            try:
                return self._enqueue(fn, job_id, args, keep_s)
            except Exception as exc:  # redis-py's ConnectionError/TimeoutError and OSError
                self.went_down(exc)
        return self._start_here(fn, job_id, args, on_end, inline), True

    def read(self, job_id: str) -> Record | None:
        """The job's record (None: no such job). :raises QueueUnreachable: a queued job, Redis not answering."""
        if job_id in self._here:
            return self._here[job_id]
        if self.redis is None:
            return None
        try:
            return self._fetch(job_id)
        except Exception as exc:
            self.went_down(exc)
            raise QueueUnreachable("the job queue (Redis) does not answer; ask again in a moment") from None

    def claim(self, name: str, job_id: str) -> bool | None:
        """Take lock `name` for job_id across processes: False while another queued or running job holds it,
        None without Redis (or Redis unreachable: the caller's own lock is all there is)."""
        if self.redis is None:
            return None
        key, value = LOCK_PREFIX + name, f"{job_id} {time.time()}"
        try:
            if self.redis.set(key, value, nx=True, ex=JOB_TIMEOUT_S):
                return True
            with self.redis.pipeline() as pipe:
                pipe.watch(key)
                holder = pipe.get(key)
                if holder is not None and self._holds(holder.decode()):
                    return False
                pipe.multi()
                pipe.set(key, value, ex=JOB_TIMEOUT_S)
                pipe.execute()  # WatchError: another process took it meanwhile
                return True
        except WatchError:
            return False
        except Exception as exc:
            self.went_down(exc)
            return None

    def held(self, name: str) -> bool:
        """Whether a queued or running job holds lock `name` (False without Redis or while it is down)."""
        if self.redis is None:
            return False
        try:
            holder = self.redis.get(LOCK_PREFIX + name)
            return holder is not None and self._holds(holder.decode())
        except Exception as exc:
            self.went_down(exc)
            return False

    def went_down(self, exc: Exception) -> None:
        if not self._down:
            log.error("the job queue at %s does not answer (%s): batch work runs in this process until it does",
                      redis_link.shown(self.url), exc)
        self._down = True

    def _holds(self, holder: str) -> bool:
        job_id, _, since = holder.partition(" ")
        record = self._fetch(job_id)
        if record is None:  # not enqueued yet (its upload is being copied), or it never was
            return time.time() - float(since or 0) < CLAIM_GRACE_S
        return record.state in ("queued", "running")

    def _enqueue(self, fn, job_id: str, args: tuple, keep_s: float) -> tuple[Record, bool]:
        queue = self.queue()
        for _ in range(2):
            try:
                queue.enqueue(run_queued, name_of(fn), *args, job_id=job_id, unique=True, job_timeout=JOB_TIMEOUT_S,
                              result_ttl=max(int(keep_s), 1), failure_ttl=KEEP_FAILED_S, description=job_id)
                self._back()
                return Record(job_id, queued=True), True
            except DuplicateJobError:
                existing = self._fetch(job_id)
                if existing is None or existing.state != "failed":
                    self._back()
                    return existing or Record(job_id, queued=True), False
                queue.connection.delete(f"rq:job:{job_id}")  # a failed one is run again
        return Record(job_id, queued=True), False

    def _fetch(self, job_id: str) -> Record | None:
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        status = job.get_status(refresh=False)
        if status == JobStatus.STARTED:
            self.queue().started_job_registry.cleanup()  # a job whose worker stopped beating: failed
            job.refresh()
            status = job.get_status(refresh=False)
        meta = job.meta
        record = Record(job.id, done=meta.get("done", 0), total=meta.get("total", 0), queued=True,
                        extra=meta.get("extra") or {})
        if status == JobStatus.FINISHED:
            record.outcome = job.return_value() or {}
            record.error = record.outcome.get("error")
            record.state = "failed" if record.error else "done"
        elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            record.state = "failed"
            result = job.latest_result()
            why = (result.exc_string if result is not None else None) or str(status)
            record.error = meta.get("error") or (
                ABANDONED if "Abandoned" in why else f"the job stopped: {why.strip().splitlines()[-1]}")
        elif status == JobStatus.STARTED:
            record.state = "running"
        return record

    def _back(self) -> None:
        if self._down:
            log.info("the job queue at %s answers again: batch work goes to the worker", redis_link.shown(self.url))
        self._down = False

    def _start_here(self, fn, job_id: str, args: tuple, on_end, inline: bool) -> Record:
        record = self._here.get(job_id)
        if record is not None and record.state in ("queued", "running"):
            return record  # the same work already under way in this process
        record = Record(job_id)
        for old in [k for k, r in self._here.items() if r.state in ("done", "failed")][:-KEEP_HERE]:
            del self._here[old]
        self._here[job_id] = record

        def target() -> None:
            try:
                with self.app.app_context():
                    perform(fn, Run(record), args)
            except Exception:  # logged by perform; the record says failed
                pass
            finally:
                if on_end is not None:
                    on_end()

        if inline:
            target()
        else:
            threading.Thread(target=target, name=f"faces-job-{job_id}", daemon=True).start()
        return record


KEEP_HERE = 10  # finished jobs run here kept for their pages to read (as many as imports kept before)


class QueueUnreachable(db.StoreError):
    status = 503


def init_app(app: Flask) -> Jobs:
    """:raises ValueError: a malformed FACES_REDIS_URL (the message leaves any password out)."""
    redis_link.check_url(app.config.get("REDIS_URL"))
    jobs = Jobs(app, app.config.get("REDIS_URL"))
    app.extensions[EXTENSION] = jobs
    return jobs


def for_app(app: Flask | None = None) -> Jobs:
    return (app or current_app).extensions[EXTENSION]


# --- the jobs that live here ----------------------------------------------------------------------------


def purge(run: Run) -> dict:
    """Delete inbox faces and sightings past their retention (FACES_INBOX_RETENTION_DAYS, ..._HISTORY_...)."""
    config = current_app.config
    conn = db.connect(config["DATABASE"])
    try:
        faces, sightings = inbox_store.purge(conn, config["DATA_DIR"], inbox_days=config["INBOX_RETENTION_DAYS"],
                                             history_days=config["HISTORY_RETENTION_DAYS"])
    finally:
        conn.close()
    run.progress(1, 1)
    return {"inbox_faces": faces, "sightings": sightings}


def submit_purge(app: Flask) -> tuple[Record, bool]:
    """The start-up purge: once for processes starting within PURGE_KEEP_S of each other (in this process and
    before it serves, as ever, without Redis)."""
    return for_app(app).submit(purge, "purge", keep_s=PURGE_KEEP_S, inline=True)


# --- the worker -----------------------------------------------------------------------------------------


def worker_app(config: Mapping[str, Any] | None = None) -> Flask:
    """An app with the settings, database and model that create_app would use, and no pages, streams or cameras."""
    from webapp import build_face_service

    app = Flask(__name__)
    app.config.from_mapping(settings.from_env())
    app.config.update(config or {})
    app.config["DATA_DIR"] = Path(app.config["DATA_DIR"]).resolve()
    app.config["DATA_DIR"].mkdir(parents=True, exist_ok=True)
    if app.config.get("DATABASE_URL"):  # as create_app does
        app.config["DATABASE"] = db.check_url(app.config["DATABASE_URL"])
    elif not app.config["DATABASE"]:
        app.config["DATABASE"] = str(app.config["DATA_DIR"] / "faces.db")
    app.config["MAX_FRAME_BYTES"] = int(app.config["MAX_FRAME_MB"] * 1024 * 1024)
    redis_link.check_url(app.config.get("REDIS_URL"))
    if not app.config.get("REDIS_URL"):
        raise ValueError("the worker needs FACES_REDIS_URL (without it each app process runs its own batch work)")
    db.init_app(app)
    service = build_face_service(app.config)
    app.extensions["faces"] = service
    service.start_loading()
    init_app(app)
    return app


class BeatingWorker(SimpleWorker):
    """RQ's worker that runs jobs in its own process (the model stays loaded between jobs, and no process with
    threads is forked), with a heartbeat thread while a job runs: SimpleWorker does not beat during a job, so
    the job of a worker killed meanwhile would read as running until its timeout, hours later."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return HEARTBEAT_TTL_S

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception as exc:  # Redis away a moment: the next beat may get through
                    log.warning("job %s: heartbeat not sent: %s", job.id, exc)

        beating = threading.Thread(target=beat, name="faces-job-heartbeat", daemon=True)
        beating.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beating.join()
        self.set_state(WorkerStatus.IDLE)


def work(config: Mapping[str, Any] | None = None, *, burst: bool = False) -> bool:
    """Run queued jobs until stopped (SIGTERM/SIGINT: after the job at hand) or, with burst, until none is left."""
    app = worker_app(config)
    app.extensions["faces"].wait_ready(timeout=None)
    connection = redis.Redis.from_url(app.config["REDIS_URL"], socket_connect_timeout=redis_link.TIMEOUT_S,
                                      socket_timeout=WORKER_DEQUEUE_S + 10)
    queue = for_app(app).queue(connection)
    worker = BeatingWorker([queue], connection=connection, serializer=queue.serializer,
                           maintenance_interval=60, job_monitoring_interval=HEARTBEAT_S)
    log.info("job worker %s: queue %s at %s", worker.name, QUEUE, redis_link.shown(app.config["REDIS_URL"]))
    with app.app_context():
        return worker.work(burst=burst, logging_level="INFO", with_scheduler=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the app's batch work queued in Redis (FACES_REDIS_URL).")
    parser.add_argument("--data-dir", type=Path, help="the data folder (default: FACES_DATA_DIR)")
    parser.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work({"DATA_DIR": args.data_dir} if args.data_dir else None, burst=args.burst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
