"""Guided capture in headless Chromium: the fake camera shows one frontal portrait, and the add-person
page takes the "front" shot by itself, labelled with its quality score, then enrolls it."""

from __future__ import annotations

import re

import pytest
from web_helpers import TEST_PASSWORD, chromium_with_camera, running_server, webcam_frame, write_y4m

FRONTAL = ("celeb_7204", 1)  # yaw about 0.04: a plain frontal portrait
GUIDED_TIMEOUT_MS = 20_000

pytestmark = [pytest.mark.browser, pytest.mark.dlib]  # a real server.py, so the real model


@pytest.fixture(scope="module")
def browser(tmp_path_factory, celeba_dir):
    person, index = FRONTAL
    path = tmp_path_factory.mktemp("camera") / "frontal.y4m"
    write_y4m(path, [webcam_frame(celeba_dir / person / f"{person}_{index:04d}.jpg")] * 5, 5)
    with chromium_with_camera(path) as browser:
        yield browser


def test_guided_capture_takes_the_front_shot_by_itself(browser, tmp_path, output_dir):
    from playwright.sync_api import expect

    with running_server(tmp_path / "data") as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/people/new")
        page.fill("#password", TEST_PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{url}/people/new")

        page.click("#camera-start")
        expect(page.locator("#guided-toggle")).to_be_enabled()
        page.check("#guided-toggle")
        expect(page.locator("#guided-poses li")).to_have_count(5)
        front = page.locator("#pending .pending-item", has_text="front")
        expect(front).to_have_count(1, timeout=GUIDED_TIMEOUT_MS)
        expect(front.locator(".quality")).to_have_text(re.compile(r"front · quality [01]\.\d\d"))
        expect(page.locator('#guided-poses li[data-pose="front"]')).to_have_class("done")
        # The portrait never turns: the page keeps asking for the next pose.
        expect(page.locator("#guided-hints")).to_contain_text("turn slightly left")
        expect(page.locator("#pending > li")).to_have_count(1)
        (output_dir / "e2e").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=output_dir / "e2e" / "guided-front.png", full_page=True)

        page.fill("#name", "Guided")
        page.click("#enroll-submit")
        expect(page.locator("#results-summary")).to_contain_text("Added Guided with 1 photo(s).")
        context.close()
    assert errors == []
