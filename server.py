"""Start the web app: python server.py [--host H] [--port P] [--data-dir DIR].

Each option defaults to its env var (FACES_HOST, FACES_PORT, FACES_DATA_DIR),
then to 127.0.0.1, 5000 and data/ in the project. Other settings: webapp/settings.py.
Another address than loopback is logged as a warning unless FACES_BEHIND_TLS=1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# One BLAS thread per live worker (there is a worker per core already); set before numpy and dlib load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from webapp import create_app, db, security, settings  # noqa: E402
from webapp.extensions import socketio  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    try:
        env = settings.from_env()
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    parser = argparse.ArgumentParser(description="Face enrollment and live recognition web app.")
    parser.add_argument(
        "--host", default=env["HOST"], help="address to listen on (env FACES_HOST; default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=env["PORT"], help="port (env FACES_PORT; default %(default)s)")
    parser.add_argument(
        "--data-dir", default=env["DATA_DIR"],
        help="database, photos and caches; created when missing (env FACES_DATA_DIR; default %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.umask(0o077)  # every file the server makes (database, photos, keys) is the owner's alone
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app({"DATA_DIR": args.data_dir})
    except (ValueError, db.Unavailable) as exc:  # a bad setting (FACES_ADMIN_PASSWORD too short), no database
        sys.exit(f"error: {exc}")
    app.extensions["live"].start()  # the live workers load their models now, not on the first stream
    warning = security.bind_warning(args.host, app.config["BEHIND_TLS"])
    if warning:
        logging.getLogger("server").warning(warning)
    print(f"Faces: http://{args.host}:{args.port}/  (data in {app.config['DATA_DIR']})", flush=True)
    # Werkzeug's threaded server with simple-websocket gives real WebSockets in
    # threading mode; it is meant for one self-hosted machine, hence "unsafe".
    socketio.run(app, host=args.host, port=args.port, allow_unsafe_werkzeug=True, use_reloader=False, log_output=False)


if __name__ == "__main__":
    main()
