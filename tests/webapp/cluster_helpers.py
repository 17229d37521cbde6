"""Helpers for the cluster tests: scripts/cluster.py's Cluster with the tests' model settings, and probes.

The tests start what a user starts (scripts/cluster.py): a private Redis, server.py processes on one data
folder and HAProxy in front, on free loopback ports.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from web_helpers import ENROLLED, PROJECT_DIR, TEST_PASSWORD, TEST_THRESHOLD

sys.path.insert(0, str(PROJECT_DIR / "scripts"))
from cluster import Cluster, get_json  # noqa: E402
from private_postgres import MISSING as POSTGRES_MISSING  # noqa: E402

# The model the other server.py tests use (HOG + dlib-resnet, pinned threshold), the test password, and
# every live connection let in whatever this machine's speed (admission has tests of its own).
TEST_ENV = {
    "FACES_THRESHOLD": str(TEST_THRESHOLD),
    "FACES_ADMIN_PASSWORD": TEST_PASSWORD,
    "FACES_BACKBONE": "dlib-resnet",
    "FACES_DETECTOR": "hog",
    "FACES_LIVE_CAPACITY_FPS": "10000",
}


def need_services() -> None:
    """Skip the test without redis-server or haproxy (scripts/setup.sh installs them with WITH_BROWSER=1)."""
    missing = [name for name in ("redis-server", "haproxy") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages; ./test.sh installs them)")


def start_cluster(run_dir: Path, processes: int = 2, *, postgres: bool = False) -> Cluster:
    """scripts/cluster.py's processes (postgres=True: on a private PostgreSQL, as --postgres starts them)."""
    need_services()
    if postgres and POSTGRES_MISSING:
        pytest.skip(POSTGRES_MISSING)
    return Cluster(processes=processes, run_dir=run_dir, env=TEST_ENV, workers=1, postgres=postgres).start()


def wait_for(done: Callable[[], bool], timeout: float, every: float = 0.02) -> float | None:
    """Seconds until done() was true (checked every `every` s), or None when it was not within timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if done():
            return time.monotonic() - started
        time.sleep(every)
    return None


def portrait_files(celeba_dir: Path, indices=(1, 2, 3), person: str = ENROLLED) -> list:
    """requests' `files` for an upload of these CelebA portraits."""
    paths = [celeba_dir / person / f"{person}_{i:04d}.jpg" for i in indices]
    return [("photos", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def names_seen(session, url: str, path: Path) -> list:
    """The names /api/recognize gives the faces of one photo."""
    answer = session.post(f"{url}/api/recognize", files={"image": (path.name, path.read_bytes())}, timeout=60)
    assert answer.status_code == 200, answer.text
    return [face["name"] for face in answer.json()["faces"]]


def in_gallery(session, url: str) -> tuple[int, int]:
    """(people, photos) in a process's gallery in memory (its /api/status)."""
    status = session.get(f"{url}/api/status", timeout=10).json()
    return status["people"], status["photos"]


def health(url: str) -> tuple[int, dict | None]:
    return get_json(f"{url}/api/health")
