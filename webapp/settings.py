"""Every setting of the web app in one place: a default, and the env var that overrides it.

`from_env()` turns the environment into Flask config keys; `create_app` starts
from these and lets its `config` argument override them (tests do). server.py
takes --host/--port/--data-dir on top.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    key: str  # Flask config key
    env: str | None  # env var that overrides the default (None: config only)
    default: Any
    parse: Callable[[str], Any]
    help: str


def _optional_float(text: str) -> float | None:
    return None if text.strip() == "" else float(text)


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(text)


SETTINGS: tuple[Setting, ...] = (
    Setting("HOST", "FACES_HOST", "127.0.0.1", str, "address server.py listens on"),
    Setting("PORT", "FACES_PORT", 5000, int, "port server.py listens on"),
    Setting(
        "DATA_DIR", "FACES_DATA_DIR", str(PROJECT_DIR / "data"), str,
        "database, photos, thumbnails and the secret key; created when missing",
    ),
    Setting("DATABASE", "FACES_DATABASE", None, str, "SQLite file (default: <data dir>/faces.db)"),
    Setting(
        "DATABASE_URL", "FACES_DATABASE_URL", None, str,
        "PostgreSQL as the store instead of SQLite: postgresql://user:password@host:5432/dbname (photo files stay "
        "in the data dir)",
    ),
    Setting("BACKBONE", "FACES_BACKBONE", "dlib-sface", str,
            "feature network: dlib-resnet, sface, dlib-sface (both, fused) or vgg16-face"),
    Setting("DETECTOR", "FACES_DETECTOR", "yunet", str,
            "face detector for live frames, photos and the evaluation tool: yunet, hog or mtcnn (loads TensorFlow)"),
    Setting(
        "WEIGHTS_DIR", "FACES_WEIGHTS_DIR", str(PROJECT_DIR / "weights"), str,
        "weight files: VGG-Face, trained heads (see weights/README.md)",
    ),
    Setting(
        "THRESHOLD", "FACES_THRESHOLD", None, _optional_float,
        "cosine similarity needed to name a face (default: the head's own, else model.recognizer.DEFAULT_THRESHOLD)",
    ),
    Setting(
        "MIN_RECOGNISE_PX", "FACES_MIN_RECOGNISE_PX", 30, int,
        "faces smaller than this (box side, pixels) are boxed as 'too small to recognise', never named",
    ),
    Setting(
        "CORRECTION_LEVEL", "FACES_CORRECTION_LEVEL", None, _optional_float,
        "a face at least this similar to a face marked \"not this person\" (and more like it than like the "
        "person's own photos) is not given that name (default: the person's own threshold)",
    ),
    Setting(
        "ANN_MIN_PHOTOS", "FACES_ANN_MIN_PHOTOS", 200000, int,
        "galleries with more photos are searched through an approximate index (hnswlib) and the candidates "
        "scored exactly; 0: always a full scan",
    ),
    Setting(
        "MIN_FACE_PX", "FACES_MIN_FACE_PX", 60, int,
        "enrollment photos: smallest face side accepted, in pixels",
    ),
    Setting(
        "GUIDED_POSES", "FACES_GUIDED_POSES", "front,left,right,up,down", str,
        "add-person guided capture: the head poses it takes a shot of (front, left, right, up, down)",
    ),
    Setting("MAX_UPLOAD_MB", "FACES_MAX_UPLOAD_MB", 50, float, "largest HTTP request (all photos of one upload)"),
    Setting(
        "FRAME_WIDTH", "FACES_FRAME_WIDTH", 640, int,
        "live page: width the browser scales frames to before sending",
    ),
    Setting(
        "FRAME_JPEG_QUALITY", "FACES_FRAME_JPEG_QUALITY", 0.8, float,
        "live page: JPEG quality of frames (0..1)",
    ),
    Setting("MAX_FRAME_MB", "FACES_MAX_FRAME_MB", 2.0, float, "live: larger frames get an error event"),
    Setting(
        "LIVE_MAX_SIDE", "FACES_LIVE_MAX_SIDE", 640, int,
        "live: frames are scaled down to this side for detection",
    ),
    Setting(
        "LIVE_DETECT_EVERY_S", "FACES_LIVE_DETECT_EVERY_S", 0.2, float,
        "live: while the picture changes away from the tracked people, the face detector runs at most this "
        "often (seconds of stream time, not frames); faces are followed in between",
    ),
    Setting(
        "LIVE_DETECT_STILL_S", "FACES_LIVE_DETECT_STILL_S", 1.0, float,
        "live: the face detector runs at least this often (seconds), even on a still picture",
    ),
    Setting(
        "LIVE_REEMBED_S", "FACES_LIVE_REEMBED_S", 2.0, float,
        "live: a tracked face is embedded again after this many seconds, and at once when it stops looking "
        "like itself; its name is decided on all of its embeddings",
    ),
    Setting(
        "LIVE_SEARCH_EVERY_S", "FACES_LIVE_SEARCH_EVERY_S", 3.0, float,
        "live: this often (and on a stream's first frame) faces are looked for at twice the size, which finds "
        "small and tilted faces, and with YuNet also turned 45 degrees each way, a turn on each of the next two "
        "frames (about 7x one detection's time in all); a worker with more than 2 streams spaces each one's "
        "looks out in proportion; 0: never",
    ),
    Setting(
        "LIVE_FULL_FACE_PX", "FACES_LIVE_FULL_FACE_PX", 40.0, float,
        "live: a face this many pixels or more on its shorter side counts fully in its track's evidence; a "
        "smaller one (side / this)^2, so a small face needs more frames before it is named",
    ),
    Setting(
        "LIVE_WORKERS", "FACES_LIVE_WORKERS", 0, int,
        "live: recognition workers (0: one per CPU core); each stream stays on one, streams are spread evenly",
    ),
    Setting(
        "LIVE_POOL", "FACES_LIVE_POOL", "processes", str,
        "live: what the workers are: `processes` (each its own model copy and gallery; every core recognises at "
        "once; on 2 cores the server takes 1.2 GB instead of 0.7) or `threads` (dlib holds the GIL: they take turns)",
    ),
    Setting("LIVE_MAX_FPS", "FACES_LIVE_MAX_FPS", 30.0, float, "live: the most frames a second a stream is given"),
    Setting(
        "LIVE_MIN_FPS", "FACES_LIVE_MIN_FPS", 5.0, float,
        "live: when the server is full, newer streams are slowed down to this rate (shown as \"server busy\") "
        "before older ones give anything up; a stream that cannot get it waits (\"server full\")",
    ),
    Setting(
        "LIVE_CAPACITY_FPS", "FACES_LIVE_CAPACITY_FPS", 0.0, float,
        "live: frames a second all streams together are given (0: measured from the time frames take)",
    ),
    Setting(
        "LIVE_UPSAMPLE", "FACES_LIVE_UPSAMPLE", 0, int,
        "live: detector upsampling (1 finds smaller faces, about 4x slower)",
    ),
    Setting(
        "RECOGNIZE_UPSAMPLE", "FACES_RECOGNIZE_UPSAMPLE", 1, int,
        "POST /api/recognize: detector upsampling",
    ),
    Setting(
        "LIVE_UNKNOWN_FRAMES", "FACES_LIVE_UNKNOWN_FRAMES", 5, int,
        "live: a track unknown for this many processed frames puts one face crop in the inbox",
    ),
    Setting(
        "INBOX_RETENTION_DAYS", "FACES_INBOX_RETENTION_DAYS", 7.0, float,
        "inbox: unknown faces older than this many days are deleted (rows and files)",
    ),
    Setting(
        "HISTORY_RETENTION_DAYS", "FACES_HISTORY_RETENTION_DAYS", 30.0, float,
        "history: sightings last seen longer ago than this many days are deleted",
    ),
    Setting(
        "INBOX_CLUSTER_SLACK", "FACES_INBOX_CLUSTER_SLACK", 0.02, float,
        "inbox: faces are grouped while their average similarity is at least the threshold minus this",
    ),
    Setting(
        "FRAME_TIMEOUT_MS", "FACES_FRAME_TIMEOUT_MS", 3000, int,
        "live page: send a new frame when no answer came by then",
    ),
    Setting(
        "CAMERA_FPS", "FACES_CAMERA_FPS", 5.0, float,
        "cameras: frames a second each camera is analysed at, unless the camera sets its own",
    ),
    Setting(
        "CAMERA_TIMEOUT_S", "FACES_CAMERA_TIMEOUT_S", 10.0, float,
        "cameras: opening a stream, or waiting for its next frame, longer than this counts as a drop",
    ),
    Setting(
        "CAMERA_RETRY_MIN_S", "FACES_CAMERA_RETRY_MIN_S", 1.0, float,
        "cameras: a dropped camera is tried again after this many seconds, doubling after each failed try",
    ),
    Setting(
        "CAMERA_RETRY_MAX_S", "FACES_CAMERA_RETRY_MAX_S", 30.0, float,
        "cameras: the longest wait between two tries to reconnect a camera",
    ),
    Setting(
        "CAMERA_FILE_DIRS", "FACES_CAMERA_FILE_DIRS", None, str,
        "cameras: folders (separated by ':') whose video files may be added as cameras; empty: none",
    ),
    Setting(
        "SECRET_KEY", "FACES_SECRET_KEY", None, str,
        "signs the session cookie (default: generated once, kept in the data dir; with PostgreSQL in the database)",
    ),
    Setting(
        "ADMIN_PASSWORD", "FACES_ADMIN_PASSWORD", None, str,
        "sets the admin password at start (at least 8 characters); without it the browser asks on first start",
    ),
    Setting(
        "BEHIND_TLS", "FACES_BEHIND_TLS", False, _flag,
        "1 when an HTTPS proxy is in front: the session cookie gets Secure, and no plain-HTTP warning",
    ),
    Setting(
        "TRUSTED_PROXIES", "FACES_TRUSTED_PROXIES", 0, int,
        "reverse proxies in front whose X-Forwarded-For/-Proto are believed (0: none): the login limit and the "
        "set-up page then see each client's own address",
    ),
    Setting(
        "LOGIN_LIMIT", "FACES_LOGIN_LIMIT", "5 per minute", str,
        "failed logins allowed per client address before 429 (Flask-Limiter syntax)",
    ),
    Setting(
        "SESSION_HOURS", "FACES_SESSION_HOURS", 12, float,
        "a login lasts this many hours, then the browser or script logs in again",
    ),
    Setting(
        "MQTT_URL", "FACES_MQTT_URL", None, str,
        "MQTT broker for track events and Home Assistant, mqtt://[user:password@]host:port (unset: no MQTT)",
    ),
    Setting("MQTT_PREFIX", "FACES_MQTT_PREFIX", "faces", str, "MQTT: topics start with this (events on PREFIX/events)"),
    Setting(
        "MQTT_DISCOVERY_PREFIX", "FACES_MQTT_DISCOVERY_PREFIX", "homeassistant", str,
        "MQTT: Home Assistant's discovery prefix (sensor configs are published under it)",
    ),
    Setting(
        "MQTT_PRESENT_S", "FACES_MQTT_PRESENT_S", 300.0, float,
        "MQTT: a person's 'present' sensor turns off this many seconds after their last track event",
    ),
    Setting(
        "WEBHOOK_URLS", "FACES_WEBHOOK_URLS", None, str,
        "webhooks: URLs (comma-separated) each track event is POSTed to as JSON, signed (X-Faces-Signature)",
    ),
    Setting(
        "WEBHOOK_SECRET", "FACES_WEBHOOK_SECRET", None, str,
        "webhooks: the HMAC-SHA256 signing key (default: generated once, kept in the data dir as webhook_secret; "
        "with PostgreSQL in the database)",
    ),
    Setting("WEBHOOK_TIMEOUT_S", "FACES_WEBHOOK_TIMEOUT_S", 5.0, float, "webhooks: seconds to wait for an answer"),
    Setting(
        "WEBHOOK_RETRIES", "FACES_WEBHOOK_RETRIES", 3, int,
        "webhooks: tries after the first on a timeout, connection error or 5xx, waiting 1 s, 2 s, 4 s...",
    ),
    Setting(
        "PROCESSES", "FACES_PROCESSES", 1, int,
        "app processes sharing this data folder (scripts/cluster.sh sets it); above 1 (or with FACES_REDIS_URL) "
        "each one follows the others' changes to people, photos, corrections and strictness",
    ),
    Setting(
        "CHANGES_POLL_S", "FACES_CHANGES_POLL_S", 0.5, float,
        "several processes: how often (seconds) each one reads the `changes` table and brings its gallery up to date",
    ),
    Setting(
        "REDIS_URL", "FACES_REDIS_URL", None, str,
        "several processes: Redis, redis://[:password@]host:port/db, for Socket.IO's message queue and the login "
        "limit's counts (unset: none, each process counts on its own)",
    ),
    Setting(
        "CACHE_DIR", "FACES_CACHE_DIR", str(Path.home() / ".cache" / "faces-app"), str,
        "model.train / model.evaluate: where backbone features are cached between runs",
    ),
)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Config keys with their defaults, overridden by the env vars that are set.

    :raises ValueError: an env var that does not parse, naming the variable.
    """
    environ = os.environ if environ is None else environ
    config = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env) if setting.env else None
        if raw is None:
            config[setting.key] = setting.default
            continue
        try:
            config[setting.key] = setting.parse(raw)
        except ValueError:
            raise ValueError(f"{setting.env}={raw!r} is not valid ({setting.help})") from None
    return config


# Defaults that depend on where the project or the home folder is, as the README writes them.
README_DEFAULTS = {
    "DATA_DIR": "`data/` in the project",
    "WEIGHTS_DIR": "`weights/` in the project",
    "CACHE_DIR": "`~/.cache/faces-app`",
}


def markdown_table() -> str:
    """The settings as a README table (env var, default, meaning)."""
    rows = ["| env var | default | what it sets |", "|---|---|---|"]
    for setting in SETTINGS:
        if setting.env:
            default = "-" if setting.default is None else f"`{setting.default}`"
            default = README_DEFAULTS.get(setting.key, default)
            rows.append(f"| `{setting.env}` | {default} | {setting.help} |")
    return "\n".join(rows)
