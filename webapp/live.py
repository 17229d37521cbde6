"""The live page: webcam frames go to the server over Socket.IO, labelled boxes come back.

The page itself is static; webapp/events.py answers its frames. The settings
the page's script needs travel as data attributes.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, url_for

from webapp.events import NAMESPACE

bp = Blueprint("live", __name__)


@bp.get("/live")
def live():
    config = current_app.config
    client = {
        "namespace": NAMESPACE,
        "frame-width": config["FRAME_WIDTH"],
        "jpeg-quality": config["FRAME_JPEG_QUALITY"],
        "timeout-ms": config["FRAME_TIMEOUT_MS"],
        "max-frame-bytes": config["MAX_FRAME_BYTES"],
        "corrections-url": url_for("api.add_correction"),
    }
    return render_template("live/live.html", client=client)
