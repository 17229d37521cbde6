"""Extension objects created once at import, bound to an app in create_app (Flask's init_app pattern)."""

from flask import g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_socketio import SocketIO
from flask_wtf.csrf import CSRFProtect as _CSRFProtect

# async_mode is set to "threading" in create_app: recognition is CPU-bound dlib
# work, which green threads (eventlet, gevent) would run one frame at a time
# while starving every other request.
socketio = SocketIO()


class CSRFProtect(_CSRFProtect):
    """Flask-WTF's check, skipped for a request an API key let in (webapp.api_keys sets g.api_key).

    Such a request carries no session cookie, so there is no login for another site to ride on.
    """

    def protect(self, *args, **kwargs):
        if g.get("api_key") is None:
            super().protect(*args, **kwargs)


# Checks the token of every POST/PUT/PATCH/DELETE (form field or X-CSRFToken header).
csrf = CSRFProtect()

# Only the login views carry a limit (failed logins per client address); no default limits.
limiter = Limiter(key_func=get_remote_address)
