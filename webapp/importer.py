"""Import and restore: a folder or zip with one sub-folder of photos per person, or an "Export all" zip.

    python -m webapp.importer DIR_OR_ZIP [--data-dir D]     (the last line of output is JSON counts)

POST /api/import and the Import page run the same `import_source`. Two layouts:

- folders: `<person name>/<file>` (JPEG, PNG, WebP, ...; deeper folders count for their top one; one
  folder above them all, like `celeba/`, is skipped). Each photo is enrolled as an upload is: decoded,
  re-encoded as JPEG without metadata, its one face found and embedded.
- an export (`people.json` at the top; webapp/export.py): each photo keeps its exact bytes, box,
  embedding and features, and each person's corrections come back too. The model does not run when
  a photo's backbone is this app's; otherwise its face is embedded again at the stored box.

Exact duplicates are skipped: a photo whose stored bytes (the re-encoded JPEG from a folder, the
export's own bytes from an export) have the SHA-256 of a stored photo file or of one earlier in the
import. A name already in the gallery gets the photos added; a person is created only with at least
one accepted photo. All or nothing: photo files are written as they are accepted, the rows in one
transaction at the end, then the gallery in memory; any failure before the commit removes the files
written (after a crash, the next start sweeps files without rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

from model.images import ImageError, decode_image
from webapp import files, people_store
from webapp.archive import INDEX_NAME, MAX_PHOTOS, ArchiveError, Entry, EntryError, Source, open_source
from webapp.corrections import load as load_corrections
from webapp.db import InvalidName, to_blob, transaction, utc_now
from webapp.service import FaceService, ModelNotReady

FORMAT_VERSION = 1  # of people.json (webapp/export.py)
SKIPPED_FOLDERS = {"__MACOSX"}  # what zip tools add; skipped without a word, like files whose name starts with "."
SKIPPED_FILES = {"thumbs.db", "desktop.ini"}
TIME_PATTERN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
MAX_VECTOR = 8192  # a stored vector longer than this is not one of ours
UNIT_TOLERANCE = 1e-3  # an export's embedding must be this close to unit length to be used as is

Progress = Callable[[int, int], None]


class Refused(Exception):
    """One photo is not imported; the message is its reason."""


@dataclass
class ImportResult:
    """What an import did: counts, the people who got photos, and (file, reason) for each file not imported."""

    people_added: int = 0
    photos_added: int = 0
    duplicates: int = 0
    corrections_added: int = 0
    reembedded: int = 0
    people: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> dict:
        return {
            "people_added": self.people_added, "photos_added": self.photos_added, "duplicates": self.duplicates,
            "corrections_added": self.corrections_added, "reembedded": self.reembedded, "people": self.people,
            "refused": [{"file": file, "reason": reason} for file, reason in self.refused],
        }


@dataclass
class _Item:
    """A photo to import: its person's clean name, its file, and its people.json entry when restoring."""

    person: str
    entry: Entry
    listed: dict | None = None


@dataclass
class _Row:
    """A photo whose files are written: what its row will hold."""

    person: str
    file: str
    box: list[int]
    size: tuple[int, int]
    embedding: NDArray[np.float32]
    features: NDArray[np.float32]
    created_at: str | None


@dataclass
class _Plan:
    items: list[_Item] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    created_at: dict[str, str] = field(default_factory=dict)  # person -> the export's created_at
    corrections: dict[str, list[dict]] = field(default_factory=dict)  # person -> the export's corrections


def import_source(
    db: sqlite3.Connection, service: FaceService, data_dir: Path, source: str | Path | IO[bytes], *,
    progress: Progress | None = None, max_photos: int = MAX_PHOTOS,
) -> ImportResult:
    """Import a folder or a zip (path or seekable binary file) into the data folder; see the module docstring.

    :raises ArchiveError: the archive as a whole is refused (not a zip, too large, a bomb, a bad people.json).
    :raises ModelNotReady: the model cannot run (nothing is imported).
    """
    with open_source(source, max_photos=max_photos) as opened:
        plan = _plan(opened)
        return _Importer(db, service, Path(data_dir), plan, progress).run()


# --- what to import ------------------------------------------------------------------


def _plan(source: Source) -> _Plan:
    entries = [entry for entry in source.entries if not _skipped(entry.name)]
    tops = {entry.name.split("/")[0] for entry in entries}
    if len(tops) == 1 and any(entry.name == f"{next(iter(tops))}/{INDEX_NAME}" for entry in entries):
        cut = len(next(iter(tops))) + 1  # an export unpacked and packed again inside a folder
        entries = [Entry(entry.name[cut:], entry.size, entry.read) for entry in entries]
    index = next((entry for entry in entries if entry.name == INDEX_NAME), None)
    plan = _plan_export(index, entries) if index else _plan_folders(entries)
    plan.refused[:0] = source.refused
    return plan


def _skipped(name: str) -> bool:
    parts = name.split("/")
    return parts[-1].lower() in SKIPPED_FILES or any(p.startswith(".") or p in SKIPPED_FOLDERS for p in parts)


def _plan_folders(entries: list[Entry]) -> _Plan:
    plan = _Plan()
    paths = [entry.name.split("/") for entry in entries]
    top = {parts[0] for parts in paths}
    strip = 1 if len(top) == 1 and all(len(parts) >= 3 for parts in paths) else 0
    names: dict[str, str | InvalidName] = {}
    for entry, parts in zip(entries, paths):
        parts = parts[strip:]
        if len(parts) < 2:
            plan.refused.append((entry.name, "not in a person's folder (put each person's photos in a folder "
                                             "named after them)"))
            continue
        if parts[0] not in names:
            try:
                names[parts[0]] = people_store.clean_name(parts[0])
            except InvalidName as exc:
                names[parts[0]] = exc
        name = names[parts[0]]
        if isinstance(name, InvalidName):
            plan.refused.append((entry.name, f"the folder name is not a usable name: {name}"))
        else:
            plan.items.append(_Item(name, entry))
    return plan


def _plan_export(index: Entry, entries: list[Entry]) -> _Plan:
    document = _read_index(index)
    by_name = {entry.name: entry for entry in entries}
    listed: set[str] = {INDEX_NAME}
    plan = _Plan()
    for person in document["people"]:
        photos = person.get("photos") if isinstance(person, dict) else None
        if not isinstance(photos, list):
            raise ArchiveError("people.json: each person needs a name and a list of photos")
        try:
            name = people_store.clean_name(person.get("name"))
        except InvalidName as exc:
            plan.refused += [(str(p.get("photo") if isinstance(p, dict) else "?"), f"the name is not usable: {exc}")
                             for p in photos]
            continue
        if isinstance(person.get("created_at"), str) and TIME_PATTERN.fullmatch(person["created_at"]):
            plan.created_at.setdefault(name, person["created_at"])
        corrections = person.get("corrections")
        if isinstance(corrections, list):
            plan.corrections.setdefault(name, []).extend(c for c in corrections if isinstance(c, dict))
        for photo in photos:
            path = photo.get("photo") if isinstance(photo, dict) else None
            if not isinstance(path, str):
                plan.refused.append(("people.json", f"a photo of {name} without a file name"))
                continue
            listed.add(path)
            if photo.get("missing"):
                plan.refused.append((path, "missing from the export (its file was gone when it was made)"))
            elif path not in by_name:
                plan.refused.append((path, "listed in people.json but not in the archive"))
            else:
                plan.items.append(_Item(name, by_name[path], photo))
    plan.refused += [(entry.name, "not part of the export (not listed in people.json)") for entry in entries
                     if entry.name not in listed and not entry.name.startswith(f"{files.THUMBS_DIR}/")]
    return plan


def _read_index(index: Entry) -> dict:
    try:
        document = json.loads(index.read())
    except (EntryError, ValueError, RecursionError) as exc:
        raise ArchiveError(f"people.json cannot be read: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("people"), list):
        raise ArchiveError("people.json is not an export of this app (no list of people)")
    version = document.get("format")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ArchiveError(f"people.json has format {str(version)[:10]}; this app reads format {FORMAT_VERSION}"
                           + (" (the export is from a newer version)" if newer else ""))
    return document


# --- doing it ------------------------------------------------------------------------


class _Importer:
    def __init__(self, db: sqlite3.Connection, service: FaceService, data_dir: Path, plan: _Plan,
                 progress: Progress | None):
        self.db, self.service, self.data_dir, self.plan = db, service, data_dir, plan
        self.progress = progress or (lambda done, total: None)
        self.result = ImportResult(refused=list(plan.refused))
        self.written: list[str] = []
        self.seen: dict[str, str] = {}  # SHA-256 of stored bytes -> "" (a stored photo) or the file it came from

    def run(self) -> ImportResult:
        total = len(self.plan.items)
        self.progress(0, total)
        try:  # the model is waited for only where it runs: an export of this backbone needs none
            stored = self.db.execute("SELECT file FROM photos").fetchall()
            self.seen = {_stored_hash(self.data_dir, row["file"]): "" for row in stored}
            rows = []
            for done, item in enumerate(self.plan.items, 1):
                try:
                    rows.append(self._take(item))
                except (Refused, EntryError, ImageError) as exc:
                    self.result.refused.append((item.entry.name, str(exc)))
                self.progress(done, total)
            placed = self._commit(rows)
        except BaseException:
            for folder in people_store.PHOTO_FOLDERS:
                files.remove(self.data_dir, folder, self.written)
            raise
        for person_id, name in placed["people"].items():
            self.service.add_person(person_id, name)
        for photo_id, person_id, embedding in placed["photos"]:
            self.service.add_photo(photo_id, person_id, embedding)
        if self.result.corrections_added:  # restored corrections are matched against at once too
            load_corrections(self.db, self.service)
        return self.result

    def _take(self, item: _Item) -> _Row:
        data = item.entry.read()
        photo = decode_image(data)
        if item.listed is not None:
            restored = self._restore(item, data, photo)
            if restored is not None:
                return restored
        encoded = files.jpeg(photo, people_store.PHOTO_JPEG_QUALITY)  # what a folder photo is stored as
        self._check_new(encoded, item.entry.name)
        candidate = self.service.analyse(item.entry.name, data)
        if not candidate.accepted:
            raise Refused(candidate.reason)
        file = self._write(encoded, people_store.thumbnail_jpeg(candidate.photo, candidate.box), item.entry.name)
        created = item.listed.get("created_at") if item.listed else None
        return _Row(item.person, file, candidate.box, candidate.size, candidate.embedding, candidate.features,
                    _time(created))

    def _restore(self, item: _Item, data: bytes, photo: NDArray[np.uint8]) -> _Row | None:
        """An export's photo kept byte for byte, with its vectors or embedded again at its box; None when its
        box or size does not fit the photo (then it is enrolled like a folder photo)."""
        listed = item.listed
        size = (int(photo.shape[1]), int(photo.shape[0]))
        box = _box(listed.get("box"), size)
        if box is None or (listed.get("width"), listed.get("height")) != size:
            return None
        self._check_new(data, item.entry.name)
        embedding = _vector(listed.get("embedding"), self.service.gallery.dim)
        features = _vector(listed.get("features"), self.service.recognizer.backbone.dim)
        usable = (listed.get("backbone") == self.service.backbone and embedding is not None and features is not None
                  and abs(float(np.linalg.norm(embedding)) - 1) < UNIT_TOLERANCE)
        if not usable:
            features, embedding = self.service.embed_stored(photo, box)
            self.result.reembedded += 1
        file = self._write(data, people_store.thumbnail_jpeg(photo, box), item.entry.name)
        return _Row(item.person, file, box, size, embedding, features, _time(listed.get("created_at")))

    def _check_new(self, stored: bytes, name: str) -> None:
        origin = self.seen.get(hashlib.sha256(stored).hexdigest())
        if origin is not None:
            self.result.duplicates += 1
            raise Refused("skipped: the same photo is already stored" if origin == ""
                          else f"skipped: the same photo as {origin} in this import")

    def _write(self, photo: bytes, thumb: bytes, origin: str) -> str:
        """Write a photo's file (these exact bytes) and its thumbnail under a new name; returns the name."""
        file = files.new_name()
        self.written.append(file)
        files.write_atomic(self.data_dir / files.PHOTOS_DIR / file, photo)
        files.write_atomic(self.data_dir / files.THUMBS_DIR / file, thumb)
        self.seen[hashlib.sha256(photo).hexdigest()] = origin
        return file

    def _commit(self, rows: list[_Row]) -> dict:
        """Every row in one transaction: people (found by name, or created), photos, then corrections."""
        people: dict[str, int] = {}
        photos = []
        with transaction(self.db):
            for row in rows:
                if row.person not in people:
                    people[row.person] = self._person_id(row.person)
                width, height = row.size
                photo_id = self.db.execute(
                    "INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (people[row.person], row.file, json.dumps(row.box), width, height, to_blob(row.embedding),
                     to_blob(row.features), self.service.backbone, row.created_at or utc_now()),
                ).fetchone()[0]
                photos.append((photo_id, people[row.person], row.embedding))
            for name, corrections in self.plan.corrections.items():
                person_id = people.get(name) or self._person_id(name, create=False)
                if person_id is not None:  # someone with no photo here and not in the gallery is not created
                    self.result.corrections_added += sum(self._correction(person_id, c) for c in corrections)
        self.result.photos_added = len(photos)
        self.result.people = sorted(people, key=str.casefold)
        return {"people": {person_id: name for name, person_id in people.items()}, "photos": photos}

    def _person_id(self, name: str, *, create: bool = True) -> int | None:
        """The person with this name (case-insensitive), created when missing unless create=False."""
        found = self.db.execute("SELECT id FROM people WHERE lower(name) = lower(?)", (name,)).fetchone()
        if found is not None or not create:
            return None if found is None else found["id"]
        self.result.people_added += 1
        return self.db.execute(
            "INSERT INTO people (name, created_at) VALUES (?, ?) RETURNING id",
            (name, self.plan.created_at.get(name) or utc_now()),
        ).fetchone()[0]

    def _correction(self, person_id: int, listed: dict) -> bool:
        """Store one of the export's corrections unless it is malformed or already there."""
        embedding, features = _vector(listed.get("embedding")), _vector(listed.get("features"))
        backbone = listed.get("backbone")
        if embedding is None or features is None or not isinstance(backbone, str) or not 0 < len(backbone) <= 64:
            return False
        if self.db.execute("SELECT 1 FROM corrections WHERE person_id = ? AND features = ?",
                           (person_id, to_blob(features))).fetchone():
            return False
        self.db.execute(
            "INSERT INTO corrections (person_id, embedding, features, backbone, created_at) "
            "VALUES (?, ?, ?, ?, COALESCE(?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))",
            (person_id, to_blob(embedding), to_blob(features), backbone, _time(listed.get("created_at"))),
        )
        return True


def _stored_hash(data_dir: Path, file: str) -> str:
    try:
        return hashlib.sha256((data_dir / files.PHOTOS_DIR / file).read_bytes()).hexdigest()
    except OSError:  # a missing file (reported at start) matches nothing
        return ""


def _vector(value: object, dim: int | None = None) -> NDArray[np.float32] | None:
    """A list of finite numbers as float32 (of length dim when given), or None."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_VECTOR or (dim is not None and len(value) != dim):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    vector = np.asarray(value, dtype=np.float64)
    return vector.astype(np.float32) if np.isfinite(vector).all() and np.abs(vector).max() < 1e6 else None


def _box(value: object, size: tuple[int, int]) -> list[int] | None:
    """A [left, top, right, bottom] box of whole pixels inside a photo of size (width, height), or None."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    left, top, right, bottom = value
    width, height = size
    return value if 0 <= left < right <= width and 0 <= top < bottom <= height else None


def _time(value: object) -> str | None:
    return value if isinstance(value, str) and TIME_PATTERN.fullmatch(value) else None


# --- the command line ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m webapp.importer",
        description="Enroll everyone in a folder or zip (one sub-folder of photos per person), or restore an "
                    "'Export all' zip. Stop the server on that data folder first, or restart it afterwards.")
    parser.add_argument("source", help="a folder, or a .zip file")
    parser.add_argument("--data-dir", help="the app's data folder (default: FACES_DATA_DIR, else data/)")
    parser.add_argument("--max-photos", type=int, default=MAX_PHOTOS, help="refuse larger imports (%(default)s)")
    args = parser.parse_args(argv)

    from webapp import create_app
    from webapp.db import connect

    app = create_app({"DATA_DIR": args.data_dir} if args.data_dir else None)
    service = app.extensions["faces"]
    try:
        service.wait_ready(timeout=600)  # so that `seconds` counts the import alone
    except ModelNotReady:
        pass  # an export of this backbone needs no model; other photos fail below with the reason
    started = time.perf_counter()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] >= 5:
            last[0] = now
            print(f"{done}/{total} photos ({now - started:.0f} s)", file=sys.stderr, flush=True)

    db = connect(app.config["DATABASE"])
    try:
        result = import_source(db, service, app.config["DATA_DIR"], args.source, progress=report,
                               max_photos=args.max_photos)
    except (ArchiveError, ModelNotReady) as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    finally:
        db.close()
    seconds = time.perf_counter() - started
    for file, reason in result.refused:
        print(f"not imported: {file}: {reason}", file=sys.stderr)
    counts = {key: value for key, value in result.json().items() if key not in ("people", "refused")}
    counts.update(refused=len(result.refused), seconds=round(seconds, 1),
                  photos_per_s=round(result.photos_added / seconds, 2) if seconds else None,
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
