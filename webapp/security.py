"""Request-wide safety settings: the session cookie, CSRF tokens, the login rate limit, private files, the bind address.

CSRF: every state-changing request (POST, PUT, PATCH, DELETE) carries a token
tied to the session, pages in a hidden `csrf_token` form field, scripts and the
JSON API in an `X-CSRFToken` header (`POST /api/login` returns the token). One
rule for every path is simpler to check than exemptions: SameSite=Lax alone
does not stop another site on the same host (any port counts as the same
site), and a cross-site form can post multipart uploads without a preflight.
The Origin check in webapp/errors.py stays as a second fence. The one exception:
a request an API key let in (`Authorization: Bearer`, webapp/api_keys.py) needs
no token, since it has no cookie to forge (webapp.extensions.CSRFProtect).

Every response, the socket gate's and Engine.IO's included, forbids framing
(X-Frame-Options, CSP frame-ancestors) and MIME sniffing (`SecurityHeaders`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from limits import parse_many
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.exceptions import BadRequest, NotFound
from werkzeug.routing import IntegerConverter

from webapp import redis_link
from webapp.extensions import csrf, limiter

# Cookies ignore ports: a distinct name keeps other local apps from overwriting ours.
SESSION_COOKIE_NAME = "faces_session"
# SQLite's INTEGER range; a larger id in a URL is a 404, not an OverflowError.
MAX_ROW_ID = 2**63 - 1
# Ids one form may carry (inbox `face=`); SQLite allows 32766 variables in one statement.
MAX_IDS = 10_000
ASCII_DIGITS = re.compile(r"[0-9]+")
# Sent with every response: no page of ours may be framed by another site, and no file sniffed into HTML.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


class RowId(IntegerConverter):
    """The `<int:...>` route converter: ASCII digits only, and an id beyond MAX_ROW_ID is a 404.

    werkzeug's own pattern also matched other scripts' digits ("DELETE /api/people/١"
    deleted person 1), and its `max` gives 405s.
    """

    regex = r"[0-9]+"

    def to_python(self, value: str) -> int:
        number = super().to_python(value)
        if number > MAX_ROW_ID:
            raise NotFound("there is nothing with that id")
        return number


def parse_row_id(text: object) -> int:
    """An id from a form or query field: ASCII digits only, within SQLite's INTEGER range.

    :raises ValueError: anything else ("١", " 1", "+1", "1e3", 10**20, not text).
    """
    if not isinstance(text, str) or not ASCII_DIGITS.fullmatch(text) or len(text) > len(str(MAX_ROW_ID)):
        raise ValueError(f"not an id: {str(text)[:20]!r}")
    number = int(text)
    if number > MAX_ROW_ID:
        raise ValueError(f"not an id: {text[:20]!r}")
    return number


def refuse_nameless_fields() -> None:
    """before_request, ahead of the CSRF check: a multipart part without a name is a 400.

    Flask-WTF's token lookup (and our views) expect every form key to be text;
    werkzeug files a part without `name=` under None, which raised AttributeError (500).
    """
    if request.mimetype != "multipart/form-data":
        return
    if None in request.form or None in request.files:
        raise BadRequest("every part of a multipart form needs a name")


class SecurityHeaders:
    """WSGI middleware: SECURITY_HEADERS on every response, including those answered before Flask.

    Put it outermost (webapp.auth.gate_socketio does), so the socket gate's
    401s and Engine.IO's answers get them too. A header a view set itself is kept.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers = list(headers) + [(name, value) for name, value in SECURITY_HEADERS.items()
                                       if name.lower() not in present]
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with too deeply nested input refused like any other bad JSON (it raised RecursionError: 500)."""

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None


def init_app(app: Flask) -> None:
    """Cookie, CSRF and rate-limit settings, then the extensions. Call before registering blueprints.

    :raises ValueError: LOGIN_LIMIT (FACES_LOGIN_LIMIT) is not a rate like "5 per minute", or
        SESSION_HOURS (FACES_SESSION_HOURS) is not more than 0.
    """
    try:
        parse_many(app.config["LOGIN_LIMIT"])
    except ValueError:
        raise ValueError(f"FACES_LOGIN_LIMIT={app.config['LOGIN_LIMIT']!r} is not a rate like '5 per minute'") from None
    hours = app.config["SESSION_HOURS"]
    if not hours > 0:
        raise ValueError(f"FACES_SESSION_HOURS={hours!r}: a login must last more than 0 hours")
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies < 0:
        raise ValueError(f"FACES_TRUSTED_PROXIES={proxies!r}: the number of proxies in front can't be negative")
    if proxies:
        # remote_addr becomes the address the nearest trusted proxy saw; what a client adds itself is ignored.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)
    app.url_map.converters["int"] = RowId
    app.json = JSONProvider(app)
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(app.config["BEHIND_TLS"]),
        # The cookie's own limit; webapp/auth.py also ends a login this long after it was made.
        PERMANENT_SESSION_LIFETIME=timedelta(hours=hours),
    )
    for key, value in {  # tests may override these
        # A token lives as long as the session: a person's page may stay open for hours.
        "WTF_CSRF_TIME_LIMIT": None,
        # FACES_REDIS_URL: failed logins counted across processes, each process's memory while Redis is down
        **redis_link.limiter_config(app.config.get("REDIS_URL")),
        "RATELIMIT_STRATEGY": "moving-window",
        "RATELIMIT_HEADERS_ENABLED": True,  # Retry-After on the 429
    }.items():
        app.config.setdefault(key, value)
    app.before_request(refuse_nameless_fields)  # before CSRFProtect's own hook, which trips over them
    csrf.init_app(app)
    limiter.init_app(app)


def limit_websocket_messages(eio_server) -> None:
    """Make WebSocket reads stop at Engine.IO's max_http_buffer_size.

    Engine.IO's threading driver opens simple-websocket without a message cap
    and checks the size only once the whole message is in memory: one 300 MB
    message took the server's RSS to 757 MB. With the cap, simple-websocket
    closes the connection (1009, message too big) as soon as the bytes pass it.
    """
    base = eio_server._async["websocket"]

    class LimitedWebSocket(base):
        def __init__(self, handler, server, **kwargs):
            kwargs.setdefault("max_message_size", server.max_http_buffer_size)
            super().__init__(handler, server, **kwargs)

    eio_server._async = {**eio_server._async, "websocket": LimitedWebSocket}


# --- the address server.py listens on ----------------------------------------------


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; False for 0.0.0.0, LAN addresses and other host names."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Headers a proxy adds; a request carrying one came through a proxy, whatever its peer address says.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP")


def host_name(host: str) -> str:
    """The name or address in a Host header, without the port: "[::1]:5000" -> "::1", "localhost:80" -> "localhost"."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def from_this_machine() -> bool:
    """Whether this request comes straight from a browser on this machine.

    The peer and the Host header must both be loopback (a DNS-rebinding page
    reaches 127.0.0.1 but sends its own host name). Without FACES_TRUSTED_PROXIES no
    proxy header may be present: they are never believed, only taken as a sign of a
    proxy. With it, the peer is the client address the trusted proxy forwarded.
    """
    if not is_loopback(request.remote_addr or ""):
        return False
    if not is_loopback(host_name(request.host)):
        return False
    if current_app.config["TRUSTED_PROXIES"]:
        return True
    return not any(name in request.headers for name in FORWARDING_HEADERS)


def bind_warning(host: str, behind_tls: bool) -> str | None:
    """The warning to log when the server listens beyond this machine with no TLS in front, else None."""
    if is_loopback(host) or behind_tls:
        return None
    return (
        f"listening on {host}, beyond this machine, over plain HTTP: passwords, session cookies and "
        "face photos cross the network unencrypted. Put an HTTPS proxy in front and set FACES_BEHIND_TLS=1, "
        "or listen on 127.0.0.1 (the default)"
    )


# --- small private files in the data dir (secret key, password hash) -----------------


def write_private(path: Path, text: str, *, replace: bool) -> bool:
    """Write text to path all or nothing, readable by the owner only.

    The text goes to a temporary file (mode 0600, synced) that is then renamed
    over path (replace=True) or linked to it only if path does not exist yet
    (replace=False: the first writer wins, and a crash never leaves an empty file).

    :return: False when replace=False and path already existed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The stripped text of a private file, made with make() when the file is missing or empty."""
    for _ in range(2):
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return text
        # Missing: create it (another process may win the race; then read theirs). Empty: replace it.
        write_private(path, make(), replace=path.exists())
    return path.read_text().strip()
