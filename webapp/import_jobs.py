"""Imports from the web (POST /api/import, the Import page): one at a time, in the request or in the background.

In the request (the API's default) the answer is the import's counts. In the
background (`background=1`, what the page's script asks for) the upload is
copied into the data folder and the `import_upload` job imports it (webapp.jobs:
on a daemon thread of this process, or in the job worker when FACES_REDIS_URL is
set); GET /api/import/<job> answers how far it got, then the counts, from any
process when the job is queued. Two imports at once would race on duplicates,
so a second one gets 409 (across processes while a queued one is under way).

The copy is `<data dir>/.import-<job>.tmp` (swept at start if the server dies
meanwhile); with FACES_REDIS_URL it is `.import-<job>.upload`, which the start-up
sweep of another process leaves alone while it waits in the queue. The job
removes it when done; one left by a killed worker goes when the next import
starts, an hour later or more.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import IO

from flask import Flask, current_app

from webapp import importer, jobs
from webapp.archive import ArchiveError
from webapp.db import NotFound, StoreError, connect
from webapp.service import FaceService, ModelNotReady

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[0-9a-f]{16}")
UPLOAD = re.compile(r"\.import-[0-9a-f]{16}\.(tmp|upload)")
LOCK = "import"  # the lock across processes (webapp.jobs.Jobs.claim)
LEFTOVER_AGE_S = 3600.0  # an upload this old that no import is reading was left by a killed worker


class ImportBusy(StoreError):
    status = 409


class ImportJob:
    """One background import as its page sees it (a job record of webapp.jobs)."""

    def __init__(self, record: jobs.Record):
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def json(self) -> dict:
        record, outcome = self.record, self.record.outcome or {}
        state = "running" if record.state == "queued" else record.state
        status = outcome.get("status", 500 if state == "failed" else 200)  # what the same import answers in a request
        return {"job": record.id, "state": state, "done": record.done, "total": record.total,
                "result": outcome.get("result"), "error": record.error, "status": status,
                "url": f"/api/import/{record.id}"}


def answer_status(result: importer.ImportResult) -> int:
    """200 when something was added or already there, 422 when no file was usable."""
    return 200 if result.photos_added or result.duplicates or result.corrections_added else 422


class ImportJobs:
    """The app's imports; `app.extensions["imports"]` (see `for_app`)."""

    def __init__(self, database: str, data_dir: Path, service: FaceService, queue: jobs.Jobs):
        self.database = database
        self.data_dir = Path(data_dir)
        self.service = service
        self.jobs = queue
        self._busy = threading.Lock()  # this process's imports

    def run(self, db, archive: IO[bytes]) -> importer.ImportResult:
        """Import in this thread. :raises ImportBusy, ArchiveError, ModelNotReady."""
        if not self._busy.acquire(blocking=False):
            raise ImportBusy("another import is running; wait for it to finish")
        try:
            if self.jobs.held(LOCK):
                raise ImportBusy("another import is running; wait for it to finish")
            return importer.import_source(db, self.service, self.data_dir, archive)
        finally:
            self._busy.release()

    def start(self, archive: IO[bytes]) -> ImportJob:
        """Copy the upload into the data folder and submit the job that imports it. :raises ImportBusy."""
        if not self._busy.acquire(blocking=False):
            raise ImportBusy("another import is running; wait for it to finish")
        job_id = secrets.token_hex(8)
        path = self.data_dir / f".import-{job_id}.{'upload' if self.jobs.redis is not None else 'tmp'}"
        release_here = True
        try:
            if self.jobs.claim(LOCK, job_id) is False:
                raise ImportBusy("another import is running; wait for it to finish")
            with open(path, "wb") as out:
                shutil.copyfileobj(archive, out)
            record, _ = self.jobs.submit(import_upload, job_id, path.name, on_end=self._busy.release)
            release_here = record.queued  # run here: the job releases the lock when it ends
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            if release_here:
                self._busy.release()
        return ImportJob(record)

    def get(self, job_id: str) -> ImportJob:
        """:raises NotFound; QueueUnreachable (503) for a queued import while Redis does not answer."""
        record = self.jobs.read(job_id) if JOB_ID.fullmatch(job_id) else None
        if record is None:
            raise NotFound("no import with that id (finished imports are kept only until the server restarts)")
        return ImportJob(record)


def import_upload(run: jobs.Run, name: str) -> dict:
    """The job: import the upload `name` in the data folder, then remove it.

    :return: {"result": counts, "status": 200 or 422}, or {"error", "status"} (the request's answer for it).
    """
    config, service = current_app.config, current_app.extensions["faces"]
    data_dir = Path(config["DATA_DIR"])
    if not UPLOAD.fullmatch(name):  # the name came through Redis: only an upload in the data folder is read
        return {"error": f"not an upload: {name!r}", "status": 400}
    upload = data_dir / name
    _remove_leftovers(data_dir, upload)
    conn = connect(config["DATABASE"])
    try:
        result = importer.import_source(conn, service, data_dir, upload, progress=run.progress)
        return {"result": result.json(), "status": answer_status(result)}
    except ArchiveError as exc:
        return {"error": str(exc), "status": exc.status}
    except ModelNotReady as exc:
        return {"error": str(exc), "status": 503}
    except Exception as exc:  # a background job must say why it stopped
        log.exception("import %s failed", run.record.id)
        return {"error": f"the import failed: {exc}", "status": 500}
    finally:
        conn.close()
        upload.unlink(missing_ok=True)


def _remove_leftovers(data_dir: Path, current: Path) -> None:
    for path in data_dir.glob(".import-*.upload"):
        try:
            if path != current and time.time() - path.stat().st_mtime > LEFTOVER_AGE_S:
                path.unlink()
                log.warning("removed %s, the upload of an import that never finished", path.name)
        except FileNotFoundError:
            pass


def for_app(app: Flask) -> ImportJobs:
    """The app's ImportJobs, made on first use."""
    imports = app.extensions.get("imports")
    if imports is None:
        imports = app.extensions.setdefault("imports", ImportJobs(
            app.config["DATABASE"], app.config["DATA_DIR"], app.extensions["faces"], jobs.for_app(app)))
    return imports
