"""Opening a camera's source with OpenCV, and saying in plain words why one cannot be opened.

OpenCV only answers "could not open"; `diagnose` then looks for the reason the cheap way: does the
host name resolve, does anything accept a connection at host:port, does an HTTP address answer
with a video or with a web page, does the file or device exist. Every message is scrubbed of the
URL's credentials (webapp.cameras_store.scrub). No Flask here: the camera threads and the views
both use it.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
from numpy.typing import NDArray

from webapp.cameras_store import Source, scrub

# Content types an HTTP camera may answer with; anything else (text/html, JSON, ...) is not a video.
VIDEO_TYPES = ("video/", "image/", "multipart/x-mixed-replace", "application/octet-stream", "application/vnd.apple")
# The longest wait of one diagnosing step (name lookup, connect, first answer), whatever the camera timeout.
DIAGNOSE_STEP_S = 5.0


@dataclass
class ProbeResult:
    """What opening a source once gave: ok with the picture's size and rate, or an error sentence."""

    ok: bool
    error: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    ms: float = 0.0

    def json(self) -> dict:
        return {"ok": self.ok, "error": self.error, "width": self.width, "height": self.height,
                "fps": round(self.fps, 2), "ms": round(self.ms, 1)}


def open_capture(source: Source, timeout_s: float) -> cv2.VideoCapture:
    """A VideoCapture on the source (check isOpened()). Network sources and files go through FFmpeg, with
    opening and each read bounded by timeout_s; devices through the platform's camera backend."""
    if source.kind == "device":
        return cv2.VideoCapture(source.target, cv2.CAP_ANY)
    ms = max(1, int(timeout_s * 1000))
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    return cv2.VideoCapture(str(source.target), cv2.CAP_FFMPEG, params)


def pass_jpeg_through(capture: cv2.VideoCapture) -> bool:
    """For a stream of JPEG images (MJPEG over HTTP or RTSP): have grab() keep each frame undecoded, so only the
    frames analysed are decoded (`picture`). A 25 fps 1280x720 MJPEG stream took 6.2% of a core decoded, 1.8%
    this way. :return: whether it is on (other codecs must decode every frame, each depends on the last)."""
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
    return fourcc == b"MJPG" and bool(capture.set(cv2.CAP_PROP_FORMAT, -1))


def picture(capture: cv2.VideoCapture, jpeg: bool) -> NDArray[np.uint8] | None:
    """The frame grabbed last, decoded (BGR uint8 [H, W, 3]); jpeg: it was kept as JPEG bytes (pass_jpeg_through).
    None when it cannot be had."""
    ok, frame = capture.retrieve()
    if ok and jpeg and frame is not None:
        frame = cv2.imdecode(frame, cv2.IMREAD_COLOR)
    return frame if ok and frame is not None and frame.size else None


def first_frame(capture: cv2.VideoCapture) -> NDArray[np.uint8] | None:
    """The capture's next frame (BGR uint8 [H, W, 3]), or None when none came."""
    ok, frame = capture.read()
    return frame if ok and frame is not None and frame.size else None


def probe(source: Source, url: str, timeout_s: float) -> ProbeResult:
    """Open the source once and read one frame, within about timeout_s (a hung backend is left behind).

    :param url: the camera's URL as stored, only to scrub its secrets from messages.
    """
    started = time.perf_counter()
    done: dict = {}

    def attempt() -> None:
        capture = open_capture(source, timeout_s)
        try:
            frame = first_frame(capture) if capture.isOpened() else None
            if frame is not None:
                done["result"] = ProbeResult(True, None, frame.shape[1], frame.shape[0],
                                             float(capture.get(cv2.CAP_PROP_FPS) or 0.0))
            else:
                done["opened"] = capture.isOpened()
        finally:
            capture.release()

    thread = threading.Thread(target=attempt, name="camera-probe", daemon=True)
    thread.start()
    thread.join(2 * timeout_s + 1)
    if thread.is_alive():
        result = ProbeResult(False, f"no answer within {timeout_s:g} s: the stream hangs")
    elif "result" in done:
        result = done["result"]
    elif done.get("opened"):
        result = ProbeResult(False, f"the stream opened, but no frame came within {timeout_s:g} s")
    else:
        result = ProbeResult(False, diagnose(source, url, timeout_s))
    result.ms = (time.perf_counter() - started) * 1000
    return result


def diagnose(source: Source, url: str, timeout_s: float) -> str:
    """Why OpenCV could not open the source, as a sentence without the URL's credentials."""
    step = min(timeout_s, DIAGNOSE_STEP_S)
    if source.kind == "device":
        reason = _device_problem(source.target)
    elif source.kind == "file":
        reason = _file_problem(str(source.target))
    else:
        reason = _network_problem(source, step)
    return scrub(reason, url)


def _device_problem(target: str | int) -> str:
    path = f"/dev/video{target}" if isinstance(target, int) else target
    if not os.path.exists(path):
        return f"no such camera device: {path} does not exist"
    if not os.access(path, os.R_OK):
        return f"{path} cannot be read by the server (permissions: add its user to the 'video' group)"
    return f"{path} could not be opened: another program may be using it, or it is not a video device"


def _file_problem(path: str) -> str:
    if not os.path.isfile(path):
        return f"no such video file: {path}"
    if not os.access(path, os.R_OK):
        return f"the server may not read {path}"
    return f"not a video: OpenCV could not read {os.path.basename(path)} as a video file"


def _network_problem(source: Source, step_s: float) -> str:
    where = f"{source.host}:{source.port}"
    problem = _unreachable(source.host, source.port, step_s)
    if problem:
        return f"unreachable: {problem}"
    if source.scheme in ("http", "https"):
        return _http_problem(str(source.target), source.scheme, step_s)
    if source.scheme == "rtsp":
        return _rtsp_problem(str(source.target), source.host, source.port, step_s)
    return f"{where} accepts connections, but no video stream could be opened there"


def _unreachable(host: str, port: int, step_s: float) -> str | None:
    """Why nothing can be reached at host:port (name lookup or TCP connect), or None when a connection opens."""
    looked_up: dict = {}

    def lookup() -> None:
        try:
            looked_up["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            looked_up["error"] = exc

    thread = threading.Thread(target=lookup, name="camera-lookup", daemon=True)
    thread.start()
    thread.join(step_s)  # getaddrinfo has no timeout of its own
    if thread.is_alive():
        return f"looking up {host} took more than {step_s:g} s"
    if "error" in looked_up:
        return f"the host name {host} does not resolve"
    family, kind, proto, _, address = looked_up["addresses"][0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(step_s)
            sock.connect(address)
    except ConnectionRefusedError:
        return f"nothing accepts connections at {host}:{port} (connection refused)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {step_s:g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    return None


def _http_problem(url: str, scheme: str, step_s: float) -> str:
    parts = urlsplit(url)
    headers = {"User-Agent": "faces-camera-check"}
    if parts.username is not None:
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
    if scheme == "https":  # cameras use self-signed certificates; FFmpeg does not check them either
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=step_s,
                                                 context=ssl._create_unverified_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=step_s)
    try:
        connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=headers)
        answer = connection.getresponse()
        status, kind = answer.status, (answer.getheader("Content-Type") or "").split(";")[0].strip().lower()
    except (OSError, http.client.HTTPException) as exc:
        return f"the HTTP server at {parts.hostname}:{parts.port or 80} did not answer properly ({type(exc).__name__})"
    finally:
        connection.close()
    if status in (401, 403):
        return f"the camera refused the user name or password (HTTP {status})"
    if status == 404:
        return "no such stream at that address (HTTP 404)"
    if status >= 400:
        return f"the camera's web server answered HTTP {status}"
    if kind and not kind.startswith(VIDEO_TYPES):
        return f"not a video: the address answers with {kind}, not a video stream"
    return f"the address answers ({kind or 'no content type'}), but OpenCV could not read video from it"


def _rtsp_problem(url: str, host: str, port: int, step_s: float) -> str:
    """Ask the RTSP server to DESCRIBE the stream (without credentials) and read its status line."""
    parts = urlsplit(url)
    bare = f"rtsp://{parts.hostname}:{port}{parts.path or '/'}"
    try:
        with socket.create_connection((host, port), timeout=step_s) as sock:
            sock.sendall(f"DESCRIBE {bare} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode())
            status_line = sock.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
    except OSError:
        return f"{host}:{port} accepts connections but did not answer an RTSP request within {step_s:g} s"
    if not status_line.startswith("RTSP/"):
        return f"not a video: {host}:{port} does not speak RTSP"
    code = status_line.split(" ")[1] if " " in status_line else "?"
    if code == "404":
        return "no such stream at that address (RTSP 404)"
    if code in ("401", "403"):
        return f"the camera wants a user name and password, or refused the ones given (RTSP {code})"
    return f"the RTSP server answers (RTSP {code}) but the stream could not be opened (an unsupported format?)"
