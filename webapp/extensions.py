"""Extension objects created once at import, bound to an app in create_app (Flask's init_app pattern)."""

from flask_socketio import SocketIO

# async_mode is set to "threading" in create_app: recognition is CPU-bound dlib
# work, which green threads (eventlet, gevent) would run one frame at a time
# while starving every other request.
socketio = SocketIO()
