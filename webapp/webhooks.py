"""Webhooks: each track event POSTed as JSON to every URL in FACES_WEBHOOK_URLS, signed, retried, never in the way.

Every URL is its own webapp.notify sink, so it has its own thread and queue: a
receiver that hangs or answers 500 delays only its own deliveries, never a
live frame or another URL. A delivery is

    POST <url>
    Content-Type: application/json
    X-Faces-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the secret>
    X-Faces-Event: track
    <the event JSON, the same as on MQTT's <prefix>/events>

The secret is FACES_WEBHOOK_SECRET, else one generated once into the data dir
(`webhook_secret`, owner-only; the Integrations page says where). A timeout, a
connection error, 408, 429 or a 5xx is retried up to `retries` times, waiting
`backoff_s` doubling up to BACKOFF_MAX_S; any other answer outside 2xx is final.
Redirects are not followed (a POST should not turn into a GET elsewhere). URLs
are shown and logged without their user info, query or fragment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from webapp.notify import event_time

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Faces-Signature"
SECRET_FILE = "webhook_secret"
BACKOFF_MAX_S = 60.0
RETRY_STATUSES = frozenset({408, 429})
USER_AGENT = "faces-webhook/1"


def parse_urls(text: str | None) -> list[str]:
    """FACES_WEBHOOK_URLS (comma-separated) as a list. :raises ValueError: a URL that is not http(s)://host..."""
    urls = [part.strip() for part in (text or "").split(",") if part.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"FACES_WEBHOOK_URLS: {shown(url)!r} is not an http:// or https:// URL with a host")
    return urls


def shown(url: str) -> str:
    """A URL fit for logs and pages: scheme, host, port and path only (no password, token or query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if _port_or_none(parts) else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _port_or_none(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def signature(secret: bytes, body: bytes) -> str:
    """The X-Faces-Signature value of a body: 'sha256=' + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def event_body(event: dict) -> bytes:
    """The exact bytes sent (and signed): compact JSON, keys sorted."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx


class Undelivered(Exception):
    """A delivery that failed for good (after its retries)."""


class WebhookSink:
    """POSTs events to one URL (a webapp.notify sink; its send() blocks its own thread only).

    :param url: the receiver.
    :param secret: the HMAC key.
    :param timeout_s: per attempt: connecting and each read.
    :param retries: attempts after the first, on timeouts, connection errors, 408, 429 and 5xx.
    :param backoff_s: the wait before the first retry; it doubles, up to BACKOFF_MAX_S.
    """

    def __init__(self, url: str, secret: bytes, *, timeout_s: float = 5.0, retries: int = 3, backoff_s: float = 1.0):
        self.url = url
        self.name = f"webhook {shown(url)}"
        self.secret = secret
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.last_delivered: str | None = None
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._closing = threading.Event()

    def send(self, event: dict) -> None:
        """Deliver one event, retrying with back-off. :raises Undelivered: when every attempt failed."""
        body = event_body(event)
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            retry, error = self._attempt(body)
            if error is None:
                self.last_error, self.last_delivered = None, event_time()
                return
            self.last_error = error
            if not retry or attempt == self.retries or self._closing.wait(wait):
                break
            wait = min(wait * 2, BACKOFF_MAX_S)
        raise Undelivered(f"{shown(self.url)}: {self.last_error}")

    def _attempt(self, body: bytes) -> tuple[bool, str | None]:
        """One POST: (whether to retry, what went wrong or None)."""
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.secret, body),
            "X-Faces-Event": "track",
            "User-Agent": USER_AGENT,
        })
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                self.last_status = answer.status
                answer.read(1024)  # a little of the body, so keep-alive servers see the request finished
            return False, None
        except urllib.error.HTTPError as exc:
            self.last_status = exc.code
            exc.close()
            return exc.code >= 500 or exc.code in RETRY_STATUSES, f"answered {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, unreachable, timed out
            reason = getattr(exc, "reason", exc)
            return True, f"not delivered ({reason})"

    def status(self) -> dict:
        return {"name": self.name, "url": shown(self.url), "last_status": self.last_status,
                "error": self.last_error, "last_delivered": self.last_delivered}

    def close(self) -> None:
        self._closing.set()
