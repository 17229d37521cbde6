"""The HTML pages with Flask's test client: add person, people, person, delete, live."""

from __future__ import annotations

import re

import pytest
from web_helpers import ENROLLED, enroll_json, files_field


@pytest.fixture
def ada(client, photo):
    answer = enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2, 3)])
    assert answer.status_code == 201
    return answer.get_json()["person"]


def test_home_goes_to_the_people_list(client):
    answer = client.get("/")
    assert answer.status_code == 302 and answer.headers["Location"] == "/people"


def test_empty_people_list_invites_to_add_someone(client):
    html = client.get("/people").get_data(as_text=True)
    assert "Nobody has been added yet" in html and 'href="/people/new"' in html


def test_add_person_page_has_name_camera_and_files(client):
    html = client.get("/people/new").get_data(as_text=True)
    assert 'id="name"' in html and 'name="name"' in html
    assert 'id="camera-preview"' in html and 'id="camera-shot"' in html
    assert 'type="file" id="photo-files" name="photos" accept="image/*" multiple' in html
    assert 'enctype="multipart/form-data"' in html and "/static/js/enroll.js" in html


@pytest.mark.dlib
def test_add_person_from_the_page_script(client, photo, sample):
    files = [photo(ENROLLED, 1), photo(ENROLLED, 2), sample("no_face.jpg")]
    answer = enroll_json(client, "Ada Lovelace", files)
    assert answer.status_code == 201
    result = answer.get_json()
    assert result["person"]["name"] == "Ada Lovelace" and result["person"]["photo_count"] == 2
    assert (result["accepted"], result["rejected"]) == (2, 1)
    assert [p["reason"] for p in result["photos"]] == [None, None, "no face found"]
    assert result["person"]["add_photos_url"] == f"/people/{result['person']['id']}/photos"


@pytest.mark.dlib
def test_nobody_is_created_without_an_accepted_photo(client, sample):
    answer = enroll_json(client, "Nobody", [sample("no_face.jpg"), sample("not_an_image.jpg")])
    assert answer.status_code == 422
    result = answer.get_json()
    assert result["person"] is None and result["error"] == "No photo was accepted, so Nobody was not added."
    assert [p["accepted"] for p in result["photos"]] == [False, False]
    assert client.get("/api/people").get_json()["people"] == []


@pytest.mark.dlib
def test_a_group_photo_alone_creates_nobody_until_a_face_is_picked(client, sample):
    first = enroll_json(client, "Ada", [sample("two_people.jpg")])
    assert first.status_code == 422 and first.get_json()["photos"][0]["reason"] == "several faces (2)"
    boxes = first.get_json()["photos"][0]["faces"]
    left = min(range(len(boxes)), key=lambda i: boxes[i][0])
    picked = enroll_json(client, "Ada", [sample("two_people.jpg")], face_0=str(left))
    assert picked.status_code == 201 and picked.get_json()["person"]["photo_count"] == 1


def test_add_person_refuses_bad_input(client, photo):
    assert enroll_json(client, "  ", [photo(ENROLLED, 1)]).status_code == 400
    assert enroll_json(client, "Ada", []).get_json() == {"error": "please add at least one photo"}
    enroll_json(client, "Ada", [photo(ENROLLED, 1)])
    duplicate = enroll_json(client, "ADA", [photo(ENROLLED, 2)])
    assert duplicate.status_code == 409 and "already a person called Ada" in duplicate.get_json()["error"]


@pytest.mark.dlib
def test_add_person_without_javascript(client, photo, sample):
    """A plain form post (no Accept: JSON) redirects to the new person's page with messages."""
    data = {"name": "Ada", **files_field([photo(ENROLLED, 1), sample("no_face.jpg")])}
    answer = client.post("/people/new", data=data, follow_redirects=True)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200 and '<h1 id="person-name">Ada</h1>' in html
    assert "1 photo(s) added to Ada." in html and "no_face.jpg: no face found" in html

    again = client.post("/people/new", data={"name": "Bob", **files_field([sample("no_face.jpg")])})
    html = again.get_data(as_text=True)
    assert again.status_code == 422 and "No photo was accepted, so Bob was not added." in html
    assert "rejected: no face found" in html and 'value="Bob"' in html

    empty = client.post("/people/new", data={"name": ""})
    assert empty.status_code == 400 and "please enter a name" in empty.get_data(as_text=True)


def test_people_list_shows_thumbnail_and_count(client, ada):
    html = client.get("/people").get_data(as_text=True)
    assert f'href="/people/{ada["id"]}"' in html and ">Ada</span>" in html
    assert "3 photos" in html
    thumb = re.search(r'<img src="(/photos/\d+/thumb\.jpg)"', html).group(1)
    image = client.get(thumb)
    assert image.status_code == 200 and image.mimetype == "image/jpeg" and image.data[:2] == b"\xff\xd8"


def test_person_page_shows_photos_and_actions(client, ada):
    html = client.get(ada["url"]).get_data(as_text=True)
    assert len(re.findall(r'<img src="/photos/\d+/thumb\.jpg"', html)) == 3
    assert len(re.findall(r'action="/photos/\d+/delete"', html)) == 3
    assert f'action="/people/{ada["id"]}/rename"' in html
    assert f'href="/people/{ada["id"]}/delete"' in html
    assert f'action="/people/{ada["id"]}/photos"' in html and 'data-mode="existing"' in html
    assert client.get("/people/999").status_code == 404


def test_names_are_escaped_everywhere(client, photo):
    name = '<script>alert("x")</script>'
    person = enroll_json(client, name, [photo(ENROLLED, 1)]).get_json()["person"]
    for path in ("/people", person["url"], f"{person['url']}/delete"):
        html = client.get(path).get_data(as_text=True)
        assert name not in html and "&lt;script&gt;" in html, path


def test_rename_from_the_person_page(client, ada):
    answer = client.post(f"/people/{ada['id']}/rename", data={"name": " Ada  King "}, follow_redirects=True)
    assert '<h1 id="person-name">Ada King</h1>' in answer.get_data(as_text=True)
    assert "Renamed to Ada King." in answer.get_data(as_text=True)
    client.post("/api/people", json={"name": "Bob"})
    refused = client.post(f"/people/{ada['id']}/rename", data={"name": "bob"}, follow_redirects=True)
    assert "Not renamed: there is already a person called Bob." in refused.get_data(as_text=True)


def test_remove_a_photo_from_the_person_page(client, ada):
    html = client.get(ada["url"]).get_data(as_text=True)
    first = re.search(r'action="(/photos/\d+/delete)"', html).group(1)
    answer = client.post(first, follow_redirects=True)
    html = answer.get_data(as_text=True)
    assert "The photo was removed." in html and "Photos <span class=\"muted\">(2)</span>" in html


def test_delete_person_asks_first(app, client, ada):
    confirm = client.get(f"/people/{ada['id']}/delete").get_data(as_text=True)
    assert "Delete Ada?" in confirm and "3 photos" in confirm and "cannot be undone" in confirm
    assert client.get("/api/people").get_json()["people"] != []

    answer = client.post(f"/people/{ada['id']}/delete", follow_redirects=True)
    assert "Ada was deleted, with 3 photo(s)." in answer.get_data(as_text=True)
    assert client.get("/api/people").get_json()["people"] == []
    assert list(app.config["DATA_DIR"].glob("*s/*.jpg")) == []


def test_add_photos_to_someone_from_their_page(client, ada, photo, sample):
    answer = client.post(
        ada["add_photos_url"],
        data=files_field([photo(ENROLLED, 4), sample("not_an_image.jpg")]),
        headers={"Accept": "application/json"},
    )
    result = answer.get_json()
    assert answer.status_code == 201 and result["person"]["photo_count"] == 4
    assert [p["accepted"] for p in result["photos"]] == [True, False]


def test_live_page_carries_its_settings_and_vendored_scripts(client):
    html = client.get("/live").get_data(as_text=True)
    assert 'id="live-video"' in html and 'id="live-overlay"' in html and 'id="live-faces"' in html
    assert 'data-namespace="/live"' in html and 'data-frame-width="640"' in html
    assert 'id="live-fps"' in html and 'id="live-rtt"' in html
    assert "/static/vendor/socket.io.min.js" in html and "/static/js/live.js" in html


def test_no_page_loads_anything_from_another_site(client, ada):
    for path in ("/people", "/people/new", ada["url"], "/live"):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r'(src|href)="(https?:)?//', html), path
    vendored = client.get("/static/vendor/socket.io.min.js")
    assert vendored.status_code == 200 and b"Socket.IO v4" in vendored.data[:200]


def test_unknown_pages_get_an_html_404(client):
    answer = client.get("/nope")
    assert answer.status_code == 404 and "<h1>Something went wrong</h1>" in answer.get_data(as_text=True)


def test_page_forms_refuse_cross_site_posts(client, ada):
    answer = client.post(f"/people/{ada['id']}/delete", headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403
    assert client.get("/api/people").get_json()["people"] != []
