"""Reload the embedding head without a restart, after retraining it (notebooks/ or `python -m model.train`).

The new head file's kernel is applied to every photo's stored backbone
features, so no photo is read again; the threshold comes from its sidecar.
The head is stored with the photos (webapp/head_store.py), so every other
process on the store swaps it in too, and processes that start later use it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from flask import Blueprint, Flask, current_app, flash, jsonify, redirect, url_for

from model.head import HeadUnavailable
from webapp import db, head_store, people_store
from webapp.db import get_db
from webapp.service import FaceService, ModelNotReady

log = logging.getLogger(__name__)

bp = Blueprint("head", __name__)
# How long the reload of a retrained head at start waits for the model (VGG-Face can take minutes).
START_RELOAD_WAIT_S = 1800.0


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


def init_app(app: Flask) -> threading.Thread | None:
    """Register the views; when the weights folder holds a head retrained since the stored one (see
    head_store.retrained), reload it as the button would, on a thread, once the model is loaded.

    :return: that thread, or None when there is nothing to reload.
    """
    app.register_blueprint(bp)
    service: FaceService = app.extensions["faces"]
    conn = db.connect(app.config["DATABASE"])
    try:
        path = head_store.retrained(head_store.read(conn, service.backbone), service.backbone,
                                    service.recognizer.weights_dir)
    finally:
        conn.close()
    if path is None:
        return None
    thread = threading.Thread(target=_reload_at_start, args=(app.config["DATABASE"], service, str(path)),
                              name="faces-head-reload", daemon=True)
    thread.start()
    app.extensions["head_reload"] = thread
    return thread


def _reload_at_start(database: str, service: FaceService, path: str) -> None:
    try:
        service.wait_ready(START_RELOAD_WAIT_S)
        conn = db.connect(database)
        try:
            summary = people_store.reload_head(conn, service)
        finally:
            conn.close()
    except (ValueError, HeadUnavailable, ModelNotReady, sqlite3.Error) as exc:
        log.error("the head file %s is newer than the stored head but was not reloaded: %s; still using the "
                  "stored head", path, exc)
        return
    log.info("head: %s is newer than the stored head: reloaded, %d photo(s) re-embedded", path, summary["photos"])
