"""Reload the embedding head without a restart, after retraining it (notebooks/ or `python -m model.train`).

The new head file's kernel is applied to every photo's stored backbone
features, so no photo is read again; the threshold comes from its sidecar.
"""

from __future__ import annotations

from flask import Blueprint, current_app, flash, jsonify, redirect, url_for

from model.head import HeadUnavailable
from webapp import people_store
from webapp.db import get_db

bp = Blueprint("head", __name__)


def _reload() -> dict:
    return people_store.reload_head(get_db(), current_app.extensions["faces"])


@bp.post("/head/reload")
def reload_page():
    try:
        summary = _reload()
    except (ValueError, HeadUnavailable) as exc:
        flash(f"The head was not reloaded: {exc}", "error")
    else:
        flash(
            f"Head reloaded: {summary['photos']} photo(s) re-embedded; "
            f"the match threshold is now {summary['threshold']:.3f}.",
            "ok",
        )
    return redirect(url_for("people.people"))


@bp.post("/api/head/reload")
def reload_api():
    try:
        return jsonify(_reload())
    except (ValueError, HeadUnavailable) as exc:
        return jsonify(error=f"the head was not reloaded: {exc}"), 422
