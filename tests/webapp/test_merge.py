"""Merge, move and split: rows, corrections and history follow, and the gallery in memory matches the rows at once."""

from __future__ import annotations

import numpy as np
import pytest
from web_helpers import ENROLLED, STRANGER, enroll_json

from webapp import create_app, inbox_store, people_store
from webapp import db as app_db

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL


@pytest.fixture
def people(client, photo):
    """Ada (ENROLLED 1-2), Ada again by mistake (ENROLLED 3-4, with a correction and a sighting), Bob (STRANGER 1-2)."""
    ada = enroll_json(client, "Ada", [photo(ENROLLED, 1), photo(ENROLLED, 2)]).get_json()["person"]
    twin = enroll_json(client, "Ada L.", [photo(ENROLLED, 3), photo(ENROLLED, 4)]).get_json()["person"]
    bob = enroll_json(client, "Bob", [photo(STRANGER, 1), photo(STRANGER, 2)]).get_json()["person"]
    return {name: client.get(f"/api/people/{p['id']}").get_json() for name, p in
            (("ada", ada), ("twin", twin), ("bob", bob))}


def _db(app):
    return app_db.connect(app.config["DATABASE"])


def _add_history_and_correction(app, person_id: int) -> None:
    conn = _db(app)
    try:
        people_store.add_correction(conn, person_id, np.ones(128, np.float32), np.ones(128, np.float32) / 128**0.5,
                                    app.extensions["faces"].backbone)
        inbox_store.write_sightings(conn, [inbox_store.Sighting(person_id, "Ada L.", 1e9, 1e9 + 5, frames=7,
                                                                best_similarity=0.97)])
    finally:
        conn.close()


def owners(app) -> dict[int, int]:
    conn = _db(app)
    try:
        return {row["id"]: row["person_id"] for row in conn.execute("SELECT id, person_id FROM photos")}
    finally:
        conn.close()


def assert_gallery_matches_rows(app, web_recognizer) -> None:
    """The gallery in memory answers every stored embedding (and random probes) as one loaded afresh does."""
    conn = _db(app)
    stored = [app_db.from_blob(row["embedding"]) for row in conn.execute("SELECT embedding FROM photos ORDER BY id")]
    conn.close()
    probes = np.stack(stored + list(np.random.default_rng(0).standard_normal((5, 128)).astype(np.float32)))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    live = app.extensions["faces"]
    fresh = create_app({"TESTING": True, "DATA_DIR": app.config["DATA_DIR"],
                        "DATABASE_URL": app.config["DATABASE_URL"], "RECOGNIZER": web_recognizer})
    again = fresh.extensions["faces"]
    assert live.names == again.names and len(live.gallery) == len(again.gallery)
    assert live.gallery.person_ids == again.gallery.person_ids
    for mine, theirs in zip(live.gallery.match(probes, 0.0), again.gallery.match(probes, 0.0)):
        assert mine.candidate_id == theirs.candidate_id
        assert mine.similarity == pytest.approx(theirs.similarity, abs=1e-5)


# --- merge -----------------------------------------------------------------------------


def test_a_merge_moves_photos_corrections_and_history_and_answers_the_merged_person(app, client, people,
                                                                                    web_recognizer):
    ada, twin, bob = people["ada"], people["twin"], people["bob"]
    _add_history_and_correction(app, twin["id"])
    version = app.extensions["faces"].gallery_version

    answer = client.post(f"/api/people/{twin['id']}/merge", json={"into": ada["id"]})
    assert answer.status_code == 200, answer.get_json()
    merged = answer.get_json()
    assert (merged["id"], merged["name"], merged["photo_count"]) == (ada["id"], "Ada", 4)

    assert client.get(f"/api/people/{twin['id']}").status_code == 404
    mine = {p["id"] for p in client.get(f"/api/people/{ada['id']}").get_json()["photos"]}
    assert mine == {p["id"] for p in ada["photos"] + twin["photos"]}
    conn = _db(app)
    (correction,) = conn.execute("SELECT person_id FROM corrections").fetchall()
    (sighting,) = conn.execute("SELECT person_id, name, frames FROM sightings").fetchall()
    conn.close()
    assert correction["person_id"] == ada["id"]
    assert (sighting["person_id"], sighting["name"], sighting["frames"]) == (ada["id"], "Ada", 7)
    assert client.get(f"/history?person={ada['id']}").get_data(as_text=True).count("<tr>") == 2  # head + 1 row

    service = app.extensions["faces"]
    assert twin["id"] not in service.names and service.gallery.person_ids == {ada["id"], bob["id"]}
    assert service.gallery_version > version  # live streams drop their labels
    assert_gallery_matches_rows(app, web_recognizer)


def test_bad_merges_are_4xx_and_change_nothing(app, client, people):
    ada, twin = people["ada"], people["twin"]
    before = owners(app)
    for url, body, status in [
        (f"/api/people/{ada['id']}/merge", {"into": ada["id"]}, 400),  # into themselves
        (f"/api/people/{ada['id']}/merge", {"into": 999}, 404),  # into nobody
        ("/api/people/999/merge", {"into": ada["id"]}, 404),  # nobody into someone
        (f"/api/people/{ada['id']}/merge", {}, 400),
        (f"/api/people/{ada['id']}/merge", {"into": "x"}, 400),
        (f"/api/people/{ada['id']}/merge", {"into": True}, 400),
        (f"/api/people/{ada['id']}/merge", {"into": -1}, 400),
        (f"/api/people/{ada['id']}/merge", {"into": 2**64}, 400),
        (f"/api/people/{ada['id']}/merge", [twin["id"]], 400),
    ]:
        answer = client.post(url, json=body)
        assert answer.status_code == status and "error" in answer.get_json(), (body, answer.get_json())
    assert "themselves" in client.post(f"/api/people/{ada['id']}/merge", json={"into": ada["id"]}).get_json()["error"]
    assert owners(app) == before and len(app.extensions["faces"].names) == 3


# --- move ------------------------------------------------------------------------------


def test_patching_a_photo_moves_it_to_another_person(app, client, people, web_recognizer):
    ada, bob = people["ada"], people["bob"]
    photo_id = ada["photos"][0]["id"]
    answer = client.patch(f"/api/photos/{photo_id}", json={"person_id": bob["id"]})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["id"] == photo_id and answer.get_json()["person_id"] == bob["id"]
    assert owners(app)[photo_id] == bob["id"]
    assert client.get(f"/api/people/{ada['id']}").get_json()["photo_count"] == 1
    assert client.get(f"/api/people/{bob['id']}").get_json()["photo_count"] == 3
    assert_gallery_matches_rows(app, web_recognizer)

    # Moving Ada's last photo leaves her enrolled with none, and the gallery without her.
    client.patch(f"/api/photos/{ada['photos'][1]['id']}", json={"person_id": bob["id"]})
    assert ada["id"] not in app.extensions["faces"].gallery.person_ids
    assert_gallery_matches_rows(app, web_recognizer)


def test_bad_moves_are_4xx_and_change_nothing(app, client, people):
    ada = people["ada"]
    photo_id = ada["photos"][0]["id"]
    before = owners(app)
    for url, body, status in [
        (f"/api/photos/{photo_id}", {"person_id": 999}, 404),  # to nobody
        ("/api/photos/999", {"person_id": ada["id"]}, 404),
        (f"/api/photos/{photo_id}", {}, 400),
        (f"/api/photos/{photo_id}", {"person_id": "1e3"}, 400),
        (f"/api/photos/{photo_id}", {"person_id": None}, 400),
        (f"/api/photos/{photo_id}", "text", 400),
    ]:
        answer = client.patch(url, json=body)
        assert answer.status_code == status and "error" in answer.get_json(), (body, answer.get_json())
    assert owners(app) == before
    # To the person it already belongs to: nothing to do, and no error.
    assert client.patch(f"/api/photos/{photo_id}", json={"person_id": ada["id"]}).status_code == 200


# --- split -----------------------------------------------------------------------------


def test_chosen_photos_become_a_new_person(app, client, people, web_recognizer):
    twin = people["twin"]
    chosen = [twin["photos"][0]["id"], people["bob"]["photos"][0]["id"]]
    answer = client.post("/api/people", json={"name": "Cy", "photo_ids": chosen})
    assert answer.status_code == 201, answer.get_json()
    cy = answer.get_json()
    assert cy["name"] == "Cy" and cy["photo_count"] == 2
    assert sorted(p["id"] for p in client.get(f"/api/people/{cy['id']}").get_json()["photos"]) == sorted(chosen)
    assert client.get(f"/api/people/{twin['id']}").get_json()["photo_count"] == 1
    assert app.extensions["faces"].names[cy["id"]] == "Cy"
    assert_gallery_matches_rows(app, web_recognizer)


def test_bad_splits_are_4xx_and_create_nobody(app, client, people):
    photo_id = people["ada"]["photos"][0]["id"]
    before = owners(app)
    for body, status in [
        ({"name": "Ada", "photo_ids": [photo_id]}, 409),  # the name is taken
        ({"name": "Cy", "photo_ids": [photo_id, 999]}, 404),  # one photo is missing
        ({"name": "Cy", "photo_ids": []}, 400),
        ({"name": "Cy", "photo_ids": "1"}, 400),
        ({"name": "Cy", "photo_ids": [True]}, 400),
        ({"name": "Cy", "photo_ids": list(range(1, 10_002))}, 400),
        ({"name": "", "photo_ids": [photo_id]}, 400),
    ]:
        answer = client.post("/api/people", json=body)
        assert answer.status_code == status and "error" in answer.get_json(), (body, answer.get_json())
    assert owners(app) == before and [p["name"] for p in client.get("/api/people").get_json()["people"]] == [
        "Ada", "Ada L.", "Bob"]


# --- the pages -------------------------------------------------------------------------


def test_the_person_page_offers_move_split_and_a_confirmed_merge(app, client, people, web_recognizer):
    ada, twin, bob = people["ada"], people["twin"], people["bob"]
    _add_history_and_correction(app, twin["id"])
    html = client.get(twin["url"]).get_data(as_text=True)
    assert f'action="/people/{twin["id"]}/photos/regroup"' in html and 'form="regroup"' in html
    assert f'action="/people/{twin["id"]}/merge"' in html and "js/people.js" in html
    assert f'<option value="{ada["id"]}">Ada</option>' in html and f'<option value="{twin["id"]}">' not in html

    # The merge asks first (GET changes nothing), then merges on POST.
    page = client.get(f"/people/{twin['id']}/merge?into={ada['id']}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="confirm-merge"' in text
    assert "2 photos, 1 correction and 1 history row become Ada" in " ".join(text.split())
    assert len(owners(app)) == 6 and client.get(f"/api/people/{twin['id']}").status_code == 200
    answer = client.post(f"/people/{twin['id']}/merge", data={"into": str(ada["id"])})
    assert answer.status_code == 302 and answer.headers["Location"] == ada["url"]
    assert "Ada L. was merged into Ada" in client.get(ada["url"]).get_data(as_text=True)
    assert client.get(f"/api/people/{twin['id']}").status_code == 404

    # Move two ticked photos to Bob, then make one of Bob's a new person.
    ada_photos = [p["id"] for p in client.get(f"/api/people/{ada['id']}").get_json()["photos"]]
    answer = client.post(f"/people/{ada['id']}/photos/regroup",
                         data={"photo": [str(i) for i in ada_photos[:2]], "action": "move", "into": str(bob["id"])})
    assert answer.status_code == 302 and answer.headers["Location"] == ada["url"]
    assert "2 photo(s) moved to Bob." in client.get(ada["url"]).get_data(as_text=True)
    assert all(owners(app)[i] == bob["id"] for i in ada_photos[:2])
    answer = client.post(f"/people/{bob['id']}/photos/regroup",
                         data={"photo": str(ada_photos[0]), "action": "new", "name": "Dee"})
    dee = [p for p in client.get("/api/people").get_json()["people"] if p["name"] == "Dee"]
    assert len(dee) == 1 and answer.headers["Location"] == dee[0]["url"] and dee[0]["photo_count"] == 1
    assert_gallery_matches_rows(app, web_recognizer)


def test_the_pages_refuse_bad_regroups_with_a_message(app, client, people):
    ada, bob = people["ada"], people["bob"]
    before = owners(app)
    mine, theirs = str(ada["photos"][0]["id"]), str(bob["photos"][0]["id"])
    for data, message in [
        ({"action": "move", "into": str(bob["id"])}, "tick the photos first"),
        ({"photo": theirs, "action": "move", "into": str(bob["id"])}, "no longer Ada&#39;s"),
        ({"photo": mine, "action": "move", "into": str(ada["id"])}, "already Ada&#39;s"),
        ({"photo": mine, "action": "move", "into": "999"}, "no person with id 999"),
        ({"photo": mine, "action": "move", "into": "x"}, "must be an id"),
        ({"photo": mine, "action": "new", "name": "Bob"}, "already a person called Bob"),
        ({"photo": "abc", "action": "new", "name": "Cy"}, "must be an id"),
    ]:
        answer = client.post(f"/people/{ada['id']}/photos/regroup", data=data)
        assert answer.status_code == 302
        assert message in client.get(ada["url"]).get_data(as_text=True), message
    for query, message in [(f"into={ada['id']}", "cannot be merged into themselves"), ("into=999", "no person"),
                           ("", "must be an id")]:
        answer = client.get(f"/people/{ada['id']}/merge?{query}")
        assert answer.status_code == 302 and message in client.get(ada["url"]).get_data(as_text=True)
    assert client.get(f"/people/999/merge?into={ada['id']}").status_code == 404
    assert owners(app) == before
