"""PostgreSQL holds the instance's secrets and live logins (webapp/instance_store.py), not the data folder.

Two apps on one database with different data folders stand for processes on two machines without a shared
folder: the secret key, the password, the sessions and their ending are the database's.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from web_helpers import PROJECT_DIR, TEST_PASSWORD, log_in, prepare_data_dir

from webapp import auth, create_app, db, instance_store, integrations, security

NEW_PASSWORD = "a new password"
# What SQLite keeps in the data folder and PostgreSQL must not.
INSTANCE_FILES = {"secret_key", "admin_password", "webhook_secret", "sessions", "sessions.lock"}


@pytest.fixture
def start(postgres, web_recognizer):
    """start(data_dir, url=None, **config) -> an app on PostgreSQL (a fresh database unless url); all stopped after."""
    started = []

    def make(data_dir, url=None, **config):
        app = create_app({"TESTING": True, "DATA_DIR": data_dir, "RECOGNIZER": web_recognizer,
                          "DATABASE_URL": url or postgres.new_database(), **config})
        app.extensions["faces"].wait_ready()
        started.append(app)
        return app

    yield make
    for app in started:
        if "changes" in app.extensions:
            app.extensions["changes"].stop()
        instance_store.of(app).close()


@pytest.fixture
def two(start, tmp_path):
    """Apps A and B on one database, each with its own data folder; A's had the test password's file."""
    a = start(prepare_data_dir(tmp_path / "a"))
    b = start(tmp_path / "b", url=a.config["DATABASE"])
    return a, b


def cookie_of(client) -> str:
    return client.get_cookie(security.SESSION_COOKIE_NAME).value


def with_cookie(app, value: str):
    other = app.test_client()
    other.set_cookie(security.SESSION_COOKIE_NAME, value)
    return other


def test_the_apps_share_the_secret_key_and_a_login(two, tmp_path):
    a, b = two
    assert a.config["SECRET_KEY"] == b.config["SECRET_KEY"] and len(a.config["SECRET_KEY"]) == 64
    on_a = log_in(a.test_client())
    assert with_cookie(b, cookie_of(on_a)).get("/api/people").status_code == 200  # A's cookie opens B
    # Nothing of it is a file in either folder (A's old password file is only read, once).
    assert not INSTANCE_FILES & set(os.listdir(tmp_path / "b"))
    assert not (INSTANCE_FILES - {"admin_password"}) & set(os.listdir(tmp_path / "a"))


def test_a_cookie_signed_with_another_key_is_refused(two, start, tmp_path):
    a, _ = two
    elsewhere = start(prepare_data_dir(tmp_path / "c"))  # another database: another key
    assert elsewhere.config["SECRET_KEY"] != a.config["SECRET_KEY"]
    assert with_cookie(elsewhere, cookie_of(log_in(a.test_client()))).get("/api/people").status_code == 401


def test_a_password_set_on_a_logs_in_on_b(start, tmp_path):
    a = start(tmp_path / "a")
    b = start(tmp_path / "b", url=a.config["DATABASE"])
    assert b.test_client().get("/people").headers["Location"] == "/setup"
    setup = a.test_client()
    html = setup.get("/setup").get_data(as_text=True)
    token = html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    done = setup.post("/setup", data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == "/"
    assert b.test_client().post("/api/login", json={"password": "wrong password"}).status_code == 401
    assert log_in(b.test_client(), NEW_PASSWORD).get("/api/people").status_code == 200
    assert b.test_client().get("/setup").headers["Location"] == "/login"  # B knows it is set
    assert not INSTANCE_FILES & set(os.listdir(tmp_path / "a"))


def test_log_out_everywhere_on_a_ends_the_sessions_on_b(two):
    a, b = two
    on_b, on_a = log_in(b.test_client()), log_in(a.test_client())
    kept = cookie_of(on_b)
    answer = on_a.post("/api/logout-all")
    assert answer.get_json() == {"logged_in": False, "sessions_ended": 2}
    assert on_b.get("/api/people").status_code == 401
    assert with_cookie(b, kept).get("/api/people").status_code == 401
    assert log_in(b.test_client()).get("/api/people").status_code == 200  # logging in again works


def test_logout_on_b_ends_that_session_on_a_too(two):
    a, b = two
    on_b, other = log_in(b.test_client()), log_in(a.test_client())
    kept = cookie_of(on_b)
    assert on_b.post("/logout", headers={"Accept": "application/json"}).status_code == 200
    assert with_cookie(a, kept).get("/api/people").status_code == 401
    assert other.get("/api/people").status_code == 200  # only that one


def test_a_password_change_on_a_ends_the_sessions_on_b(two, start):
    a, b = two
    on_b = log_in(b.test_client())
    assert on_b.get("/api/people").status_code == 200
    start(a.config["DATA_DIR"], url=a.config["DATABASE"], ADMIN_PASSWORD=NEW_PASSWORD)  # A restarts with a new one
    assert on_b.get("/api/people").status_code == 401
    assert b.test_client().post("/api/login", json={"password": TEST_PASSWORD}).status_code == 401
    assert log_in(b.test_client(), NEW_PASSWORD).get("/api/people").status_code == 200


def test_sqlite_keeps_the_files_and_gets_no_tables(tmp_path, web_recognizer):
    folder = prepare_data_dir(tmp_path / "data")
    app = create_app({"TESTING": True, "DATA_DIR": folder, "RECOGNIZER": web_recognizer})
    assert isinstance(instance_store.of(app), instance_store.FileStore)
    log_in(app.test_client())
    secret = integrations.webhook_secret(app)
    assert INSTANCE_FILES <= set(os.listdir(folder))
    assert (folder / "secret_key").read_text() == app.config["SECRET_KEY"]
    assert (folder / "webhook_secret").read_text().strip().encode() == secret
    conn = db.connect(folder / "faces.db")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert not {"instance_secrets", "login_sessions"} & tables


def test_threads_creating_a_secret_at_once_get_the_same_one(postgres, tmp_path):
    url = postgres.new_database()
    conn = db.connect(url)
    db.migrate(conn)
    stores = [instance_store.PostgresStore(url, tmp_path) for _ in range(8)]
    for round_ in range(5):
        name = f"race_{round_}"
        gate = threading.Barrier(len(stores))
        got, stored = {}, {}

        def create(index: int) -> None:
            gate.wait()
            got[index] = stores[index].get_or_create(name, lambda: f"made by {index}")
            stored[index] = stores[index].put(f"{name}_once", f"put by {index}", replace=False)

        threads = [threading.Thread(target=create, args=(index,)) for index in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(got) == len(stores) and len(set(got.values())) == 1, got
        assert conn.execute("SELECT value FROM instance_secrets WHERE name = ?", (name,)).fetchone()[0] == got[0]
        assert sorted(stored.values()) == [False] * (len(stores) - 1) + [True]  # put(replace=False): one wins
    for store in stores:
        store.close()
    conn.close()


RACE = """
import sys, time
from webapp import instance_store
url, folder, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = instance_store.PostgresStore(url, folder)
time.sleep(max(0.0, at - time.time()))
print(store.get_or_create("secret_key", lambda: folder) == store.get("secret_key"), store.get("secret_key"))
"""


def test_two_processes_creating_the_secret_key_at_once_get_the_same_one(postgres, tmp_path):
    url = postgres.new_database()
    conn = db.connect(url)
    db.migrate(conn)
    at = time.time() + 3  # both have imported by then
    runs = [subprocess.Popen([sys.executable, "-c", RACE, url, f"made-by-{index}", str(at)], cwd=PROJECT_DIR,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(2)]
    answers = [run.communicate(timeout=60)[0].split() for run in runs]
    assert answers[0] == answers[1] and answers[0][0] == "True", answers
    assert answers[0][1] in ("made-by-0", "made-by-1")
    assert conn.execute("SELECT count(*) FROM instance_secrets").fetchone()[0] == 1
    conn.close()


def test_switching_to_postgres_takes_over_the_files_once(postgres, start, web_recognizer, tmp_path, caplog):
    folder = prepare_data_dir(tmp_path / "data")
    sqlite_app = create_app({"TESTING": True, "DATA_DIR": folder, "RECOGNIZER": web_recognizer})
    before = log_in(sqlite_app.test_client())
    cookie, webhook = cookie_of(before), integrations.webhook_secret(sqlite_app)
    assert {"secret_key", "admin_password", "webhook_secret", "sessions"} <= set(os.listdir(folder))
    files_before = {name: (folder / name).read_bytes() for name in INSTANCE_FILES & set(os.listdir(folder))}

    caplog.set_level(logging.INFO, logger="webapp.instance_store")
    url = postgres.new_database()
    moved = start(folder, url=url)
    assert [r.getMessage() for r in caplog.records if "took over" in r.getMessage()] == [
        f"took over from the data folder {folder} into the database, once: secret_key, admin_password, "
        "webhook_secret, 1 session(s) (the files stay, unused while FACES_DATABASE_URL is set)"]
    assert moved.config["SECRET_KEY"] == sqlite_app.config["SECRET_KEY"]
    assert integrations.webhook_secret(moved) == webhook
    assert with_cookie(moved, cookie).get("/api/people").status_code == 200  # the login survived the switch
    assert log_in(moved.test_client()).get("/api/people").status_code == 200  # and the password

    # From now on the rows are what counts: the files are left as they were, and never read again.
    assert with_cookie(moved, cookie).post("/api/logout-all", headers={"X-CSRFToken": before.environ_base[
        "HTTP_X_CSRFTOKEN"]}).get_json() == {"logged_in": False, "sessions_ended": 2}
    assert {name: (folder / name).read_bytes() for name in files_before} == files_before
    caplog.clear()
    again = start(folder, url=url)
    assert not [r for r in caplog.records if "took over" in r.getMessage()]
    assert with_cookie(again, cookie).get("/api/people").status_code == 401  # the file's session stays ended


def test_the_database_value_wins_over_another_folder_file(two, tmp_path, start):
    a, _ = two
    other = prepare_data_dir(tmp_path / "other")
    (other / "secret_key").write_text("f" * 64)
    c = start(other, url=a.config["DATABASE"])
    assert c.config["SECRET_KEY"] == a.config["SECRET_KEY"] != "f" * 64


def test_the_overrides_still_win(two, start):
    a, _ = two
    c = start(a.config["DATA_DIR"], url=a.config["DATABASE"], SECRET_KEY="given", WEBHOOK_SECRET="hooks")
    assert c.config["SECRET_KEY"] == "given" and integrations.webhook_secret(c) == b"hooks"
    assert instance_store.of(c).get("secret_key") == a.config["SECRET_KEY"]  # the stored one is left alone


def test_expired_sessions_are_pruned_and_refused(two, monkeypatch):
    a, b = two
    store = instance_store.of(a)
    on_a = log_in(a.test_client())
    assert len(store.sessions()) == 1
    real = auth._now
    monkeypatch.setattr(auth, "_now", lambda: real() + 12 * 3600 + 60)
    assert on_a.get("/api/people").status_code == 401  # past SESSION_HOURS
    log_in(b.test_client())  # a new login prunes the expired row
    assert len(store.sessions()) == 1


def test_no_secret_reaches_the_logs_or_the_answers(two, start, caplog):
    a, b = two
    caplog.set_level(logging.DEBUG)
    client = log_in(a.test_client())
    with client.session_transaction() as session:
        session_id = session[auth.SESSION_ID_KEY]
    answers = [client.get("/api/people"), b.test_client().post("/api/login", json={"password": "not it at all"}),
               with_cookie(b, cookie_of(client)).get("/integrations"), client.post("/api/logout-all")]
    c = start(a.config["DATA_DIR"], url=a.config["DATABASE"], ADMIN_PASSWORD=NEW_PASSWORD,
              WEBHOOK_URLS="http://127.0.0.1:9/hook")
    on_c = log_in(c.test_client(), NEW_PASSWORD)
    answers += [on_c.get("/api/integrations"), on_c.post("/logout", headers={"Accept": "application/json"})]
    store = instance_store.of(a)
    secrets = [a.config["SECRET_KEY"], store.get("admin_password"), store.get("webhook_secret"), session_id,
               auth._digest(session_id), TEST_PASSWORD, NEW_PASSWORD]
    assert all(secrets)
    said = caplog.text + "".join(answer.get_data(as_text=True) for answer in answers)
    assert [secret for secret in secrets if secret in said] == []
    # The one place meant to show the webhook secret: the Integrations page, to the admin.
    page = log_in(c.test_client(), NEW_PASSWORD).get("/integrations").get_data(as_text=True)
    assert store.get("webhook_secret") in page


def test_a_dropped_connection_is_opened_again_and_a_dead_database_is_a_503(two, postgres, monkeypatch):
    a, _ = two
    client = log_in(a.test_client())
    name = a.config["DATABASE"].rsplit("/", 1)[1]
    postgres.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    assert client.get("/api/people").status_code == 200  # the store's kept connection was opened again

    def down(*args, **kwargs):
        raise sqlite3.OperationalError("connection refused")

    instance_store.of(a).close()
    monkeypatch.setattr(db, "connect", down)
    answer = client.get("/socket.io/?EIO=4&transport=polling")
    assert answer.status_code == 503 and answer.get_json() == {"error": auth.DATABASE_DOWN}
    assert client.get("/api/people").status_code == 503  # pages and the API: the app's own 503
