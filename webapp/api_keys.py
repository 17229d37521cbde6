"""API keys for scripts and integrations: `Authorization: Bearer <key>` instead of the login cookie.

A key is `faces_` + 43 random URL-safe characters (256 bits), shown once when it
is made; the `api_keys` table keeps only its SHA-256 (a key is random, so a fast
hash is as good as a slow one), its first characters as a hint, a name, its
scopes, when it was made, last used (at most once a minute) and revoked.

Scopes: `read` lets GET (and HEAD) requests through, `recognize` POST
/api/recognize, `manage` everything, key management included. A request with a
Bearer key needs no session cookie and no CSRF token (a browser never adds the
header by itself, and another site's script cannot send it to us without a CORS
grant we never give). A wrong or revoked key is a 401, a key without the
request's scope a 403, both JSON with the reason. The login cookie works as before.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable

from flask import current_app, g, jsonify, request

from webapp.db import NotFound, StoreError, get_db
from webapp.inbox_store import utc

SCOPES = ("read", "recognize", "manage")
READ_METHODS = frozenset({"GET", "HEAD"})
RECOGNIZE_ENDPOINTS = frozenset({"api.recognize"})
TOKEN_PREFIX = "faces_"
HINT_CHARS = len(TOKEN_PREFIX) + 4
MAX_NAME_LENGTH = 100
MAX_TOKEN_LENGTH = 200
LAST_USED_EVERY_S = 60
G_KEY = "api_key"  # flask.g attribute: the row of the key that authenticated this request


class InvalidKeyRequest(StoreError):
    status = 400


# --- the store -----------------------------------------------------------------------


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clean_scopes(scopes: object) -> list[str]:
    """A list of scope names, in SCOPES order. :raises InvalidKeyRequest: empty, not a list of text, or unknown names."""
    if isinstance(scopes, str):
        scopes = scopes.replace(",", " ").split()
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise InvalidKeyRequest(f"scopes must be a non-empty list drawn from {', '.join(SCOPES)}")
    unknown = sorted({s for s in scopes if s not in SCOPES})
    if unknown:
        raise InvalidKeyRequest(f"unknown scope(s) {', '.join(unknown)[:100]}: use {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in scopes]


def clean_key_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidKeyRequest("give the key a name, e.g. \"home assistant\"")
    name = " ".join(name.split())
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidKeyRequest(f"the key's name is too long (at most {MAX_NAME_LENGTH} characters)")
    return name


def create_key(db: sqlite3.Connection, name: object, scopes: object) -> tuple[sqlite3.Row, str]:
    """Make a key; returns (its row, the key itself, which is never stored and cannot be shown again)."""
    name, scopes = clean_key_name(name), clean_scopes(scopes)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key_id = db.execute(
        "INSERT INTO api_keys (name, token_hash, hint, scopes) VALUES (?, ?, ?, ?) RETURNING id",
        (name, digest(token), token[:HINT_CHARS], " ".join(scopes)),
    ).fetchone()[0]
    return get_key(db, key_id), token


def get_key(db: sqlite3.Connection, key_id: int) -> sqlite3.Row:
    row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    if row is None:
        raise NotFound(f"no API key with id {key_id}")
    return row


def list_keys(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every key, live ones first, newest first."""
    return db.execute("SELECT * FROM api_keys ORDER BY revoked_at IS NOT NULL, id DESC").fetchall()


def revoke_key(db: sqlite3.Connection, key_id: int) -> sqlite3.Row:
    """Revoke a key for good (its row stays, listed as revoked); revoking it again changes nothing."""
    get_key(db, key_id)
    db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utc(), key_id))
    return get_key(db, key_id)


def find_key(db: sqlite3.Connection, token: str) -> sqlite3.Row | None:
    """The key's row (revoked ones too), or None for a key that was never made."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        return None
    return db.execute("SELECT * FROM api_keys WHERE token_hash = ?", (digest(token),)).fetchone()


def mark_used(db: sqlite3.Connection, row: sqlite3.Row) -> None:
    """Record the use, at most once every LAST_USED_EVERY_S (a script's every call need not write)."""
    now = utc()
    if row["last_used_at"] is None or row["last_used_at"] <= utc(time.time() - LAST_USED_EVERY_S):
        db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, row["id"]))


def scopes_of(row: sqlite3.Row) -> list[str]:
    return row["scopes"].split()


def key_json(row: sqlite3.Row) -> dict:
    """A key as the API lists it: never the key itself, nor its hash."""
    return {
        "id": row["id"],
        "name": row["name"],
        "hint": row["hint"] + "...",
        "scopes": scopes_of(row),
        "created_at": row["created_at"],
        "last_used_at": row["last_used_at"],
        "revoked_at": row["revoked_at"],
        "revoked": row["revoked_at"] is not None,
    }


# --- requests ------------------------------------------------------------------------


def needs_scope(scope: str) -> Callable:
    """Decorator: this view needs `scope` from a key, whatever the method (e.g. key management: manage)."""
    def mark(view):
        view.api_key_scope = scope
        return view
    return mark


def required_scope() -> str:
    """The scope this request needs: a view's own (needs_scope), else read for GET, recognize for recognition, else manage."""
    view = current_app.view_functions.get(request.endpoint or "")
    marked = getattr(view, "api_key_scope", None)
    if marked:
        return marked
    if request.method in READ_METHODS:
        return "read"
    if request.endpoint in RECOGNIZE_ENDPOINTS:
        return "recognize"
    return "manage"


def allows(scopes: list[str], needed: str) -> bool:
    return needed in scopes or "manage" in scopes


def bearer_token() -> str | None:
    """The key in `Authorization: Bearer <key>`, '' for an empty one, None when there is no Bearer header."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def authorize(token: str):
    """before_request, for a request with a Bearer key: None to let it through (g.api_key set), else a 401/403 answer."""
    db = get_db()
    row = find_key(db, token) if token else None
    if row is None:
        return _refuse("this API key is not valid: check it was copied whole, or make a new one", 401)
    if row["revoked_at"] is not None:
        return _refuse(f"this API key ({row['name']}) was revoked on {row['revoked_at']}", 401)
    needed, scopes = required_scope(), scopes_of(row)
    if not allows(scopes, needed):
        return _refuse(f"this API key ({row['name']}) has the scope(s) {', '.join(scopes)}; "
                       f"{request.method} {request.path} needs {needed}", 403)
    mark_used(db, row)
    setattr(g, G_KEY, row)
    return None


def _refuse(message: str, status: int):
    answer = jsonify(error=message)
    answer.status_code = status
    if status == 401:
        answer.headers["WWW-Authenticate"] = 'Bearer realm="faces"'
    return answer
