"""A PostgreSQL server restarted under running apps: they recover without a restart of their own.

The server is this file's own (the session's is shared by every other test and must not go away).
"""

from __future__ import annotations

import logging
import time

import pytest
from pg_helpers import MISSING, PrivatePostgres
from web_helpers import ENROLLED, enroll_json, log_in, prepare_data_dir, wait_until

from fakes import fake_recognizer
from webapp import changes, create_app


@pytest.fixture
def server():
    if MISSING:
        pytest.skip(MISSING)
    server = PrivatePostgres(fast=True).start()
    server.admin("CREATE DATABASE faces")
    yield server
    server.stop()


def _app(tmp_path, name: str, url: str):
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / name), "SECRET_KEY": "test",
                      "RECOGNIZER": fake_recognizer(), "DATABASE_URL": url, "CHANGES_POLL_S": 0.2})
    app.extensions["faces"].wait_ready()
    return app


def test_after_a_restart_requests_and_the_change_log_work_again(tmp_path, server, photo, caplog):
    caplog.set_level(logging.INFO, logger="webapp.changes")
    first, second = _app(tmp_path, "a", server.url("faces")), _app(tmp_path, "b", server.url("faces"))
    try:
        client = first.test_client()
        log_in(client)
        ada = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
        wait_until(lambda: ada["id"] in second.extensions["faces"].names, timeout=2, step=0.01)

        server.restart()  # every connection of both apps is cut
        restarted = time.monotonic()
        statuses = []

        def people_answered() -> bool:
            statuses.append(client.get("/api/people").status_code)
            return statuses[-1] == 200

        wait_until(people_answered, timeout=10, step=0.05)
        assert set(statuses) <= {200, 503}  # never a 500 while it came back
        assert time.monotonic() - restarted < 5, statuses

        # The other app's poller listens again: a change made after the restart reaches it.
        bob = enroll_json(client, "Bob", [photo(ENROLLED, 2)])
        assert bob.status_code == 201, bob.get_json()
        bob_id = bob.get_json()["person"]["id"]
        wait_until(lambda: bob_id in second.extensions["faces"].names, timeout=5, step=0.01)
        assert ada["id"] in second.extensions["faces"].names  # nothing it held was lost
        assert not second.extensions[changes.EXTENSION].stalled
        # One line when the poller lost the database and one when it read it again, not one per poll.
        lost = [r for r in caplog.records if "cannot read other processes' changes" in r.getMessage()]
        wait_until(lambda: sum("reading the database again" in r.getMessage() for r in caplog.records) == 2)
        assert len(lost) == 2
        other = second.test_client()
        log_in(other)
        assert {p["name"] for p in other.get("/api/people").get_json()["people"]} == {"Ada", "Bob"}
    finally:
        for app in (first, second):
            app.extensions[changes.EXTENSION].stop()

