"""The Siamese embedding head: Dense(128, no bias) + L2 normalisation on backbone features.

The kernel is stored in `weights/head_<backbone>.h5` (HDF5 dataset `kernel`,
shape [backbone_dim, 128], the layout of a Keras Dense kernel) with a JSON
sidecar `head_<backbone>.json` (threshold, training summary). The server
applies it with numpy, so it never imports TensorFlow: see the README for the
start-up times measured both ways. The trainer builds the Keras layer from the
same kernel.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

from model.backbones import l2_normalise
from model.paths import DEFAULT_WEIGHTS_DIR

EMBEDDING_DIM = 128
# Heads that ship with the project, used when weights/ has none for a backbone (dlib-sface's starting head).
SHIPPED_HEADS_DIR = Path(__file__).resolve().parent / "heads"


class HeadUnavailable(RuntimeError):
    """No head file for a backbone whose head must be trained. The message says what to do."""


@dataclass
class Head:
    """A [D, 128] projection; `threshold` is the open-set similarity threshold trained with it, if any."""

    kernel: NDArray[np.float32]
    backbone: str
    threshold: float | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def identity(cls, backbone: str, dim: int = EMBEDDING_DIM) -> "Head":
        """The untrained head for a 128-D backbone: embeddings equal the backbone's."""
        return cls(np.eye(dim, EMBEDDING_DIM, dtype=np.float32), backbone, info={"trained": False})

    def __call__(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """float32 [N, D] backbone features -> float32 [N, 128] unit vectors."""
        if features.shape[1] != self.kernel.shape[0]:
            raise ValueError(f"head expects {self.kernel.shape[0]}-D features, got {features.shape[1]}-D")
        return l2_normalise(features.astype(np.float32) @ self.kernel)


def head_path(backbone: str, weights_dir: Path | None = None) -> Path:
    """Where a backbone's head file lives: <weights_dir>/head_<backbone>.h5 (default model.paths.DEFAULT_WEIGHTS_DIR)."""
    return Path(weights_dir or DEFAULT_WEIGHTS_DIR) / f"head_{backbone}.h5"


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def load_head(backbone: str, dim: int, path: Path | None = None, weights_dir: Path | None = None) -> Head:
    """Load a head file: the given path, else weights/head_<backbone>.h5, else the one shipped in model/heads/,
    else the identity head for a 128-D backbone.

    :param path: the head file (default: `head_path(backbone, weights_dir)`).
    :raises HeadUnavailable: no file and the backbone is not 128-D.
    :raises ValueError: the file is unreadable or does not fit the backbone.
    """
    return read_head(backbone, dim, path, weights_dir)[0]


def read_head(backbone: str, dim: int, path: Path | None = None,
              weights_dir: Path | None = None) -> tuple[Head, bytes | None]:
    """load_head, and the head file's bytes as read (None for the identity head, which has no file).

    The bytes are what the app stores as its active head (webapp/head_store.py); `head_from_bytes` reads them back.
    """
    path = Path(path) if path else head_path(backbone, weights_dir)
    shipped = SHIPPED_HEADS_DIR / f"{backbone}.h5"
    if not path.exists() and shipped.exists():
        path = shipped
    if not path.exists():
        if dim == EMBEDDING_DIM:
            return Head.identity(backbone), None
        raise HeadUnavailable(
            f"No trained head for the {backbone} backbone at {path}. Train one with "
            f"`python -m model.train --backbone {backbone} --images DIR` (see notebooks/retrain_head.ipynb)."
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read head file {path}: {exc}") from None
    info = json.loads(sidecar_path(path).read_text()) if sidecar_path(path).exists() else {}
    return head_from_bytes(data, backbone, dim, info, name=f"head file {path}"), data


def head_from_bytes(data: bytes, backbone: str, dim: int, info: dict | None = None, *,
                    name: str = "the head") -> Head:
    """A head from the bytes of its .h5 file (h5py reads them in memory) and its sidecar's contents.

    :param name: what error messages call it. :raises ValueError: unreadable, or does not fit the backbone.
    """
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            kernel = np.asarray(f["kernel"], dtype=np.float32)
            stored_backbone = str(f.attrs.get("backbone", backbone))
    except (OSError, KeyError) as exc:
        raise ValueError(f"cannot read {name}: {exc}") from None
    if kernel.shape != (dim, EMBEDDING_DIM):
        raise ValueError(f"{name} has shape {kernel.shape}; the {backbone} backbone needs ({dim}, 128)")
    if stored_backbone != backbone:
        raise ValueError(f"{name} was trained for {stored_backbone}, not {backbone}")
    info = dict(info or {})
    return Head(kernel, backbone, threshold=info.get("threshold"), info=info)


def head_bytes(head: Head) -> bytes:
    """A head as the bytes of its .h5 file (for a head that has no file: the identity)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("kernel", data=head.kernel.astype(np.float32))
        f.attrs["backbone"] = head.backbone
    return buffer.getvalue()


def save_head(head: Head, path: Path) -> None:
    """Write the kernel and sidecar atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".h5.tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kernel", data=head.kernel.astype(np.float32))
            f.attrs["backbone"] = head.backbone
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    info = dict(head.info, backbone=head.backbone, threshold=head.threshold)
    tmp_json = sidecar_path(path).with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(info, indent=2))
    os.replace(tmp_json, sidecar_path(path))
