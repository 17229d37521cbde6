"""Where the project keeps files the model needs (no Flask here; the app passes its own data dir)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Users drop weight files (VGG-Face, trained heads) here; FACES_WEIGHTS_DIR moves it.
WEIGHTS_DIR = Path(os.environ.get("FACES_WEIGHTS_DIR", PROJECT_DIR / "weights"))
