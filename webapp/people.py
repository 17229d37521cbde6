"""People pages: the list, one person's photos, rename, delete, merge, move and split photos, import, image files."""

from __future__ import annotations

import io

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for

from webapp import corrections, forget, import_jobs, people_moves, people_store
from webapp.db import DuplicateName, InvalidName, StoreError, get_db
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
    others = [other for other in people_store.list_people(db) if other["id"] != person_id]
    return render_template("people/person.html", person=person_json(row), others=others,
                           photos=people_store.person_photos(db, person_id),
                           corrections=corrections.for_person(db, person_id))


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
    forget.delete_person(db, _service(), current_app.config["DATA_DIR"], person_id)
    flash(f"{row['name']} was deleted, with {row['photo_count']} photo(s).", "ok")
    return redirect(url_for("people.people"))


@bp.route("/people/<int:person_id>/merge", methods=["GET", "POST"])
def merge(person_id: int):
    """GET ?into=<id>: the confirmation page; POST into=<id>: merge (see people_moves.merge_people)."""
    db = get_db()
    row = people_store.get_person(db, person_id)
    try:
        into = people_moves.row_id((request.args if request.method == "GET" else request.form).get("into", ""),
                                   "the person to merge into")
        target = people_store.get_person(db, into)
        if into == person_id:
            raise StoreError("a person cannot be merged into themselves")
        if request.method == "GET":
            return render_template("people/merge.html", person=person_json(row), target=person_json(target),
                                   counts=people_moves.merge_counts(db, person_id))
        merged = people_moves.merge_people(db, _service(), person_id, into)
    except StoreError as exc:
        flash(f"Not merged: {exc}.", "error")
        return redirect(url_for("people.person", person_id=person_id))
    flash(f"{row['name']} was merged into {merged['name']} ({row['photo_count']} photo(s) moved).", "ok")
    return redirect(url_for("people.person", person_id=into))


@bp.post("/people/<int:person_id>/photos/regroup")
def regroup(person_id: int):
    """The ticked photos (`photo` fields): action=move to person `into`, or action=new as a new person `name`."""
    db = get_db()
    row = people_store.get_person(db, person_id)
    try:
        if not request.form.getlist("photo"):
            raise StoreError("tick the photos first")
        ids = people_moves.row_ids(request.form.getlist("photo"), "photos")
        if not set(ids) <= {photo["id"] for photo in people_store.person_photos(db, person_id)}:
            raise StoreError(f"some of these photos are no longer {row['name']}'s; reload the page")
        if request.form.get("action") == "new":
            new = people_moves.split_photos(db, _service(), request.form.get("name", ""), ids)
            flash(f"{new['name']} was made from {len(ids)} photo(s) of {row['name']}.", "ok")
            return redirect(url_for("people.person", person_id=new["id"]))
        into = people_moves.row_id(request.form.get("into", ""), "the person to move to")
        if into == person_id:
            raise StoreError(f"these photos are already {row['name']}'s")
        people_moves.move_photos(db, _service(), ids, into)
        flash(f"{len(ids)} photo(s) moved to {people_store.get_person(db, into)['name']}.", "ok")
    except StoreError as exc:
        flash(f"Nothing moved: {exc}.", "error")
    return redirect(url_for("people.person", person_id=person_id))


@bp.route("/people/import", methods=["GET", "POST"])
def import_page():
    """The Import page. Its script posts to /api/import in the background; without it the form imports here."""
    if request.method == "GET":
        return render_template("people/import.html", result=None, error=None)
    upload = request.files.get("archive")
    if upload is None or not upload.filename:
        return render_template("people/import.html", result=None, error="Choose a zip file first."), 400
    try:
        result = import_jobs.for_app(current_app).run(get_db(), upload.stream)
    except StoreError as exc:
        return render_template("people/import.html", result=None, error=f"Nothing was imported: {exc}."), exc.status
    return render_template("people/import.html", result=result.json(), error=None), import_jobs.answer_status(result)


@bp.post("/photos/<int:photo_id>/delete")
def delete_photo(photo_id: int):
    photo = people_store.delete_photo(get_db(), _service(), current_app.config["DATA_DIR"], photo_id)
    flash("The photo was removed.", "ok")
    return redirect(url_for("people.person", person_id=photo["person_id"]))


@bp.post("/photos/<int:photo_id>/not-this-person")
def not_this_person(photo_id: int):
    photo = people_store.not_this_person(get_db(), _service(), current_app.config["DATA_DIR"], photo_id)
    flash("Noted: not this person. The photo was removed; faces like it are no longer given this name "
          "(undo under Corrections below).", "ok")
    return redirect(url_for("people.person", person_id=photo["person_id"]))


@bp.post("/corrections/<int:correction_id>/undo")
def undo_correction(correction_id: int):
    row = corrections.undo(get_db(), _service(), correction_id)
    flash("The correction was undone: that face can be given this name again.", "ok")
    return redirect(url_for("people.person", person_id=row["person_id"]))


@bp.get("/corrections/<int:correction_id>/thumb.jpg")
def correction_thumb(correction_id: int):
    return send_file(io.BytesIO(corrections.thumb(get_db(), correction_id)), mimetype="image/jpeg", max_age=3600)


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
