"""Shared fixtures: where the test photos are, and skipping when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Real photos live beside the project, never in it; FACES_TEST_DATA moves them.
FACES_DIR = Path(os.environ.get("FACES_TEST_DATA", PROJECT_DIR.parent / "shared" / "faces"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test photos not found at {path} (set FACES_TEST_DATA to the shared faces folder)")
    return path


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    """Folder-per-person CelebA photos: celeba/<identity>/<identity>_NNNN.jpg."""
    return _need(FACES_DIR / "celeba")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """Edge-case photos described in samples/README.md."""
    return _need(FACES_DIR / "samples")


@pytest.fixture(scope="session")
def recognizer():
    """One loaded dlib recognizer (dlib-resnet on HOG boxes, identity head) for the whole run: the core's
    tests and the web tests marked `dlib` were written for it; the default model has tests of its own."""
    from model.recognizer import Recognizer

    return Recognizer("dlib-resnet", detector="hog").load()
