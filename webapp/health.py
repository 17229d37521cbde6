"""GET /api/health: whether this process can serve, for a load balancer (HAProxy's check); no login needed.

200 {"status": "ok", ...} once the model is loaded; 503 with "starting" while it loads, "error" when it
failed or this process has stopped following the other processes' changes (webapp/changes.py: its
gallery may be out of date). A Redis that is down is reported ("redis": "down") but keeps the status ok:
the process still answers everything, and every process would fail the check at once. The answer names
no people and no paths: it is public.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, current_app, jsonify

bp = Blueprint("health", __name__)

_STARTED = time.monotonic()


def status() -> tuple[dict, int]:
    """This process's health as (JSON body, HTTP status)."""
    service = current_app.extensions["faces"]
    poller = current_app.extensions.get("changes")
    watch = current_app.extensions.get("redis")
    state = {"ready": "ok", "loading": "starting"}.get(service.state, "error")
    if state == "ok" and poller is not None and poller.stalled:
        state = "error"
    body = {
        "status": state,
        "model": service.state,
        "process": os.getpid(),
        "uptime_s": round(time.monotonic() - _STARTED, 1),
        "changes": None if poller is None else {"applied": poller.applied, "stalled": poller.stalled},
        "redis": None if watch is None else watch.state,
    }
    return body, 200 if state == "ok" else 503


@bp.get("/api/health")
def health():
    body, code = status()
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, code


def init_app(app: Flask) -> None:
    """Register the route (public: it is in webapp.auth.PUBLIC_ENDPOINTS)."""
    app.register_blueprint(bp)
