"""The data folder's image files: atomic writes, JPEG encoding, face crops, removal and the start-up sweep.

Every file the app stores has a generated name (never a person's name) in one
of the folders below. Files are written before their rows are committed, so a
crash can leave a file without a row (`sweep` removes it at the next start),
never a row pointing at half a file.
"""

from __future__ import annotations

import fcntl
import io
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

PHOTOS_DIR = "photos"
THUMBS_DIR = "thumbs"
INBOX_DIR = "inbox"
TMP_SUFFIX = ".tmp"  # files being written are named .<name>.tmp, then renamed
# Faces are biometric data: the data folder and everything in it are for the owner alone.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@contextmanager
def locked(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on an (owner-only, empty) lock file: one holder at a time, across threads and the
    processes sharing the data dir (each open gets its own flock)."""
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def try_lock(path: Path | str) -> int | None:
    """Take an exclusive lock on an (owner-only) lock file without waiting: its open descriptor, held until
    os.close (or the process's death: the kernel lets go), or None when another open holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def make_private(data_dir: Path) -> None:
    """Owner-only modes for the data folder, its sub-folders and files (also those made by older versions)."""
    os.chmod(data_dir, PRIVATE_DIR)
    for path in Path(data_dir).rglob("*"):
        os.chmod(path, PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)


def new_name() -> str:
    """A fresh file name for a stored JPEG."""
    return f"{uuid.uuid4().hex}.jpg"


def face_crop(
    image: NDArray[np.uint8], box: list[int], margin: float
) -> tuple[NDArray[np.uint8], list[int]]:
    """A square slice of the image around a [left, top, right, bottom] box grown by margin on each side, clipped.

    :return: (the slice, not copied; the box in the slice's pixels).
    """
    left, top, right, bottom = (int(v) for v in box)
    side = max(right - left, bottom - top) * (1 + 2 * margin)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    height, width = image.shape[:2]
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x1, y1 = min(width, int(cx + side / 2)), min(height, int(cy + side / 2))
    inner = [max(0, left - x0), max(0, top - y0), min(x1, right) - x0, min(y1, bottom) - y0]
    return image[y0:y1, x0:x1], inner


def jpeg(pixels: NDArray[np.uint8], quality: int, side: int | None = None) -> bytes:
    """RGB uint8 pixels as JPEG bytes (no metadata), shrunk to fit side x side when side is given."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if side is not None:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to .<name>.tmp, sync, rename: a crash leaves the old state or the new file, never half of one.

    durable=False skips the sync, for files that are only worth anything for a few seconds: readers still see
    the old file or the new one whole (the rename), but a power cut may leave either.
    """
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE), "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def remove(data_dir: Path, folder: str, names: Iterable[str]) -> None:
    """Delete files of one folder; ones already gone are fine."""
    for name in names:
        try:
            os.unlink(Path(data_dir) / folder / name)
        except FileNotFoundError:
            pass


def sweep(data_dir: Path, folder: str, known: set[str], min_age_s: float = 0.0) -> list[str]:
    """Remove the folder's files that no row names, and unfinished .*.tmp files, last written min_age_s ago or more.

    Run at start only, before any request. Where other processes share the data
    dir (they may be writing an enrollment's files right now), give min_age_s.
    :return: removed paths, relative to data_dir.
    """
    directory = Path(data_dir) / folder
    if not directory.is_dir():
        return []
    removed, now = [], time.time()
    for path in directory.iterdir():
        unfinished = path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
        if min_age_s and now - path.stat().st_mtime < min_age_s:
            continue
        if path.is_file() and (unfinished or path.name not in known):
            path.unlink(missing_ok=True)
            removed.append(f"{folder}/{path.name}")
    return removed


def sweep_unfinished(data_dir: Path) -> list[str]:
    """Remove .*.tmp files at the top of the data dir (the secret key's or password's, if a write was cut short)."""
    removed = []
    for path in Path(data_dir).glob(f".*{TMP_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed
