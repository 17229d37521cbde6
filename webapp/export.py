"""Export: one person's photos and data, or the whole gallery, as one zip download.

GET /people/<id>/export and GET /export answer a zip holding

    people.json          {"format": 1, "exported_at", "backbone", "people": [...]}
    photos/<file>        each stored photo (JPEG, re-encoded at upload, no metadata)
    thumbs/<file>        its face thumbnail

Each person in people.json: id, name, created_at, photos and corrections.
Each photo: id, photo and thumb (paths in the zip), box [left, top, right,
bottom] in the stored photo, width, height, backbone, created_at, embedding
(the float32 vector the gallery matches, L2-normalised, as a list of numbers)
and features (the backbone's float32 output it was made from). Each
correction (a face marked "not this person"): id, photo_id (the removed photo
it came from, or null), backbone, created_at, embedding and features. The rows
are read in one transaction, so the zip is a consistent snapshot; a file that
vanished since is listed with "missing": true. Large zips spill to a temporary
file in the data dir, next to the data they copy, never to a shared /tmp.
`webapp.importer` restores such a zip.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from flask import Blueprint, current_app, send_file

from webapp import files, people_store
from webapp.db import from_blob, get_db, snapshot

bp = Blueprint("export", __name__)

FORMAT_VERSION = 1
SPOOL_BYTES = 32 * 1024 * 1024  # zips up to this size stay in memory


@bp.get("/people/<int:person_id>/export")
def person(person_id: int):
    db = get_db()
    with snapshot(db):
        people = [people_store.get_person(db, person_id)]
        return _send(db, people, f"faces-person-{person_id}.zip")


@bp.get("/export")
def gallery():
    db = get_db()
    with snapshot(db):
        people = people_store.list_people(db)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return _send(db, people, f"faces-gallery-{stamp}.zip")


def _send(db: sqlite3.Connection, people: list[sqlite3.Row], download_name: str):
    data_dir = current_app.config["DATA_DIR"]
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, dir=data_dir, prefix=".export-", suffix=".tmp")
    write_zip(out, db, data_dir, people, backbone=current_app.extensions["faces"].backbone)
    out.seek(0)
    return send_file(out, mimetype="application/zip", as_attachment=True, download_name=download_name)


def write_zip(out: IO[bytes], db: sqlite3.Connection, data_dir: Path, people: list[sqlite3.Row], *, backbone: str) -> None:
    """Write the export of these people (rows from people_store.list_people/get_person) to a binary file."""
    with zipfile.ZipFile(out, "w") as archive:
        entries = []
        for person in people:
            photos = []
            for row in people_store.person_photos(db, person["id"], vectors=True):
                photo = _photo_entry(row)
                for key, thumb in (("photo", False), ("thumb", True)):
                    path = people_store.photo_path(data_dir, row, thumb=thumb)
                    try:
                        archive.write(path, photo[key], compress_type=zipfile.ZIP_STORED)  # JPEG: already compressed
                    except FileNotFoundError:
                        photo["missing"] = True
                photos.append(photo)
            corrections = [_correction_entry(row) for row in people_store.person_corrections(db, person["id"])]
            entries.append({"id": person["id"], "name": person["name"], "created_at": person["created_at"],
                            "photos": photos, "corrections": corrections})
        document = {
            "format": FORMAT_VERSION,
            "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "backbone": backbone,
            "people": entries,
        }
        archive.writestr(
            "people.json", json.dumps(document, indent=1, ensure_ascii=False), compress_type=zipfile.ZIP_DEFLATED
        )


def _photo_entry(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "photo": f"{files.PHOTOS_DIR}/{row['file']}",
        "thumb": f"{files.THUMBS_DIR}/{row['file']}",
        "box": json.loads(row["box"]),
        "width": row["width"],
        "height": row["height"],
        "backbone": row["backbone"],
        "created_at": row["created_at"],
        "embedding": from_blob(row["embedding"]).tolist(),
        "features": from_blob(row["features"]).tolist(),
    }


def _correction_entry(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "photo_id": row["photo_id"],
        "backbone": row["backbone"],
        "created_at": row["created_at"],
        "embedding": from_blob(row["embedding"]).tolist(),
        "features": from_blob(row["features"]).tolist(),
    }
