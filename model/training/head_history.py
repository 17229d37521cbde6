"""Writing a trained head with its history kept, and rolling back to an earlier one.

Earlier versions of `<folder>/head_<backbone>.h5` are kept in `<folder>/history/`;
`python -m model.train --rollback` puts the newest back.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from model.head import Head, head_path, save_head, sidecar_path

HISTORY_DIR_NAME = "history"


def history_dir(path: Path) -> Path:
    """Where earlier versions of a head file are kept: <its folder>/history/."""
    return Path(path).parent / HISTORY_DIR_NAME


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _archive(path: Path, suffix: str = "") -> Path | None:
    """Copy a head file and its sidecar into history/ as <stem>-<UTC time><suffix>.h5."""
    path = Path(path)
    if not path.exists():
        return None
    target = history_dir(path) / f"{path.stem}-{_timestamp()}{suffix}.h5"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, target)
    if sidecar_path(path).exists():
        shutil.copy2(sidecar_path(path), sidecar_path(target))
    return target


def save_trained_head(
    head: Head, path: Path | None = None, *, weights_dir: Path | None = None
) -> tuple[Path, Path | None]:
    """Write a head atomically, first copying any earlier head there into history/.

    :param path: default `head_path(head.backbone, weights_dir)` (weights/head_<backbone>.h5).
    :return: (path written, archived copy of the earlier head or None).
    The old file stays in place until the new one replaces it in one rename, so a
    running app never sees a missing head.
    """
    path = Path(path) if path else head_path(head.backbone, weights_dir)
    archived = _archive(path)
    save_head(head, path)
    return path, archived


def head_history(path: Path) -> list[Path]:
    """Earlier heads for this file that can be rolled back to, newest first."""
    path = Path(path)
    found = history_dir(path).glob(f"{path.stem}-*.h5")
    return sorted((p for p in found if not p.stem.endswith(".rolled-back")), reverse=True)


def rollback_head(path: Path, to: Path | None = None) -> Path:
    """Put an earlier head back in place of `path` (default: the newest one in history/).

    The current head is kept in history/ as '<stem>-<time>.rolled-back.h5' (never picked
    by a later rollback), and the restored one leaves history/, so rolling back twice
    goes two versions back. The app picks it up with its reload action.
    :return: the history file that was restored.
    :raises FileNotFoundError: no earlier head to roll back to.
    """
    path = Path(path)
    candidates = head_history(path)
    chosen = Path(to) if to else (candidates[0] if candidates else None)
    if chosen is None or not chosen.exists():
        raise FileNotFoundError(f"no earlier head for {path} in {history_dir(path)}")
    _archive(path, suffix=".rolled-back")
    if sidecar_path(chosen).exists():
        os.replace(sidecar_path(chosen), sidecar_path(path))
    elif sidecar_path(path).exists():
        sidecar_path(path).unlink()
    os.replace(chosen, path)
    return chosen
