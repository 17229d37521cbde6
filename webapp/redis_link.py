"""Redis, when FACES_REDIS_URL is set: Socket.IO's message queue, the login limit's storage, and a watch on it.

What goes through Redis: a Socket.IO emit to a room or to every client (it reaches the clients of every
process) and the failed-login counts (webapp/security.py), so a client's failed logins count across
processes. What does not: the answer to one live client, which is emitted by the process holding that
client's connection without a round trip through Redis (LocalFirstRedisManager), so live video never
waits for Redis or stops with it.

Redis down: the watch logs it once, and once more when it is back; /api/health reports it but the process
stays healthy (it serves everything); the login limit falls back to counting in each process's memory
(Flask-Limiter's in-memory fallback: N processes allow N times FACES_LOGIN_LIMIT until Redis is back, and a
login never gets a 500); python-socketio retries its subscription, waiting longer each time (at most 60 s).
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

import socketio
from flask import Flask

log = logging.getLogger(__name__)

EXTENSION = "redis"
SCHEMES = ("redis", "rediss", "unix")
TIMEOUT_S = 1.0  # connecting to (and, for the login limit, reading from) Redis: a login waits at most this
WATCH_EVERY_S = 2.0
CHANNEL = "faces"  # Socket.IO's pub/sub channel: the same in every process of one installation


def shown(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def check_url(url: str | None) -> None:
    """:raises ValueError: not a redis://, rediss:// or unix:// URL (the message leaves any password out)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parses the port: "redis://h:x" raises ValueError)
    except ValueError:
        raise ValueError(f"FACES_REDIS_URL={shown(url)!r} is not a URL like redis://127.0.0.1:6379/0") from None
    if parts.scheme not in SCHEMES or (parts.scheme != "unix" and not parts.hostname) or (
            parts.scheme == "unix" and not parts.path):
        raise ValueError(f"FACES_REDIS_URL={shown(url)!r} is not a URL like redis://127.0.0.1:6379/0 "
                         "(schemes: redis, rediss, unix)")


def limiter_config(url: str | None) -> dict:
    """Flask-Limiter's storage settings: Redis with short timeouts and an in-memory fallback, else memory."""
    if not url:
        return {"RATELIMIT_STORAGE_URI": "memory://"}
    return {
        "RATELIMIT_STORAGE_URI": url,
        "RATELIMIT_STORAGE_OPTIONS": {"socket_connect_timeout": TIMEOUT_S, "socket_timeout": TIMEOUT_S},
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,  # Redis down: each process counts on its own
        "RATELIMIT_SWALLOW_ERRORS": True,  # Redis lost between a login's check and its count: not a 500
    }


class LocalFirstRedisManager(socketio.RedisManager):
    """python-socketio's Redis manager, except that an emit to one client of this process stays in this process.

    The stock manager publishes every emit, the live answers too: each answered frame would cross Redis
    and reach every other process, and fail (with two log lines) while Redis is down.
    """

    def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if callback is None and self._here(room, namespace or "/"):
            kwargs["ignore_queue"] = True
        return super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback,
                            **kwargs)

    def disconnect(self, sid, namespace=None, **kwargs):
        if self._here(sid, namespace or "/"):
            kwargs["ignore_queue"] = True
        return super().disconnect(sid, namespace=namespace, **kwargs)

    def _here(self, room, namespace: str) -> bool:
        """Whether `room` is the id of a client connected to this process."""
        try:
            return isinstance(room, str) and self.rooms[namespace][None].get(room) is not None
        except KeyError:
            return False


def client_manager(url: str | None) -> LocalFirstRedisManager | None:
    """Socket.IO's client manager for create_app: through Redis when url is set, else None (this process only)."""
    if not url:
        return None
    return LocalFirstRedisManager(url, channel=CHANNEL, redis_options={"socket_connect_timeout": TIMEOUT_S})


class RedisWatch:
    """Pings Redis every `every_s` seconds on a daemon thread; logs when it goes away and when it is back."""

    def __init__(self, url: str, every_s: float = WATCH_EVERY_S):
        import redis

        self.url, self.every_s = url, every_s
        self.state = "unknown"  # ok, down
        self.error: str | None = None
        self._client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faces-redis-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """Ping once; log a change of state. Returns whether Redis answered."""
        try:
            self._client.ping()
        except Exception as exc:  # redis-py raises its own ConnectionError/TimeoutError, and OSError
            self._went_down(exc)
            return False
        if self.state != "ok":
            if self.state == "down":
                log.info("Redis at %s answers again: Socket.IO messages and login counts are shared again",
                         shown(self.url))
            self.state, self.error = "ok", None
        return True

    def _went_down(self, exc: Exception) -> None:
        self.error = str(exc)
        if self.state != "down":
            log.error("Redis at %s is unreachable (%s): live video goes on; failed logins are counted by each "
                      "process on its own and Socket.IO messages stay in their process until it is back",
                      shown(self.url), self.error)
        self.state = "down"

    def _run(self) -> None:
        self.check()
        while not self._stop.wait(self.every_s):
            self.check()


def init_app(app: Flask) -> RedisWatch | None:
    """Check FACES_REDIS_URL and, when set, start watching it. :raises ValueError: a malformed URL."""
    url = app.config.get("REDIS_URL")
    check_url(url)
    if not url:
        return None
    watch = RedisWatch(url)
    app.extensions[EXTENSION] = watch
    watch.start()
    log.info("Redis at %s: Socket.IO's message queue and the login limit's counts", shown(url))
    return watch
