"""Access: the admin password, first start, sessions, the login rate limit, CSRF tokens and the bind address."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
from web_helpers import ENROLLED, TEST_PASSWORD, enroll_json, log_in, prepare_data_dir

from webapp import auth, create_app, security

PAGES = ["/", "/people", "/people/new", "/live", "/people/1", "/people/1/delete", "/export", "/photos/1/thumb.jpg"]


@pytest.fixture
def fresh(tmp_path, web_recognizer):
    """An app on its first start: no admin password yet, no FACES_ADMIN_PASSWORD."""
    return create_app({"TESTING": True, "DATA_DIR": tmp_path / "fresh", "RECOGNIZER": web_recognizer})


def csrf_field(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def form_login(client, password: str, next_path: str = "/people", **kwargs):
    token = csrf_field(client.get("/login").get_data(as_text=True))
    data = {"password": password, "next": next_path, "csrf_token": token}
    return client.post("/login", data=data, **kwargs)


# --- without a session ---------------------------------------------------------------


def test_pages_redirect_to_the_login_page(anonymous):
    for path in PAGES:
        answer = anonymous.get(path)
        assert answer.status_code == 302, path
        assert answer.headers["Location"].startswith("/login?next="), path
    assert anonymous.get("/people/new").headers["Location"] == "/login?next=/people/new"


def test_the_api_answers_401_json(anonymous):
    for method, path, kwargs in [
        ("get", "/api/status", {}),
        ("get", "/api/people", {}),
        ("get", "/api/people/1", {}),
        ("post", "/api/people", {"json": {"name": "Mallory"}}),
        ("delete", "/api/people/1", {}),
        ("post", "/api/recognize", {}),
        ("get", "/api/no-such-thing", {}),
    ]:
        answer = getattr(anonymous, method)(path, **kwargs)
        assert answer.status_code == 401, (method, path)
        assert answer.get_json() == {"error": auth.LOGIN_NEEDED}, (method, path)
    # The page scripts ask for JSON: they get the 401 too, not a redirect.
    answer = anonymous.post("/people/new", data={"name": "Mallory"}, headers={"Accept": "application/json"})
    assert answer.status_code == 401 and answer.get_json()["error"] == auth.LOGIN_NEEDED


def test_nothing_changes_without_a_session(app, anonymous, client):
    anonymous.post("/api/people", json={"name": "Mallory"})
    anonymous.post("/people/new", data={"name": "Mallory"})
    assert client.get("/api/people").get_json()["people"] == []


def test_static_files_and_the_login_page_are_public(anonymous):
    assert anonymous.get("/static/css/app.css").status_code == 200
    html = anonymous.get("/login").get_data(as_text=True)
    assert 'type="password"' in html and 'name="csrf_token"' in html
    assert 'aria-label="Main"' not in html  # no navigation before logging in


# --- first start ---------------------------------------------------------------------


def test_first_start_asks_for_the_admin_password(fresh):
    client = fresh.test_client()
    for path in ("/", "/people", "/login", "/live"):
        assert client.get(path).headers["Location"] == "/setup", path
    answer = client.get("/api/people")
    assert answer.status_code == 401 and answer.get_json()["error"] == auth.NOT_SET
    assert client.post("/api/login", json={"password": "whatever-it-is"}).status_code == 409

    html = client.get("/setup").get_data(as_text=True)
    token = csrf_field(html)
    assert 'name="confirm"' in html
    too_short = client.post("/setup", data={"password": "short", "confirm": "short", "csrf_token": token})
    assert too_short.status_code == 400 and "at least 8 characters" in too_short.get_data(as_text=True)
    differ = client.post("/setup", data={"password": "long enough", "confirm": "long enougj", "csrf_token": token})
    assert differ.status_code == 400 and "the two passwords differ" in differ.get_data(as_text=True)
    assert auth.stored_hash(fresh.config["DATA_DIR"]) is None

    done = client.post("/setup", data={"password": "long enough", "confirm": "long enough", "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == "/"
    assert client.get("/people").status_code == 200  # logged in at once
    stored = auth.password_path(fresh.config["DATA_DIR"])
    assert stored.read_text().startswith("scrypt:") and "long enough" not in stored.read_text()
    assert stored.stat().st_mode & 0o077 == 0

    # Only while none is set: now /setup leads to the login page and cannot replace it.
    other = fresh.test_client()
    assert other.get("/setup").headers["Location"] == "/login"
    other.post("/setup", data={"password": "taken over!", "confirm": "taken over!"})
    assert other.post("/api/login", json={"password": "taken over!"}).status_code == 401
    assert other.post("/api/login", json={"password": "long enough"}).status_code == 200


def test_the_setup_page_answers_only_this_machine(fresh):
    remote = fresh.test_client()
    remote.environ_base["REMOTE_ADDR"] = "192.168.1.20"
    answer = remote.get("/setup")
    assert answer.status_code == 403 and "FACES_ADMIN_PASSWORD" in answer.get_data(as_text=True)
    assert remote.post("/setup", data={"password": "x" * 10, "confirm": "x" * 10}).status_code in (400, 403)
    assert auth.stored_hash(fresh.config["DATA_DIR"]) is None


def test_the_env_var_sets_the_password_and_a_new_one_ends_old_sessions(tmp_path, web_recognizer):
    data_dir = tmp_path / "data"
    first = create_app({"TESTING": True, "DATA_DIR": data_dir, "RECOGNIZER": web_recognizer,
                        "ADMIN_PASSWORD": "first password"})
    assert first.config["ADMIN_PASSWORD"] is None  # not kept in the config once hashed
    client = log_in(first.test_client(), "first password")
    assert client.get("/api/people").status_code == 200

    hashed = auth.stored_hash(data_dir)
    create_app({"TESTING": True, "DATA_DIR": data_dir, "RECOGNIZER": web_recognizer, "ADMIN_PASSWORD": "first password"})
    assert auth.stored_hash(data_dir) == hashed  # the same password is not re-hashed

    second = create_app({"TESTING": True, "DATA_DIR": data_dir, "RECOGNIZER": web_recognizer,
                         "ADMIN_PASSWORD": "second password"})
    assert client.get("/api/people").status_code == 401  # the old session is over
    assert second.test_client().post("/api/login", json={"password": "first password"}).status_code == 401
    assert log_in(second.test_client(), "second password").get("/api/people").status_code == 200

    with pytest.raises(ValueError, match="FACES_ADMIN_PASSWORD: the password needs at least 8"):
        create_app({"DATA_DIR": data_dir, "RECOGNIZER": web_recognizer, "ADMIN_PASSWORD": "short"})


# --- logging in and out --------------------------------------------------------------


def test_form_login_sets_a_safe_session_cookie_and_returns_to_the_page(anonymous):
    wrong = form_login(anonymous, "wrong password")
    assert wrong.status_code == 401 and auth.WRONG_PASSWORD in wrong.get_data(as_text=True)
    answer = form_login(anonymous, TEST_PASSWORD, next_path="/people/new")
    assert answer.status_code == 302 and answer.headers["Location"] == "/people/new"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{security.SESSION_COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert anonymous.get("/people/new").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_login_never_redirects_to_another_site(anonymous, target):
    answer = form_login(anonymous, TEST_PASSWORD, next_path=target)
    assert answer.headers["Location"] == "/"


def test_the_cookie_is_secure_behind_tls(tmp_path, web_recognizer):
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": web_recognizer,
                      "BEHIND_TLS": True})
    answer = app.test_client().post("/api/login", json={"password": TEST_PASSWORD})
    assert "Secure" in answer.headers["Set-Cookie"]


def test_api_login_refuses_bad_bodies(anonymous):
    for body in (None, [], "pw", {"password": 12345678}, {"pass": TEST_PASSWORD}):
        answer = anonymous.post("/api/login", json=body)
        assert answer.status_code == 400 and "password" in answer.get_json()["error"], body
    assert anonymous.post("/api/login", json={"password": "x" * 100_000}).status_code == 401


def test_logout_ends_the_session(client):
    assert client.post("/logout", headers={"Accept": "application/json"}).get_json() == {"logged_in": False}
    assert client.get("/api/people").status_code == 401
    assert client.get("/people").status_code == 302


def test_pages_show_a_logout_button(client):
    html = client.get("/people").get_data(as_text=True)
    assert 'action="/logout"' in html and 'id="logout"' in html


# --- failed logins are limited -------------------------------------------------------


def test_failed_logins_are_rate_limited_per_address(anonymous, app):
    for _ in range(5):
        assert anonymous.post("/api/login", json={"password": "guess"}).status_code == 401
    limited = anonymous.post("/api/login", json={"password": TEST_PASSWORD})  # even the right one, for now
    assert limited.status_code == 429 and limited.get_json() == {"error": auth.TOO_MANY}
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    form = form_login(anonymous, TEST_PASSWORD)  # the form shares the limit
    assert form.status_code == 429 and "too many failed logins" in form.get_data(as_text=True)

    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "10.0.0.2"
    assert elsewhere.post("/api/login", json={"password": TEST_PASSWORD}).status_code == 200


def test_the_limit_is_a_setting(tmp_path, web_recognizer):
    config = {"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": web_recognizer}
    strict = create_app({**config, "LOGIN_LIMIT": "2 per hour"}).test_client()
    assert [strict.post("/api/login", json={"password": "guess"}).status_code for _ in range(3)] == [401, 401, 429]
    assert int(strict.post("/api/login", json={"password": "guess"}).headers["Retry-After"]) > 60
    with pytest.raises(ValueError, match="FACES_LOGIN_LIMIT='often' is not a rate"):
        create_app({**config, "LOGIN_LIMIT": "often"})


def test_successful_logins_are_not_limited(app):
    client = app.test_client()
    for _ in range(8):
        assert client.post("/api/login", json={"password": TEST_PASSWORD}).status_code == 200


# --- CSRF ----------------------------------------------------------------------------


def test_every_form_carries_a_csrf_token(client, photo, anonymous):
    person = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    pages = {path: client.get(path).get_data(as_text=True)
             for path in ("/people", "/people/new", person["url"], f"{person['url']}/delete", "/live")}
    pages["/login"] = anonymous.get("/login").get_data(as_text=True)
    forms = 0
    for path, html in pages.items():
        for form in re.findall(r"<form\b.*?</form>", html, flags=re.S):
            forms += 1
            assert 'name="csrf_token"' in form, (path, form[:200])
    assert forms >= 7  # logout on each page, rename, remove photo, add photos, add person, delete, login


def test_state_changes_without_the_token_are_refused(client, photo):
    person = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    token = client.environ_base.pop("HTTP_X_CSRFTOKEN")
    for method, path, kwargs in [
        ("post", "/api/people", {"json": {"name": "Bob"}}),
        ("patch", f"/api/people/{person['id']}", {"json": {"name": "Bob"}}),
        ("delete", f"/api/people/{person['id']}", {}),
        ("post", f"/people/{person['id']}/rename", {"data": {"name": "Bob"}}),
        ("post", f"/people/{person['id']}/delete", {"data": {}}),
        ("post", f"/people/{person['id']}/delete", {"data": {"csrf_token": "forged"}}),
        ("post", "/logout", {}),
    ]:
        answer = getattr(client, method)(path, **kwargs)
        assert answer.status_code == 400, (method, path)
        assert "CSRF token" in answer.get_data(as_text=True), (method, path)
    client.environ_base["HTTP_X_CSRFTOKEN"] = token
    assert [p["name"] for p in client.get("/api/people").get_json()["people"]] == ["Ada"]


def test_a_cross_site_form_post_is_refused(client, photo):
    """What a browser sends for a form on another site: its Origin, no token (the worst case: with our cookie)."""
    person = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    client.environ_base.pop("HTTP_X_CSRFTOKEN")
    evil = {"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
    assert client.post(f"/people/{person['id']}/delete", headers=evil).status_code in (400, 403)
    assert client.post("/people/new", data={"name": "Mallory"}, headers={"Origin": "https://evil.example"}).status_code in (
        400, 403)
    assert [p["name"] for p in client.get("/api/people").get_json()["people"]] == ["Ada"]


# --- instance files and the bind address ---------------------------------------------


def test_an_empty_secret_key_file_is_replaced(tmp_path, web_recognizer):
    data_dir = prepare_data_dir(tmp_path / "data")
    (data_dir / "secret_key").write_text("")  # as a crash during the first start could leave it
    app = create_app({"DATA_DIR": data_dir, "RECOGNIZER": web_recognizer})
    assert len(app.config["SECRET_KEY"]) == 64 == len((data_dir / "secret_key").read_text())
    assert (data_dir / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "host, behind_tls, warns",
    [
        ("127.0.0.1", False, False),
        ("127.0.1.1", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("[::1]", False, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.168.1.5", False, True),
        ("my-host.lan", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_listening_beyond_loopback_without_tls_warns(host, behind_tls, warns):
    warning = security.bind_warning(host, behind_tls)
    assert (warning is not None) == warns
    if warns:
        assert host in warning and "FACES_BEHIND_TLS" in warning


def test_server_logs_the_warning_for_another_address(monkeypatch, caplog, tmp_path):
    import server

    class Stub:
        config = {"DATA_DIR": tmp_path, "BEHIND_TLS": False}
        extensions = {"live": SimpleNamespace(start=lambda: None)}  # server.py starts the live workers

    monkeypatch.setattr(server, "create_app", lambda config: Stub())
    monkeypatch.setattr(server.socketio, "run", lambda app, **kwargs: None)
    with caplog.at_level(logging.WARNING, logger="server"):
        server.main(["--host", "127.0.0.1", "--port", "5999"])
        assert caplog.records == []
        server.main(["--host", "0.0.0.0", "--port", "5999"])
    [record] = caplog.records
    assert record.levelname == "WARNING" and "0.0.0.0" in record.getMessage()
