"""The `cameras` table, the checks on what a user may add, and hiding the credentials a camera URL holds.

A camera is a name and a source: an rtsp://, rtsps://, http:// or https:// URL, a video file under
one of FACES_CAMERA_FILE_DIRS, or a local device ("0", "/dev/video0"). A URL may carry a user name
and password (rtsp://user:pass@host/...) or a token in its query; `mask_url` and `scrub` turn those
into *** for every page, API answer and log line. The URL as stored is only ever handed to OpenCV.
"""

from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from webapp.db import DuplicateName, NotFound, StoreError, transaction

MAX_NAME_LENGTH = 60
MAX_URL_LENGTH = 2000
MASK = "***"
# Network schemes and the port each one uses when the URL names none.
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
# Query parameters that are taken to be secrets (some cameras put the login there: ?user=...&password=...).
SECRET_PARAMS = frozenset({
    "user", "username", "usr", "login", "password", "pass", "passwd", "pwd", "token", "access_token", "auth",
    "key", "apikey", "api_key", "secret", "sig", "signature", "credentials",
})
DEVICE_PATH = re.compile(r"/dev/video[0-9]{1,3}")
DEVICE_NUMBER = re.compile(r"[0-9]{1,3}")
MIN_FACE_PX_RANGE = (8, 4000)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CameraRefused(StoreError):
    """A camera field that cannot be accepted; the message says which and why."""

    status = 400


@dataclass(frozen=True)
class Source:
    """Where a camera's frames come from, as OpenCV opens it.

    kind: "network" (rtsp/rtsps/http/https), "file" or "device"; target: the URL or path string, or
    the device number (int). host/port: where a network source listens (for diagnosing a failure).
    """

    kind: str
    target: str | int
    scheme: str = ""
    host: str = ""
    port: int = 0


@dataclass(frozen=True)
class Camera:
    """One row of `cameras`. fps / min_face_px None: the app's defaults."""

    id: int
    name: str
    url: str
    enabled: bool
    fps: float | None
    min_face_px: int | None
    created_at: str

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)


# --- hiding credentials ------------------------------------------------------------------


def mask_url(url: str) -> str:
    """The URL with its user name and password, and secret-looking query values, as ***.

    "rtsp://admin:pw@10.0.0.5/live?token=x" -> "rtsp://***@10.0.0.5/live?token=***". A path or device
    comes back as it is; anything that does not parse as a URL comes back as *** whole.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
    except ValueError:
        return MASK
    netloc = f"{MASK}@{host}" if "@" in parts.netloc else host
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def secrets_of(url: str) -> list[str]:
    """The pieces of url that must never be shown: its user info, password and secret query values (each also
    percent-decoded), longest first. (A user name alone is left: "admin" or "cam" would mangle ordinary
    words, and it only ever appears inside the URL or the user info.)"""
    found = set()
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found.update({userinfo, userinfo.partition(":")[2]})
    found.update(v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_PARAMS)
    found |= {unquote(piece) for piece in found}
    return sorted((piece for piece in found if len(piece) >= 3), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """text (an error message, a log line) with the URL masked and every secret piece of it replaced by ***."""
    text = text.replace(url, mask_url(url))
    for piece in secrets_of(url):
        text = text.replace(piece, MASK)
    return text


# --- what may be added -------------------------------------------------------------------


def file_dirs(setting: str | None) -> list[Path]:
    """FACES_CAMERA_FILE_DIRS ("dir1:dir2", or None) as resolved folders."""
    return [Path(part).expanduser().resolve() for part in (setting or "").split(":") if part.strip()]


def parse_source(url: object, allowed_dirs: list[Path]) -> Source:
    """Where a camera URL points, or why it is refused.

    :param allowed_dirs: folders whose files may be cameras (see file_dirs); none: files are refused.
    :raises CameraRefused: not text, too long, an unsupported scheme, no host, a file outside the folders.
    """
    if not isinstance(url, str) or not url.strip():
        raise CameraRefused('url is missing: give the camera\'s address, e.g. "rtsp://192.168.1.20:554/stream"')
    url = url.strip()
    if len(url) > MAX_URL_LENGTH or CONTROL.search(url):
        raise CameraRefused(f"url must be one line of at most {MAX_URL_LENGTH} characters")
    if DEVICE_NUMBER.fullmatch(url):
        return Source("device", int(url))
    if DEVICE_PATH.fullmatch(url):
        return Source("device", url)
    if url.startswith("file://"):
        return _file_source(unquote(urlsplit(url).path), allowed_dirs)
    if url.startswith("/"):
        return _file_source(url, allowed_dirs)
    return _network_source(url)


def _network_source(url: str) -> Source:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in DEFAULT_PORTS:
        shown = scheme or mask_url(url)[:40]
        raise CameraRefused(
            f"unsupported camera address ({shown!r}): use rtsp://, rtsps://, http:// or https://, a video file's "
            "path, or a device number such as 0"
        )
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise CameraRefused(f"url is not a valid address: {mask_url(url)}") from None
    if not host:
        raise CameraRefused(f"url names no host: {mask_url(url)}")
    return Source("network", url, scheme, host, port or DEFAULT_PORTS[scheme])


def _file_source(path: str, allowed_dirs: list[Path]) -> Source:
    if not allowed_dirs:
        raise CameraRefused("video files cannot be cameras here: set FACES_CAMERA_FILE_DIRS to the folders allowed")
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(folder) for folder in allowed_dirs):
        raise CameraRefused(f"{path} is outside the folders allowed for video files (FACES_CAMERA_FILE_DIRS)")
    if not resolved.is_file():
        raise CameraRefused(f"no such video file: {path}")
    return Source("file", str(resolved))


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise CameraRefused('name is missing: give the camera a name, e.g. "Front door"')
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH or CONTROL.search(name):
        raise CameraRefused(f"name must be one line of at most {MAX_NAME_LENGTH} characters")
    return name


def check_fps(fps: object, max_fps: float) -> float | None:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 0 < fps <= max_fps:
        raise CameraRefused(f"fps must be a number of frames a second above 0 and at most {max_fps:g}, or null")
    return float(fps)


def check_min_face(px: object) -> int | None:
    low, high = MIN_FACE_PX_RANGE
    if px is None:
        return None
    if isinstance(px, bool) or not isinstance(px, int) or not low <= px <= high:
        raise CameraRefused(f"min_face_px must be a whole number of pixels from {low} to {high}, or null")
    return px


def check_enabled(enabled: object) -> bool:
    if not isinstance(enabled, bool):
        raise CameraRefused("enabled must be true or false")
    return enabled


# --- the table ---------------------------------------------------------------------------

FIELDS = ("name", "url", "enabled", "fps", "min_face_px")


def _camera(row: sqlite3.Row) -> Camera:
    return Camera(row["id"], row["name"], row["url"], bool(row["enabled"]), row["fps"], row["min_face_px"],
                  row["created_at"])


def list_cameras(db: sqlite3.Connection) -> list[Camera]:
    return [_camera(row) for row in db.execute("SELECT * FROM cameras ORDER BY name")]


def get_camera(db: sqlite3.Connection, camera_id: int) -> Camera:
    row = db.execute("SELECT * FROM cameras WHERE id = ?", (camera_id,)).fetchone()
    if row is None:
        raise NotFound(f"there is no camera {camera_id}")
    return _camera(row)


def checked_fields(body: dict, *, max_fps: float, allowed_dirs: list[Path], partial: bool) -> dict:
    """The camera fields of a request body, each checked (partial: only those present; else name and url needed).

    :raises CameraRefused: a bad or unknown field.
    """
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise CameraRefused(f"unknown field(s): {', '.join(map(str, unknown))[:100]}; a camera has {', '.join(FIELDS)}")
    checks = {
        "name": check_name,
        "url": lambda url: (parse_source(url, allowed_dirs), url.strip())[1],
        "enabled": check_enabled,
        "fps": lambda fps: check_fps(fps, max_fps),
        "min_face_px": check_min_face,
    }
    wanted = [key for key in FIELDS if key in body or (not partial and key in ("name", "url"))]
    return {key: checks[key](body.get(key)) for key in wanted}


def add_camera(db: sqlite3.Connection, fields: dict) -> Camera:
    """A new camera from checked_fields(..., partial=False). :raises DuplicateName: the name is taken."""
    fields = {"enabled": True, **fields}
    columns = ", ".join(fields)
    try:
        with transaction(db):
            camera_id = db.execute(
                f"INSERT INTO cameras ({columns}) VALUES ({', '.join('?' * len(fields))}) RETURNING id",
                tuple(fields.values())).fetchone()[0]
    except sqlite3.IntegrityError:
        raise DuplicateName(f"there is already a camera called {fields['name']!r}") from None
    return get_camera(db, camera_id)


def update_camera(db: sqlite3.Connection, camera_id: int, fields: dict) -> Camera:
    """Change the given (checked) fields of a camera. :raises NotFound, DuplicateName:"""
    get_camera(db, camera_id)
    if fields:
        assignments = ", ".join(f"{key} = ?" for key in fields)
        try:
            with transaction(db):
                db.execute(f"UPDATE cameras SET {assignments} WHERE id = ?", (*fields.values(), camera_id))
        except sqlite3.IntegrityError:
            raise DuplicateName(f"there is already a camera called {fields.get('name')!r}") from None
    return get_camera(db, camera_id)


def delete_camera(db: sqlite3.Connection, camera_id: int) -> None:
    with transaction(db):
        if db.execute("DELETE FROM cameras WHERE id = ?", (camera_id,)).rowcount == 0:
            raise NotFound(f"there is no camera {camera_id}")
