"""The web app: `create_app` builds a configured Flask app; server.py runs it with Flask-SocketIO."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from model.recognizer import Recognizer
from webapp import auth, db, errors, events, files, inbox_store, instance_store, people_store, security, settings
from webapp import strictness
from webapp import changes, head_store, health, jobs, redis_link  # several processes on one store (scripts/cluster.sh)
from webapp.extensions import socketio
from webapp.reembed import Reembedder
from webapp.service import FaceService

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Engine.IO closes a connection whose message exceeds its buffer, so the buffer
# is larger than MAX_FRAME_MB: frames between the two get a polite `error` event.
FRAME_BUFFER_FACTOR = 4
# With several processes on one data dir, the start-up sweep leaves files younger than this (an hour: no
# enrollment takes that long between its files and its rows).
SHARED_SWEEP_MIN_AGE_S = 3600.0


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app.

    :param config: overrides for the settings in `webapp.settings` (keys like
        DATA_DIR, DATABASE, THRESHOLD) plus TESTING, SECRET_KEY and RECOGNIZER
        (a Recognizer to use instead of building one; tests share a loaded one).

    The data dir is the app's instance folder: the database, photos, the
    secret key and the admin password's hash live there (with PostgreSQL,
    the photos only: webapp/instance_store.py).
    """
    app = Flask(__name__, template_folder=str(settings.PROJECT_DIR / "templates"),
                static_folder=str(settings.PROJECT_DIR / "static"))
    app.config.from_mapping(settings.from_env())
    app.config.update(config or {})

    data_dir = Path(app.config["DATA_DIR"]).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    app.config["DATA_DIR"] = data_dir
    if app.config.get("DATABASE_URL"):  # PostgreSQL; the photo files stay in the data dir
        app.config["DATABASE"] = db.check_url(app.config["DATABASE_URL"])
    elif not app.config["DATABASE"]:
        app.config["DATABASE"] = str(data_dir / "faces.db")
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_UPLOAD_MB"] * MB)
    app.config["MAX_FRAME_BYTES"] = int(app.config["MAX_FRAME_MB"] * MB)

    db.init_app(app)
    store = instance_store.init_app(app)  # after the schema: on PostgreSQL its rows hold the secrets
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _secret_key(store)
    files.make_private(data_dir)  # after the database file exists; SQLite gives its -wal/-shm files its mode
    jobs.init_app(app)  # batch work: once in the job worker with FACES_REDIS_URL, else here
    _sweep(app)
    first_change = changes.newest_in(app.config["DATABASE"])  # before the load: later changes are applied, none missed
    service = build_face_service(app.config)
    app.extensions["faces"] = service
    service.start_loading()
    reembedder = Reembedder(app.config["DATABASE"], data_dir, service, app.extensions["jobs"])
    app.extensions["reembed"] = reembedder
    app.context_processor(lambda: {"faces_model": service, "reembed": reembedder.progress})
    reembedder.start_if_needed()  # photos of another backbone are embedded again, in the background
    changes.init_app(app, first_change)  # several processes: each follows the others' changes

    from webapp import api, enroll, export, head, inbox, integrations, live, people, strictness_views
    from webapp import camera_manager, camera_views

    redis_link.init_app(app)  # FACES_REDIS_URL checked before security uses it for the login limit
    security.init_app(app)  # before the blueprints: it sets the id converter
    auth.init_app(app)
    health.init_app(app)  # public: the load balancer checks it without logging in
    app.register_blueprint(people.bp)
    app.register_blueprint(enroll.bp)
    app.register_blueprint(live.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(export.bp)
    head.init_app(app)  # after the service: a head retrained since the stored one is reloaded
    app.register_blueprint(inbox.bp)
    app.register_blueprint(strictness_views.bp)
    app.register_blueprint(camera_views.bp)
    integrations.init_app(app)  # the Notifier (MQTT, webhooks) before the live streams; API keys
    app.add_url_rule("/", endpoint="index", view_func=people.index)
    errors.init_app(app)

    socketio.init_app(
        app,
        async_mode="threading",
        async_handlers=False,  # frames are handled in arrival order; handlers only store them
        max_http_buffer_size=FRAME_BUFFER_FACTOR * app.config["MAX_FRAME_BYTES"],
        client_manager=redis_link.client_manager(app.config.get("REDIS_URL")),  # None: this process alone
    )
    security.limit_websocket_messages(socketio.server.eio)
    auth.gate_socketio(app)
    events.init_app(app, socketio.server)
    camera_manager.init_app(app)  # after the live streams, whose archive and options cameras share
    return app


def build_face_service(config: Mapping[str, Any]) -> FaceService:
    """The recognizer (given, or built from the settings) with the gallery loaded from the database.

    Live worker processes (webapp.live_processes) build theirs here too, from the same settings.
    """
    recognizer = config.get("RECOGNIZER") or Recognizer(
        backbone=config["BACKBONE"], detector=config["DETECTOR"], threshold=config["THRESHOLD"],
        weights_dir=config.get("WEIGHTS_DIR"), min_recognise_px=config["MIN_RECOGNISE_PX"],
    )
    service = FaceService(
        recognizer,
        min_face=config["MIN_FACE_PX"],
        live_max_side=config["LIVE_MAX_SIDE"],
        live_upsample=config["LIVE_UPSAMPLE"],
        recognize_upsample=config["RECOGNIZE_UPSAMPLE"],
        max_frame_bytes=config["MAX_FRAME_BYTES"],
        gallery_options={"ann_min_photos": config["ANN_MIN_PHOTOS"],
                         "correction_level": config["CORRECTION_LEVEL"]},
    )
    conn = db.connect(config["DATABASE"])
    try:
        head_store.use_stored(conn, service)  # a reloaded head: the one the stored embeddings were made with
        loaded = people_store.load_gallery(conn, service)
        other = people_store.count_other_backbones(conn, service.backbone)
        service.set_strictness(strictness.stored(conn))
    finally:
        conn.close()
    log.info("gallery: %d photos of %d people", loaded, len(service.names))
    if other:
        log.warning("%d photos were enrolled with another backbone than %s; they are embedded again in the "
                    "background and matched once done", other, service.backbone)
    return service


def _secret_key(store: instance_store.Store) -> str:
    """A random key, made once and kept in the instance store (SQLite: the data dir's `secret_key`, owner-only)."""
    return store.get_or_create(instance_store.SECRET_KEY, lambda: secrets.token_hex(32))


def _sweep(app: Flask) -> None:
    """Remove files a crash left without rows and rows past their retention; report rows whose files are gone."""
    # Other processes on this data dir may be writing an enrollment's files right now: leave recent ones.
    min_age_s = SHARED_SWEEP_MIN_AGE_S if changes.shared(app.config) else 0.0
    conn = db.connect(app.config["DATABASE"])
    try:
        removed = people_store.sweep_orphans(conn, app.config["DATA_DIR"], min_age_s) + inbox_store.sweep_inbox(
            conn, app.config["DATA_DIR"], min_age_s)
        missing = people_store.missing_files(conn, app.config["DATA_DIR"])
    finally:
        conn.close()
    jobs.submit_purge(app)  # rows past their retention: here and now, or once for every process (webapp.jobs)
    if removed:
        log.warning("removed %d file(s) left by an interrupted enrollment: %s", len(removed), ", ".join(removed[:10]))
    if missing:
        log.error("%d photo(s) have no image file in %s: ids %s", len(missing), app.config["DATA_DIR"], missing[:20])
