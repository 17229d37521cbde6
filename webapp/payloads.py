"""Reading uploads from a request, and the JSON shapes the pages' scripts and the API share."""

from __future__ import annotations

import json
import math
import time
import sqlite3
from collections.abc import Mapping

from flask import request, url_for
from werkzeug.exceptions import BadRequest

from model.recognizer import Recognition
from webapp.people_store import Upload
from webapp.service import Candidate

PHOTOS_FIELD = "photos"
# face_<i>: for the i-th file under `photos` (from 0), which of the faces listed
# by an earlier "several faces" answer to enroll (from 0, largest face first).
FACE_FIELD = "face_{}"
MAX_FACE_DIGITS = 4
# A box coordinate past this many pixels is refused (decoded frames are at most 1600 wide).
MAX_BOX_COORD = 1_000_000


def read_uploads(field: str = PHOTOS_FIELD) -> list[Upload]:
    """The files under `field`, with their face choices; an empty file input counts as no file.

    :raises BadRequest: a face_<i> field that is not a whole number from 0.
    """
    files = [f for f in request.files.getlist(field) if f.filename or f.content_length]
    uploads = []
    for i, storage in enumerate(files):
        raw = request.form.get(FACE_FIELD.format(i), "").strip()
        if raw and not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_FACE_DIGITS):
            raise BadRequest(f"{FACE_FIELD.format(i)} must be a face number (0, 1, ...), got {raw[:20]!r}")
        face_index = int(raw) if raw else None
        uploads.append(Upload(file=storage.filename or f"photo {i + 1}", data=storage.read(), face_index=face_index))
    return uploads


def read_box(field: str = "box") -> list[int]:
    """A face box [left, top, right, bottom] from a form field holding JSON.

    Four finite numbers within MAX_BOX_COORD, truncated to int. A bare
    json.loads let NaN, 1e999 (OverflowError in int()) and deep nesting
    (RecursionError) through as 500s.
    :raises BadRequest: anything else.
    """
    problem = BadRequest(f"{field} must be JSON [left, top, right, bottom]: four numbers of pixels")
    try:
        value = json.loads(request.form.get(field, ""), parse_constant=_not_a_number)
    except (ValueError, RecursionError):
        raise problem from None
    if not isinstance(value, list) or len(value) != 4:
        raise problem
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise problem
    if not all(math.isfinite(v) and abs(v) <= MAX_BOX_COORD for v in value):
        raise problem
    return [int(v) for v in value]


def _not_a_number(name: str):
    raise ValueError(f"{name} is not a number")


def face_json(recognition: Recognition, names: Mapping[int, str]) -> dict:
    """One entry of the `faces` answer (live event and /api/recognize): box, name, person_id, similarity, margin, reason."""
    match = recognition.match
    return {
        "box": [int(v) for v in recognition.face.box],
        "name": None if match.person_id is None else names.get(match.person_id),
        "person_id": match.person_id,
        "similarity": round(float(match.similarity), 4),
        "margin": round(float(match.margin), 4),
        "reason": match.reason,  # why it was not matched at all (e.g. too small to recognise), else null
    }


def faces_json(frame_id: int, frame_shape: tuple[int, ...], faces: list[dict], started: float) -> dict:
    """The whole `faces` answer for one frame; ms counts from `started` (time.perf_counter())."""
    height, width = frame_shape[:2]
    ms = (time.perf_counter() - started) * 1000
    return {"frame_id": frame_id, "width": width, "height": height, "faces": faces, "ms": round(ms, 1)}


def person_json(person: sqlite3.Row) -> dict:
    cover = person["cover_photo_id"]
    return {
        "id": person["id"],
        "name": person["name"],
        "photo_count": person["photo_count"],
        "created_at": person["created_at"],
        "url": url_for("people.person", person_id=person["id"]),
        "add_photos_url": url_for("enroll.add_photos", person_id=person["id"]),
        "thumb_url": url_for("people.thumb", photo_id=cover) if cover is not None else None,
    }


def photo_json(photo: sqlite3.Row) -> dict:
    return {
        "id": photo["id"],
        "person_id": photo["person_id"],
        "box": json.loads(photo["box"]),
        "width": photo["width"],
        "height": photo["height"],
        "backbone": photo["backbone"],
        "created_at": photo["created_at"],
        "thumb_url": url_for("people.thumb", photo_id=photo["id"]),
        "image_url": url_for("people.image", photo_id=photo["id"]),
    }


def correction_json(correction: sqlite3.Row) -> dict:
    """A "not this person" correction (see webapp.corrections.for_person): where it came from and its thumbnail."""
    source = "photo" if correction["photo_id"] is not None else "inbox" if correction["unknown_face_id"] else "live"
    return {
        "id": correction["id"],
        "source": source,
        "backbone": correction["backbone"],
        "created_at": correction["created_at"],
        "thumb_url": url_for("people.correction_thumb", correction_id=correction["id"])
        if correction["has_thumb"] else None,
    }


def outcome_json(candidate: Candidate, photo_id: int | None) -> dict:
    """One photo's result: accepted (photo_id, box) or rejected (reason; faces to pick from)."""
    size = candidate.size
    return {
        "file": candidate.file,
        "accepted": candidate.accepted,
        "photo_id": photo_id,
        "reason": candidate.reason,
        "box": candidate.box,
        "faces": candidate.faces,
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "thumb_url": url_for("people.thumb", photo_id=photo_id) if photo_id is not None else None,
    }


def enrollment_json(person: sqlite3.Row | None, outcomes: list[tuple[Candidate, int | None]]) -> dict:
    accepted = sum(candidate.accepted for candidate, _ in outcomes)
    return {
        "person": person_json(person) if person is not None else None,
        "accepted": accepted,
        "rejected": len(outcomes) - accepted,
        "photos": [outcome_json(candidate, photo_id) for candidate, photo_id in outcomes],
    }
