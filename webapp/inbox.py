"""The "Who is this?" inbox (faces the live page could not name, grouped) and the History page."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for

from webapp import inbox_store, people_store
from webapp.db import DuplicateName, InvalidName, NotFound, get_db
from webapp.security import MAX_IDS, parse_row_id

bp = Blueprint("inbox", __name__)


def _service():
    return current_app.extensions["faces"]


def _face_ids() -> list[int]:
    values = request.form.getlist("face")
    if len(values) > MAX_IDS:
        abort(400, f"too many faces at once ({len(values)}; at most {MAX_IDS}): choose fewer")
    try:
        ids = [parse_row_id(value) for value in values]
    except ValueError:
        abort(400, "face ids must be numbers")
    if not ids:
        abort(400, "no faces were chosen")
    return ids


@bp.get("/inbox")
def inbox():
    db = get_db()
    service = _service()
    threshold = service.recognizer.threshold - current_app.config["INBOX_CLUSTER_SLACK"]
    groups = inbox_store.clusters(db, threshold, service.backbone)
    return render_template("inbox/inbox.html", groups=groups, people=people_store.list_people(db),
                           retention_days=current_app.config["INBOX_RETENTION_DAYS"])


@bp.post("/inbox/name")
def name():
    return _enroll(lambda person, added: f"{person['name']} was added with {added} photo(s).",
                   name=request.form.get("name", ""))


@bp.post("/inbox/add")
def add():
    try:
        person_id = parse_row_id(request.form.get("person_id", ""))
    except ValueError:
        flash("Not added: please choose a person.", "error")
        return redirect(url_for("inbox.inbox"))
    return _enroll(lambda person, added: f"{added} photo(s) were added to {person['name']}.", person_id=person_id)


def _enroll(message, **target):
    """Enroll the chosen inbox faces as a new person (name=) or an existing one (person_id=), then flash."""
    try:
        person, added = inbox_store.enroll_unknown(get_db(), _service(), current_app.config["DATA_DIR"], _face_ids(),
                                                 **target)
    except (InvalidName, DuplicateName, NotFound) as exc:
        flash(f"Not added: {exc}.", "error")
    else:
        flash(message(person, added), "ok")
    return redirect(url_for("inbox.inbox"))


@bp.post("/inbox/dismiss")
def dismiss():
    removed = inbox_store.dismiss(get_db(), current_app.config["DATA_DIR"], _face_ids())
    flash(f"{removed} face(s) were deleted.", "ok")
    return redirect(url_for("inbox.inbox"))


@bp.get("/inbox/faces/<int:face_id>.jpg")
def face(face_id: int):
    row = inbox_store.get_unknown(get_db(), face_id)
    path = inbox_store.inbox_path(current_app.config["DATA_DIR"], row)
    if not path.is_file():
        abort(404, "the image file is missing")
    return send_file(path, mimetype="image/jpeg", max_age=3600)


@bp.get("/history")
def history():
    db = get_db()
    args = request.args
    person = args.get("person", "")
    filters: dict = {}
    if person == "unknown":
        filters["unknown"] = True
    elif person:
        try:
            filters["person_id"] = parse_row_id(person)
        except ValueError:
            abort(400, "person must be a number or 'unknown'")
    try:
        if args.get("from"):
            filters["since"] = inbox_store.day_bounds(args["from"], end=False)
        if args.get("to"):
            filters["until"] = inbox_store.day_bounds(args["to"], end=True)
    except ValueError:
        abort(400, "dates must be YYYY-MM-DD")
    rows = inbox_store.history(db, **filters)
    return render_template("inbox/history.html", rows=rows, people=people_store.list_people(db), person=person,
                           day_from=args.get("from", ""), day_to=args.get("to", ""),
                           retention_days=current_app.config["HISTORY_RETENTION_DAYS"], limit=inbox_store.HISTORY_LIMIT)
