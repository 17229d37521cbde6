"""The Cameras page and the cameras' JSON API: add, list, change, test and remove cameras, and their newest
analysed frame with its faces. A camera's URL is only ever answered masked (webapp.cameras_store.mask_url).

API (errors are {"error": message} with a 4xx status):
  GET    /api/cameras                    {"cameras": [camera, ...]}
  POST   /api/cameras                    {"name", "url"[, "fps", "min_face_px", "enabled"]} -> 201 camera
  POST   /api/cameras/test               {"url"}: open it once -> {"ok", "error", "width", "height", "fps", "ms"}
  GET    /api/cameras/<id>               camera
  PATCH  /api/cameras/<id>               any of the fields above -> camera (null fps / min_face_px: the defaults)
  DELETE /api/cameras/<id>               {"deleted": id}
  POST   /api/cameras/<id>/test          the same test on the stored URL
  GET    /api/cameras/<id>/faces         the newest analysed frame's `faces` answer (the live event's shape)
                                         plus camera_id, status and frame_url (that frame's picture);
                                         with several processes, one reads the camera (status.reader) and
                                         the others answer with its frames (webapp.camera_relay)
  GET    /api/cameras/<id>/frame.jpg     the newest analysed frame as JPEG (?frame_id=N: that one, while kept)
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for
from werkzeug.exceptions import BadRequest, NotFound

from webapp import cameras_store
from webapp.camera_manager import EXTENSION, CameraManager
from webapp.camera_sources import probe
from webapp.cameras_store import Camera, file_dirs
from webapp.db import get_db
from webapp.security import parse_row_id

bp = Blueprint("cameras", __name__)

# A test from the page waits at most this long, whatever FACES_CAMERA_TIMEOUT_S says.
TEST_TIMEOUT_S = 10.0


def _manager() -> CameraManager:
    return current_app.extensions[EXTENSION]


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object, e.g. {"name": "Front door", "url": "rtsp://192.168.1.20/stream"}')
    return body


def _fields(body: dict, *, partial: bool) -> dict:
    config = current_app.config
    return cameras_store.checked_fields(body, max_fps=config["LIVE_MAX_FPS"],
                                        allowed_dirs=file_dirs(config["CAMERA_FILE_DIRS"]), partial=partial)


def camera_json(camera: Camera) -> dict:
    """A camera as the API and the page's script see it: never the URL as stored, only masked."""
    config = current_app.config
    return {
        "id": camera.id,
        "name": camera.name,
        "url": camera.masked_url,
        "enabled": camera.enabled,
        "fps": camera.fps or config["CAMERA_FPS"],
        "min_face_px": camera.min_face_px or config["MIN_RECOGNISE_PX"],
        "created_at": camera.created_at,
        "status": _manager().status(camera),
        "faces_url": url_for("cameras.faces", camera_id=camera.id),
        "frame_url": url_for("cameras.frame", camera_id=camera.id),
    }


# --- the page ------------------------------------------------------------------------------


@bp.get("/cameras")
def cameras_page():
    cameras = [camera_json(camera) for camera in cameras_store.list_cameras(get_db())]
    client = {"api-url": url_for("cameras.list_cameras"), "test-url": url_for("cameras.test_url"),
              "live-url": url_for("live.live"), "default-fps": current_app.config["CAMERA_FPS"]}
    return render_template("cameras/cameras.html", cameras=cameras, client=client,
                           files_allowed=bool(file_dirs(current_app.config["CAMERA_FILE_DIRS"])))


# --- the API -------------------------------------------------------------------------------


@bp.get("/api/cameras")
def list_cameras():
    return jsonify(cameras=[camera_json(camera) for camera in cameras_store.list_cameras(get_db())])


@bp.post("/api/cameras")
def add_camera():
    camera = cameras_store.add_camera(get_db(), _fields(_body(), partial=False))
    _manager().sync(camera)
    return jsonify(camera_json(camera)), 201


@bp.get("/api/cameras/<int:camera_id>")
def get_camera(camera_id: int):
    return jsonify(camera_json(cameras_store.get_camera(get_db(), camera_id)))


@bp.patch("/api/cameras/<int:camera_id>")
def change_camera(camera_id: int):
    camera = cameras_store.update_camera(get_db(), camera_id, _fields(_body(), partial=True))
    _manager().sync(camera)
    return jsonify(camera_json(camera))


@bp.delete("/api/cameras/<int:camera_id>")
def delete_camera(camera_id: int):
    cameras_store.delete_camera(get_db(), camera_id)
    _manager().remove(camera_id)
    return jsonify(deleted=camera_id)


@bp.post("/api/cameras/test")
def test_url():
    """Try an address before adding it: {"url": ...}."""
    url = _body().get("url")
    config = current_app.config
    source = cameras_store.parse_source(url, file_dirs(config["CAMERA_FILE_DIRS"]))
    return jsonify(probe(source, url.strip(), _test_timeout()).json())


@bp.post("/api/cameras/<int:camera_id>/test")
def test_camera(camera_id: int):
    camera = cameras_store.get_camera(get_db(), camera_id)
    source = cameras_store.parse_source(camera.url, file_dirs(current_app.config["CAMERA_FILE_DIRS"]))
    return jsonify(probe(source, camera.url, _test_timeout()).json())


def _test_timeout() -> float:
    return min(TEST_TIMEOUT_S, current_app.config["CAMERA_TIMEOUT_S"])


@bp.get("/api/cameras/<int:camera_id>/faces")
def faces(camera_id: int):
    camera = cameras_store.get_camera(get_db(), camera_id)
    latest = _manager().newest(camera_id)
    answer = dict(latest.answer) if latest is not None else {"frame_id": None, "width": None, "height": None,
                                                              "faces": [], "ms": None}
    answer.update(camera_id=camera_id, status=_manager().status(camera), frame_url=None)
    if latest is not None:
        answer["frame_url"] = url_for("cameras.frame", camera_id=camera_id, frame_id=latest.frame_id)
    return jsonify(answer)


@bp.get("/api/cameras/<int:camera_id>/frame.jpg")
def frame(camera_id: int):
    cameras_store.get_camera(get_db(), camera_id)
    frame_id = request.args.get("frame_id")
    try:
        wanted = None if frame_id is None else parse_row_id(frame_id)
    except ValueError:
        raise BadRequest("frame_id must be a frame number (0, 1, ...)") from None
    latest = _manager().newest(camera_id, wanted)
    if latest is None and _manager().reader(camera_id):  # several processes: another one reads it
        raise NotFound(f"this camera is read by {_manager().reader(camera_id)}, which has sent no frame yet")
    if latest is None:
        raise NotFound("this camera has no analysed frame yet (it is connecting, offline or disabled)")
    response = Response(latest.jpeg(), mimetype="image/jpeg")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Id"] = str(latest.frame_id)
    return response
