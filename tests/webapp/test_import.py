"""Import and restore: folder-per-person zips and folders, "Export all" zips back, and every kind of bad archive."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import threading
import time
import zipfile

import numpy as np
import pytest
from fakes import FakeBackbone, FakeDetector
from web_helpers import ENROLLED, STRANGER, TEST_THRESHOLD, enroll_json, files_field, log_in, on_background, \
    prepare_data_dir

import webapp
from model.recognizer import Recognizer
from webapp import archive, create_app, importer
from webapp.db import connect, from_blob
from webapp.service import ModelNotReady

pytestmark = pytest.mark.both_engines  # store behaviour on SQLite and PostgreSQL


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out.getvalue()


def post(client, data: bytes, **fields):
    return client.post("/api/import", data={"archive": (io.BytesIO(data), "people.zip"), **fields})


def rows(app, sql: str) -> list:
    conn = connect(app.config["DATABASE"])
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def image_files(app) -> list[str]:
    data_dir = app.config["DATA_DIR"]
    return sorted(str(p.relative_to(data_dir)) for folder in ("photos", "thumbs") if (data_dir / folder).is_dir()
                  for p in (data_dir / folder).iterdir())


def assert_nothing_stored(app) -> None:
    assert rows(app, "SELECT id FROM people") == [] and rows(app, "SELECT id FROM photos") == []
    assert image_files(app) == [] and len(app.extensions["faces"].gallery) == 0
    assert list(app.config["DATA_DIR"].glob(".import-*")) == []


def reasons(answer) -> dict[str, str]:
    return {item["file"]: item["reason"] for item in answer.get_json()["refused"]}


def new_app(tmp_path, name: str, recognizer):
    app = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / name), "SECRET_KEY": "t",
                      "RECOGNIZER": recognizer})
    app.extensions["faces"].wait_ready()
    return app, log_in(app.test_client())


# --- folders of photos -------------------------------------------------------------------


@pytest.mark.parametrize("top", ["", "my-people/"])
def test_a_zip_of_folders_enrolls_everyone_and_says_why_files_were_refused(app, client, photo, top):
    entries = {
        f"{top}Ada Lovelace/one.jpg": photo(ENROLLED, 1)[1],
        f"{top}Ada Lovelace/two.jpg": photo(ENROLLED, 2)[1],
        f"{top}Ada Lovelace/notes.txt": b"she liked engines",
        f"{top}Bob/2019/one.jpg": photo(STRANGER, 1)[1],
        f"{top}Nobody/not-a-photo.txt": b"hello",
        f"{top}__MACOSX/Ada Lovelace/._one.jpg": b"resource fork",
        f"{top}Ada Lovelace/.DS_Store": b"junk",
    }
    if not top:  # a file beside the folders (with a folder above them all, it would make that folder a person)
        entries["readme.txt"] = b"photos of my people"
    answer = post(client, zip_of(entries, zipfile.ZIP_DEFLATED))
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    assert (result["people_added"], result["photos_added"], result["duplicates"]) == (2, 3, 0)
    assert result["people"] == ["Ada Lovelace", "Bob"]
    why = reasons(answer)
    assert set(why) == {f"{top}Ada Lovelace/notes.txt", f"{top}Nobody/not-a-photo.txt"} | (
        set() if top else {"readme.txt"})
    assert why[f"{top}Ada Lovelace/notes.txt"].startswith("not an image")
    if not top:
        assert "not in a person's folder" in why["readme.txt"]
    people = {p["name"]: p["photo_count"] for p in client.get("/api/people").get_json()["people"]}
    assert people == {"Ada Lovelace": 2, "Bob": 1}  # Nobody had no usable photo, so nobody was created
    assert len(app.extensions["faces"].gallery) == 3 and len(image_files(app)) == 6


def test_an_existing_name_gets_the_photos_and_exact_duplicates_are_skipped(app, client, photo):
    ada = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    entries = {"ada/1.jpg": photo(ENROLLED, 1)[1], "ada/3.jpg": photo(ENROLLED, 3)[1],
               "ada/3 copy.jpg": photo(ENROLLED, 3)[1]}
    answer = post(client, zip_of(entries))
    result = answer.get_json()
    assert answer.status_code == 200 and (result["people_added"], result["photos_added"], result["duplicates"]) == (
        0, 1, 2)
    why = reasons(answer)
    assert why["ada/1.jpg"] == "skipped: the same photo is already stored"
    assert why["ada/3 copy.jpg"] == "skipped: the same photo as ada/3.jpg in this import"
    assert client.get(f"/api/people/{ada['id']}").get_json()["photo_count"] == 2

    again = post(client, zip_of(entries))  # the same archive twice: nothing new, and that is no error
    assert again.status_code == 200 and (again.get_json()["photos_added"], again.get_json()["duplicates"]) == (0, 3)
    assert len(rows(app, "SELECT id FROM photos")) == 2


def test_a_folder_imports_from_the_command_line_with_json_counts_last(tmp_path, photo, monkeypatch, capsys):
    source = tmp_path / "source"
    for person, index in (("Ada", 1), ("Ada", 2), ("Bob", 1)):
        (source / person).mkdir(parents=True, exist_ok=True)
        (source / person / f"{index}.jpg").write_bytes(photo(ENROLLED if person == "Ada" else STRANGER, index)[1])
    (source / "Ada" / "elsewhere.jpg").symlink_to(tmp_path / "outside.jpg")
    (tmp_path / "outside.jpg").write_bytes(photo(STRANGER, 2)[1])
    real = webapp.create_app
    monkeypatch.setattr(webapp, "create_app", lambda config: real(
        {**config, "TESTING": True, "RECOGNIZER": Recognizer(FakeBackbone(), detector=FakeDetector()).load()}))
    data_dir = tmp_path / "data"

    assert importer.main([str(source), "--data-dir", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    counts = json.loads(out.strip().splitlines()[-1])
    assert (counts["people_added"], counts["photos_added"], counts["refused"], counts["duplicates"]) == (2, 3, 1, 0)
    assert counts["seconds"] >= 0 and counts["peak_rss_mb"] > 0 and "photos_per_s" in counts
    assert "Ada/elsewhere.jpg: refused: a link" in err and "3/3 photos" in err
    conn = connect(data_dir / "faces.db")
    assert [r[0] for r in conn.execute("SELECT name FROM people ORDER BY name")] == ["Ada", "Bob"]
    conn.close()

    (tmp_path / "not.zip").write_bytes(b"not a zip")
    assert importer.main([str(tmp_path / "not.zip"), "--data-dir", str(data_dir)]) == 2
    assert "not a zip archive" in json.loads(capsys.readouterr()[0].strip().splitlines()[-1])["error"]


# --- bad archives ------------------------------------------------------------------------


def _many(count: int) -> bytes:
    return zip_of({f"person{i % 50}/{i}.jpg": b"x" for i in range(count)})


@pytest.mark.parametrize("make, status, message", [
    (lambda photo: b"", 400, "not a zip archive"),
    (lambda photo: b"PK\x03\x04 not really", 400, "not a zip archive"),
    (lambda photo: photo(ENROLLED, 1)[1], 400, "not a zip archive"),
    (lambda photo: zip_of({"Ada/1.jpg": photo(ENROLLED, 1)[1]})[:-30], 400, "not a zip archive"),
    (lambda photo: zip_of({"Ada/big.jpg": bytes(30_000_000)}, zipfile.ZIP_DEFLATED), 400, "zip bomb"),
    (lambda photo: zip_of({f"Ada/{i}.jpg": bytes(2_000_000) for i in range(3)}, zipfile.ZIP_DEFLATED), 400,
     "zip bomb"),
    (lambda photo: _many(10_000), 413, "at most 8,000 photos per import"),
    (lambda photo: zip_of({"people.json": b'{"format": 2, "people": []}'}), 400, "from a newer version"),
    (lambda photo: zip_of({"people.json": b"[1, 2"}), 400, "people.json cannot be read"),
    (lambda photo: zip_of({"people.json": b'{"format": 1, "people": [{"name": "Ada"}]}'}), 400,
     "a list of photos"),
])
def test_bad_archives_are_4xx_and_import_nothing(app, client, photo, make, status, message):
    answer = post(client, make(photo))
    assert answer.status_code == status and message in answer.get_json()["error"], answer.get_json()
    assert_nothing_stored(app)


def test_no_archive_field_and_only_unusable_files_are_4xx(app, client):
    assert client.post("/api/import", data={}).status_code == 400
    answer = post(client, zip_of({"Ada/a.txt": b"text", "Ada/b.jpg": b"\xff\xd8 truncated"}))
    assert answer.status_code == 422 and len(answer.get_json()["refused"]) == 2 and answer.get_json()["people"] == []
    assert_nothing_stored(app)


def test_a_bomb_and_the_total_size_are_judged_from_the_directory_before_any_file_is_read(app, client, photo,
                                                                                       monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a file was read")

    bomb = zip_of({"Ada/big.jpg": bytes(30_000_000)}, zipfile.ZIP_DEFLATED)
    three = zip_of({f"Ada/{i}.jpg": photo(ENROLLED, i)[1] for i in (1, 2, 3)})
    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    answer = post(client, bomb)
    assert answer.status_code == 400 and "zip bomb" in answer.get_json()["error"]
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 40_000)
    answer = post(client, three)
    assert answer.status_code == 413 and "unpacks to" in answer.get_json()["error"]
    assert_nothing_stored(app)


def test_the_entry_count_is_read_from_the_end_record_before_the_directory_is_parsed(monkeypatch):
    data = _many(200)
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: pytest.fail("the directory was parsed"))
    with pytest.raises(archive.TooLarge, match="lists 200 files"):
        archive.open_zip(io.BytesIO(data), max_photos=10)


def test_paths_that_climb_out_and_links_are_refused_per_file_and_nothing_is_written_outside(app, client, photo,
                                                                                          tmp_path):
    outside_before = {p for p in tmp_path.rglob("*") if "data" not in p.relative_to(tmp_path).parts}
    good = photo(ENROLLED, 1)[1]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in ("../evil/1.jpg", "/abs/Ada/1.jpg", "Ada/../../../2.jpg", "C:/Ada/3.jpg", "Ada\\..\\..\\4.jpg",
                     "Ada/ok.jpg"):
            z.writestr(name, good if name == "Ada/ok.jpg" else photo(ENROLLED, 2)[1])
        link = zipfile.ZipInfo("Ada/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    answer = post(client, out.getvalue())
    assert answer.status_code == 200 and answer.get_json()["photos_added"] == 1
    why = reasons(answer)
    assert len(why) == 6 and all("climbs out" in why[n] for n in ("../evil/1.jpg", "/abs/Ada/1.jpg",
                                                                 "Ada/../../../2.jpg", "C:/Ada/3.jpg"))
    assert "climbs out" in why["Ada\\..\\..\\4.jpg"] and why["Ada/link.jpg"] == "refused: a link, not a file"
    assert {p for p in tmp_path.rglob("*") if "data" not in p.relative_to(tmp_path).parts} == outside_before
    assert len(image_files(app)) == 2 and all(len(name.split("/")[1]) == 36 for name in image_files(app))


def test_a_failed_import_leaves_no_files_and_no_rows(app, client, photo, monkeypatch):
    service = app.extensions["faces"]
    real, calls = service.analyse, []

    def third_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "analyse", third_fails)
    data = zip_of({f"{who}/{i}.jpg": photo(ENROLLED if who == "Ada" else STRANGER, i)[1]
                   for who in ("Ada", "Bob") for i in (1, 2)})
    conn = connect(app.config["DATABASE"])
    with pytest.raises(RuntimeError, match="disk is full"):
        importer.import_source(conn, service, app.config["DATA_DIR"], io.BytesIO(data))
    conn.close()
    assert_nothing_stored(app)

    def not_ready(*args, **kwargs):
        raise ModelNotReady("the face model is still loading")

    monkeypatch.setattr(service, "analyse", not_ready)
    assert post(client, data).status_code == 503
    assert_nothing_stored(app)


# --- export, then import -------------------------------------------------------------------


@pytest.fixture
def exported(app, client, photo):
    """Ada (ENROLLED 1-3) and Bob (STRANGER 1-2, with a correction), Cy (no photos); the "Export all" zip."""
    ada = enroll_json(client, "Ada Lovelace", [photo(ENROLLED, i) for i in (1, 2, 3)]).get_json()["person"]
    bob = enroll_json(client, "Bob", [photo(STRANGER, i) for i in (1, 2)]).get_json()["person"]
    client.post("/api/people", json={"name": "Cy"})
    frame = on_background(photo(ENROLLED, 4)[1])
    [face] = client.post("/api/recognize", data=files_field([("f.jpg", frame)], "image")).get_json()["faces"]
    answer = client.post("/api/corrections", data={**files_field([("f.jpg", frame)], "image"),
                                                  "person_id": str(bob["id"]), "box": json.dumps(face["box"])})
    assert answer.status_code == 201
    archive_bytes = client.get("/export").data
    return ada, bob, archive_bytes


def probes(photo) -> list[tuple[str, bytes]]:
    return [(f"{who}-{i}.jpg", on_background(photo(who, i)[1])) for who in (ENROLLED, STRANGER) for i in (1, 5, 6)]


def recognitions(client, frames) -> list:
    answers = [client.post("/api/recognize", data=files_field([frame], "image")).get_json()["faces"]
               for frame in frames]
    return [[(f["name"], round(f["similarity"], 4), f["box"]) for f in faces] for faces in answers]


def photos_by_person(app) -> dict:
    """{name: sorted [(SHA-256 of the photo file, box, width, height, embedding, features, created_at)]}."""
    found: dict = {}
    for row in rows(app, "SELECT people.name, file, box, width, height, embedding, features, photos.created_at "
                         "FROM photos JOIN people ON people.id = person_id"):
        digest = hashlib.sha256((app.config["DATA_DIR"] / "photos" / row["file"]).read_bytes()).hexdigest()
        found.setdefault(row["name"], []).append((digest, *tuple(row)[2:]))
    return {name: sorted(photos) for name, photos in found.items()}


@pytest.mark.parametrize("folder", ["", "backup/"])
def test_an_export_imports_into_an_empty_data_folder_as_the_same_people(app, client, photo, exported, tmp_path,
                                                                        web_recognizer, folder):
    _, _, archive_bytes = exported
    if folder:  # unpacked, then packed again inside a folder
        unpacked = zipfile.ZipFile(io.BytesIO(archive_bytes))
        archive_bytes = zip_of({folder + name: unpacked.read(name) for name in unpacked.namelist()})
    frames = probes(photo)
    before = recognitions(client, frames)
    restored, other = new_app(tmp_path, "restored", web_recognizer)
    embedded = web_recognizer.backbone.embedded

    answer = post(other, archive_bytes)
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    assert (result["people_added"], result["photos_added"], result["corrections_added"], result["reembedded"],
            result["duplicates"], result["refused"]) == (2, 5, 1, 0, 0, [])
    assert web_recognizer.backbone.embedded == embedded  # the export's embeddings were used: no model run

    assert photos_by_person(restored) == photos_by_person(app)  # same bytes, boxes, sizes, vectors, times
    listed = [(p["name"], p["photo_count"]) for p in other.get("/api/people").get_json()["people"]]
    assert listed == [("Ada Lovelace", 3), ("Bob", 2)]  # Cy had no photos, so Cy is not created
    keep = "SELECT people.name, corrections.embedding, corrections.features, backbone, corrections.created_at " \
           "FROM corrections JOIN people ON people.id = person_id"
    assert [tuple(r) for r in rows(restored, keep)] == [tuple(r) for r in rows(app, keep)]
    assert recognitions(other, frames) == before

    again = post(other, archive_bytes)  # a second restore adds nothing, corrections included
    assert (again.get_json()["photos_added"], again.get_json()["duplicates"],
            again.get_json()["corrections_added"]) == (0, 5, 0)


def test_an_export_of_another_backbone_is_embedded_again(tmp_path, photo):
    class OldBackbone(FakeBackbone):
        name = "old"

        def __init__(self):
            super().__init__(seed=1)

    old, old_client = new_app(tmp_path, "old", Recognizer(OldBackbone(), detector=FakeDetector(),
                                                          threshold=TEST_THRESHOLD).load())
    enroll_json(old_client, "Ada", [photo(ENROLLED, i) for i in (1, 2)])
    new, new_client = new_app(tmp_path, "new", Recognizer(FakeBackbone(), detector=FakeDetector(),
                                                          threshold=TEST_THRESHOLD).load())
    answer = post(new_client, old_client.get("/export").data)
    assert answer.status_code == 200 and (answer.get_json()["photos_added"], answer.get_json()["reembedded"]) == (2, 2)
    stored = rows(new, "SELECT backbone, features FROM photos")
    assert [r["backbone"] for r in stored] == ["fake", "fake"] and len(new.extensions["faces"].gallery) == 2
    assert [r["features"] for r in stored] != [r["features"] for r in rows(old, "SELECT features FROM photos")]
    [face] = new_client.post("/api/recognize", data=files_field([photo(ENROLLED, 1)], "image")).get_json()["faces"]
    assert face["name"] == "Ada"


def test_a_tampered_export_is_refused_per_photo_or_embedded_again(app, client, exported, tmp_path, web_recognizer):
    _, _, archive_bytes = exported
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    document = json.loads(source.read("people.json"))
    ada = next(p for p in document["people"] if p["name"] == "Ada Lovelace")
    ada["photos"][0]["embedding"] = [1.0] * 128  # not unit length: embedded again
    ada["photos"][1]["box"] = [0, 0, 10_000, 10]  # outside the photo: enrolled like a new photo
    unlisted, ada["photos"][2]["photo"] = ada["photos"][2]["photo"], "photos/not-there.jpg"
    entries = {n: source.read(n) for n in source.namelist() if n != "people.json"}
    entries["people.json"] = json.dumps(document).encode()
    entries["photos/extra.jpg"] = b"not listed"
    _, other = new_app(tmp_path, "restored", web_recognizer)
    answer = post(other, zip_of(entries))
    result = answer.get_json()
    assert answer.status_code == 200 and (result["photos_added"], result["reembedded"]) == (4, 1)
    why = reasons(answer)
    assert why == {"photos/not-there.jpg": "listed in people.json but not in the archive",
                   "photos/extra.jpg": "not part of the export (not listed in people.json)",
                   unlisted: "not part of the export (not listed in people.json)"}


# --- the page and background jobs --------------------------------------------------------


def wait_for(client, url: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(url).get_json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"the import did not finish: {job}")


def test_the_import_page_runs_in_the_background_with_progress(app, client, photo):
    assert 'href="/people/import"' in client.get("/people").get_data(as_text=True)
    page = client.get("/people/import").get_data(as_text=True)
    assert 'data-api-url="/api/import"' in page and 'name="archive"' in page and "js/import.js" in page

    answer = post(client, zip_of({"Ada/1.jpg": photo(ENROLLED, 1)[1], "Ada/2.jpg": photo(ENROLLED, 2)[1]}),
                  background="1")
    assert answer.status_code == 202, answer.get_json()
    job = wait_for(client, answer.get_json()["url"])
    assert job["state"] == "done" and (job["done"], job["total"]) == (2, 2) and job["status"] == 200
    assert job["result"]["photos_added"] == 2 and job["result"]["people"] == ["Ada"]
    assert list(app.config["DATA_DIR"].glob(".import-*")) == []

    failed = wait_for(client, post(client, b"not a zip", background="1").get_json()["url"])
    assert failed["state"] == "failed" and failed["status"] == 400 and "not a zip" in failed["error"]
    assert client.get("/api/import/0123456789abcdef").status_code == 404
    assert client.get("/api/import/..%2F..").status_code == 404

    # Without JavaScript the form imports in the request and shows the counts.
    html = client.post("/people/import", data={"archive": (io.BytesIO(zip_of({"Bob/1.jpg": photo(STRANGER, 1)[1],
                                                                              "Bob/x.txt": b"x"})), "b.zip")})
    text = " ".join(html.get_data(as_text=True).split())
    assert html.status_code == 200 and "1 photo(s) added, 1 new person(s)" in text and "Bob/x.txt" in text
    assert client.post("/people/import", data={"archive": (io.BytesIO(b"junk"), "j.zip")}).status_code == 400


def test_a_second_import_while_one_runs_is_409(app, client, photo, monkeypatch):
    service = app.extensions["faces"]
    real, go = service.analyse, threading.Event()

    def slow(*args, **kwargs):
        go.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "analyse", slow)
    data = zip_of({"Ada/1.jpg": photo(ENROLLED, 1)[1]})
    first = post(client, data, background="1")
    assert first.status_code == 202
    assert post(client, data).status_code == 409 and post(client, data, background="1").status_code == 409
    go.set()
    assert wait_for(client, first.get_json()["url"])["result"]["photos_added"] == 1
    assert post(client, zip_of({"Ada/2.jpg": photo(ENROLLED, 2)[1]})).status_code == 200


@pytest.mark.dlib
def test_an_export_round_trip_keeps_dlibs_recognition_results(app, client, photo, tmp_path, web_recognizer):
    enroll_json(client, "Ada", [photo(ENROLLED, i) for i in (1, 2, 3)])
    enroll_json(client, "Bea", [photo("celeb_7260", i) for i in (1, 2, 3)])
    frames = [(f"{who}-{i}.jpg", photo(who, i)[1]) for who in (ENROLLED, "celeb_7260", STRANGER) for i in (5, 6)]
    before = recognitions(client, frames)
    assert [faces[0][0] for faces in before] == ["Ada", "Ada", "Bea", "Bea", None, None]
    _, other = new_app(tmp_path, "restored", web_recognizer)
    answer = post(other, client.get("/export").data)
    assert answer.get_json()["photos_added"] == 6 and answer.get_json()["reembedded"] == 0
    assert recognitions(other, frames) == before
    assert np.isfinite([f[1] for faces in before for f in faces]).all()


@pytest.mark.browser
@pytest.mark.dlib  # a real server.py, so the real model
def test_import_move_and_merge_in_the_browser(tmp_path, photo, output_dir):
    """The Import page's progress and counts, then ticking a photo to move it, then a confirmed merge."""
    from playwright.sync_api import expect
    from web_helpers import TEST_PASSWORD, chromium_with_camera, running_server, write_y4m

    camera = tmp_path / "grey.y4m"
    write_y4m(camera, [np.full((480, 640, 3), 200, np.uint8)], 5)
    upload = tmp_path / "people.zip"
    upload.write_bytes(zip_of({f"{name}/{i}.jpg": photo(who, i)[1] for name, who in (("Ada", ENROLLED),
                                                                                      ("Ada L", ENROLLED))
                               for i in ((1, 2) if name == "Ada" else (3, 4))} | {"Ada/notes.txt": b"x"}))
    shots = output_dir / "import"
    shots.mkdir(parents=True, exist_ok=True)
    with running_server(tmp_path / "data") as url, chromium_with_camera(camera) as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/people/import")
        page.fill("#password", TEST_PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{url}/people/import")

        page.set_input_files("#archive", upload)
        page.click("#import-submit")
        expect(page.locator("#import-counts")).to_contain_text("4 photo(s) added, 2 new person(s)", timeout=60_000)
        expect(page.locator("#import-refused tbody tr")).to_have_count(1)
        expect(page.locator("#import-refused")).to_contain_text("Ada/notes.txt")
        assert page.locator("#import-bar").get_attribute("value") == page.locator("#import-bar").get_attribute("max")
        page.screenshot(path=shots / "1-imported.png", full_page=True)

        page.goto(f"{url}/people")
        page.click("text=Ada L")
        expect(page.locator("#move-submit")).to_be_disabled()
        page.locator('input[name="photo"]').first.check()
        expect(page.locator("#regroup-count")).to_have_text("1 ticked photo:")
        page.select_option("#move-into", label="Ada")
        page.click("#move-submit")
        expect(page.locator(".flash.ok")).to_have_text("1 photo(s) moved to Ada.")

        page.select_option("#merge-into", label="Ada")
        page.click("#merge-form button")
        expect(page.locator("#merge-summary")).to_contain_text("1 photo, 0 corrections and 0 history rows")
        page.screenshot(path=shots / "2-merge-confirm.png", full_page=True)
        page.click("#confirm-merge")
        expect(page.locator(".flash.ok")).to_contain_text("Ada L was merged into Ada")
        expect(page.locator("#photos > li")).to_have_count(4)
        assert errors == []
