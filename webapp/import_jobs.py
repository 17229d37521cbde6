"""Imports from the web (POST /api/import, the Import page): one at a time, in the request or in the background.

In the request (the API's default) the answer is the import's counts. In the
background (`background=1`, what the page's script asks for) the upload is
copied to `<data dir>/.import-<job>.tmp` (swept at start if the server dies
meanwhile), a daemon thread imports it on its own connection, and
GET /api/import/<job> answers how far it got, then the counts. Two imports at
once would race on duplicates, so a second one gets 409.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from flask import Flask

from webapp import importer
from webapp.archive import ArchiveError
from webapp.db import NotFound, StoreError, connect
from webapp.service import FaceService, ModelNotReady

log = logging.getLogger(__name__)

KEEP_FINISHED = 10  # finished jobs kept for their pages to read
JOB_ID = re.compile(r"[0-9a-f]{16}")


class ImportBusy(StoreError):
    status = 409


@dataclass
class ImportJob:
    """One background import: state 'running', 'done' or 'failed', photos done of total, then result or error."""

    id: str
    state: str = "running"
    done: int = 0
    total: int = 0
    result: dict | None = None
    error: str | None = None
    status: int = 200  # the HTTP status the same import answers in a request
    path: Path | None = field(default=None, repr=False)

    def json(self) -> dict:
        return {"job": self.id, "state": self.state, "done": self.done, "total": self.total, "result": self.result,
                "error": self.error, "status": self.status, "url": f"/api/import/{self.id}"}


def answer_status(result: importer.ImportResult) -> int:
    """200 when something was added or already there, 422 when no file was usable."""
    return 200 if result.photos_added or result.duplicates or result.corrections_added else 422


class ImportJobs:
    """The app's imports; `app.extensions["imports"]` (see `for_app`)."""

    def __init__(self, database: str, data_dir: Path, service: FaceService):
        self.database = database
        self.data_dir = Path(data_dir)
        self.service = service
        self._busy = threading.Lock()
        self._jobs: dict[str, ImportJob] = {}

    def run(self, db, archive: IO[bytes]) -> importer.ImportResult:
        """Import in this thread. :raises ImportBusy, ArchiveError, ModelNotReady."""
        if not self._busy.acquire(blocking=False):
            raise ImportBusy("another import is running; wait for it to finish")
        try:
            return importer.import_source(db, self.service, self.data_dir, archive)
        finally:
            self._busy.release()

    def start(self, archive: IO[bytes]) -> ImportJob:
        """Copy the upload into the data folder and import it on a daemon thread. :raises ImportBusy."""
        if not self._busy.acquire(blocking=False):
            raise ImportBusy("another import is running; wait for it to finish")
        job = ImportJob(secrets.token_hex(8))
        job.path = self.data_dir / f".import-{job.id}.tmp"
        try:
            with open(job.path, "wb") as out:
                shutil.copyfileobj(archive, out)
            threading.Thread(target=self._run, args=(job,), name=f"faces-import-{job.id}", daemon=True).start()
        except BaseException:
            job.path.unlink(missing_ok=True)
            self._busy.release()
            raise
        for old in [j for j in self._jobs.values() if j.state != "running"][:-KEEP_FINISHED]:
            del self._jobs[old.id]
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> ImportJob:
        job = self._jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise NotFound("no import with that id (finished imports are kept only until the server restarts)")
        return job

    def _run(self, job: ImportJob) -> None:
        conn = connect(self.database)

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            result = importer.import_source(conn, self.service, self.data_dir, job.path, progress=progress)
            job.result, job.status, job.state = result.json(), answer_status(result), "done"
        except ArchiveError as exc:
            job.error, job.status, job.state = str(exc), exc.status, "failed"
        except ModelNotReady as exc:
            job.error, job.status, job.state = str(exc), 503, "failed"
        except Exception as exc:  # a background job must say why it stopped
            log.exception("import %s failed", job.id)
            job.error, job.status, job.state = f"the import failed: {exc}", 500, "failed"
        finally:
            conn.close()
            job.path.unlink(missing_ok=True)
            self._busy.release()


def for_app(app: Flask) -> ImportJobs:
    """The app's ImportJobs, made on first use."""
    jobs = app.extensions.get("imports")
    if jobs is None:
        jobs = app.extensions.setdefault(
            "imports", ImportJobs(app.config["DATABASE"], app.config["DATA_DIR"], app.extensions["faces"]))
    return jobs
