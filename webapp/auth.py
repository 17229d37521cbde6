"""Login: one admin password guards every page, the JSON API and the live socket.

The password's hash (werkzeug's scrypt) is kept in the instance store beside
the secret key (webapp/instance_store.py: the data dir's `admin_password` file
on SQLite, a row on PostgreSQL). Until one is set, every page leads to the
set-password page and the API answers 401; FACES_ADMIN_PASSWORD sets it at
start for headless set-ups. The set-password page answers a browser on this
machine (loopback peer, loopback Host header, no proxy headers), or anyone
with the one-time setup token the server logs at start while no password is set.

Each login gets a random session id; the store keeps a hash of each live one
with the time it was made (the `sessions` file, or rows). Logging out removes
that session's id, "log out everywhere" and a new password remove them all, and
a login ends SESSION_HOURS after it was made: a cookie whose id is not there is
refused. A session also remembers a fingerprint of the password's hash.
Without a session, /api/* and JSON requests get 401 with {"error": ...}; pages
redirect to the login page. Failed logins are limited per client address
(LOGIN_LIMIT, default 5 per minute), then 429 with Retry-After; behind a reverse
proxy that address is the one the proxy forwards (FACES_TRUSTED_PROXIES), so one
client's lockout is not everyone's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Union
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_wtf.csrf import generate_csrf
from werkzeug.exceptions import BadRequest, Forbidden
from werkzeug.security import check_password_hash, generate_password_hash

from webapp import api_keys, instance_store
from webapp.errors import error_response, wants_json
from webapp.extensions import csrf, limiter
from webapp.security import SecurityHeaders, from_this_machine

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

PASSWORD_FILE = instance_store.ADMIN_PASSWORD  # the name in the store, and SQLite's file in the data dir
SESSIONS_FILE = instance_store.SESSIONS_FILE
SETUP_TOKEN = "setup_token"  # app.extensions key; the token itself is only in the server log
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # longer input is refused before hashing
SESSION_KEY = "admin"
SESSION_ID_KEY = "sid"
MAX_SESSIONS = 1000  # live logins kept; the oldest go first
PUBLIC_ENDPOINTS = frozenset({"auth.login", "auth.api_login", "auth.setup", "static", "health.health"})

NOT_SET = (
    "no admin password is set yet: open the app in a browser on the server's machine, "
    "or start it with FACES_ADMIN_PASSWORD"
)
SETUP_ELSEWHERE = (
    "no admin password is set yet. Set it from a browser on the server's machine (http://localhost:<port>/setup), "
    "or open /setup?token=... with the setup token from the server log, or start the server with FACES_ADMIN_PASSWORD"
)
LOGIN_NEEDED = "please log in"
WRONG_PASSWORD = "wrong password"
DATABASE_DOWN = "the database is not answering; try again in a moment"
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

Where = Union[instance_store.Store, Path, None]  # None: the current app's store; a data dir: its files


def _store(where: Where = None):
    """The app's instance store (default: the current app's); a data dir stands for its files (SQLite's)."""
    if where is None:
        return instance_store.of(current_app)
    if isinstance(where, (str, Path)):
        return instance_store.FileStore(Path(where))
    return where


def password_path(data_dir: Path) -> Path:
    return Path(data_dir) / PASSWORD_FILE


def stored_hash(where: Where = None) -> str | None:
    """The admin password's hash, or None while none is set."""
    return _store(where).get(PASSWORD_FILE)


def password_problem(password: object) -> str | None:
    """Why a new password is not acceptable, or None."""
    if not isinstance(password, str):
        return "the password must be text"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password is too long (at most {MAX_PASSWORD_LENGTH} characters)"
    return None


def set_password(password: str, *, replace: bool, where: Where = None) -> bool:
    """Store a hash of password; with replace=False only when none is set yet. Returns whether it was stored.

    A stored password ends every session.
    """
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    store = _store(where)
    stored = store.put(PASSWORD_FILE, generate_password_hash(password), replace=replace)
    if stored:
        end_all_sessions(store)
    return stored


def check_password(password: object) -> bool:
    hashed = stored_hash()
    if hashed is None or not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        return False
    return check_password_hash(hashed, password)


def _fingerprint(hashed: str) -> str:
    return hashlib.sha256(hashed.encode()).hexdigest()[:32]


# --- sessions: the live ones are listed in the instance store ---------------------------


def _now() -> float:
    return time.time()


def sessions_path(data_dir: Path) -> Path:
    return instance_store.sessions_path(data_dir)


def _digest(session_id: str) -> str:
    """What the store keeps of a session id: reading it gives no usable cookie."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def _lifetime_s() -> float:
    return current_app.permanent_session_lifetime.total_seconds()


def _add_session(session_id: str) -> None:
    _store().add_session(_digest(session_id), _now(), _lifetime_s(), MAX_SESSIONS)


def _end_session(session_id: object) -> None:
    if isinstance(session_id, str):
        _store().end_session(_digest(session_id))


def end_all_sessions(where: Where = None) -> int:
    """Log out every browser and script; returns how many live sessions there were."""
    return _store(where).end_all_sessions()


def logged_in() -> bool:
    """Whether this request's session belongs to the admin (also in Socket.IO handlers).

    The session must carry the current password's fingerprint and a session id
    that is still listed, and be younger than SESSION_HOURS.
    """
    hashed = stored_hash()
    if hashed is None or session.get(SESSION_KEY) != _fingerprint(hashed):
        return False
    session_id = session.get(SESSION_ID_KEY)
    if not isinstance(session_id, str):
        return False
    started = _store().session_started(_digest(session_id))
    return started is not None and 0 <= _now() - started < _lifetime_s()


def _start_session() -> None:
    session.clear()  # a fresh session (and CSRF token) at every login
    session_id = secrets.token_urlsafe(32)
    _add_session(session_id)
    session[SESSION_KEY] = _fingerprint(stored_hash())
    session[SESSION_ID_KEY] = session_id
    session.permanent = True


def _local_target(target: str | None) -> str:
    """Where to go after logging in: a path on this site, never another site."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("index")


def require_login():
    """before_request: let the admin through; send others to log in (or to set the password).

    A request with `Authorization: Bearer <key>` is judged by its API key alone (webapp.api_keys).
    """
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    token = api_keys.bearer_token()
    if token is not None:
        return api_keys.authorize(token)
    if logged_in():
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
    """End this session: its cookie, kept or copied, no longer logs anyone in."""
    _end_session(session.get(SESSION_ID_KEY))
    session.clear()
    if wants_json():
        return jsonify(logged_in=False)
    flash("You are logged out.", "ok")
    return redirect(url_for("auth.login"))


@bp.post("/api/logout-all")
@bp.post("/logout-all")  # registered first, so url_for gives the page's address
def logout_all():
    """End every session, on every browser and script (this one too)."""
    ended = end_all_sessions()
    session.clear()
    log.info("logged out everywhere: %d session(s) ended", ended)
    if wants_json():
        return jsonify(logged_in=False, sessions_ended=ended)
    flash(f"You are logged out everywhere ({ended} session(s) ended).", "ok")
    return redirect(url_for("auth.login"))


def _setup_token_given() -> str | None:
    """The setup token this request carries (?token= or the form's field) when it is the right one."""
    token = current_app.extensions.get(SETUP_TOKEN)
    given = request.values.get("token", "")
    if token and isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode()):
        return given
    return None


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """First start: choose the admin password. Only while none is set; from this machine, or with the setup token."""
    if stored_hash() is not None:
        return redirect(url_for("auth.login"))
    token = _setup_token_given()
    if token is None and not from_this_machine():
        log.warning("set-up page refused: peer %s, Host %r, no valid setup token", request.remote_addr, request.host)
        raise Forbidden(SETUP_ELSEWHERE)
    page = {"min_length": MIN_PASSWORD_LENGTH, "token": token}
    if request.method == "GET":
        return render_template("auth/setup.html", error=None, **page)
    password = request.form.get("password", "")
    error = password_problem(password)
    if not error and password != request.form.get("confirm", ""):
        error = "the two passwords differ"
    if error:
        return render_template("auth/setup.html", error=error, **page), 400
    if not set_password(password, replace=False):
        flash("The admin password was set meanwhile, from elsewhere; log in with it.", "error")
        return redirect(url_for("auth.login"))
    log.info("admin password set from the set-up page (%s)", "with the setup token" if token else "this machine")
    current_app.extensions.pop(SETUP_TOKEN, None)
    _start_session()
    flash("The admin password is set, and you are logged in.", "ok")
    return redirect(url_for("index"))


def _json_answer(start_response, status: str, message: str) -> list[bytes]:
    body = json.dumps({"error": message}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class SocketGate:
    """WSGI middleware: a Socket.IO request (handshake, WebSocket upgrade, polling) needs the admin's session.

    The /live connect handler checks the session too, but only once a
    connection is open; the gate keeps strangers from opening one at all, and
    so from the buffers and threads a connection costs.
    """

    def __init__(self, app: Flask, wsgi_app, path: str = "/socket.io"):
        self.app, self.wsgi_app, self.path = app, wsgi_app, path

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(self.path):
            try:
                allowed = self._logged_in(environ)
            except sqlite3.OperationalError:  # PostgreSQL, which holds the sessions, is not answering
                log.error("socket refused: the database is not answering")
                return _json_answer(start_response, "503 SERVICE UNAVAILABLE", DATABASE_DOWN)
            if not allowed:
                return _json_answer(start_response, "401 UNAUTHORIZED", LOGIN_NEEDED)
        return self.wsgi_app(environ, start_response)

    def _logged_in(self, environ) -> bool:
        with self.app.request_context(environ):
            return logged_in()


def gate_socketio(app: Flask) -> None:
    """Put SocketGate, then the security headers, in front of the app.

    Call after socketio.init_app (which wraps app.wsgi_app itself), so that
    every answer, Engine.IO's and the gate's too, gets the headers.
    """
    app.wsgi_app = SecurityHeaders(SocketGate(app, app.wsgi_app))


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
        store = instance_store.of(app)
        current = stored_hash(store)
        if current is None or not check_password_hash(current, password):
            set_password(password, replace=True, where=store)
            log.info("admin password set from FACES_ADMIN_PASSWORD")
    elif stored_hash(instance_store.of(app)) is None:
        token = secrets.token_urlsafe(16)
        app.extensions[SETUP_TOKEN] = token
        log.warning(
            "no admin password is set: open the app in a browser on this machine to choose one, or from "
            "elsewhere open /setup?token=<the token> (setup token: %s; it works until the password is set or "
            "the server stops)",
            token,
        )
    app.before_request_funcs.setdefault(None, []).insert(0, require_login)  # first: 401 before CSRF or Origin
    app.context_processor(lambda: {"logged_in": logged_in})
    app.register_blueprint(bp)
