"""Cameras on a real `python server.py` with the real model: an MJPEG camera showing an unseen photo of the
enrolled person names them and records a sighting, a stranger's camera stays unknown, the server's log never
holds a camera's password, and (in headless Chromium) the Live page shows a camera's labelled view.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import quote

import pytest
from test_cameras import MjpegServer, wait_for
from web_helpers import (
    ENROLLED,
    STRANGER,
    TEST_PASSWORD,
    chromium_with_camera,
    data_dir_with_ada,
    on_background,
    server_session,
    start_server,
    stop_server,
    webcam_frame,
    write_y4m,
)

pytestmark = pytest.mark.dlib
PASSWORD = "door-Cam-pw-77"
CAMERA_ENV = {"FACES_CAMERA_FPS": "5", "FACES_CAMERA_TIMEOUT_S": "2", "FACES_CAMERA_RETRY_MIN_S": "0.2",
              "FACES_CAMERA_RETRY_MAX_S": "1", "FACES_LIVE_UNKNOWN_FRAMES": "3"}


@pytest.fixture(scope="module")
def portraits(celeba_dir):
    return lambda person, index: on_background((celeba_dir / person / f"{person}_{index:04d}.jpg").read_bytes())


@pytest.fixture(scope="module")
def server(tmp_path_factory, dlib_recognizer, celeba_dir):
    """server.py whose database holds Ada (celeb_7201, photos 1-3): (base URL, data dir, log file)."""
    data_dir = data_dir_with_ada(tmp_path_factory.mktemp("cameras") / "data", dlib_recognizer, celeba_dir)
    process, url, log_path = start_server(data_dir, extra_env=CAMERA_ENV)
    try:
        yield url, data_dir, log_path
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def session(server):
    return server_session(server[0])


@pytest.fixture(scope="module")
def door(portraits):
    """An MJPEG camera (with a login) showing an unseen photo of Ada."""
    camera = MjpegServer(portraits(ENROLLED, 10), fps=10, login=("viewer", PASSWORD)).start()
    yield camera
    camera.stop()


def add(session, url: str, name: str, camera_url: str) -> dict:
    answer = session.post(f"{url}/api/cameras", json={"name": name, "url": camera_url}, timeout=10)
    assert answer.status_code == 201, answer.text
    return answer.json()


def faces(session, url: str, camera_id: int) -> dict:
    return session.get(f"{url}/api/cameras/{camera_id}/faces", timeout=10).json()


def test_a_camera_names_the_enrolled_person_and_records_a_sighting(server, session, door):
    url, data_dir, log_path = server
    camera = add(session, url, "Door", door.url(login=("viewer", PASSWORD)))

    def ada():
        answer = faces(session, url, camera["id"])
        return answer if [f["name"] for f in answer["faces"]] == ["Ada"] else None

    answer = wait_for(ada, timeout=30)
    assert answer["faces"][0]["similarity"] > 0.9 and answer["status"]["state"] == "online"

    def sighting():
        with sqlite3.connect(data_dir / "faces.db") as db:
            return db.execute("SELECT frames FROM sightings WHERE name = 'Ada'").fetchall()

    assert wait_for(sighting, timeout=15)
    listed = session.get(f"{url}/api/cameras", timeout=10).text
    assert PASSWORD not in listed and PASSWORD not in log_path.read_text()


def test_a_stranger_on_a_camera_stays_unknown(server, session, portraits):
    url, _, _ = server
    gate = MjpegServer(portraits(STRANGER, 2), fps=10).start()
    try:
        camera = add(session, url, "Gate", gate.url())

        def decided():
            answer = faces(session, url, camera["id"])
            return answer if answer["faces"] and answer["faces"][0]["reason"] is None else None

        answer = wait_for(decided, timeout=30)
        [face] = answer["faces"]
        assert face["name"] is None and face["person_id"] is None and face["similarity"] < 0.9
    finally:
        session.delete(f"{url}/api/cameras/{camera['id']}", timeout=10)
        gate.stop()


@pytest.mark.browser
def test_the_live_page_shows_a_cameras_labelled_view(server, session, door, tmp_path, portraits, output_dir):
    """Chromium's own (fake) webcam shows nobody; picking the camera shows its picture with Ada boxed and named."""
    url, _, _ = server
    cameras = session.get(f"{url}/api/cameras", timeout=10).json()["cameras"]
    camera = next((c for c in cameras if c["name"] == "Door"), None) or add(
        session, url, "Door", door.url(login=("viewer", PASSWORD)))
    webcam = tmp_path / "empty.y4m"
    write_y4m(webcam, [webcam_frame(_blank(tmp_path))] * 5, 5)
    with chromium_with_camera(webcam) as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/login?next=" + quote(f"/live?camera={camera['id']}"))
        page.fill("#password", TEST_PASSWORD)
        page.click("#login-submit")
        page.wait_for_function("window.cameraStats && window.cameraStats.lastAnswer && "
                               "window.cameraStats.lastAnswer.faces.some(f => f.name === 'Ada')", timeout=30_000)
        labels = page.locator("#live-faces li").all_inner_texts()
        assert any(text.startswith("Ada 0.9") for text in labels), labels
        assert page.locator("#camera-image").is_visible() and not page.locator("#live-video").is_visible()
        assert page.input_value("#live-source") == str(camera["id"])
        box = page.evaluate("""() => {
            const canvas = document.getElementById('live-overlay');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let green = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i + 1] > 140 && data[i] < 60 && data[i + 3] > 0) green++;
            return green;
        }""")
        assert box > 500  # the green box and label of a known face are drawn over the camera's picture
        page.screenshot(path=output_dir / "camera-live.png")
        assert errors == []


def _blank(folder):
    from PIL import Image

    path = folder / "blank.png"
    Image.new("RGB", (64, 64), (200, 200, 200)).save(path)
    return path
