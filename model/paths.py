"""Default places for the files the model needs (no Flask, no environment: callers pass their own)."""

from __future__ import annotations

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Weight files (VGG-Face, trained heads) when the caller names no folder; the app and
# the offline commands pass their WEIGHTS_DIR setting (FACES_WEIGHTS_DIR) instead.
DEFAULT_WEIGHTS_DIR = PROJECT_DIR / "weights"
