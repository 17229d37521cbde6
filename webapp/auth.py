"""Login: one admin password guards every page, the JSON API and the live socket.

The password's hash (werkzeug's scrypt) is kept in the data dir beside the
secret key, in `admin_password`. Until one is set, every page leads to the
set-password page, which answers only to browsers on this machine, and the API
answers 401; FACES_ADMIN_PASSWORD sets it at start for headless set-ups.

A session remembers a fingerprint of the hash, so a new password logs out
every session. Without a session, /api/* and JSON requests get 401 with
{"error": ...}; pages redirect to the login page. Failed logins are limited per
client address (LOGIN_LIMIT, default 5 per minute), then 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_wtf.csrf import generate_csrf
from werkzeug.exceptions import BadRequest, Forbidden
from werkzeug.security import check_password_hash, generate_password_hash

from webapp.errors import error_response, wants_json
from webapp.extensions import csrf, limiter
from webapp.security import is_loopback, write_private

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

PASSWORD_FILE = "admin_password"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # longer input is refused before hashing
SESSION_KEY = "admin"
PUBLIC_ENDPOINTS = frozenset({"auth.login", "auth.api_login", "auth.setup", "static"})

NOT_SET = (
    "no admin password is set yet: open the app in a browser on the server's machine, "
    "or start it with FACES_ADMIN_PASSWORD"
)
LOGIN_NEEDED = "please log in"
WRONG_PASSWORD = "wrong password"
TOO_MANY = "too many failed logins from your address; wait a minute and try again"

# Counts only failed attempts (401), per client address, across both login views.
login_limit = limiter.shared_limit(
    lambda: current_app.config["LOGIN_LIMIT"],
    scope="login",
    methods=["POST"],
    deduct_when=lambda response: response.status_code == 401,
    error_message=TOO_MANY,
)


# --- the password ------------------------------------------------------------------


def password_path(data_dir: Path) -> Path:
    return Path(data_dir) / PASSWORD_FILE


def stored_hash(data_dir: Path | None = None) -> str | None:
    """The admin password's hash, or None while none is set."""
    try:
        text = password_path(data_dir or current_app.config["DATA_DIR"]).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def password_problem(password: object) -> str | None:
    """Why a new password is not acceptable, or None."""
    if not isinstance(password, str):
        return "the password must be text"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password is too long (at most {MAX_PASSWORD_LENGTH} characters)"
    return None


def set_password(data_dir: Path, password: str, *, replace: bool) -> bool:
    """Store a hash of password; with replace=False only when none is set yet. Returns whether it was stored."""
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    return write_private(password_path(data_dir), generate_password_hash(password) + "\n", replace=replace)


def check_password(password: object) -> bool:
    hashed = stored_hash()
    if hashed is None or not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        return False
    return check_password_hash(hashed, password)


def _fingerprint(hashed: str) -> str:
    return hashlib.sha256(hashed.encode()).hexdigest()[:32]


# --- sessions ----------------------------------------------------------------------


def logged_in() -> bool:
    """Whether this request's session belongs to the admin (also in Socket.IO handlers)."""
    hashed = stored_hash()
    return hashed is not None and session.get(SESSION_KEY) == _fingerprint(hashed)


def _start_session() -> None:
    session.clear()  # a fresh session (and CSRF token) at every login
    session[SESSION_KEY] = _fingerprint(stored_hash())
    session.permanent = True


def _local_target(target: str | None) -> str:
    """Where to go after logging in: a path on this site, never another site."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("index")


def require_login():
    """before_request: let the admin through; send others to log in (or to set the password)."""
    if request.endpoint in PUBLIC_ENDPOINTS or logged_in():
        return None
    if stored_hash() is None:
        if wants_json():
            return error_response(NOT_SET, 401)
        return redirect(url_for("auth.setup"))
    if wants_json():
        return error_response(LOGIN_NEEDED, 401)
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("auth.login", next=target))


# --- views -------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
@login_limit
def login():
    if stored_hash() is None:
        return redirect(url_for("auth.setup"))
    target = _local_target(request.values.get("next"))
    if request.method == "GET":
        if logged_in():
            return redirect(target)
        return render_template("auth/login.html", next=target, error=None)
    if not check_password(request.form.get("password")):
        log.warning("failed login from %s", request.remote_addr)
        return render_template("auth/login.html", next=target, error=WRONG_PASSWORD), 401
    _start_session()
    return redirect(target)


@bp.post("/api/login")
@csrf.exempt  # there is no session to tie a token to yet; the answer carries the token for later requests
@login_limit
def api_login():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("password"), str):
        raise BadRequest('expected a JSON object with the password as text: {"password": "..."}')
    if stored_hash() is None:
        return jsonify(error=NOT_SET), 409
    if not check_password(body["password"]):
        log.warning("failed API login from %s", request.remote_addr)
        return jsonify(error=WRONG_PASSWORD), 401
    _start_session()
    return jsonify(logged_in=True, csrf_token=generate_csrf())


@bp.post("/logout")
def logout():
    session.clear()
    if wants_json():
        return jsonify(logged_in=False)
    flash("You are logged out.", "ok")
    return redirect(url_for("auth.login"))


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """First start: choose the admin password. Only while none is set, and only from this machine."""
    if stored_hash() is not None:
        return redirect(url_for("auth.login"))
    if not is_loopback(request.remote_addr or ""):
        raise Forbidden(NOT_SET)
    if request.method == "GET":
        return render_template("auth/setup.html", error=None, min_length=MIN_PASSWORD_LENGTH)
    password = request.form.get("password", "")
    error = password_problem(password)
    if not error and password != request.form.get("confirm", ""):
        error = "the two passwords differ"
    if error:
        return render_template("auth/setup.html", error=error, min_length=MIN_PASSWORD_LENGTH), 400
    if not set_password(current_app.config["DATA_DIR"], password, replace=False):
        flash("The admin password was set meanwhile, from elsewhere; log in with it.", "error")
        return redirect(url_for("auth.login"))
    log.info("admin password set from the set-up page")
    _start_session()
    flash("The admin password is set, and you are logged in.", "ok")
    return redirect(url_for("index"))


class SocketGate:
    """WSGI middleware: a Socket.IO request (handshake, WebSocket upgrade, polling) needs the admin's session.

    The /live connect handler checks the session too, but only once a
    connection is open; the gate keeps strangers from opening one at all, and
    so from the buffers and threads a connection costs.
    """

    def __init__(self, app: Flask, wsgi_app, path: str = "/socket.io"):
        self.app, self.wsgi_app, self.path = app, wsgi_app, path

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(self.path) and not self._logged_in(environ):
            body = b'{"error": "please log in"}'
            start_response("401 UNAUTHORIZED", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return self.wsgi_app(environ, start_response)

    def _logged_in(self, environ) -> bool:
        with self.app.request_context(environ):
            return logged_in()


def gate_socketio(app: Flask) -> None:
    """Put SocketGate in front of the app; call after socketio.init_app (which wraps app.wsgi_app itself)."""
    app.wsgi_app = SocketGate(app, app.wsgi_app)


def init_app(app: Flask) -> None:
    """Apply FACES_ADMIN_PASSWORD (then drop it from the config) and guard every request.

    The guard runs before every other before_request hook, so a request without a session gets 401 first.
    :raises ValueError: FACES_ADMIN_PASSWORD is too short or too long.
    """
    password = app.config.get("ADMIN_PASSWORD")
    app.config["ADMIN_PASSWORD"] = None
    if password:
        problem = password_problem(password)
        if problem:
            raise ValueError(f"FACES_ADMIN_PASSWORD: {problem}")
        current = stored_hash(app.config["DATA_DIR"])
        if current is None or not check_password_hash(current, password):
            set_password(app.config["DATA_DIR"], password, replace=True)
            log.info("admin password set from FACES_ADMIN_PASSWORD")
    elif stored_hash(app.config["DATA_DIR"]) is None:
        log.warning("no admin password is set: open the app in a browser on this machine to choose one")
    app.before_request_funcs.setdefault(None, []).insert(0, require_login)  # first: 401 before CSRF or Origin
    app.context_processor(lambda: {"logged_in": logged_in})
    app.register_blueprint(bp)
