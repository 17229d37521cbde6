"""The job worker (`python -m webapp.jobs`) on the fakes, for tests/webapp/test_jobs.py.

    python tests/webapp/jobs_worker.py DATA_DIR REDIS_URL [SECONDS_PER_PHOTO]

SECONDS_PER_PHOTO slows each imported photo's analysis, so a test can kill the worker mid-import.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]  # web_helpers, fakes, the project

from web_helpers import TEST_THRESHOLD  # noqa: E402

from fakes import fake_recognizer  # noqa: E402
from webapp import jobs  # noqa: E402
from webapp.service import FaceService  # noqa: E402


def main() -> None:
    data_dir, url = sys.argv[1], sys.argv[2]
    slow_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    if slow_s:
        analyse = FaceService.analyse

        def slow(self, *args, **kwargs):
            time.sleep(slow_s)
            return analyse(self, *args, **kwargs)

        FaceService.analyse = slow
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    jobs.work({"DATA_DIR": data_dir, "REDIS_URL": url, "RECOGNIZER": fake_recognizer(threshold=TEST_THRESHOLD)})


if __name__ == "__main__":
    main()
