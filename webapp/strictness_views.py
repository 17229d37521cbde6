"""The Strictness page and its API: what a stricter or looser rule does on this gallery, and applying one.

GET /strictness, GET /api/strictness: the outlook per offset and each person's enrollment.
POST /strictness (form field `strictness`), PUT /api/strictness {"strictness": x}: store and apply at once.
"""

from __future__ import annotations

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for

from webapp import strictness
from webapp.db import get_db

bp = Blueprint("strictness", __name__)


def _report() -> dict:
    service = current_app.extensions["faces"]
    service.wait_ready()
    return strictness.report(get_db(), service.backbone, service.recognizer)


def _apply(raw: object) -> float:
    service = current_app.extensions["faces"]
    if service.recognizer.threshold_is_fixed:
        raise strictness.StrictnessError("FACES_THRESHOLD fixes the threshold: unset it to choose a strictness here")
    value = strictness.check(raw)
    strictness.store(get_db(), value)
    service.set_strictness(value)
    return value


@bp.get("/strictness")
def page():
    return render_template("strictness/strictness.html", report=_report(), choices=strictness.CHOICES)


@bp.post("/strictness")
def apply_page():
    try:
        value = _apply(request.form.get("strictness"))
    except strictness.StrictnessError as exc:
        flash(f"Strictness not changed: {exc}", "error")
    else:
        flash(f"Strictness is now {value:+.2f}; it applies from the next face on.", "ok")
    return redirect(url_for("strictness.page"))


@bp.get("/api/strictness")
def report_api():
    return jsonify(_report())


@bp.put("/api/strictness")
def apply_api():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "strictness" not in body:
        return jsonify(error='send {"strictness": <number>}'), 400
    try:
        value = _apply(body["strictness"])
    except strictness.StrictnessError as exc:
        return jsonify(error=str(exc)), 400
    return jsonify(strictness=value)
