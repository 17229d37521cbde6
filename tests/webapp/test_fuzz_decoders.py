"""Fuzzing with hypothesis, on a bounded budget: uploads, live frames, names and JSON bodies.

The inputs are random bytes and mutations (flipped, cut, inserted, repeated
bytes) of small valid JPEG, PNG, GIF, BMP, WebP and TIFF images. Every upload
must get a 4xx and store nothing; every frame must come back as `faces` or an
`error` event, never as an exception. Each test runs MAX_EXAMPLES examples
(about 20 s for the module); hypothesis prints the input of any failure.
"""

from __future__ import annotations

import html
import io
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from model.images import ImageError, decode_image
from webapp.events import LiveFrames
from webapp.live_stream import LiveStream
from webapp.names import normalise_name

MAX_EXAMPLES = 200
# Pillow warns about the broken files it is fed here (TIFF tags, EXIF); decode_image still refuses them cleanly.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning:PIL")
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the project
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seeds() -> list[bytes]:
    """Tiny valid images (no face fits in 24x24): every decodable mutation is still refused."""
    pixels = np.dstack([*np.meshgrid(np.arange(24) * 10, np.arange(24) * 10), np.full((24, 24), 128)]).astype(np.uint8)
    image = Image.fromarray(pixels)
    seeds = []
    for fmt, mode, params in [
        ("JPEG", "RGB", {"quality": 80}),
        ("JPEG", "RGB", {"quality": 80, "progressive": True}),
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("WEBP", "RGB", {}),
        ("TIFF", "CMYK", {}),
    ]:
        out = io.BytesIO()
        image.convert(mode).save(out, fmt, **params)
        seeds.append(out.getvalue())
    return seeds


SEEDS = _seeds()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[:at]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(2, 50))
    return bytes(data)


image_bytes = st.one_of(st.binary(max_size=2048), mutated_images())


def _count(app) -> tuple[int, int, int]:
    conn = sqlite3.connect(app.config["DATABASE"])
    try:
        people = conn.execute("SELECT COUNT(*) FROM people").fetchone()[0]
        photos = conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    finally:
        conn.close()
    return people, photos, len(list(app.config["DATA_DIR"].glob("*s/*")))


def test_fuzz_uploads_get_4xx_and_store_nothing(app, client):
    outcomes = {}

    @FUZZ
    @given(data=image_bytes, file_name=st.text(max_size=40))
    def upload(data, file_name):
        answer = client.post(
            "/people/new",
            data={"name": "Fuzz", "photos": (io.BytesIO(data), file_name or "x.jpg")},
            headers={"Accept": "application/json"},
        )
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.get_data()[:300])
        body = answer.get_json()
        assert body.get("error"), body
        for photo in body.get("photos", []):
            assert photo["reason"] and not photo["accepted"], photo
            kind = photo["reason"].split(" (")[0].split(": ")[-1][:40]
            outcomes[kind] = outcomes.get(kind, 0) + 1
        assert _count(app) == (0, 0, 0)

    upload()
    assert len(app.extensions["faces"].gallery) == 0
    print(f"\nupload fuzz: {sum(outcomes.values())} uploads refused: {outcomes}")


def test_fuzz_live_frames_never_raise(app):
    live = app.extensions["live"]
    stream = LiveStream(app.extensions["faces"], max_frame_bytes=live.max_bytes)

    @FUZZ
    @given(data=image_bytes)
    def frame(data):
        try:
            decode_image(data, max_bytes=live.max_bytes)
            decodable = data[:2] == b"\xff\xd8"  # live frames must be JPEG
        except ImageError:
            decodable = False
        event, payload = stream.answer(7, data)
        if decodable:
            assert event == "faces" and payload["frame_id"] == 7 and payload["faces"] == [], payload
        else:
            assert event == "error" and payload["frame_id"] == 7, payload
            assert payload["error"].startswith("bad frame: "), payload

    frame()


def nested(leaves):
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    )


json_values = nested(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20))
# What a Socket.IO event can carry: JSON with bytes anywhere.
socket_values = nested(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20))


@FUZZ
@given(payload=socket_values)
def test_fuzz_live_payloads_of_any_type_are_answered(payload):
    frames = LiveFrames(service=None, server=None, max_bytes=1000)
    frame_id, error = frames.put("sid", payload)
    assert frame_id == 0
    if isinstance(payload, bytes) and len(payload) <= 1000:
        assert error is None and frames._slots["sid"] == (0, payload)
    else:
        assert isinstance(error, str) and error and "sid" not in frames._slots


def test_fuzz_names_are_stored_as_given_or_refused(client):
    seen = {"stored": 0, "refused": 0}

    @FUZZ
    @given(name=st.text(alphabet=st.characters(exclude_categories=()), max_size=120))
    def create(name):
        answer = client.post("/api/people", json={"name": name})
        assert answer.status_code in (201, 400, 409), (answer.status_code, answer.get_data()[:300])
        if answer.status_code == 201:
            seen["stored"] += 1
            person = answer.get_json()
            assert person["name"] == " ".join(normalise_name(name).split())  # NFKC, invisible characters gone
            page = client.get(person["url"]).get_data(as_text=True)
            assert html.escape(person["name"], quote=False) in page.replace("&#34;", '"').replace("&#39;", "'")
            assert client.delete(f"/api/people/{person['id']}").status_code == 200
        else:
            seen["refused"] += 1
            assert answer.get_json()["error"]

    create()
    assert seen["stored"] and seen["refused"]


@pytest.mark.parametrize("method", ["post", "patch"])
def test_fuzz_json_bodies_get_an_answer_not_a_crash(client, method):
    target = client.post("/api/people", json={"name": "Target"}).get_json()
    path = "/api/people" if method == "post" else f"/api/people/{target['id']}"

    @settings(FUZZ, max_examples=MAX_EXAMPLES // 2)
    @given(body=json_values)
    def send(body):
        answer = getattr(client, method)(path, json=body)
        assert answer.status_code in (200, 201, 400, 409), (body, answer.status_code)

    send()
