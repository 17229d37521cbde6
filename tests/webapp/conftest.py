"""Web app fixtures: a fresh app and data dir per test, a logged-in client, real photos, and the output folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pg_helpers import MISSING as POSTGRES_MISSING
from pg_helpers import SessionPostgres
from web_helpers import PROJECT_DIR, TEST_THRESHOLD, log_in, prepare_data_dir

from fakes import fake_recognizer
from model.recognizer import Recognizer
from webapp import create_app


@pytest.fixture(scope="session")
def dlib_recognizer(recognizer) -> Recognizer:
    """The session's loaded dlib recognizer parts, with the pinned test threshold."""
    return Recognizer(
        backbone=recognizer.backbone, detector=recognizer.detector, head=recognizer.head, threshold=TEST_THRESHOLD
    )


@pytest.fixture
def web_recognizer(request) -> Recognizer:
    """The recognizer of the test's app: the fakes (tests/fakes.py), or dlib's for tests marked `dlib`."""
    if request.node.get_closest_marker("dlib"):
        return request.getfixturevalue("dlib_recognizer")
    return fake_recognizer(threshold=TEST_THRESHOLD)


def pytest_generate_tests(metafunc):
    """Tests marked `both_engines` run on SQLite and on PostgreSQL (the `engine` fixture)."""
    if "engine" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_engines"):
        metafunc.parametrize("engine", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the session (skipped when Debian's postgresql is not installed)."""
    if POSTGRES_MISSING:
        pytest.skip(POSTGRES_MISSING)
    server = SessionPostgres().start()
    yield server
    server.stop()


@pytest.fixture
def engine(request) -> str:
    """The database engine of the test's app: "sqlite" unless the test is marked `both_engines`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(engine, request) -> str | None:
    """None (SQLite in the data dir), or a fresh database on the session's PostgreSQL."""
    if engine == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def app(tmp_path, web_recognizer, database_url):
    """An app whose admin password is web_helpers.TEST_PASSWORD, on the fakes unless the test is marked `dlib`.

    On SQLite, or on PostgreSQL for tests marked `both_engines`.
    """
    data_dir = prepare_data_dir(tmp_path / "data")
    app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test", "RECOGNIZER": web_recognizer,
                      "DATABASE_URL": database_url})
    app.extensions["faces"].wait_ready()
    yield app
    if "changes" in app.extensions:  # PostgreSQL: its poller's connections end with the test
        app.extensions["changes"].stop()


@pytest.fixture
def client(app):
    """A test client logged in as the admin, sending the CSRF token with every request."""
    return log_in(app.test_client())


@pytest.fixture
def anonymous(app):
    """A test client that has not logged in."""
    return app.test_client()


@pytest.fixture
def photo(celeba_dir):
    """photo(person, index) -> (file name, JPEG bytes) of a CelebA portrait."""

    def read(person: str, index: int) -> tuple[str, bytes]:
        path = celeba_dir / person / f"{person}_{index:04d}.jpg"
        return path.name, path.read_bytes()

    return read


@pytest.fixture
def sample(samples_dir):
    """sample(name) -> (file name, bytes) of an edge-case photo."""

    def read(name: str) -> tuple[str, bytes]:
        return name, (samples_dir / name).read_bytes()

    return read


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where screenshots and measurements go: $TEST_OUTPUT_DIR, else test-output/ in the project (git-ignored)."""
    path = Path(os.environ.get("TEST_OUTPUT_DIR", PROJECT_DIR / "test-output"))
    path.mkdir(parents=True, exist_ok=True)
    return path
