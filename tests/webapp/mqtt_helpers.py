"""A private mosquitto broker on a free loopback port, and a paho subscriber that collects what it hears.

Used by tests/webapp/test_mqtt.py and bench/events.py. The broker is Debian's
`mosquitto` (scripts/setup.sh installs it for the tests); without it the tests skip.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from web_helpers import free_port, stop_process

START_TIMEOUT_S = 10


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


class Broker:
    """`mosquitto -c <config>` on 127.0.0.1:port, anonymous or with one user (a password file made with mosquitto_passwd)."""

    def __init__(self, folder: Path, port: int | None = None, user: tuple[str, str] | None = None):
        self.folder, self.port, self.user = Path(folder), port or free_port(), user
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian package mosquitto)")
        self.folder.mkdir(parents=True, exist_ok=True)
        # As root, mosquitto drops to the user `mosquitto`, who cannot read files in a private tmp folder.
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr",
                 f"user {getpass.getuser()}"]
        if self.user is None:
            lines.append("allow_anonymous true")
        else:
            passwords = self.folder / "passwords"
            passwords.touch(mode=0o600)
            passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            subprocess.run([passwd, "-b", str(passwords), *self.user], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        config = self.folder / f"mosquitto-{self.port}.conf"
        config.write_text("\n".join(lines) + "\n")
        self.log = open(self.folder / f"mosquitto-{self.port}.log", "ab")
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.folder / f'mosquitto-{self.port}.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S} s")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.log.close()
            self.process = None


@dataclass
class Message:
    topic: str
    text: str
    retain: bool
    arrived: float  # time.time()


class Subscriber:
    """A paho client subscribed to `topics` (QoS 1), collecting every message with its arrival time."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), user: tuple[str, str] | None = None):
        import paho.mqtt.client as paho

        self.messages: list[Message] = []
        self._new = threading.Condition()
        subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        if user:
            self.client.username_pw_set(*user)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(START_TIMEOUT_S):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        with self._new:
            self.messages.append(Message(message.topic, message.payload.decode(), bool(message.retain), time.time()))
            self._new.notify_all()

    def on(self, topic: str) -> list[Message]:
        with self._new:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10, text: str | None = None) -> list[Message]:
        """The messages on topic (with that text, if given) once there are `count`; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                found = [m for m in self.messages if m.topic == topic and (text is None or m.text == text)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    break
                self._new.wait(left)
        assert len(found) >= count, f"{len(found)} message(s) on {topic} within {timeout} s; heard {self.topics()}"
        return found

    def topics(self) -> list[str]:
        with self._new:
            return sorted({m.topic for m in self.messages})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
