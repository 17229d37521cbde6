"""A server camera's newest analysed frame, handed from the process that reads it to the others through the
data folder, so every process behind the load balancer shows the camera (webapp.camera_claims says who reads).

- A process that does not read the camera and is asked about it touches `<data dir>/cameras/<id>.wanted`.
- The reader, after each analysed frame, looks at that file's mtime (one stat); while it is under WANTED_S
  old, it writes `<id>.frame`: one JSON line (the `faces` answer and the status), then the frame's JPEG,
  renamed into place whole. Nobody asking elsewhere costs the reader that one stat per frame. A camera
  that gives no frames (offline, refused) has its status alone written by the reader's claim round.
- The others answer from `<id>.frame` while it is under FRESH_S old (the reader died or stopped: nothing).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from webapp import files
from webapp.camera_claims import LOCKS_DIR

# The reader writes frames for this long after the last ask; a frame older than FRESH_S is not shown.
WANTED_S = 5.0
FRESH_S = 3.0


@dataclass(frozen=True)
class Relayed:
    """The reader's newest analysed frame as another process sees it."""

    frame_id: int | None  # None: the status alone (no analysed frame lately)
    answer: dict | None
    status: dict
    picture: bytes  # JPEG

    def jpeg(self) -> bytes:
        return self.picture


class Relay:
    """The relay files of one data folder."""

    def __init__(self, data_dir: Path):
        self.folder = Path(data_dir) / LOCKS_DIR
        self.folder.mkdir(mode=files.PRIVATE_DIR, exist_ok=True)

    def _path(self, camera_id: int, kind: str) -> Path:
        return self.folder / f"{int(camera_id)}.{kind}"

    def _age(self, path: Path) -> float | None:
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None

    def ask(self, camera_id: int) -> None:
        """Another process wants the camera's frames (for the next WANTED_S)."""
        path = self._path(camera_id, "wanted")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, files.PRIVATE_FILE))
        os.utime(path)

    def wanted(self, camera_id: int) -> bool:
        age = self._age(self._path(camera_id, "wanted"))
        return age is not None and age < WANTED_S

    def put(self, camera_id: int, status: dict, frame_id: int | None = None, answer: dict | None = None,
            jpeg: bytes = b"") -> None:
        """The reader's newest frame (or its status alone), replacing the last one whole."""
        header = json.dumps({"frame_id": frame_id, "answer": answer, "status": status}).encode()
        files.write_atomic(self._path(camera_id, "frame"), header + b"\n" + jpeg, durable=False)

    def get(self, camera_id: int) -> Relayed | None:
        """The newest relayed frame while under FRESH_S old, else None."""
        path = self._path(camera_id, "frame")
        age = self._age(path)
        if age is None or age > FRESH_S:
            return None
        try:
            header, _, jpeg = path.read_bytes().partition(b"\n")
            fields = json.loads(header)
        except (FileNotFoundError, ValueError):  # replaced or removed meanwhile: the next ask finds it
            return None
        return Relayed(fields["frame_id"], fields["answer"], fields["status"], jpeg)

    def drop(self, camera_id: int) -> None:
        """The reader stops reading the camera: its last frame goes with it."""
        self._path(camera_id, "frame").unlink(missing_ok=True)
