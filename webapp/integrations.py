"""Integrations: the event fan-out (MQTT, webhooks) wired from the settings, and API keys (page and JSON API).

Page `/integrations`: the MQTT and webhook state, the webhook secret, and API
keys (make one, shown once; revoke). API, all JSON:

- `GET /api/integrations` (scope read): MQTT and webhook state, events published.
- `GET /api/keys` (manage): the keys, never their secrets.
- `POST /api/keys` {"name", "scopes": ["read" | "recognize" | "manage", ...]} (manage): 201
  with the key in `key`, the only time it is shown.
- `DELETE /api/keys/<id>` (manage): revokes it; it is listed as revoked from then on.

Key management needs the login cookie or a key with the manage scope (webapp.api_keys).
"""

from __future__ import annotations

import atexit
import logging
import secrets

from flask import Blueprint, Flask, current_app, flash, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest

from webapp import api_keys, instance_store, mqtt, webhooks
from webapp.api_keys import needs_scope
from webapp.db import StoreError, get_db
from webapp.notify import Notifier

log = logging.getLogger(__name__)

bp = Blueprint("integrations", __name__)


def _notifier() -> Notifier:
    return current_app.extensions["notifier"]


# --- wiring ---------------------------------------------------------------------------


def webhook_secret(app: Flask) -> bytes:
    """FACES_WEBHOOK_SECRET, else the one generated once into the instance store (SQLite: the data dir's file)."""
    configured = app.config.get("WEBHOOK_SECRET")
    if configured:
        return configured.encode()
    return instance_store.of(app).get_or_create(instance_store.WEBHOOK_SECRET, lambda: secrets.token_hex(32)).encode()


def init_app(app: Flask) -> Notifier:
    """Build the Notifier (app.extensions["notifier"]) with a sink per configured integration, and the views.

    :raises ValueError: FACES_MQTT_URL or FACES_WEBHOOK_URLS is malformed (the message never shows a password).
    """
    config = app.config
    notifier = Notifier()
    app.extensions["notifier"] = notifier
    if config.get("MQTT_URL"):
        broker = mqtt.parse_url(config["MQTT_URL"])
        service = app.extensions["faces"]
        sink = mqtt.MqttSink(broker, lambda: service.names, prefix=config["MQTT_PREFIX"],
                             discovery_prefix=config["MQTT_DISCOVERY_PREFIX"], present_s=config["MQTT_PRESENT_S"])
        notifier.add_sink(sink)
        sink.start()
    urls = webhooks.parse_urls(config.get("WEBHOOK_URLS"))
    if urls:
        secret = webhook_secret(app)
        for url in urls:
            notifier.add_sink(webhooks.WebhookSink(url, secret, timeout_s=config["WEBHOOK_TIMEOUT_S"],
                                                   retries=config["WEBHOOK_RETRIES"]))
        log.info("webhooks: track events go to %s", ", ".join(webhooks.shown(url) for url in urls))
    if notifier.workers:
        atexit.register(notifier.close)  # MQTT says "offline" on a clean stop
    app.register_blueprint(bp)
    return notifier


# --- status -------------------------------------------------------------------------


def integrations_json() -> dict:
    status = _notifier().status()
    sinks = status.pop("sinks")
    mqtt_status = next((s for s in sinks if s["name"] == "mqtt"), None)
    hooks = [s for s in sinks if s["name"] != "mqtt"]
    return {
        "events": status,
        "mqtt": mqtt_status or {"enabled": False, "state": "off", "hint": "set FACES_MQTT_URL to publish events"},
        "webhooks": hooks,
    }


@bp.get("/api/integrations")
def status():
    return jsonify(integrations_json())


# --- API keys: JSON -------------------------------------------------------------------


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object, e.g. {"name": "home assistant", "scopes": ["read"]}')
    return body


@bp.get("/api/keys")
@needs_scope("manage")
def list_keys():
    return jsonify(keys=[api_keys.key_json(row) for row in api_keys.list_keys(get_db())])


@bp.post("/api/keys")
@needs_scope("manage")
def create_key():
    body = _json_body()
    row, token = api_keys.create_key(get_db(), body.get("name"), body.get("scopes"))
    log.info("API key %d (%s) made with scopes %s", row["id"], row["name"], row["scopes"])
    return jsonify({**api_keys.key_json(row), "key": token}), 201


@bp.delete("/api/keys/<int:key_id>")
@needs_scope("manage")
def revoke_key(key_id: int):
    row = api_keys.revoke_key(get_db(), key_id)
    log.info("API key %d (%s) revoked", row["id"], row["name"])
    return jsonify(api_keys.key_json(row))


# --- the page ----------------------------------------------------------------------


def _page(new_key: str | None = None, error: str | None = None, status: int = 200):
    keys = [api_keys.key_json(row) for row in api_keys.list_keys(get_db())]
    state = integrations_json()
    secret = webhook_secret(current_app).decode() if state["webhooks"] else None
    return render_template("integrations/integrations.html", keys=keys, scopes=api_keys.SCOPES, new_key=new_key,
                           error=error, state=state, webhook_secret=secret), status


@bp.get("/integrations")
@needs_scope("manage")
def page():
    return _page()


@bp.post("/integrations/keys")
@needs_scope("manage")
def make_key():
    try:
        row, token = api_keys.create_key(get_db(), request.form.get("name"), request.form.getlist("scope"))
    except StoreError as exc:
        return _page(error=str(exc), status=exc.status)
    log.info("API key %d (%s) made with scopes %s", row["id"], row["name"], row["scopes"])
    return _page(new_key=token, status=201)


@bp.post("/integrations/keys/<int:key_id>/revoke")
@needs_scope("manage")
def revoke(key_id: int):
    row = api_keys.revoke_key(get_db(), key_id)
    log.info("API key %d (%s) revoked", row["id"], row["name"])
    flash(f"The key {row['name']} is revoked: it opens nothing from now on.", "ok")
    return redirect(url_for("integrations.page"))
