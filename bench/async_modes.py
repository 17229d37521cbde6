"""Start the app under another Flask-SocketIO async mode, for comparing modes with bench/live.py.

    python bench/live.py --server "bench/async_modes.py eventlet"

The app itself always uses threading (see README, "Why threading mode"); this
script exists only to measure the alternative. eventlet must be installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

mode = sys.argv[1] if len(sys.argv) > 1 else "threading"
if mode == "eventlet":
    import eventlet

    eventlet.monkey_patch()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_socketio import SocketIO  # noqa: E402

_init_app = SocketIO.init_app


def _init_app_in_mode(self, app, **kwargs):
    kwargs["async_mode"] = mode
    return _init_app(self, app, **kwargs)


SocketIO.init_app = _init_app_in_mode

import server  # noqa: E402

server.main(sys.argv[2:])
