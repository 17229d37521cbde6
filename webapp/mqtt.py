"""MQTT for Home Assistant: track events, retained state and MQTT discovery (paho-mqtt), never in the app's way.

With FACES_MQTT_URL=mqtt://[user:pass@]host:port set, `MqttSink` (a webapp.notify sink) keeps one paho
client in the background (`loop_start`; it connects and reconnects by itself, waiting 1 s growing to
RECONNECT_MAX_S between tries) and publishes, under the prefix P (FACES_MQTT_PREFIX, `faces`):

| topic | retained | payload |
| --- | --- | --- |
| `P/events` | no | each track event, JSON (webapp.notify.track_event) |
| `P/status` | yes | `online`, or `offline` (the broker's last will when the app goes away) |
| `P/cameras/<camera>/last_person` | yes | the name last seen on that camera, or `unknown` |
| `P/cameras/<camera>/last_event` | yes | that event, JSON |
| `P/people/<person id>/present` | yes | `ON` from an event of theirs, `OFF` FACES_MQTT_PRESENT_S later |

and Home Assistant discovery configs (retained, under FACES_MQTT_DISCOVERY_PREFIX, `homeassistant`):
`sensor/<P>/camera_<camera>_last_person/config` per camera and
`binary_sensor/<P>/person_<id>_present/config` per enrolled person (an empty payload removes a deleted one).
Everything retained is published again at every (re)connection. While the broker is down or refuses
the login, events are not kept (they would be stale when it comes back); `status()` says why, and the
log says so once per change. The password is never logged or shown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho

from webapp.notify import BROWSER, event_time

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
URL_FORM = "mqtt://[user:password@]host:port (or mqtts:// for TLS)"
KEEPALIVE_S = 30
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
ONLINE, OFFLINE = "online", "offline"
ON, OFF = "ON", "OFF"
UNKNOWN = "unknown"
MAX_TOPIC_WORD = 64


@dataclass(frozen=True)
class Broker:
    """Where the broker is and how to log in; neither `str()` nor `repr()` shows the password."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def __str__(self) -> str:
        who = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{who}{self.host}:{self.port}"


def parse_url(url: str) -> Broker:
    """FACES_MQTT_URL as a Broker. :raises ValueError: with a message that never repeats the URL (it may hold a password)."""
    problem = f"FACES_MQTT_URL must look like {URL_FORM}"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{problem}: the port is not a number from 1 to 65535") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"{problem}: the scheme must be mqtt or mqtts")
    if not parts.hostname:
        raise ValueError(f"{problem}: the host is missing")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{problem}: nothing may follow host:port")
    return Broker(parts.hostname, port or DEFAULT_PORTS[parts.scheme],
                  unquote(parts.username) if parts.username else None,
                  unquote(parts.password) if parts.password is not None else None, parts.scheme == "mqtts")


def topic_word(text: str) -> str:
    """A camera name as one safe topic level and HA object id: 'Front door' -> 'front_door' (never / + # or empty)."""
    word = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:MAX_TOPIC_WORD]
    return word or "camera_" + hashlib.sha256(text.encode()).hexdigest()[:8]


class MqttSink:
    """The MQTT side of webapp.notify: events, retained state and discovery, on one background paho client.

    :param broker: from parse_url.
    :param people: person id -> name of everyone enrolled now (FaceService.names), read at (re)connection
        and on tick, so that discovery follows enrollments, renames and deletions.
    :param prefix: the topic prefix (FACES_MQTT_PREFIX).
    :param discovery_prefix: Home Assistant's discovery prefix (FACES_MQTT_DISCOVERY_PREFIX).
    :param present_s: a person's `present` goes OFF this long after their last event (FACES_MQTT_PRESENT_S).
    :param cameras: cameras announced from the start (more are added as their events come).
    """

    name = "mqtt"

    def __init__(self, broker: Broker, people: Callable[[], Mapping[int, str]], *, prefix: str = "faces",
                 discovery_prefix: str = "homeassistant", present_s: float = 300.0,
                 cameras: tuple[str, ...] = (BROWSER,)):
        self.broker = broker
        self.people = people
        self.prefix = prefix.strip("/") or "faces"
        self.discovery_prefix = discovery_prefix.strip("/") or "homeassistant"
        self.present_s = present_s
        self.cameras: dict[str, str] = {topic_word(c): c for c in cameras}  # topic word -> camera name
        self.last_events: dict[str, dict] = {}  # camera topic word -> its last event
        self.present_until: dict[int, float] = {}  # person id -> monotonic time their presence ends
        self.announced_people: dict[int, str] = {}
        self.state, self.error, self.since = "connecting", None, event_time()
        self._lock = threading.RLock()
        # Set by paho's thread at each connection; the sink's own thread then publishes the retained state.
        self._resync = threading.Event()
        self._closing = False
        self._new_cameras: set[str] = set()  # added by add_camera, announced at the next tick
        self.client = self._make_client()

    # --- the connection ----------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"faces-{uuid.uuid4().hex[:8]}")
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set()
        client.will_set(self.topic("status"), OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        return client

    def start(self) -> "MqttSink":
        """Connect in the background; returns at once, whether or not the broker is there."""
        log.info("MQTT: connecting to %s in the background (events on %s)", self.broker, self.topic("events"))
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()
        return self

    def close(self) -> None:
        self._closing = True
        with self._lock:
            if self.client.is_connected():
                self.client.publish(self.topic("status"), OFFLINE, qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    def _set_state(self, state: str, error: str | None) -> None:
        changed = (state, error) != (self.state, self.error)
        self.state, self.error = state, error
        if changed:
            self.since = event_time()
            if state == "connected":
                log.info("MQTT: connected to %s", self.broker)
            else:
                log.warning("MQTT: %s: %s; trying again in the background", self.broker, error)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            hint = " (check the user name and password in FACES_MQTT_URL)" if _is_login_problem(reason_code) else ""
            self._set_state("refused", f"the broker refused the connection: {reason_code}{hint}")
            return
        self._set_state("connected", None)
        self._resync.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if self.state == "refused" or self._closing:
            return  # the refusal says more than the disconnection that follows it; closing is no news
        self._set_state("disconnected", f"connection lost ({reason_code})")

    def _on_connect_fail(self, client, userdata) -> None:
        self._set_state("unreachable", "cannot reach the broker")

    def status(self) -> dict:
        return {"name": self.name, "enabled": True, "broker": str(self.broker), "state": self.state, "error": self.error,
                "since": self.since, "events_topic": self.topic("events")}

    # --- what is published -------------------------------------------------------------

    def topic(self, *words: str) -> str:
        return "/".join((self.prefix, *words))

    def send(self, event: dict) -> bool:
        """Publish one event and the state it changes (retained), announcing a camera seen for the first time.

        :return: False when the broker is away (the event is not kept; the state is sent on reconnection).
        """
        camera = topic_word(str(event.get("camera") or BROWSER))
        with self._lock:
            new_camera = camera not in self.cameras
            self.cameras[camera] = str(event.get("camera") or BROWSER)
            self.last_events[camera] = event
            person_id = event.get("person_id")
            if person_id is not None:
                self.present_until[person_id] = time.monotonic() + self.present_s
            if not self.client.is_connected():
                return False  # stale by the time the broker is back; the retained state is sent again then
            self._resync_if_due()
            self._publish(self.topic("events"), json.dumps(event))
            if new_camera:
                self._announce_camera(camera)
            self._publish_camera_state(camera)
            if person_id is not None:
                self._publish(self.topic("people", str(person_id), "present"), ON, retain=True)
            return True

    def add_camera(self, camera: str) -> None:
        """Announce a camera before its first event (at the next tick, on the sink's own thread)."""
        with self._lock:
            word = topic_word(camera)
            if self.cameras.get(word) != camera:
                self.cameras[word] = camera
                self._new_cameras.add(word)

    def tick(self) -> None:
        """Presence that timed out goes OFF; people enrolled, renamed or deleted since are (un)announced."""
        now = time.monotonic()
        with self._lock:
            ended = [pid for pid, until in self.present_until.items() if until <= now]
            for person_id in ended:
                del self.present_until[person_id]
            if not self.client.is_connected():
                return
            self._resync_if_due()
            for camera in self._new_cameras:
                self._announce_camera(camera)
            self._new_cameras.clear()
            for person_id in ended:
                self._publish(self.topic("people", str(person_id), "present"), OFF, retain=True)
            self._sync_people()

    def _resync_if_due(self) -> None:
        """After each connection, everything retained again (the broker may have lost it, or it changed meanwhile)."""
        if not self._resync.is_set():
            return
        self._resync.clear()
        self._publish(self.topic("status"), ONLINE, retain=True)
        for camera in self.cameras:
            self._announce_camera(camera)
            self._publish_camera_state(camera)
        self.announced_people = {}
        self._sync_people()

    def _sync_people(self) -> None:
        people = dict(self.people())
        for person_id in self.announced_people.keys() - people.keys():
            self._publish(self._discovery_topic("binary_sensor", f"person_{person_id}_present"), "", retain=True)
            self._publish(self.topic("people", str(person_id), "present"), "", retain=True)
            self.present_until.pop(person_id, None)
        for person_id, name in people.items():
            if self.announced_people.get(person_id) != name:
                self._announce_person(person_id, name)
        self.announced_people = people

    def _publish_camera_state(self, camera: str) -> None:
        event = self.last_events.get(camera)
        if event is None:
            return
        self._publish(self.topic("cameras", camera, "last_person"), event.get("person") or UNKNOWN, retain=True)
        self._publish(self.topic("cameras", camera, "last_event"), json.dumps(event), retain=True)

    def _announce_camera(self, camera: str) -> None:
        name = self.cameras[camera]
        config = {
            "name": "Last person seen",
            "unique_id": f"{self.prefix}_camera_{camera}_last_person",
            "state_topic": self.topic("cameras", camera, "last_person"),
            "json_attributes_topic": self.topic("cameras", camera, "last_event"),
            "icon": "mdi:face-recognition",
            **self._device(f"camera_{camera}", f"Faces camera {name}"),
        }
        self._publish(self._discovery_topic("sensor", f"camera_{camera}_last_person"), json.dumps(config), retain=True)

    def _announce_person(self, person_id: int, name: str) -> None:
        config = {
            "name": "Present",
            "unique_id": f"{self.prefix}_person_{person_id}_present",
            "state_topic": self.topic("people", str(person_id), "present"),
            "payload_on": ON,
            "payload_off": OFF,
            "device_class": "presence",
            **self._device(f"person_{person_id}", name),
        }
        self._publish(self._discovery_topic("binary_sensor", f"person_{person_id}_present"), json.dumps(config),
                      retain=True)
        present = person_id in self.present_until
        self._publish(self.topic("people", str(person_id), "present"), ON if present else OFF, retain=True)

    def _device(self, identifier: str, name: str) -> dict:
        return {
            "availability_topic": self.topic("status"),
            "device": {"identifiers": [f"{self.prefix}_{identifier}"], "name": name, "manufacturer": "Faces"},
        }

    def _discovery_topic(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{topic_word(self.prefix)}/{object_id}/config"

    def _publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        # paho queues it for its network thread; this never waits for the broker.
        self.client.publish(topic, payload, qos=1 if retain else 0, retain=retain)


def _is_login_problem(reason_code) -> bool:
    """Whether a CONNACK refusal is about the credentials (MQTT 3.1.1 codes 4 and 5, MQTT 5 codes 134 and 135)."""
    return getattr(reason_code, "value", None) in (4, 5, 134, 135) or "auth" in str(reason_code).lower()
