"""Webhooks against real local HTTP receivers: signed POSTs, retries with back-off, and receivers that hang
or answer 500 never delaying a good one, a live frame, or the app."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from web_helpers import STRANGER, log_in, on_background, prepare_data_dir, wait_until

from webapp import create_app, webhooks
from webapp.live_stream import LiveStream
from webapp.notify import EVENT_FIELDS, Notifier, track_event

EVENT = track_event("Front door", "abc:1", 7, "Ada", 0.97)


class Receiver:
    """A local HTTP server; `behaviour(receiver, attempt)` -> status to answer (it may also sleep)."""

    def __init__(self, behaviour=lambda receiver, attempt: 200):
        self.got: queue.Queue = queue.Queue()
        self.attempts = 0
        self.release = threading.Event()  # ends a hanging answer
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                receiver.got.put((dict(self.headers), body, time.monotonic()))
                status = behaviour(receiver, receiver.attempts)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=secret-in-query"

    def next(self, timeout: float = 5):
        return self.got.get(timeout=timeout)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def hangs(receiver, attempt):
    receiver.release.wait(30)
    return 200


@pytest.fixture
def receivers():
    made = []

    def make(behaviour=lambda receiver, attempt: 200):
        made.append(Receiver(behaviour))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def notifier():
    made = Notifier()
    yield made
    made.close()


def verify(secret: bytes, headers: dict, body: bytes) -> bool:
    """What a receiver does: recompute the HMAC of the raw body and compare in constant time."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Faces-Signature"])


def test_a_live_stream_event_is_posted_signed_with_the_generated_secret(tmp_path, web_recognizer, receivers,
                                                                       celeba_dir):
    good = receivers()
    data_dir = prepare_data_dir(tmp_path / "data")
    app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test", "RECOGNIZER": web_recognizer,
                      "WEBHOOK_URLS": good.url})
    try:
        app.extensions["faces"].wait_ready()
        secret = (data_dir / webhooks.SECRET_FILE).read_text().strip().encode()
        assert len(secret) >= 32 and (data_dir / webhooks.SECRET_FILE).stat().st_mode & 0o077 == 0
        stream = LiveStream(app.extensions["faces"], camera="Front door", on_event=app.extensions["notifier"].publish,
                            max_frame_bytes=app.config["MAX_FRAME_BYTES"])
        stranger = on_background((celeba_dir / STRANGER / f"{STRANGER}_0001.jpg").read_bytes())
        for i in range(12):
            stream.answer(i, stranger, now=i / 15)
        headers, body, _ = good.next()
        assert verify(secret, headers, body)
        assert not verify(b"another secret", headers, body)
        assert headers["Content-Type"] == "application/json"
        event = json.loads(body)
        assert set(event) == set(EVENT_FIELDS)
        assert (event["camera"], event["unknown"], event["person"]) == ("Front door", True, None)
        time.sleep(0.3)
        assert good.got.empty()  # one track, one POST

        status = log_in(app.test_client()).get("/api/integrations").get_json()
        [hook] = status["webhooks"]
        assert hook["last_status"] == 200 and hook["sent"] == 1 and hook["error"] is None
        assert "secret-in-query" not in json.dumps(status)  # URLs are shown without their query
        page = log_in(app.test_client()).get("/integrations").get_data(as_text=True)
        assert secret.decode() in page and "secret-in-query" not in page
    finally:
        app.extensions["notifier"].close()


def test_a_hanging_and_a_failing_receiver_do_not_delay_a_good_one(receivers, notifier):
    hanging, failing, good = receivers(hangs), receivers(lambda r, a: 500), receivers()
    secret = b"k" * 32
    notifier.add_sink(webhooks.WebhookSink(hanging.url, secret, timeout_s=2, retries=0))
    failing_sink = webhooks.WebhookSink(failing.url, secret, timeout_s=2, retries=2, backoff_s=0.2)
    notifier.add_sink(failing_sink)
    notifier.add_sink(webhooks.WebhookSink(good.url, secret, timeout_s=2))
    started = time.monotonic()
    for i in range(3):
        notifier.publish({**EVENT, "track_id": f"abc:{i}"})
    assert time.monotonic() - started < 0.05  # publish hands over and returns
    posts = [good.next(timeout=2) for _ in range(3)]
    arrivals = [at - started for _, _, at in posts]
    assert max(arrivals) < 1.0, arrivals  # while the hanging one holds its first POST for 2 s
    assert [json.loads(body)["track_id"] for _, body, _ in posts] == ["abc:0", "abc:1", "abc:2"]
    hanging.next(timeout=2)  # it did get its first POST, and is still sitting on it
    # The failing one: the first try, then 2 retries after 0.2 s and 0.4 s, for each event in turn.
    wait_until(lambda: failing.attempts >= 3, timeout=3)
    assert failing_sink.last_status == 500 and failing_sink.last_error == "answered 500"


def test_retries_back_off_until_the_receiver_recovers_with_the_same_signed_body(receivers, notifier):
    flaky = receivers(lambda r, attempt: 503 if attempt < 3 else 204)
    sink = webhooks.WebhookSink(flaky.url, b"secret", retries=4, backoff_s=0.1)
    worker = notifier.add_sink(sink)
    notifier.publish(EVENT)
    tries = [flaky.next() for _ in range(3)]
    assert len({body for _, body, _ in tries}) == 1 and len({h["X-Faces-Signature"] for h, _, _ in tries}) == 1
    gaps = [b[2] - a[2] for a, b in zip(tries, tries[1:])]
    assert 0.08 < gaps[0] < 0.5 and gaps[1] > 1.5 * gaps[0] * 0.9  # 0.1 s, then 0.2 s
    wait_until(lambda: worker.sent == 1)
    assert sink.last_status == 204 and sink.last_error is None and worker.failed == 0


def test_a_client_error_is_not_retried_and_an_unreachable_url_gives_up(receivers, notifier):
    gone = receivers(lambda r, a: 410)
    gone_worker = notifier.add_sink(webhooks.WebhookSink(gone.url, b"s", retries=3, backoff_s=0.05))
    closed_port = receivers()
    closed_port.close()  # nothing listens there any more
    dead = webhooks.WebhookSink(closed_port.url, b"s", retries=1, backoff_s=0.05, timeout_s=1)
    dead_worker = notifier.add_sink(dead)
    notifier.publish(EVENT)
    wait_until(lambda: gone_worker.failed == 1 and dead_worker.failed == 1)
    assert gone.attempts == 1  # 410 is final
    assert dead.last_error.startswith("not delivered") and dead.last_status is None


def test_bad_webhook_urls_are_refused_at_start_without_their_secrets(tmp_path, web_recognizer):
    with pytest.raises(ValueError) as caught:
        create_app({"TESTING": True, "DATA_DIR": prepare_data_dir(tmp_path / "d"), "RECOGNIZER": web_recognizer,
                    "WEBHOOK_URLS": "https://ok.example/hook, ftp://user:hunter2@files.example/x?key=abc"})
    assert "FACES_WEBHOOK_URLS" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "abc" not in str(caught.value)
    assert webhooks.shown("https://u:pw@h.example:8443/p/q?token=t#f") == "https://h.example:8443/p/q"
