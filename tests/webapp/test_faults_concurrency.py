"""Faults: two browsers enrolling at once lose neither; WAL lets a long read run beside a write.

Each browser is its own logged-in test client on its own thread, so requests
run in parallel as on the threaded server, each with its own connection.
"""

from __future__ import annotations

import sqlite3
import threading

from web_helpers import ENROLLED, STRANGER, enroll_json, files_field, log_in


def at_once(*calls):
    """Run the calls on threads released together; returns their results in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def stored(app) -> tuple[list, int]:
    conn = sqlite3.connect(app.config["DATABASE"])
    try:
        people = conn.execute(
            "SELECT people.name, COUNT(photos.id) FROM people LEFT JOIN photos ON photos.person_id = people.id "
            "GROUP BY people.id ORDER BY people.name"
        ).fetchall()
    finally:
        conn.close()
    return people, len(list(app.config["DATA_DIR"].glob("*s/*.jpg")))


def test_two_browsers_enrolling_at_once_lose_neither(app, photo):
    first, second = log_in(app.test_client()), log_in(app.test_client())
    for round_ in range(2):
        a, b = at_once(
            lambda: enroll_json(first, f"Ada {round_}", [photo(ENROLLED, i) for i in (1, 2, 3)]),
            lambda: enroll_json(second, f"Bob {round_}", [photo(STRANGER, i) for i in (1, 2, 3)]),
        )
        assert (a.status_code, b.status_code) == (201, 201), (a.get_json(), b.get_json())
    people, files = stored(app)
    assert people == [("Ada 0", 3), ("Ada 1", 3), ("Bob 0", 3), ("Bob 1", 3)]
    assert files == 24 and len(app.extensions["faces"].gallery) == 12


def test_the_same_name_from_two_browsers_makes_one_person(app, photo):
    first, second = log_in(app.test_client()), log_in(app.test_client())
    a, b = at_once(
        lambda: enroll_json(first, "Ada", [photo(ENROLLED, i) for i in (1, 2)]),
        lambda: enroll_json(second, "ada", [photo(ENROLLED, i) for i in (3, 4)]),
    )
    assert sorted([a.status_code, b.status_code]) == [201, 409]
    loser = a if a.status_code == 409 else b
    assert "already a person called" in loser.get_json()["error"]
    people, files = stored(app)
    assert len(people) == 1 and people[0][1] == 2 and files == 4  # the loser's files were removed
    assert len(app.extensions["faces"].gallery) == 2


def test_two_browsers_adding_photos_to_one_person_keep_all(app, client, photo):
    person = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    first, second = log_in(app.test_client()), log_in(app.test_client())
    a, b = at_once(
        lambda: first.post(person["add_photos_url"], data=files_field([photo(ENROLLED, i) for i in (2, 3)]),
                           headers={"Accept": "application/json"}),
        lambda: second.post(f"/api/people/{person['id']}/photos", data=files_field([photo(ENROLLED, i) for i in (4, 5)])),
    )
    assert (a.status_code, b.status_code) == (201, 200)
    people, files = stored(app)
    assert people == [("Ada", 5)] and files == 10


def test_a_long_read_does_not_block_an_enrollment(app, client, photo):
    """WAL: a reader holding a snapshot (an export, say) and a writer both go ahead."""
    enroll_json(client, "Ada", [photo(ENROLLED, 1)])
    reader = sqlite3.connect(app.config["DATABASE"], isolation_level=None)
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM people").fetchone()[0] == 1
    try:
        answer = enroll_json(client, "Bob", [photo(STRANGER, 1)])
        assert answer.status_code == 201
        assert reader.execute("SELECT COUNT(*) FROM people").fetchone()[0] == 1  # its snapshot is unchanged
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert [name for name, _ in stored(app)[0]] == ["Ada", "Bob"]
