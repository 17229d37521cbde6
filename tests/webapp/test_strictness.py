"""Your own strictness (issue 16 item 3): the outlook from the user's own gallery, applied at once and kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
from web_helpers import ENROLLED, STRANGER, enroll_json, log_in, prepare_data_dir

from fakes import fake_recognizer
from model.open_set import OpenSetRule
from webapp import create_app, strictness

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL


def clusters(people: int, photos: int, spread: float, seed: int = 0, dim: int = 32):
    """Unit vectors: `photos` per person around a random centre, noise `spread`; and person ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    vectors = np.repeat(centres, photos, axis=0) + spread * rng.normal(size=(people * photos, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), np.repeat(np.arange(1, people + 1), photos).astype(np.int64)


# --- the outlook, on synthetic galleries -------------------------------------------------


def test_looser_names_more_people_and_more_strangers():
    vectors, ids = clusters(people=12, photos=4, spread=0.25)
    strangers, _ = clusters(people=30, photos=1, spread=0.0, seed=1)
    rows = strictness.outlook(vectors, ids, strangers, 0.6)
    named = [row.members_named for row in rows]
    stranger_rate = [row.strangers_per_1000 for row in rows]
    assert [row.offset for row in rows] == list(strictness.CHOICES)
    assert named == sorted(named, reverse=True) and stranger_rate == sorted(stranger_rate, reverse=True)
    assert named[0] > named[-1] or named[0] == 1.0
    at_zero = rows[strictness.CHOICES.index(0.0)]
    assert at_zero.members_named > 0.9 and at_zero.strangers_per_1000 < 50


def test_a_photo_is_judged_against_its_person_without_it():
    """Two people, two photos each: a photo far from its twin is not named, however close it is to itself."""
    a1, a2 = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]  # person 1's photos: orthogonal
    b = np.array([0, 0, 1, 0], dtype=np.float32)
    vectors = np.stack([a1, a2, b, b])
    rows = strictness.outlook(vectors, np.array([1, 1, 2, 2]), np.zeros((0, 4), np.float32), 0.5, offsets=(0.0,))
    assert rows[0].members_named == pytest.approx(0.5)  # person 2's two photos yes, person 1's no
    assert rows[0].members_wrong == 0.0
    # Strangers: each person taken out in turn; person 1's photos are far from person 2 and the reverse.
    assert rows[0].strangers_per_1000 == 0.0


def test_nothing_to_judge_is_said_so():
    vectors, ids = clusters(people=1, photos=1, spread=0.1)
    row = strictness.outlook(vectors, ids, np.zeros((0, vectors.shape[1]), np.float32), 0.5, offsets=(0.0,))[0]
    assert row.members_named is None and row.strangers_per_1000 is None


def test_limits_follow_the_open_set_rule():
    rule = OpenSetRule(base=(0.5, 0.4, 0.3), per_log_people=0.01)
    got = strictness.limits(rule, np.array([1, 2, 3, 9]), people=4)
    assert got == pytest.approx(np.array([0.5, 0.4, 0.3, 0.3]) + 0.01 * np.log(4))


def test_enrollment_hints():
    vectors, ids = clusters(people=3, photos=3, spread=0.1)
    vectors = np.concatenate([vectors, vectors[:1]])  # person 1 gets a fourth photo
    ids = np.concatenate([ids, ids[:1]])
    twin = vectors[3:6] * 0.0 + vectors[0:3]  # person 2 made a copy of person 1: look-alikes
    vectors[3:6] = twin
    found = {e.person_id: e for e in strictness.enrollments(vectors, ids, {1: ["front"] * 4}, 0.5, 0.0)}
    assert found[1].photos == 4 and found[1].poses == ("front",)
    assert found[1].nearest_id == 2 and "looks much like" in found[1].hint
    assert found[3].hint is None


@pytest.mark.parametrize("raw", ["strict", float("nan"), 0.5, -1, True, None, [0.1]])
def test_bad_strictness_values_are_refused(raw):
    with pytest.raises(strictness.StrictnessError):
        strictness.check(raw)


# --- the page and the API ---------------------------------------------------------------


@pytest.fixture
def loose_app(tmp_path, database_url):
    """An app on the fakes with no fixed threshold, so strictness applies."""
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "SECRET_KEY": "test",
                      "DATABASE_URL": database_url,
                      "RECOGNIZER": fake_recognizer()})
    app.extensions["faces"].wait_ready()
    return app


def recognize(client, data: bytes) -> dict:
    answer = client.post("/api/recognize", data={"image": (io.BytesIO(data), "probe.jpg")})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["faces"][0]


def test_the_outlook_comes_from_the_gallery_and_a_choice_applies_at_once(loose_app, photo, tmp_path):
    client = log_in(loose_app.test_client())
    assert enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2, 3)]).status_code == 201
    assert enroll_json(client, "Bob", [photo(STRANGER, i) for i in (1, 2)]).status_code == 201
    report = client.get("/api/strictness").get_json()
    assert report["strictness"] == 0.0 and report["photos"] == 5
    assert [row["offset"] for row in report["outlook"]] == list(strictness.CHOICES)
    assert {p["name"] for p in report["people"]} == {"Ada", "Bob"}
    assert all(p["poses"] == ["front"] for p in report["people"])  # recorded at enrollment

    probe = photo(ENROLLED, 4)[1]
    service = loose_app.extensions["faces"]
    similarity = recognize(client, probe)["similarity"]
    just_above = round(similarity - service.recognizer.threshold + 0.01, 3)  # a rule this face just misses
    assert abs(just_above) < strictness.LIMIT, "the fakes' similarity is too far from the threshold for this test"
    for offset, name in ((just_above, None), (just_above - 0.02, "Ada")):
        answer = client.put("/api/strictness", json={"strictness": offset})
        assert answer.status_code == 200 and answer.get_json() == {"strictness": offset}
        assert service.recognizer.strictness == offset and service.live_recognizer.strictness == offset
        assert recognize(client, probe)["name"] == name  # the next face is judged by the new rule
    client.put("/api/strictness", json={"strictness": 0.3})
    assert client.get("/api/strictness").get_json()["strictness"] == 0.3

    again = create_app({"TESTING": True, "DATA_DIR": loose_app.config["DATA_DIR"],
                        "DATABASE_URL": loose_app.config["DATABASE_URL"], "SECRET_KEY": "test",
                        "RECOGNIZER": fake_recognizer()})
    assert again.extensions["faces"].recognizer.strictness == 0.3  # kept in the database over a restart


@pytest.mark.parametrize("body", [{"strictness": "high"}, {"strictness": 2}, {"level": 0.1}, [0.1], None])
def test_bad_bodies_get_a_400_and_change_nothing(loose_app, body):
    client = log_in(loose_app.test_client())
    answer = client.put("/api/strictness", json=body)
    assert answer.status_code == 400 and answer.get_json()["error"]
    assert client.get("/api/strictness").get_json()["strictness"] == 0.0


def test_a_fixed_threshold_wins(client, photo):
    """The default test app pins FACES_THRESHOLD: the page says so and nothing can be chosen."""
    enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2)])
    report = client.get("/api/strictness").get_json()
    assert report["strictness"] is None and report["fixed_threshold"] == pytest.approx(0.9)
    assert len(report["outlook"]) == 1
    answer = client.put("/api/strictness", json={"strictness": 0.02})
    assert answer.status_code == 400 and "FACES_THRESHOLD" in answer.get_json()["error"]
    assert "FACES_THRESHOLD fixes the threshold" in client.get("/strictness").get_data(as_text=True)


def test_the_page_shows_the_choices_and_applies_one(loose_app, photo):
    client = log_in(loose_app.test_client())
    enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2)])
    html = client.get("/strictness").get_data(as_text=True)
    assert 'id="strictness-outlook"' in html and "(calibrated)" in html and "Ada" in html
    answer = client.post("/strictness", data={"strictness": "0.04"}, follow_redirects=True)
    assert answer.status_code == 200 and "Strictness is now +0.04" in answer.get_data(as_text=True)
    assert loose_app.extensions["faces"].recognizer.strictness == 0.04
    refused = client.post("/strictness", data={"strictness": "9"}, follow_redirects=True)
    assert "Strictness not changed" in refused.get_data(as_text=True)
    assert loose_app.extensions["faces"].recognizer.strictness == 0.04


def test_an_empty_gallery_says_to_enroll_first(loose_app):
    client = log_in(loose_app.test_client())
    assert "Enroll someone first" in client.get("/strictness").get_data(as_text=True)
    assert client.get("/api/strictness").get_json()["outlook"] == []
