"""End to end in headless Chromium: add a person from the browser, then see them named live.

Chromium's fake camera plays a .y4m built here: unseen photos of the enrolled
person, then photos of someone never enrolled. The test logs in (the first page
it opens sends it to the login form and back), enrolls through the
add-person page (file upload, plus picking a face in a group photo), adds one
more photo on the person's page, then waits for the live page to list the name
and later "Unknown". Screenshots and the live page's measured fps and latency
go to the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web_helpers import (
    ENROLLED,
    STRANGER,
    TEST_PASSWORD,
    chromium_with_camera,
    running_server,
    webcam_frame,
    write_y4m,
)

NAME = "Ada Lovelace"
FPS = 5
FRAMES_PER_PHOTO = 8  # each photo stays 1.6 s in view
LIVE_TIMEOUT_MS = 30_000

MEASURE_MS = 5000

pytestmark = [pytest.mark.browser, pytest.mark.dlib]  # a real server.py, so the real model


def measure(page) -> dict:
    """The live page's own counters over MEASURE_MS: processed fps, mean round trip and server time."""
    read = "({...window.liveStats, now: performance.now()})"
    before = page.evaluate(read)
    page.wait_for_timeout(MEASURE_MS)
    after = page.evaluate(read)
    answered = after["answered"] - before["answered"]
    timed = max(1, after["rttCount"] - before["rttCount"])
    return {
        "seconds": round((after["now"] - before["now"]) / 1000, 2),
        "answered": answered,
        "fps": round(answered / ((after["now"] - before["now"]) / 1000), 2),
        "mean_rtt_ms": round((after["rttSumMs"] - before["rttSumMs"]) / timed, 1),
        "mean_server_ms": round((after["serverSumMs"] - before["serverSumMs"]) / max(1, answered), 1),
        "timeouts": after["timeouts"] - before["timeouts"],
        "errors": after["errors"] - before["errors"],
    }


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory, celeba_dir) -> Path:
    """Unseen photos of the enrolled person, then a stranger's, as a 640x480 y4m video (it loops)."""
    portraits = [celeba_dir / ENROLLED / f"{ENROLLED}_{i:04d}.jpg" for i in (10, 11, 12)]
    portraits += [celeba_dir / STRANGER / f"{STRANGER}_{i:04d}.jpg" for i in (1, 2, 3)]
    frames = [webcam_frame(path) for path in portraits for _ in range(FRAMES_PER_PHOTO)]
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    write_y4m(path, frames, FPS)
    return path


@pytest.fixture(scope="module")
def browser(fake_camera):
    with chromium_with_camera(fake_camera) as browser:
        yield browser


def test_add_a_person_in_the_browser_then_see_them_named_live(
    browser, tmp_path, celeba_dir, samples_dir, output_dir
):
    from playwright.sync_api import expect

    shots = output_dir / "e2e"
    shots.mkdir(parents=True, exist_ok=True)
    with running_server(tmp_path / "data") as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        sockets, binary_heads = [], []

        def watch(ws):
            sockets.append(ws)
            ws.on("framesent", lambda payload: isinstance(payload, bytes) and binary_heads.append(payload[:3]))

        page.on("websocket", watch)

        # Log in: the add-person page sends us to the login form, which sends us back.
        page.goto(f"{url}/people/new")
        expect(page.locator("#login-submit")).to_be_visible()
        assert "/login?next=/people/new" in page.url
        page.fill("#password", TEST_PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{url}/people/new")  # and its load event: enroll.js must be running before files come

        # Add person: three photos of them, a group photo and a file that is not an image.
        page.fill("#name", NAME)
        enrolled = [celeba_dir / ENROLLED / f"{ENROLLED}_{i:04d}.jpg" for i in (1, 2, 3)]
        odd = [samples_dir / "two_people.jpg", samples_dir / "not_an_image.jpg"]
        page.set_input_files("#photo-files", enrolled + odd)
        expect(page.locator("#pending > li")).to_have_count(5)
        page.click("#enroll-submit")
        expect(page.locator("#results-summary")).to_contain_text(f"Added {NAME} with 3 photo(s).")
        expect(page.locator(".outcome.accepted")).to_have_count(3)
        expect(page.locator(".outcome.rejected")).to_have_count(2)
        expect(page.locator(".outcome.rejected").first).to_contain_text("rejected: several faces (2)")
        expect(page.locator(".outcome.rejected").last).to_contain_text("rejected: unreadable file")
        face_boxes = page.locator("#pending .pick .face-box")
        expect(face_boxes).to_have_count(2)
        page.screenshot(path=shots / "1-add-person-outcomes.png", full_page=True)

        # Pick the left face of the group photo (that is them) and send it again.
        left = min(range(2), key=lambda i: face_boxes.nth(i).bounding_box()["x"])
        face_boxes.nth(left).click()
        expect(page.locator("#pending .pick .status")).to_contain_text("face")
        page.locator("#pending .pending-item", has_text="not_an_image.jpg").locator(".remove").click()
        expect(page.locator("#pending > li")).to_have_count(1)
        page.click("#enroll-submit")
        expect(page.locator("#results-summary")).to_contain_text(f"Added 1 photo(s) to {NAME}.")
        expect(page.locator("#pending > li")).to_have_count(0)
        page.screenshot(path=shots / "2-add-person-face-picked.png", full_page=True)

        # The person page and the people list.
        page.click("#results-summary a")
        expect(page.locator("#person-name")).to_have_text(NAME)
        expect(page.locator("#photos > li")).to_have_count(4)
        page.screenshot(path=shots / "3-person.png", full_page=True)
        page.set_input_files("#photo-files", [celeba_dir / ENROLLED / f"{ENROLLED}_0004.jpg"])
        page.click("#enroll-submit")  # all accepted: the page reloads with the new photo
        expect(page.locator("#photos > li")).to_have_count(5)
        page.goto(f"{url}/people")
        expect(page.locator("#people .card")).to_have_count(1)
        expect(page.locator("#people .card")).to_contain_text("5 photos")
        page.screenshot(path=shots / "4-people.png", full_page=True)

        # Live: the fake camera shows them, then a stranger.
        page.goto(f"{url}/live")
        labels = page.locator("#live-faces")
        expect(labels.locator("li.known")).to_contain_text(NAME, timeout=LIVE_TIMEOUT_MS)
        page.screenshot(path=shots / "5-live-named.png")
        expect(labels.locator("li.unknown")).to_have_text("Unknown", timeout=LIVE_TIMEOUT_MS)
        page.screenshot(path=shots / "6-live-unknown.png")
        expect(labels.locator("li.known")).to_contain_text(NAME, timeout=LIVE_TIMEOUT_MS)  # the video loops
        window = measure(page)
        shown = {key: page.locator(f"#live-{key}").inner_text() for key in ("fps", "rtt", "server-ms", "size")}
        page.screenshot(path=shots / "7-live-after-measuring.png")
        context.close()

    report = {"window": window, "shown_at_end": shown}
    (shots / "live-stats.json").write_text(json.dumps(report, indent=2))
    print(f"\nlive page: {json.dumps(report)}")
    assert errors == []
    assert window["answered"] >= 3 and window["fps"] > 0 and window["mean_rtt_ms"] > 0
    assert window["timeouts"] == 0 and window["errors"] == 0
    assert shown["size"] == "640×480"
    live_sockets = [ws for ws in sockets if "/socket.io/" in ws.url]
    assert live_sockets and all("transport=websocket" in ws.url for ws in live_sockets)
    assert binary_heads and all(head == b"\xff\xd8\xff" for head in binary_heads)  # frames go as binary JPEG
