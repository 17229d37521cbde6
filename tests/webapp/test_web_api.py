"""The JSON API with Flask's test client and real CelebA photos."""

from __future__ import annotations

import io

import pytest
from web_helpers import ENROLLED, STRANGER, enroll_json, files_field, log_in, prepare_data_dir

from webapp import create_app

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL


def add_photos(client, person_id: int, files, **extra):
    return client.post(f"/api/people/{person_id}/photos", data={**files_field(files), **extra})


def recognize(client, name: str, data: bytes):
    return client.post("/api/recognize", data={"image": (io.BytesIO(data), name)})


@pytest.fixture
def enrolled(client, photo):
    """celeb_7201 enrolled through the API from photos 1-3; returns the person JSON."""
    person = client.post("/api/people", json={"name": "Ada"}).get_json()
    answer = add_photos(client, person["id"], [photo(ENROLLED, i) for i in (1, 2, 3)]).get_json()
    assert [p["accepted"] for p in answer["photos"]] == [True, True, True]
    return client.get(f"/api/people/{person['id']}").get_json()


def test_create_list_rename_delete_person(client):
    created = client.post("/api/people", json={"name": "  Grace   Hopper "})
    assert created.status_code == 201
    person = created.get_json()
    assert person["name"] == "Grace Hopper" and isinstance(person["id"], int) and person["photo_count"] == 0

    people = client.get("/api/people").get_json()["people"]
    assert [p["name"] for p in people] == ["Grace Hopper"]

    renamed = client.patch(f"/api/people/{person['id']}", json={"name": "Grace B. Hopper"})
    assert renamed.status_code == 200 and renamed.get_json()["name"] == "Grace B. Hopper"

    assert client.delete(f"/api/people/{person['id']}").get_json() == {"deleted": person["id"]}
    assert client.get("/api/people").get_json()["people"] == []
    assert client.get(f"/api/people/{person['id']}").status_code == 404


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"name": ""}, 400, "please enter a name"),
        ({"name": "   "}, 400, "please enter a name"),
        ({"name": "x" * 101}, 400, "too long"),
        ({"name": 42}, 400, "must be text"),
        ({"name": "tab\x07bell"}, 400, "control characters"),
        ({}, 400, "must be text"),
    ],
)
def test_bad_names_are_refused_with_a_message(client, body, status, message):
    answer = client.post("/api/people", json=body)
    assert answer.status_code == status
    assert message in answer.get_json()["error"]


def test_a_name_of_100_characters_is_fine(client):
    assert client.post("/api/people", json={"name": "y" * 100}).status_code == 201


def test_duplicate_names_are_refused_ignoring_case(client):
    client.post("/api/people", json={"name": "Ada"})
    answer = client.post("/api/people", json={"name": "ada"})
    assert answer.status_code == 409
    assert answer.get_json() == {"error": "there is already a person called Ada"}
    other = client.post("/api/people", json={"name": "Bob"}).get_json()
    assert client.patch(f"/api/people/{other['id']}", json={"name": "ADA"}).status_code == 409


def test_errors_are_json_with_4xx(client):
    for method, path, kwargs in [
        ("get", "/api/people/999", {}),
        ("patch", "/api/people/999", {"json": {"name": "x"}}),
        ("delete", "/api/people/999", {}),
        ("delete", "/api/photos/999", {}),
        ("get", "/api/nothing-here", {}),
        ("post", "/api/people", {"data": "not json"}),
        ("put", "/api/people", {}),
        ("post", "/api/recognize", {}),
    ]:
        answer = getattr(client, method)(path, **kwargs)
        assert 400 <= answer.status_code < 500, (method, path)
        assert set(answer.get_json()) == {"error"}, (method, path)


@pytest.mark.dlib
def test_enrolled_person_is_recognised_and_a_stranger_is_not(client, photo, enrolled):
    assert enrolled["photo_count"] == 3 and len(enrolled["photos"]) == 3

    answer = recognize(client, *photo(ENROLLED, 10)).get_json()
    assert set(answer) == {"frame_id", "width", "height", "faces", "ms"}
    assert (answer["width"], answer["height"]) == (250, 250)
    [face] = answer["faces"]
    assert set(face) == {"box", "name", "person_id", "similarity", "margin", "reason"} and face["reason"] is None
    assert face["name"] == "Ada" and face["person_id"] == enrolled["id"]
    assert face["similarity"] > 0.9 and len(face["box"]) == 4

    [stranger] = recognize(client, *photo(STRANGER, 1)).get_json()["faces"]
    assert stranger["name"] is None and stranger["person_id"] is None
    assert stranger["similarity"] < 0.9


@pytest.mark.dlib
def test_recognize_finds_every_face(client, sample, enrolled):
    faces = recognize(client, *sample("two_people.jpg")).get_json()["faces"]
    left, right = sorted(faces, key=lambda face: face["box"][0])
    assert left["name"] == "Ada" and right["name"] is None
    assert recognize(client, *sample("no_face.jpg")).get_json()["faces"] == []


def test_recognize_refuses_unreadable_files(client, sample):
    answer = recognize(client, *sample("truncated.jpg"))
    assert answer.status_code == 400 and answer.get_json()["error"].startswith("unreadable file:")


@pytest.mark.dlib
def test_each_photo_gets_an_outcome(client, photo, sample):
    person = client.post("/api/people", json={"name": "Ada"}).get_json()
    files = [
        photo(ENROLLED, 1),
        sample("no_face.jpg"),
        sample("two_people.jpg"),
        sample("tiny_face.jpg"),
        sample("truncated.jpg"),
        sample("not_an_image.jpg"),
        sample("grayscale_face.jpg"),
        sample("rgba_face.png"),
    ]
    outcomes = add_photos(client, person["id"], files).get_json()["photos"]
    assert [o["file"] for o in outcomes] == [name for name, _ in files]
    by_file = {o["file"]: o for o in outcomes}
    assert by_file["celeb_7201_0001.jpg"]["accepted"] and isinstance(by_file["celeb_7201_0001.jpg"]["photo_id"], int)
    assert by_file["no_face.jpg"]["reason"] == "no face found"
    assert by_file["two_people.jpg"]["reason"] == "several faces (2)"
    assert len(by_file["two_people.jpg"]["faces"]) == 2
    assert by_file["tiny_face.jpg"]["reason"].startswith(("face too small", "no face found"))
    assert by_file["truncated.jpg"]["reason"].startswith("unreadable file:")
    assert by_file["not_an_image.jpg"]["reason"].startswith("unreadable file: not an image")
    assert by_file["grayscale_face.jpg"]["accepted"] and by_file["rgba_face.png"]["accepted"]
    for outcome in outcomes:
        assert outcome["accepted"] == (outcome["reason"] is None) == (outcome["photo_id"] is not None)
    assert client.get(f"/api/people/{person['id']}").get_json()["photo_count"] == 3


@pytest.mark.dlib
def test_a_face_can_be_picked_from_a_group_photo(client, sample, photo):
    person = client.post("/api/people", json={"name": "Ada"}).get_json()
    first = add_photos(client, person["id"], [sample("two_people.jpg")]).get_json()["photos"][0]
    left = min(range(2), key=lambda i: first["faces"][i][0])  # celeb_7201 is on the left

    picked = add_photos(client, person["id"], [sample("two_people.jpg")], face_0=str(left)).get_json()["photos"][0]
    assert picked["accepted"] and picked["box"] == first["faces"][left]

    faces = recognize(client, *photo(ENROLLED, 12)).get_json()["faces"]
    assert faces[0]["name"] == "Ada"

    out_of_range = add_photos(client, person["id"], [sample("two_people.jpg")], face_0="5").get_json()["photos"][0]
    assert not out_of_range["accepted"] and out_of_range["reason"] == "no face number 6 (found 2)"
    assert add_photos(client, person["id"], [sample("two_people.jpg")], face_0="left").status_code == 400


def test_add_photos_needs_files_and_a_person(client, photo):
    person = client.post("/api/people", json={"name": "Ada"}).get_json()
    assert client.post(f"/api/people/{person['id']}/photos", data={}).status_code == 400
    assert add_photos(client, 999, [photo(ENROLLED, 1)]).status_code == 404


def test_deleting_a_photo_removes_row_files_and_embedding(app, client, photo, enrolled):
    data_dir = app.config["DATA_DIR"]
    photo_id = enrolled["photos"][0]["id"]
    files = sorted(p.relative_to(data_dir) for p in data_dir.glob("*s/*.jpg"))
    assert len(files) == 6  # 3 photos + 3 thumbnails
    assert client.get(f"/photos/{photo_id}/thumb.jpg").status_code == 200

    assert client.delete(f"/api/photos/{photo_id}").get_json() == {"deleted": photo_id}
    assert len(list(data_dir.glob("*s/*.jpg"))) == 4
    assert len(app.extensions["faces"].gallery) == 2
    assert client.get(f"/photos/{photo_id}/thumb.jpg").status_code == 404
    assert client.get(f"/api/people/{enrolled['id']}").get_json()["photo_count"] == 2


def test_deleting_a_person_removes_rows_files_and_embeddings(app, client, photo, enrolled):
    service = app.extensions["faces"]
    assert len(service.gallery) == 3
    client.delete(f"/api/people/{enrolled['id']}")
    assert len(service.gallery) == 0 and service.names == {}
    assert list(app.config["DATA_DIR"].glob("*s/*.jpg")) == []
    [face] = recognize(client, *photo(ENROLLED, 10)).get_json()["faces"]
    assert face["name"] is None


def test_files_are_named_by_the_app_not_the_user(app, client, photo):
    person = client.post("/api/people", json={"name": "../../etc/passwd"}).get_json()
    add_photos(client, person["id"], [("../../evil.jpg", photo(ENROLLED, 1)[1])])
    names = [p.name for p in app.config["DATA_DIR"].rglob("*.jpg")]
    assert len(names) == 2 and all(len(name) == len("0123456789abcdef0123456789abcdef.jpg") for name in names)


def test_stored_photos_are_reencoded_without_metadata(app, client, photo, enrolled):
    from PIL import Image

    for path in app.config["DATA_DIR"].glob("photos/*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (250, 250)
            assert not image.getexif()


@pytest.mark.dlib  # another photo of the person is named: the real model's decision
def test_the_gallery_is_loaded_from_the_database_at_start(app, client, photo, enrolled, web_recognizer):
    again = create_app({"TESTING": True, "DATA_DIR": app.config["DATA_DIR"],
                        "DATABASE_URL": app.config["DATABASE_URL"], "RECOGNIZER": web_recognizer})
    service = again.extensions["faces"]
    assert len(service.gallery) == 3 and service.names == {enrolled["id"]: "Ada"}
    [face] = recognize(log_in(again.test_client()), *photo(ENROLLED, 11)).get_json()["faces"]
    assert face["person_id"] == enrolled["id"]


def test_uploads_over_the_limit_get_413(tmp_path, web_recognizer, photo):
    small = create_app(
        {"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path), "MAX_UPLOAD_MB": 0.01, "RECOGNIZER": web_recognizer}
    )
    answer = recognize(log_in(small.test_client()), *photo(ENROLLED, 1))
    assert answer.status_code == 413 and "too large" in answer.get_json()["error"]


def test_cross_site_changes_are_refused(client):
    answer = client.post("/api/people", json={"name": "Mallory"}, headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403 and "error" in answer.get_json()
    same = client.post("/api/people", json={"name": "Ada"}, headers={"Origin": "http://localhost"})
    assert same.status_code == 201
    assert client.get("/api/people", headers={"Origin": "http://evil.example"}).status_code == 200


def test_status_reports_the_model(app, client, enrolled):
    status = client.get("/api/status").get_json()
    assert status["model"] == "ready" and status["backbone"] == app.extensions["faces"].backbone
    assert status["people"] == 1 and status["photos"] == 3


def test_enroll_json_helper_matches_the_api(client, photo):
    answer = enroll_json(client, "Ada", [photo(ENROLLED, 1)])
    assert answer.status_code == 201 and answer.get_json()["person"]["name"] == "Ada"


def test_a_failed_enrollment_leaves_no_files_rows_or_embeddings(app, client, photo, monkeypatch):
    from webapp import people_store

    real_to_blob = people_store.to_blob
    calls = []

    def to_blob(vector):
        calls.append(vector)
        if len(calls) == 3:  # the second photo's row: the transaction fails half-way
            raise OSError("disk full")
        return real_to_blob(vector)

    monkeypatch.setattr(people_store, "to_blob", to_blob)
    with pytest.raises(OSError, match="disk full"):
        enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2, 3)])
    assert client.get("/api/people").get_json()["people"] == []
    assert [p.name for p in app.config["DATA_DIR"].rglob("*") if p.is_file() and "jpg" in p.name] == []
    assert len(app.extensions["faces"].gallery) == 0 and app.extensions["faces"].names == {}


def assess(client, name: str, data: bytes, **extra):
    return client.post("/api/enroll/assess", data={"image": (io.BytesIO(data), name), **extra})


def test_assess_scores_a_frontal_preview(client, photo):
    answer = assess(client, *photo(STRANGER, 1))
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["faces"] == 1 and body["pose"] in ("front", "left", "right", "up", "down")
    assert 0 <= body["score"] <= 1
    assert set(body["checks"]) == {"one_face", "size", "sharp", "light"}
    assert isinstance(body["hints"], list)


@pytest.mark.dlib
def test_assess_names_the_problem(client, sample):
    body = assess(client, *sample("no_face.jpg")).get_json()
    assert body["faces"] == 0 and body["score"] == 0 and body["hints"]


def test_assess_refuses_bad_input(client, sample):
    assert client.post("/api/enroll/assess", data={}).status_code == 400
    bad = assess(client, *sample("not_an_image.jpg"))
    assert bad.status_code == 400 and "unreadable" in bad.get_json()["error"]
    wrong = assess(client, *sample("single_person.jpg"), want="sideways")
    assert wrong.status_code == 400 and "want" in wrong.get_json()["error"]
