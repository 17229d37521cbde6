"""Security review (issue 14): first-start takeover, sessions that outlive logout, framing and sniffing headers."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from web_helpers import TEST_PASSWORD, log_in, prepare_data_dir

from webapp import auth, create_app, security, settings

PASSWORD = "long enough"
REBIND_HOST = "rebind.attacker.example:5096"


@pytest.fixture
def fresh(tmp_path, web_recognizer, caplog):
    """An app on its first start (no admin password), with the server log captured."""
    caplog.set_level(logging.INFO, logger="webapp.auth")
    return create_app({"TESTING": True, "DATA_DIR": tmp_path / "fresh", "RECOGNIZER": web_recognizer})


def logged_token(caplog) -> str:
    """The set-up token, read from the server log as a person would."""
    records = caplog.get_records("setup") + caplog.records  # the app started in the fixture
    found = [re.search(r"setup token: ([\w-]+)", record.getMessage()) for record in records]
    tokens = [match.group(1) for match in found if match]
    assert len(tokens) == 1, [record.getMessage() for record in records]
    return tokens[0]


def csrf_field(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def setup_form(client, **headers) -> dict:
    html = client.get("/setup", headers=headers).get_data(as_text=True)
    return {"password": PASSWORD, "confirm": PASSWORD, "csrf_token": csrf_field(html)}


# --- 1. first start ----------------------------------------------------------------------


def test_a_foreign_host_header_gets_no_setup_form(fresh):
    """DNS rebinding: the browser talks to 127.0.0.1 but sends the attacker's host name."""
    client = fresh.test_client()
    answer = client.get("/setup", headers={"Host": REBIND_HOST})
    assert answer.status_code == 403
    assert "setup token" in answer.get_data(as_text=True)
    # Without the form there is no CSRF token for that origin; and the view itself refuses the post too.
    form = {"password": PASSWORD, "confirm": PASSWORD}
    assert client.post("/setup", data=form, headers={"Host": REBIND_HOST}).status_code in (400, 403)
    fresh.config["WTF_CSRF_ENABLED"] = False
    assert client.post("/setup", data=form, headers={"Host": REBIND_HOST}).status_code == 403
    assert auth.stored_hash(fresh.config["DATA_DIR"]) is None


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host"])
def test_a_forwarded_request_is_not_local(fresh, header):
    """A local reverse proxy makes every client look like 127.0.0.1 with a local Host; its headers give it away."""
    client = fresh.test_client()
    form = setup_form(client)
    headers = {header: "192.168.1.20"}
    assert client.get("/setup", headers=headers).status_code == 403
    assert client.post("/setup", data=form, headers=headers).status_code == 403
    assert auth.stored_hash(fresh.config["DATA_DIR"]) is None


@pytest.fixture
def proxied(tmp_path, web_recognizer):
    """An app with a password, behind one trusted reverse proxy on this machine."""
    return create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": web_recognizer,
                       "TRUSTED_PROXIES": 1})


def failed_logins(client, address: str, times: int) -> list[int]:
    headers = {"X-Forwarded-For": address}
    return [client.post("/api/login", json={"password": "guess"}, headers=headers).status_code for _ in range(times)]


def test_behind_a_trusted_proxy_each_client_has_its_own_login_limit(proxied):
    client = proxied.test_client()  # every request reaches the app from the proxy's 127.0.0.1
    assert failed_logins(client, "192.168.1.66", 6) == [401] * 5 + [429]
    assert failed_logins(client, "192.168.1.20", 1) == [401]  # another client is not locked out
    right = client.post("/api/login", json={"password": TEST_PASSWORD}, headers={"X-Forwarded-For": "192.168.1.20"})
    assert right.status_code == 200


def test_without_the_setting_a_forwarded_address_changes_nothing(tmp_path, web_recognizer):
    """A client can't dodge the limit by sending its own X-Forwarded-For."""
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": web_recognizer})
    client = app.test_client()
    codes = [failed_logins(client, f"10.0.0.{i}", 1)[0] for i in range(6)]
    assert codes == [401] * 5 + [429]


def test_a_client_can_not_pose_as_the_proxy_it_passes_through(proxied):
    """The proxy appends the address it saw; what the client wrote before it is ignored."""
    client = proxied.test_client()
    spoofed = [client.post("/api/login", json={"password": "guess"},
                           headers={"X-Forwarded-For": f"10.0.0.{i}, 192.168.1.66"}).status_code for i in range(6)]
    assert spoofed == [401] * 5 + [429]


def test_setup_behind_a_trusted_proxy_is_for_this_machine_only(tmp_path, web_recognizer):
    fresh = create_app({"TESTING": True, "DATA_DIR": tmp_path / "fresh", "RECOGNIZER": web_recognizer,
                        "TRUSTED_PROXIES": 1})
    client = fresh.test_client()
    assert client.get("/setup", headers={"X-Forwarded-For": "192.168.1.20"}).status_code == 403
    local = {"X-Forwarded-For": "127.0.0.1"}
    form = setup_form(client, **local)
    assert client.post("/setup", data=form, headers=local).status_code in (302, 303)
    assert auth.stored_hash(fresh.config["DATA_DIR"]) is not None


def test_the_proxy_count_must_not_be_negative(tmp_path, web_recognizer):
    with pytest.raises(ValueError, match="FACES_TRUSTED_PROXIES=-1"):
        create_app({"TESTING": True, "DATA_DIR": tmp_path / "d", "RECOGNIZER": web_recognizer, "TRUSTED_PROXIES": -1})


@pytest.mark.parametrize("host", ["localhost:5000", "127.0.0.1:5000", "127.0.0.2", "[::1]:5000", "LOCALHOST"])
def test_loopback_hosts_get_the_form_without_a_token(fresh, host):
    client = fresh.test_client()
    form = setup_form(client, Host=host)
    answer = client.post("/setup", data=form, headers={"Host": host})
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    assert auth.stored_hash(fresh.config["DATA_DIR"]) is not None


def test_a_loopback_host_from_another_peer_is_refused(fresh):
    client = fresh.test_client()
    client.environ_base["REMOTE_ADDR"] = "192.168.1.20"
    assert client.get("/setup", headers={"Host": "localhost:5000"}).status_code == 403


def test_the_logged_setup_token_lets_another_host_set_the_password(fresh, caplog):
    token = logged_token(caplog)
    remote = fresh.test_client()
    remote.environ_base["REMOTE_ADDR"] = "192.168.1.20"
    headers = {"Host": "faces.lan"}
    assert remote.get("/setup?token=wrong", headers=headers).status_code == 403
    page = remote.get(f"/setup?token={token}", headers=headers)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f'name="token" value="{token}"' in html
    form = {"password": PASSWORD, "confirm": PASSWORD, "csrf_token": csrf_field(html)}
    assert remote.post("/setup", data={**form, "token": "wrong"}, headers=headers).status_code == 403
    assert auth.stored_hash(fresh.config["DATA_DIR"]) is None
    done = remote.post("/setup", data={**form, "token": token}, headers=headers)
    assert done.status_code == 302 and auth.stored_hash(fresh.config["DATA_DIR"]) is not None


def test_no_token_is_logged_once_a_password_is_set(tmp_path, web_recognizer, caplog):
    caplog.set_level(logging.INFO, logger="webapp.auth")
    create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": web_recognizer})
    assert not any("setup token" in record.getMessage() for record in caplog.records)


# --- 2. sessions ---------------------------------------------------------------------------


def saved_cookie(client) -> str:
    return client.get_cookie(security.SESSION_COOKIE_NAME).value


def with_cookie(app, value: str):
    thief = app.test_client()
    thief.set_cookie(security.SESSION_COOKIE_NAME, value)
    return thief


def test_a_cookie_saved_before_logout_is_refused_after_it(app, client):
    cookie = saved_cookie(client)
    token = client.environ_base["HTTP_X_CSRFTOKEN"]
    assert with_cookie(app, cookie).get("/api/people").status_code == 200
    assert client.post("/logout", headers={"Accept": "application/json"}).status_code == 200
    replay = with_cookie(app, cookie)
    assert replay.get("/api/people").status_code == 401
    assert replay.post("/api/people", json={"name": "Mallory"}, headers={"X-CSRFToken": token}).status_code == 401
    assert replay.get("/people").status_code == 302


def test_logout_ends_only_that_session(app, client):
    other = log_in(app.test_client())
    client.post("/logout", headers={"Accept": "application/json"})
    assert other.get("/api/people").status_code == 200


def test_log_out_everywhere_ends_every_session(app, client):
    other = log_in(app.test_client())
    cookie = saved_cookie(other)
    answer = client.post("/api/logout-all")
    assert answer.status_code == 200 and answer.get_json() == {"logged_in": False, "sessions_ended": 2}
    for session in (client, other, with_cookie(app, cookie)):
        assert session.get("/api/people").status_code == 401
    assert log_in(app.test_client()).get("/api/people").status_code == 200  # logging in again works


def test_the_log_out_everywhere_button_sits_by_logout(app, client):
    html = client.get("/people").get_data(as_text=True)
    assert 'action="/logout-all"' in html and 'id="logout-all"' in html
    form = {"csrf_token": csrf_field(html)}
    other = log_in(app.test_client())
    answer = client.post("/logout-all", data=form)
    assert answer.status_code == 302 and answer.headers["Location"] == "/login"
    assert other.get("/api/people").status_code == 401


def test_a_new_password_ends_every_session(tmp_path, web_recognizer):
    config = {"TESTING": True, "DATA_DIR": tmp_path / "data", "RECOGNIZER": web_recognizer}
    first = create_app({**config, "ADMIN_PASSWORD": "first password"})
    client = log_in(first.test_client(), "first password")
    cookie = saved_cookie(client)
    create_app({**config, "ADMIN_PASSWORD": "second password"})
    back = create_app({**config, "ADMIN_PASSWORD": "first password"})  # the old password again
    assert with_cookie(back, cookie).get("/api/people").status_code == 401


def test_sessions_last_session_hours(tmp_path, web_recognizer, monkeypatch):
    assert settings.from_env({})["SESSION_HOURS"] == 12
    assert settings.from_env({"FACES_SESSION_HOURS": "2"})["SESSION_HOURS"] == 2
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "RECOGNIZER": web_recognizer})
    assert app.permanent_session_lifetime == timedelta(hours=12)
    client = log_in(app.test_client())
    assert client.get("/api/people").status_code == 200
    # The server keeps each login's start: past SESSION_HOURS it is refused even with a fresh cookie.
    real = auth._now
    monkeypatch.setattr(auth, "_now", lambda: real() + 12 * 3600 + 60)
    assert client.get("/api/people").status_code == 401


def test_session_hours_must_be_positive(tmp_path, web_recognizer):
    with pytest.raises(ValueError, match="SESSION_HOURS"):
        create_app({"TESTING": True, "DATA_DIR": tmp_path / "data", "RECOGNIZER": web_recognizer, "SESSION_HOURS": 0})


def test_the_session_file_is_private(app, client):
    path = auth.sessions_path(app.config["DATA_DIR"])
    assert path.stat().st_mode & 0o077 == 0
    with client.session_transaction() as session:
        session_id = session[auth.SESSION_ID_KEY]
    assert len(path.read_text().splitlines()) == 1 and session_id not in path.read_text()  # only a hash of it


# --- 5. headers ----------------------------------------------------------------------------

HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def test_every_response_forbids_framing_and_sniffing(client, anonymous):
    answers = [
        client.get("/people"),
        client.get("/api/people"),
        client.get("/no-such-page"),
        client.post("/api/people", json=[]),
        anonymous.get("/login"),
        anonymous.get("/people"),
        anonymous.get("/api/people"),
        anonymous.get("/static/css/app.css"),
        anonymous.get("/socket.io/?EIO=4&transport=polling"),  # answered before Flask by the socket gate
        client.get("/socket.io/?EIO=4&transport=polling"),  # answered by Engine.IO
    ]
    for answer in answers:
        for name, value in HEADERS.items():
            assert answer.headers.get(name) == value, (answer.request.path, answer.status_code, name)
        assert len(answer.headers.getlist("X-Frame-Options")) == 1
    assert anonymous.get("/api/people").headers["X-Content-Type-Options"] == "nosniff"
