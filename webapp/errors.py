"""App-wide request rules and error pages: JSON `{"error": message}` for the API, HTML for the pages.

Besides the login (webapp/auth.py) and the CSRF token (webapp/security.py), a
state-changing request that carries an Origin header must come from this app's
own origin, which stops other web sites from posting to it through the user's
browser.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

from flask import Flask, current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import Forbidden, HTTPException

from webapp.db import StoreError, is_postgres
from webapp.service import ModelNotReady

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def wants_json() -> bool:
    """API paths, and page requests made by our scripts (Accept: application/json), answer JSON."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def error_response(message: str, status: int):
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", message=message, status=status), status


def check_origin() -> None:
    """Refuse cross-site state changes (403)."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Forbidden("cross-site requests are not allowed")


def database_down(exc: sqlite3.OperationalError):
    """PostgreSQL went away mid-request: 503 and one log line. Its transaction died with the connection."""
    current_app.logger.error("database unreachable on %s: %s", request.path, (str(exc).strip().splitlines() or [""])[0])
    return error_response("the database is not answering; try again in a moment", 503)


def init_app(app: Flask) -> None:
    app.before_request(check_origin)
    if is_postgres(app.config["DATABASE"]):  # (SQLite's own errors stay what they are today)
        app.register_error_handler(sqlite3.OperationalError, database_down)

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError):
        return error_response(str(exc), exc.status)

    @app.errorhandler(ModelNotReady)
    def model_not_ready(exc: ModelNotReady):
        return error_response(str(exc), 503)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            limit = app.config["MAX_UPLOAD_MB"]
            message = f"the upload is too large (the limit is {limit:g} MB in all)"
        elif isinstance(exc, CSRFError):
            message = f"{message} Reload the page and try again."
        return error_response(message, exc.code or 500)
