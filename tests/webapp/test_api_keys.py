"""API keys: made once, stored hashed, sent as a Bearer header with no cookie or CSRF token, scoped, revoked."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image
from web_helpers import TEST_PASSWORD

from webapp.db import connect

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL


def make_key(client, name="script", scopes=("read",)) -> dict:
    answer = client.post("/api/keys", json={"name": name, "scopes": list(scopes)})
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.get_json()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def image_upload() -> dict:
    data = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(data, "JPEG")
    data.seek(0)
    return {"image": (data, "frame.jpg")}


@pytest.fixture
def keys(client):
    """A key of each scope, made by the logged-in admin."""
    return {scope: make_key(client, scope, [scope])["key"] for scope in ("read", "recognize", "manage")}


def test_a_key_is_shown_once_and_stored_hashed(app, client):
    made = make_key(client, "home assistant", ["read", "recognize"])
    key = made["key"]
    assert key.startswith("faces_") and len(key) >= 40
    assert made["scopes"] == ["read", "recognize"] and made["name"] == "home assistant" and not made["revoked"]
    listed = client.get("/api/keys").get_json()["keys"]
    assert [k["id"] for k in listed] == [made["id"]]
    assert "key" not in listed[0] and key not in client.get("/api/keys").get_data(as_text=True)
    assert key not in client.get("/integrations").get_data(as_text=True)
    conn = connect(app.config["DATABASE"])
    [row] = conn.execute("SELECT * FROM api_keys").fetchall()
    conn.close()
    assert row["token_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in [str(v) for v in tuple(row)]
    data = b"".join(p.read_bytes() for p in app.config["DATA_DIR"].iterdir() if p.is_file())
    assert key.encode() not in data  # nor anywhere in the data dir (the database, its WAL)


def test_a_bearer_key_works_without_cookie_or_csrf_token(app, client, anonymous, keys):
    assert anonymous.get("/api/people").status_code == 401  # no key, no cookie
    answer = anonymous.get("/api/people", headers=bearer(keys["read"]))
    assert answer.status_code == 200 and answer.get_json() == {"people": []}
    created = anonymous.post("/api/people", json={"name": "Ada"}, headers=bearer(keys["manage"]))
    assert created.status_code == 201, created.get_data(as_text=True)  # no CSRF token needed
    person_id = created.get_json()["id"]
    assert anonymous.delete(f"/api/people/{person_id}", headers=bearer(keys["manage"])).status_code == 200
    assert "set-cookie" not in {h.lower() for h in answer.headers.keys()}
    # The browser login still needs its CSRF token.
    fresh = app.test_client()
    fresh.post("/api/login", json={"password": TEST_PASSWORD})
    assert fresh.post("/api/people", json={"name": "Bo"}).status_code == 400


def test_scopes_are_enforced_with_clear_messages(anonymous, keys):
    read, recognize, manage = keys["read"], keys["recognize"], keys["manage"]
    refused = anonymous.post("/api/people", json={"name": "Ada"}, headers=bearer(read))
    assert refused.status_code == 403
    assert "read" in refused.get_json()["error"] and "POST /api/people needs manage" in refused.get_json()["error"]
    assert anonymous.post("/api/recognize", data=image_upload(), headers=bearer(read)).status_code == 403
    recognized = anonymous.post("/api/recognize", data=image_upload(), headers=bearer(recognize))
    assert recognized.status_code == 200 and recognized.get_json()["faces"] == []
    assert anonymous.get("/api/people", headers=bearer(recognize)).status_code == 403  # recognize is not read
    assert anonymous.post("/api/recognize", data=image_upload(), headers=bearer(manage)).status_code == 200
    assert anonymous.get("/api/integrations", headers=bearer(read)).status_code == 200
    # Key management needs manage (or the login), even to list.
    for method, path in [("get", "/api/keys"), ("post", "/api/keys"), ("delete", "/api/keys/1"),
                         ("get", "/integrations")]:
        answer = getattr(anonymous, method)(path, json={"name": "x", "scopes": ["read"]}, headers=bearer(read))
        assert answer.status_code == 403, (method, path)
    assert make_key_with(anonymous, manage).status_code == 201


def make_key_with(client, key):
    return client.post("/api/keys", json={"name": "by key", "scopes": ["manage"]}, headers=bearer(key))


def test_wrong_and_revoked_keys_are_401(app, client, anonymous, keys):
    for wrong in ["faces_" + "x" * 43, "not-a-key", "", keys["read"][:-1]]:
        answer = anonymous.get("/api/people", headers={"Authorization": f"Bearer {wrong}"})
        assert answer.status_code == 401, wrong
        assert "not valid" in answer.get_json()["error"] and answer.headers["WWW-Authenticate"].startswith("Bearer")
    # A wrong key is refused even next to a valid login cookie: the key alone decides.
    assert client.get("/api/people", headers=bearer("faces_wrong")).status_code == 401

    key_id = next(k["id"] for k in client.get("/api/keys").get_json()["keys"] if k["name"] == "read")
    assert anonymous.get("/api/people", headers=bearer(keys["read"])).status_code == 200
    revoked = client.delete(f"/api/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.get_json()["revoked"]
    answer = anonymous.get("/api/people", headers=bearer(keys["read"]))
    assert answer.status_code == 401 and "revoked" in answer.get_json()["error"]
    assert client.delete("/api/keys/999").status_code == 404
    assert client.delete(f"/api/keys/{key_id}").status_code == 200  # again: still revoked, nothing else changes
    listed = {k["id"]: k for k in client.get("/api/keys").get_json()["keys"]}
    assert listed[key_id]["revoked"] and listed[key_id]["revoked_at"]


def test_last_used_is_recorded(client, anonymous, keys):
    before = {k["name"]: k for k in client.get("/api/keys").get_json()["keys"]}
    assert before["read"]["last_used_at"] is None
    anonymous.get("/api/people", headers=bearer(keys["read"]))
    after = {k["name"]: k for k in client.get("/api/keys").get_json()["keys"]}
    assert after["read"]["last_used_at"] is not None and after["manage"]["last_used_at"] is None


@pytest.mark.parametrize("body, message", [
    ({"name": "", "scopes": ["read"]}, "name"),
    ({"name": "x" * 101, "scopes": ["read"]}, "too long"),
    ({"name": "ok", "scopes": []}, "scopes"),
    ({"name": "ok", "scopes": ["admin"]}, "unknown scope"),
    ({"name": "ok", "scopes": [1]}, "scopes"),
    ({"name": "ok"}, "scopes"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_key_requests_are_400(app, client, body, message):
    answer = client.post("/api/keys", json=body)
    assert answer.status_code == 400 and message in answer.get_json()["error"]
    conn = connect(app.config["DATABASE"])
    assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0] == 0
    conn.close()


def test_the_integrations_page_makes_shows_once_and_revokes_keys(app, client, anonymous):
    page = client.get("/integrations")
    assert page.status_code == 200 and 'id="keys-empty"' in page.get_data(as_text=True)
    assert 'href="/integrations"' in client.get("/people").get_data(as_text=True)  # the nav link
    made = client.post("/integrations/keys", data={"name": "door script", "scope": ["read", "recognize"]})
    html = made.get_data(as_text=True)
    assert made.status_code == 201 and 'id="new-key"' in html
    key = html.split('id="new-key">', 1)[1].split("<", 1)[0]
    assert anonymous.get("/api/people", headers=bearer(key)).status_code == 200
    again = client.get("/integrations").get_data(as_text=True)
    assert key not in again and "door script" in again and "read, recognize" in again
    assert client.post("/integrations/keys", data={"name": "no scope"}).status_code == 400
    key_id = client.get("/api/keys").get_json()["keys"][0]["id"]
    assert client.post(f"/integrations/keys/{key_id}/revoke").status_code == 302
    assert anonymous.get("/api/people", headers=bearer(key)).status_code == 401
    assert anonymous.get("/integrations").status_code == 302  # the page itself needs the login
