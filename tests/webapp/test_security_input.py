"""Bad input: each gets a clear 4xx message, never a 5xx, and changes nothing stored.

Uploads (broken, hostile and odd-format images), names, and the JSON API
(wrong types, missing fields, unknown ids). Images that are odd but fine
(RGBA, 16-bit, CMYK, palette, EXIF-rotated) must be accepted, upright.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from web_helpers import ENROLLED, enroll_json, files_field, log_in, prepare_data_dir

from webapp import create_app, people_store

HUGE_ID = 10**30  # beyond SQLite's INTEGER range


def snapshot(app) -> tuple:
    """Everything stored: the rows, and the files of the data dir (the database files aside)."""
    import sqlite3

    conn = sqlite3.connect(app.config["DATABASE"])
    try:
        people = conn.execute("SELECT * FROM people ORDER BY id").fetchall()
        photos = conn.execute("SELECT * FROM photos ORDER BY id").fetchall()
    finally:
        conn.close()
    data_dir = app.config["DATA_DIR"]
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file() and "faces.db" not in p.name)
    service = app.extensions["faces"]
    return people, photos, files, len(service.gallery), dict(service.names)


# --- images made here ------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 8000) -> bytes:
    """A valid grey PNG of side x side zeros: 64 MB of pixels in about 60 kB."""
    row = b"\x00" + b"\x00" * side  # filter byte + pixels
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header claims another size (the pixel data stays small)."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


@pytest.fixture
def portrait(photo) -> Image.Image:
    return Image.open(io.BytesIO(photo(ENROLLED, 1)[1])).convert("RGB")


def odd_images(portrait: Image.Image) -> dict[str, tuple[bytes, tuple[int, int]]]:
    """Unusual but valid images of a face: name -> (bytes, upright (width, height))."""
    grey16 = Image.fromarray(np.asarray(portrait.convert("L")).astype(np.uint16) * 257)
    assert grey16.mode == "I;16"
    rgba = portrait.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(portrait.size).point(lambda v: 128 + v // 2))
    # Upright the photo is 330x250 (the face on the left); the file holds it turned a quarter
    # (250x330) with EXIF orientation 6, "rotate 90 degrees clockwise to show".
    upright = Image.new("RGB", (330, 250), (200, 200, 200))
    upright.paste(portrait, (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = upright.transpose(Image.Transpose.ROTATE_90)
    return {
        "rgba.png": (encode(rgba, "PNG"), portrait.size),
        "grey16.png": (encode(grey16, "PNG"), portrait.size),
        "cmyk.jpg": (encode(portrait.convert("CMYK"), "JPEG", quality=92), portrait.size),
        "palette.png": (encode(portrait.quantize(256), "PNG"), portrait.size),
        "palette.gif": (encode(portrait.convert("P"), "GIF"), portrait.size),
        "exif-rotated.jpg": (encode(turned, "JPEG", quality=92, exif=exif), (330, 250)),
    }


def bad_uploads(photo, sample) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the start of the reason given)."""
    jpeg = photo(ENROLLED, 2)[1]
    return {
        "empty.jpg": (b"", "unreadable file: the file is empty"),
        "truncated.jpg": (sample("truncated.jpg")[1], "unreadable file: the image is corrupt or truncated"),
        "half.jpg": (jpeg[: len(jpeg) // 2], "unreadable file: the image is corrupt or truncated"),
        "header-only.jpg": (jpeg[:200], "unreadable file:"),
        "not_an_image.jpg": (sample("not_an_image.jpg")[1], "unreadable file: not an image"),
        "page.html": (b"<html><script>alert(1)</script></html>", "unreadable file: not an image"),
        "doc.pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "unreadable file: not an image"),
        "archive.zip": (b"PK\x03\x04" + b"\x00" * 100, "unreadable file: not an image"),
        "random.bin": (np.random.default_rng(7).bytes(5000), "unreadable file: not an image"),
        "bomb.png": (png_bomb(), "unreadable file: the image is too large (8000x8000"),
        "bomb.jpg": (jpeg_with_size(jpeg, 60000, 60000), "unreadable file: the image is too large (60000x60000"),
        "oversized.jpg": (jpeg[:4] + b"\x00" * (21 * 1024 * 1024), "unreadable file: the file is too large (22.0 MB"),
    }


# --- uploads ---------------------------------------------------------------------------


def test_bad_uploads_are_refused_one_by_one_and_nothing_is_stored(app, client, photo, sample):
    before = snapshot(app)
    cases = bad_uploads(photo, sample)
    answer = enroll_json(client, "Ada", [(name, data) for name, (data, _) in cases.items()])
    assert answer.status_code == 422
    result = answer.get_json()
    assert result["person"] is None and result["accepted"] == 0
    for outcome in result["photos"]:
        assert outcome["reason"].startswith(cases[outcome["file"]][1]), outcome
    assert snapshot(app) == before


def test_bad_uploads_to_someone_get_422_and_add_nothing(app, client, photo, sample):
    person = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    before = snapshot(app)
    files = [(name, data) for name, (data, _) in bad_uploads(photo, sample).items()]
    for path in (f"/api/people/{person['id']}/photos", person["add_photos_url"]):
        answer = client.post(path, data=files_field(files), headers={"Accept": "application/json"})
        assert answer.status_code == 422 and answer.get_json()["accepted"] == 0, path
        for name, data in files[:3]:
            single = client.post("/api/recognize", data={"image": (io.BytesIO(data), name)})
            assert single.status_code == 400 and single.get_json()["error"].startswith("unreadable file:")
    assert snapshot(app) == before


def test_an_upload_over_the_request_cap_gets_413(tmp_path, web_recognizer, photo):
    small = create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "data"), "MAX_UPLOAD_MB": 0.05,
                        "RECOGNIZER": web_recognizer})
    client = log_in(small.test_client())
    before = snapshot(small)
    files = [photo(ENROLLED, i) for i in (1, 2, 3, 4, 5)]
    answer = enroll_json(client, "Ada", files)
    assert answer.status_code == 413 and answer.get_json() == {"error": "the upload is too large (the limit is 0.05 MB in all)"}
    page = client.post("/people/new", data={"name": "Ada", **files_field(files)})
    assert page.status_code == 413 and "the upload is too large" in page.get_data(as_text=True)
    assert snapshot(small) == before


def test_odd_formats_are_accepted_upright(app, client, portrait):
    images = odd_images(portrait)
    answer = enroll_json(client, "Ada", [(name, data) for name, (data, _) in images.items()])
    result = answer.get_json()
    assert answer.status_code == 201, result
    assert {o["file"]: o["reason"] for o in result["photos"]} == {name: None for name in images}
    for outcome in result["photos"]:
        assert (outcome["width"], outcome["height"]) == images[outcome["file"]][1], outcome["file"]
        stored = Image.open(app.config["DATA_DIR"] / "photos" / people_store.get_photo(_db(app), outcome["photo_id"])["file"])
        assert stored.mode == "RGB" and stored.size == images[outcome["file"]][1]
    # The EXIF-rotated face was found at the left of the upright photo, where it was pasted.
    [rotated] = [o for o in result["photos"] if o["file"] == "exif-rotated.jpg"]
    left, top, right, bottom = rotated["box"]
    assert right <= 250 and bottom <= 250


def _db(app):
    from webapp.db import connect

    return connect(app.config["DATABASE"])


def test_a_photo_field_without_a_file_is_no_photo(client):
    answer = client.post("/people/new", data={"name": "Ada", "photos": (io.BytesIO(b""), "")},
                         headers={"Accept": "application/json"})
    assert answer.status_code == 400 and answer.get_json() == {"error": "please add at least one photo"}


# --- names -----------------------------------------------------------------------------

BAD_NAMES = [
    ("", "please enter a name"),
    ("   \t ", "please enter a name"),
    ("x" * 10_240, "the name is too long (10240 characters; at most 100)"),
    ("Ada" + "\u00a0" * 20 + "x" * 100, "the name is too long"),
    ("Ada\x00Lovelace", "the name contains control characters"),
    ("Ada\x1b[31m", "the name contains control characters"),
    ("Ada\x9b31m", "the name contains control characters"),
    ("\u200b\u200d", "please enter a name with visible characters"),
    ("\u0301", "please enter a name with visible characters"),
]


@pytest.mark.parametrize("name, message", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_bad_names_are_refused_everywhere(app, client, photo, name, message):
    before = snapshot(app)
    api = client.post("/api/people", json={"name": name})
    assert api.status_code == 400 and message in api.get_json()["error"]
    page = enroll_json(client, name, [photo(ENROLLED, 1)])
    assert page.status_code == 400 and message in page.get_json()["error"]
    form = client.post("/people/new", data={"name": name, **files_field([photo(ENROLLED, 1)])})
    assert form.status_code == 400 and message in form.get_data(as_text=True).replace("&#39;", "'")
    assert snapshot(app) == before


def test_a_lone_surrogate_is_not_a_name(app, client):
    before = snapshot(app)
    answer = client.post("/api/people", data='{"name": "Ada \\ud800"}', content_type="application/json")
    assert answer.status_code == 400 and answer.get_json() == {"error": "the name is not valid text"}
    assert snapshot(app) == before


@pytest.mark.parametrize(
    "name",
    ['<script>alert("x")</script>', "<img src=x onerror=alert(1)>", '"><svg onload=alert(1)>', "Ada & Bob's {{ 7*7 }}"],
)
def test_html_in_names_is_escaped_on_every_page(client, photo, name):
    person = enroll_json(client, name, [photo(ENROLLED, 1)]).get_json()["person"]
    assert person["name"] == name  # stored as given: it is data
    client.post("/api/people", json={"name": "Other"})
    pages = ["/people", person["url"], f"{person['url']}/delete"]
    duplicate = client.post("/people/new", data={"name": name, **files_field([photo(ENROLLED, 2)])})
    renamed = client.post(f"{person['url']}/rename", data={"name": "Other"}, follow_redirects=True)
    for path, html in [(p, client.get(p).get_data(as_text=True)) for p in pages] + [
        ("duplicate", duplicate.get_data(as_text=True)),
        ("rename refused", renamed.get_data(as_text=True)),
    ]:
        assert name not in html, path
        assert "<script>alert" not in html and "<img src=x" not in html and "<svg" not in html, path
        assert "49" not in html or "{{ 7*7 }}" not in name, path  # no template evaluation
    assert duplicate.status_code == 409


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\..\\boot.ini", "a/b/c", "/tmp/x", "C:\\Windows", "~root", "."])
def test_names_with_path_characters_are_only_data(app, client, photo, tmp_path, name):
    outside = sorted(p for p in tmp_path.rglob("*") if "data" not in p.parts)
    answer = enroll_json(client, name, [photo(ENROLLED, 1)])
    assert answer.status_code == 201 and answer.get_json()["person"]["name"] == name
    files = [p.name for p in app.config["DATA_DIR"].rglob("*.jpg")]
    assert len(files) == 2 and all(len(f) == len("0123456789abcdef0123456789abcdef.jpg") for f in files)
    assert sorted(p for p in tmp_path.rglob("*") if "data" not in p.parts) == outside


def test_duplicate_names_get_a_clear_message(app, client, photo):
    enroll_json(client, "Ada Lovelace", [photo(ENROLLED, 1)])
    before = snapshot(app)
    for name in ("Ada Lovelace", "ada lovelace", "  ADA   LOVELACE "):
        answer = enroll_json(client, name, [photo(ENROLLED, 2)])
        assert answer.status_code == 409
        assert answer.get_json() == {"error": "there is already a person called Ada Lovelace"}
        assert client.post("/api/people", json={"name": name}).status_code == 409
    assert snapshot(app) == before


# --- the JSON API ----------------------------------------------------------------------

WRONG_BODIES = [
    ("json", []),
    ("json", "Ada"),
    ("json", 42),
    ("json", None),
    ("json", True),
    ("json", {"name": None}),
    ("json", {"name": 42}),
    ("json", {"name": ["Ada"]}),
    ("json", {"name": {"first": "Ada"}}),
    ("json", {}),
    ("json", {"nom": "Ada"}),
    ("raw", "{"),
    ("raw", ""),
    ("raw", "[" * 100_000 + "]" * 100_000),
    ("raw", '{"name": "Ada"'),
    ("raw", b'{"name": "\xff\xfe"}'),
    ("form", {"name": "Ada"}),
]


@pytest.mark.parametrize("kind, body", WRONG_BODIES, ids=range(len(WRONG_BODIES)))
def test_wrong_json_is_a_400(app, client, kind, body):
    person = client.post("/api/people", json={"name": "Ada"}).get_json()
    before = snapshot(app)
    for method, path in (("post", "/api/people"), ("patch", f"/api/people/{person['id']}")):
        if kind == "json":
            answer = getattr(client, method)(path, json=body)
        elif kind == "raw":
            answer = getattr(client, method)(path, data=body, content_type="application/json")
        else:
            answer = getattr(client, method)(path, data=body)
        assert answer.status_code == 400, (method, body)
        assert set(answer.get_json()) == {"error"} and answer.get_json()["error"], (method, body)
    assert snapshot(app) == before


UNKNOWN = [
    ("get", "/api/people/999"),
    ("patch", "/api/people/999"),
    ("delete", "/api/people/999"),
    ("delete", "/api/photos/999"),
    ("post", "/api/people/999/photos"),
    ("get", f"/api/people/{HUGE_ID}"),
    ("patch", f"/api/people/{HUGE_ID}"),
    ("delete", f"/api/people/{HUGE_ID}"),
    ("delete", f"/api/photos/{HUGE_ID}"),
    ("get", f"/api/people/{2**63}"),
    ("get", "/api/people/-1"),
    ("get", "/api/people/abc"),
    ("get", "/people/999"),
    ("get", f"/people/{HUGE_ID}"),
    ("post", "/people/999/rename"),
    ("get", "/people/999/delete"),
    ("post", "/people/999/delete"),
    ("post", "/photos/999/delete"),
    ("post", "/people/999/photos"),
    ("get", "/photos/999.jpg"),
    ("get", f"/photos/{HUGE_ID}/thumb.jpg"),
    ("get", "/people/999/export"),
    ("get", f"/people/{HUGE_ID}/export"),
]


def test_unknown_ids_are_404(app, client, photo):
    enroll_json(client, "Ada", [photo(ENROLLED, 1)])
    before = snapshot(app)
    for method, path in UNKNOWN:
        kwargs = {"json": {"name": "Bob"}} if method == "patch" else {}
        if path.endswith("/photos"):
            kwargs = {"data": files_field([photo(ENROLLED, 2)]), "headers": {"Accept": "application/json"}}
        elif path.endswith("/rename"):
            kwargs = {"data": {"name": "Bob"}}
        answer = getattr(client, method)(path, **kwargs)
        assert answer.status_code == 404, (method, path, answer.status_code)
    assert snapshot(app) == before


def test_bad_fields_in_uploads_are_a_400(app, client, photo, sample):
    person = enroll_json(client, "Ada", [photo(ENROLLED, 1)]).get_json()["person"]
    before = snapshot(app)
    for face in ("left", "1.5", "-1", " 1_0", "\u0663", "9" * 5000):
        answer = client.post(f"/api/people/{person['id']}/photos",
                             data={**files_field([sample("two_people.jpg")]), "face_0": face})
        assert answer.status_code == 400 and "face_0 must be a face number" in answer.get_json()["error"], face
    for data in ({}, {"photos": "not a file"}, {"image": (io.BytesIO(b"x"), "x.jpg")}):
        answer = client.post(f"/api/people/{person['id']}/photos", data=data)
        assert answer.status_code == 400 and answer.get_json() == {"error": "no files under the field 'photos'"}
    assert client.post(f"/api/people/{person['id']}/photos", json={"photos": ["AAAA"]}).status_code == 400
    assert client.post("/api/recognize", data={"photos": (io.BytesIO(b"x"), "x.jpg")}).status_code == 400
    assert client.put("/api/people").status_code == 405
    assert snapshot(app) == before
