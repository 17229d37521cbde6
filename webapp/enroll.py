"""Add person: a name plus webcam shots and uploaded files; also adding photos to someone.

The page's script posts the form with fetch (Accept: application/json) and
shows each photo's outcome, letting the user pick a face where a photo held
several. Without JavaScript the form still posts its files and gets HTML back.
"""

from __future__ import annotations

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for

from webapp import people_store
from webapp.db import StoreError, get_db
from webapp.errors import wants_json
from webapp.payloads import enrollment_json, read_uploads

bp = Blueprint("enroll", __name__)

NO_PHOTOS = "please add at least one photo"


@bp.get("/people/new")
def add_person():
    return render_template("enroll/add.html", name="", result=None, error=None)


@bp.post("/people/new")
def create():
    name = request.form.get("name", "")
    try:
        name = people_store.clean_name(name)
        uploads = read_uploads()
        if not uploads:
            raise StoreError(NO_PHOTOS)
        person, outcomes = people_store.enroll(
            get_db(), current_app.extensions["faces"], current_app.config["DATA_DIR"], uploads, name=name
        )
    except StoreError as exc:
        if wants_json():
            raise
        return render_template("enroll/add.html", name=name, result=None, error=str(exc)), exc.status
    result = enrollment_json(person, outcomes)
    if person is None:
        result["error"] = f"No photo was accepted, so {name} was not added."
    if wants_json():
        return jsonify(result), (201 if person is not None else 422)
    if person is None:
        return render_template("enroll/add.html", name=name, result=result, error=result["error"]), 422
    _flash_outcomes(result)
    return redirect(url_for("people.person", person_id=person["id"]))


@bp.post("/people/<int:person_id>/photos")
def add_photos(person_id: int):
    uploads = read_uploads()
    if not uploads:
        raise StoreError(NO_PHOTOS)
    person, outcomes = people_store.enroll(
        get_db(), current_app.extensions["faces"], current_app.config["DATA_DIR"], uploads, person_id=person_id
    )
    result = enrollment_json(person, outcomes)
    if wants_json():
        return jsonify(result), (201 if result["accepted"] else 422)
    _flash_outcomes(result)
    return redirect(url_for("people.person", person_id=person_id))


def _flash_outcomes(result: dict) -> None:
    if result["accepted"]:
        flash(f"{result['accepted']} photo(s) added to {result['person']['name']}.", "ok")
    for photo in result["photos"]:
        if not photo["accepted"]:
            flash(f"{photo['file']}: {photo['reason']}", "error")
