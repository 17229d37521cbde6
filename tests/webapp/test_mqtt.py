"""MQTT against a real private mosquitto: one event per track, retained state, Home Assistant discovery,
a broker that is down at start or refuses the password.

The app runs on the fake models (tests/fakes.py), so frames take milliseconds; the broker and the
subscriber are real (mosquitto on a free loopback port, paho-mqtt).
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from mqtt_helpers import Broker, Subscriber, mosquitto_binary
from web_helpers import ENROLLED, STRANGER, enroll_json, free_port, log_in, on_background, prepare_data_dir, wait_until

from webapp import create_app, mqtt
from webapp.events import NAMESPACE
from webapp.extensions import socketio
from webapp.live_stream import LiveStream
from webapp.notify import EVENT_FIELDS

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None,
    reason="mosquitto is not installed (Debian package mosquitto; ./test.sh installs it through scripts/setup.sh)",
)
FRAMES = 20
QUIET_S = 0.5  # after the last frame, a second event would have arrived by then


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture
def subscriber(broker):
    sub = Subscriber(broker.port, ("faces/#", "homeassistant/#"))
    yield sub
    sub.close()


@pytest.fixture
def make_app(tmp_path, web_recognizer):
    apps = []

    def make(**config):
        data_dir = prepare_data_dir(tmp_path / f"data{len(apps)}")
        app = create_app({"TESTING": True, "DATA_DIR": data_dir, "SECRET_KEY": "test", "RECOGNIZER": web_recognizer,
                          **config})
        app.extensions["faces"].wait_ready()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["notifier"].close()


def mqtt_status(app) -> dict:
    answer = log_in(app.test_client()).get("/api/integrations")
    assert answer.status_code == 200
    return answer.get_json()["mqtt"]


def connected(app) -> None:
    wait_until(lambda: mqtt_status(app)["state"] == "connected", timeout=10)


def enroll(app, photo) -> int:
    answer = enroll_json(log_in(app.test_client()), "Ada", [photo(ENROLLED, 1)])
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.get_json()["person"]["id"]


def camera_stream(app, camera: str = "browser") -> LiveStream:
    """A live stream the way a camera gets one: its own name, events to the app's Notifier."""
    return LiveStream(app.extensions["faces"], camera=camera, on_event=app.extensions["notifier"].publish,
                      unknown_frames=app.config["LIVE_UNKNOWN_FRAMES"], max_frame_bytes=app.config["MAX_FRAME_BYTES"])


def events(subscriber) -> list[dict]:
    return [json.loads(m.text) for m in subscriber.on("faces/events")]


def stream_frames(app, jpeg: bytes, count: int = FRAMES) -> None:
    """Send `count` frames over the live page's socket (a browser stream), each after the last one's answer."""
    client = socketio.test_client(app, namespace=NAMESPACE, flask_test_client=log_in(app.test_client()))
    try:
        for _ in range(count):
            client.emit("frame", jpeg, namespace=NAMESPACE)
            wait_until(lambda: [e for e in client.get_received(NAMESPACE) if e["name"] in ("faces", "error")])
    finally:
        client.disconnect(namespace=NAMESPACE)


def test_an_enrolled_person_on_the_live_page_gives_one_named_event(make_app, broker, subscriber, photo):
    app = make_app(MQTT_URL=broker.url)
    person_id = enroll(app, photo)
    connected(app)
    stream_frames(app, on_background(photo(ENROLLED, 1)[1]))
    subscriber.wait_for("faces/events")
    time.sleep(QUIET_S)
    [event] = events(subscriber)  # one per track, not one per frame
    assert set(event) == set(EVENT_FIELDS)
    assert (event["person"], event["person_id"], event["camera"], event["unknown"]) == ("Ada", person_id, "browser",
                                                                                          False)
    assert event["similarity"] >= 0.9 and event["time"].endswith("Z") and ":" in event["track_id"]
    # The retained state follows: the camera's last person, and Ada present.
    subscriber.wait_for("faces/cameras/browser/last_person", text="Ada")
    subscriber.wait_for(f"faces/people/{person_id}/present", text="ON")
    assert json.loads(subscriber.wait_for("faces/cameras/browser/last_event")[-1].text) == event
    assert mqtt_status(app)["sent"] == 1


def test_a_stranger_gives_one_unknown_event_per_track_on_a_named_camera(make_app, broker, subscriber, photo,
                                                                       celeba_dir):
    app = make_app(MQTT_URL=broker.url)
    enroll(app, photo)
    connected(app)
    stranger = on_background((celeba_dir / STRANGER / f"{STRANGER}_0001.jpg").read_bytes())
    for track in range(2):  # two tracks (a stream each), two events
        stream = camera_stream(app, "Front door")
        for i in range(FRAMES):
            kind, answer = stream.answer(i, stranger, now=i / 15)
            assert kind == "faces" and [f["person_id"] for f in answer["faces"]] == [None]
        subscriber.wait_for("faces/events", count=track + 1)
    time.sleep(QUIET_S)
    got = events(subscriber)
    assert len(got) == 2 and got[0]["track_id"] != got[1]["track_id"]
    for event in got:
        assert (event["person"], event["person_id"], event["unknown"], event["camera"]) == (None, None, True,
                                                                                            "Front door")
    subscriber.wait_for("faces/cameras/front_door/last_person", text="unknown")


def test_home_assistant_discovery_configs_are_retained(make_app, broker, photo, celeba_dir):
    app = make_app(MQTT_URL=broker.url, MQTT_PRESENT_S=0.5)
    person_id = enroll(app, photo)
    connected(app)
    stream = camera_stream(app, "Garden")
    frame = on_background(photo(ENROLLED, 1)[1])
    for i in range(5):
        stream.answer(i, frame, now=i / 15)
    # A subscriber that comes later still gets every config: they are retained.
    sub = Subscriber(broker.port, ("homeassistant/#", "faces/#"))
    try:
        camera_topic = "homeassistant/sensor/faces/camera_garden_last_person/config"
        person_topic = f"homeassistant/binary_sensor/faces/person_{person_id}_present/config"
        sensor = json.loads(sub.wait_for(camera_topic)[0].text)
        assert sensor["state_topic"] == "faces/cameras/garden/last_person"
        assert sensor["availability_topic"] == "faces/status" and sensor["unique_id"]
        assert json.loads(sub.wait_for("homeassistant/sensor/faces/camera_browser_last_person/config")[0].text)
        presence = json.loads(sub.wait_for(person_topic)[0].text)
        assert presence["device_class"] == "presence" and presence["device"]["name"] == "Ada"
        assert presence["state_topic"] == f"faces/people/{person_id}/present"
        # Both are out now; one who subscribes only now gets them from the broker, as retained messages.
        late = Subscriber(broker.port, ("homeassistant/#",))
        try:
            assert late.wait_for(camera_topic)[0].retain and late.wait_for(person_topic)[0].retain
        finally:
            late.close()
        assert sub.wait_for("faces/status")[0].text == "online"
        # A camera added on the server is announced before its first event.
        app.extensions["notifier"].announce_camera("Back yard")
        sub.wait_for("homeassistant/sensor/faces/camera_back_yard_last_person/config", timeout=5)
        # Present times out (FACES_MQTT_PRESENT_S) and goes OFF by itself.
        sub.wait_for(f"faces/people/{person_id}/present", text="OFF", timeout=5)
        # A deleted person's sensor is removed (an empty retained config).
        assert log_in(app.test_client()).delete(f"/api/people/{person_id}").status_code == 200
        assert sub.wait_for(person_topic, count=2, timeout=5)[-1].text == ""
    finally:
        sub.close()


def test_a_broker_that_is_down_at_start_keeps_the_app_working_and_is_joined_when_it_comes(make_app, tmp_path,
                                                                                        photo, caplog):
    port = free_port()  # nothing listens there yet
    started = time.monotonic()
    app = make_app(MQTT_URL=f"mqtt://127.0.0.1:{port}")
    assert time.monotonic() - started < 5  # create_app does not wait for the broker
    status = wait_until(lambda: (s := mqtt_status(app))["state"] == "unreachable" and s)
    assert status["error"] == "cannot reach the broker" and status["broker"] == f"mqtt://127.0.0.1:{port}"
    person_id = enroll(app, photo)
    stream = camera_stream(app)
    frame = on_background(photo(ENROLLED, 1)[1])
    kind, answer = stream.answer(0, frame, now=0.0)
    assert kind == "faces" and answer["faces"][0]["person_id"] == person_id  # recognition goes on without MQTT
    status = wait_until(lambda: (s := mqtt_status(app))["skipped"] == 1 and s)  # the event is not kept
    assert status["sent"] == 0 and status["failed"] == 0
    assert any("cannot reach the broker" in r.getMessage() for r in caplog.records)

    broker = Broker(tmp_path / "late", port=port).start()
    try:
        sub = Subscriber(port, ("faces/#",))
        connected_after = time.monotonic()
        wait_until(lambda: mqtt_status(app)["state"] == "connected", timeout=20)  # paho's own reconnect
        reconnect_s = time.monotonic() - connected_after
        sub.wait_for("faces/status", text="online")
        sub.wait_for(f"faces/people/{person_id}/present")  # retained state published again on connection
        stream2 = camera_stream(app)
        stream2.answer(0, frame, now=0.0)
        [message] = sub.wait_for("faces/events")
        assert json.loads(message.text)["person"] == "Ada"
        sub.close()
    finally:
        broker.stop()
    assert reconnect_s < 20


def test_a_wrong_password_gives_a_clear_state_and_is_never_logged(make_app, tmp_path, caplog):
    broker = Broker(tmp_path / "auth", user=("faces", "right-password")).start()
    try:
        caplog.set_level(logging.INFO)
        wrong = make_app(MQTT_URL=f"mqtt://faces:not%20the%20password@127.0.0.1:{broker.port}")
        status = wait_until(lambda: (s := mqtt_status(wrong))["state"] == "refused" and s)
        assert "user name and password" in status["error"]
        assert status["broker"] == f"mqtt://faces@127.0.0.1:{broker.port}"
        page = log_in(wrong.test_client()).get("/integrations").get_data(as_text=True)
        assert "refused" in page
        right = make_app(MQTT_URL=f"mqtt://faces:right-password@127.0.0.1:{broker.port}")
        connected(right)  # the same broker lets the right password in
        for secret in ("not the password", "not%20the%20password", "right-password"):
            assert secret not in caplog.text and secret not in page
            assert secret not in json.dumps(mqtt_status(wrong)) + json.dumps(mqtt_status(right))
    finally:
        broker.stop()


def test_mqtt_urls_are_checked_without_repeating_the_password(make_app):
    broker = mqtt.parse_url("mqtt://user:p%40ss@example.net:1884")
    assert (broker.host, broker.port, broker.username, broker.password) == ("example.net", 1884, "user", "p@ss")
    assert not any(secret in text for secret in ("p@ss", "p%40ss") for text in (str(broker), repr(broker)))
    assert mqtt.parse_url("mqtt://broker").port == 1883 and mqtt.parse_url("mqtts://broker").tls
    for bad in ("http://u:secret@host", "mqtt://u:secret@:1883", "mqtt://u:secret@host:99999", "mqtt://u:secret@host/x"):
        with pytest.raises(ValueError) as caught:
            mqtt.parse_url(bad)
        assert "secret" not in str(caught.value) and "mqtt://[user:password@]host:port" in str(caught.value)
    with pytest.raises(ValueError, match="FACES_MQTT_URL") as caught:
        make_app(MQTT_URL="tcp://x:secret@host")
    assert "secret" not in str(caught.value)
    assert mqtt.topic_word("Front door #1") == "front_door_1" and mqtt.topic_word("玄関").startswith("camera_")
