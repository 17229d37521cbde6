"""The JSON API: people, photos and one-shot recognition. Errors are {"error": message} with a 4xx status."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from model.images import ImageError, decode_image
from model.quality import POSES
from webapp import corrections, forget, import_jobs, people_moves, people_store
from webapp.db import get_db
from webapp.payloads import (
    correction_json, enrollment_json, face_json, faces_json, person_json, photo_json, read_box, read_uploads,
)
from webapp.security import parse_row_id

bp = Blueprint("api", __name__, url_prefix="/api")


def _service():
    return current_app.extensions["faces"]


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object, e.g. {"name": "Ada"}')
    return body


@bp.get("/status")
def status():
    service = _service()
    return jsonify(
        model=service.state,
        error=service.load_error,
        backbone=service.backbone,
        threshold=service.recognizer.threshold,
        people=len(service.names),
        photos=len(service.gallery),
        reembed=current_app.extensions["reembed"].progress,
    )


@bp.get("/people")
def list_people():
    return jsonify(people=[person_json(row) for row in people_store.list_people(get_db())])


@bp.post("/people")
def create_person():
    body = _json_body()
    if "photo_ids" in body:  # split: these stored photos become the new person's
        row = people_moves.split_photos(get_db(), _service(), body.get("name"), people_moves.row_ids(body["photo_ids"]))
    else:
        row = people_store.create_person(get_db(), _service(), body.get("name"))
    return jsonify(person_json(row)), 201


@bp.get("/people/<int:person_id>")
def get_person(person_id: int):
    db = get_db()
    person = person_json(people_store.get_person(db, person_id))
    person["photos"] = [photo_json(row) for row in people_store.person_photos(db, person_id)]
    person["corrections"] = [correction_json(row) for row in corrections.for_person(db, person_id)]
    return jsonify(person)


@bp.patch("/people/<int:person_id>")
def rename_person(person_id: int):
    row = people_store.rename_person(get_db(), _service(), person_id, _json_body().get("name"))
    return jsonify(person_json(row))


@bp.delete("/people/<int:person_id>")
def delete_person(person_id: int):
    forget.delete_person(get_db(), _service(), current_app.config["DATA_DIR"], person_id)
    return jsonify(deleted=person_id)


@bp.post("/people/<int:person_id>/merge")
def merge_person(person_id: int):
    """{"into": id}: this person's photos, corrections and history become `into`'s; answers `into`."""
    into = people_moves.row_id(_json_body().get("into"), "into")
    return jsonify(person_json(people_moves.merge_people(get_db(), _service(), person_id, into)))


@bp.post("/people/<int:person_id>/photos")
def add_photos(person_id: int):
    uploads = read_uploads()
    if not uploads:
        raise BadRequest("no files under the field 'photos'")
    person, outcomes = people_store.enroll(
        get_db(), _service(), current_app.config["DATA_DIR"], uploads, person_id=person_id
    )
    result = enrollment_json(person, outcomes)
    return jsonify(result), (200 if result["accepted"] else 422)  # 422: no photo was usable, nothing stored


@bp.delete("/photos/<int:photo_id>")
def delete_photo(photo_id: int):
    people_store.delete_photo(get_db(), _service(), current_app.config["DATA_DIR"], photo_id)
    return jsonify(deleted=photo_id)


@bp.patch("/photos/<int:photo_id>")
def move_photo(photo_id: int):
    """{"person_id": id}: the photo becomes that person's; answers the photo."""
    person_id = people_moves.row_id(_json_body().get("person_id"), "person_id")
    people_moves.move_photos(get_db(), _service(), [photo_id], person_id)
    return jsonify(photo_json(people_store.get_photo(get_db(), photo_id)))


@bp.post("/import")
def import_archive():
    """Multipart `archive` (a zip): folder-per-person photos, or an export to restore; answers the counts.

    With form field background=1 it answers 202 at once with a job; GET its `url` for progress and counts.
    """
    upload = request.files.get("archive")
    if upload is None:
        raise BadRequest("no file under the field 'archive'")
    jobs = import_jobs.for_app(current_app)
    if request.form.get("background") == "1":
        return jsonify(jobs.start(upload.stream).json()), 202
    result = jobs.run(get_db(), upload.stream)
    return jsonify(result.json()), import_jobs.answer_status(result)


@bp.get("/import/<job_id>")
def import_progress(job_id: str):
    return jsonify(import_jobs.for_app(current_app).get(job_id).json())


@bp.post("/recognize")
def recognize():
    """The faces in one uploaded image, in the same shape as the live `faces` event (frame_id 0)."""
    upload = request.files.get("image")
    if upload is None:
        raise BadRequest("no file under the field 'image'")
    started = time.perf_counter()
    try:
        frame = decode_image(upload.read())
    except ImageError as exc:
        raise BadRequest(f"unreadable file: {exc}") from None
    service = _service()
    faces = [face_json(seen, service.names) for seen in service.recognize(frame, live=False)]
    return jsonify(faces_json(0, frame.shape, faces, started))


@bp.post("/enroll/assess")
def assess_preview():
    """Guided enrollment: how good one preview frame (multipart `image`) is, and what to tell the user.

    An optional form field `want` (a pose) adds a hint to turn that way.
    """
    upload = request.files.get("image")
    if upload is None:
        raise BadRequest("no file under the field 'image'")
    want = request.form.get("want") or None
    if want is not None and want not in POSES:
        raise BadRequest(f"want must be one of {', '.join(POSES)}")
    try:
        frame = decode_image(upload.read())
    except ImageError as exc:
        raise BadRequest(f"unreadable file: {exc}") from None
    result = _service().assess(frame, want=want)
    return jsonify(
        faces=result.faces,
        pose=result.pose,
        score=round(result.score, 3),
        hints=result.hints,
        checks=result.checks,
        yaw=round(result.yaw, 3),
        pitch=round(result.pitch, 3),
        size=result.size,
        sharpness=round(result.sharpness, 3),
        brightness=round(result.brightness, 1),
    )


@bp.post("/corrections")
def add_correction():
    """"Not this person" from the live page: multipart image (the frame it sent), person_id, box (JSON).

    The face in the image that overlaps box most is embedded and stored as a hard negative for that person.
    """
    db = get_db()
    try:
        person_id = parse_row_id(request.form.get("person_id", ""))
    except ValueError:
        raise BadRequest("expected person_id (a person's id) and box (JSON [left, top, right, bottom])") from None
    box = read_box()
    people_store.get_person(db, person_id)
    upload = request.files.get("image")
    if upload is None:
        raise BadRequest("no file under the field 'image'")
    try:
        frame = decode_image(upload.read())
    except ImageError as exc:
        raise BadRequest(f"unreadable file: {exc}") from None
    service = _service()
    found = service.face_at(frame, box)
    if found is None:
        return jsonify(error="no face at that box"), 422
    thumb = people_store.thumbnail_jpeg(frame, [int(v) for v in found.face.box])
    correction_id = people_store.add_correction(db, person_id, found.features, found.embedding, service.backbone,
                                                thumb=thumb, service=service)
    return jsonify(correction_id=correction_id, person_id=person_id, box=[int(v) for v in found.face.box]), 201


@bp.delete("/corrections/<int:correction_id>")
def undo_correction(correction_id: int):
    """Undo a "not this person": the face may be given that person's name again from the next match."""
    row = corrections.undo(get_db(), _service(), correction_id)
    return jsonify(deleted=correction_id, person_id=row["person_id"])
