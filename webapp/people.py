"""People pages: the list, one person's photos, rename, delete, remove a photo, and the image files."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for

from webapp import people_store
from webapp.db import DuplicateName, InvalidName, get_db
from webapp.payloads import person_json

bp = Blueprint("people", __name__)


def _service():
    return current_app.extensions["faces"]


def index():
    return redirect(url_for("people.people"))


@bp.get("/people")
def people():
    rows = people_store.list_people(get_db())
    return render_template("people/list.html", people=[person_json(row) for row in rows])


@bp.get("/people/<int:person_id>")
def person(person_id: int):
    db = get_db()
    row = people_store.get_person(db, person_id)
    return render_template("people/person.html", person=person_json(row), photos=people_store.person_photos(db, person_id))


@bp.post("/people/<int:person_id>/rename")
def rename(person_id: int):
    try:
        row = people_store.rename_person(get_db(), _service(), person_id, request.form.get("name", ""))
    except (InvalidName, DuplicateName) as exc:
        flash(f"Not renamed: {exc}.", "error")
    else:
        flash(f"Renamed to {row['name']}.", "ok")
    return redirect(url_for("people.person", person_id=person_id))


@bp.route("/people/<int:person_id>/delete", methods=["GET", "POST"])
def delete(person_id: int):
    db = get_db()
    row = people_store.get_person(db, person_id)
    if request.method == "GET":
        return render_template("people/delete.html", person=person_json(row))
    people_store.delete_person(db, _service(), current_app.config["DATA_DIR"], person_id)
    flash(f"{row['name']} was deleted, with {row['photo_count']} photo(s).", "ok")
    return redirect(url_for("people.people"))


@bp.post("/photos/<int:photo_id>/delete")
def delete_photo(photo_id: int):
    photo = people_store.delete_photo(get_db(), _service(), current_app.config["DATA_DIR"], photo_id)
    flash("The photo was removed.", "ok")
    return redirect(url_for("people.person", person_id=photo["person_id"]))


@bp.post("/photos/<int:photo_id>/not-this-person")
def not_this_person(photo_id: int):
    photo = people_store.not_this_person(get_db(), _service(), current_app.config["DATA_DIR"], photo_id)
    flash("Noted: not this person. The photo was removed and kept as a correction for training.", "ok")
    return redirect(url_for("people.person", person_id=photo["person_id"]))


@bp.get("/photos/<int:photo_id>/thumb.jpg")
def thumb(photo_id: int):
    return _send(photo_id, thumb=True)


@bp.get("/photos/<int:photo_id>.jpg")
def image(photo_id: int):
    return _send(photo_id, thumb=False)


def _send(photo_id: int, *, thumb: bool):
    photo = people_store.get_photo(get_db(), photo_id)
    path = people_store.photo_path(current_app.config["DATA_DIR"], photo, thumb=thumb)
    if not path.is_file():
        abort(404, "the image file is missing")
    return send_file(path, mimetype="image/jpeg", max_age=3600)
