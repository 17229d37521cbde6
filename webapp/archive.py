"""Reading an import safely: a zip (uploaded or on disk) or a folder, as a list of files read one at a time.

Nothing is ever extracted: a file's name in the archive is only used to find
its person, and stored photos get generated names (webapp/files.py), so no
name can place a file anywhere. A zip is judged from its directory before any
file is read: the entry count (from the end record, before Python parses the
directory), each file's and the total unpacked size, and the packing ratio.
A name that climbs out (`..`, an absolute path, a drive) or a link is refused
file by file; reading never returns more bytes than the directory declared.
"""

from __future__ import annotations

import os
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from model.images import DEFAULT_MAX_BYTES
from webapp.db import StoreError

# Photos one import may hold (an export's thumbnails are not counted). 6,014 CelebA photos fit.
MAX_PHOTOS = 8_000
# Entries a zip's directory may list in all: an export lists a photo and a thumbnail each, plus people.json.
ENTRIES_PER_PHOTO = 2
EXTRA_ENTRIES = 64
# Bytes of directory allowed per entry (46 fixed + name + extra fields), so a lying count cannot hide a huge one.
DIRECTORY_BYTES_PER_ENTRY = 512
# One file unpacked at most: a photo as model.images takes it; people.json of an export may be larger.
MAX_FILE_BYTES = DEFAULT_MAX_BYTES
MAX_INDEX_BYTES = 256 * 1024 * 1024
# All files unpacked together at most, and the largest packing ratio (unpacked / packed) of a file over 1 MiB
# and of the whole archive: JPEGs pack about 1:1, an export's people.json about 3:1, a zip bomb 1000:1.
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_RATIO = 100
RATIO_FROM_BYTES = 1024 * 1024
INDEX_NAME = "people.json"

_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF


class ArchiveError(StoreError):
    """The archive as a whole is refused; nothing was imported. `status` is 400, or 413 for too large."""


class TooLarge(ArchiveError):
    status = 413


class EntryError(ValueError):
    """One file of the archive cannot be read; the message is its per-file reason."""


@dataclass(frozen=True)
class Entry:
    """One file: its path in the archive ('/'-separated, nothing climbing out), declared size, and a reader."""

    name: str
    size: int
    read: Callable[[], bytes] = field(repr=False, compare=False)


@dataclass
class Source:
    """What an import reads: its files, and those refused on sight as (name, reason)."""

    entries: list[Entry]
    refused: list[tuple[str, str]]
    close: Callable[[], None] = lambda: None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(source: str | Path | IO[bytes], *, max_photos: int = MAX_PHOTOS) -> Source:
    """A folder (one sub-folder per person) or a zip file (a path or a seekable binary file).

    :raises ArchiveError: not a zip, too many files, too large unpacked, a zip bomb.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return open_folder(Path(source), max_photos=max_photos)
    if isinstance(source, (str, Path)):
        try:
            handle = open(source, "rb")
        except OSError as exc:
            raise ArchiveError(f"cannot open {Path(source).name}: {exc.strerror}") from None
        try:
            opened = open_zip(handle, max_photos=max_photos)
        except BaseException:
            handle.close()
            raise
        close_archive = opened.close
        opened.close = lambda: (close_archive(), handle.close())
        return opened
    return open_zip(source, max_photos=max_photos)


def max_entries(max_photos: int) -> int:
    """How many files an archive may list for max_photos photos (an export's thumbnails and folders too)."""
    return ENTRIES_PER_PHOTO * max_photos + EXTRA_ENTRIES


def safe_name(raw: str) -> str | None:
    """The path '/'-separated without empty or '.' parts; None when it climbs out or is absolute or odd."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or any(
        unicodedata.category(ch) == "Cc" for ch in name
    ):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


# --- zip ---------------------------------------------------------------------------


def open_zip(file: IO[bytes], *, max_photos: int = MAX_PHOTOS) -> Source:
    limit = max_entries(max_photos)
    count, directory_bytes = _end_record(file)
    if count > limit or directory_bytes > limit * DIRECTORY_BYTES_PER_ENTRY:
        raise TooLarge(_too_many(count, limit))
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise ArchiveError("not a zip archive (or a damaged one)") from None
    try:
        infos = archive.infolist()
        if len(infos) > limit:
            raise TooLarge(_too_many(len(infos), limit))
        entries, refused = _zip_entries(archive, infos, max_photos)
    except BaseException:
        archive.close()
        raise
    return Source(entries, refused, archive.close)


def _zip_entries(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], max_photos: int):
    entries, refused = [], []
    total = packed = 0
    for info in infos:
        if info.is_dir():
            continue
        name = safe_name(info.filename)
        limit = MAX_INDEX_BYTES if name == INDEX_NAME else MAX_FILE_BYTES
        reason = None
        if name is None:
            reason = "refused: the path climbs out of the archive or is absolute"
        elif stat.S_ISLNK(info.external_attr >> 16):
            reason = "refused: a link, not a file"
        elif info.flag_bits & 0x1:
            reason = "refused: encrypted"
        elif info.file_size > RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise ArchiveError(f"refused as a zip bomb: {info.filename[:80]!r} unpacks {info.compress_size:,} bytes "
                               f"to {info.file_size:,} (more than {MAX_RATIO}:1)")
        elif info.file_size > limit:
            reason = f"too large ({info.file_size / 1e6:.1f} MB unpacked; at most {limit / 1e6:.0f} MB)"
        if reason:
            refused.append((info.filename, reason))
            continue
        total += info.file_size
        packed += info.compress_size
        entries.append(Entry(name, info.file_size, _zip_reader(archive, info)))
    if total > MAX_TOTAL_BYTES:
        raise TooLarge(f"the archive unpacks to {total / 1e9:.1f} GB; at most {MAX_TOTAL_BYTES / 1e9:.1f} GB")
    if total > RATIO_FROM_BYTES and total > MAX_RATIO * max(1, packed):
        raise ArchiveError(f"refused as a zip bomb: {packed:,} bytes unpack to {total:,} (more than {MAX_RATIO}:1)")
    _check_photo_count(entries, max_photos)
    return entries, refused


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with archive.open(info) as member:
                data = member.read(info.file_size + 1)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError) as exc:
            raise EntryError(f"unreadable in the archive: {exc}") from None
        if len(data) != info.file_size:
            raise EntryError("unreadable in the archive: its size differs from the directory's")
        return data

    return read


def _end_record(file: IO[bytes]) -> tuple[int, int]:
    """(entry count, directory size) from the end-of-central-directory record. :raises ArchiveError: none there."""
    try:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        start = max(0, size - _EOCD_SIZE - _MAX_COMMENT)
        file.seek(start)
        tail = file.read()
        file.seek(0)
    except (OSError, ValueError):
        raise ArchiveError("not a zip archive (the upload cannot be read back)") from None
    at = tail.rfind(_EOCD)
    while at >= 0 and len(tail) - at < _EOCD_SIZE:
        at = tail.rfind(_EOCD, 0, at)
    if at < 0:
        raise ArchiveError("not a zip archive")
    _, _, _, count, directory_bytes, _, _ = struct.unpack("<HHHHIIH", tail[at + 4: at + _EOCD_SIZE])
    if count == 0xFFFF or directory_bytes == 0xFFFFFFFF:  # ZIP64: only needed past our limits anyway
        raise TooLarge("the archive is a ZIP64 archive (over 65,535 files or 4 GB); split it into smaller ones")
    return count, directory_bytes


def _too_many(count: int, limit: int) -> str:
    return f"the archive lists {count:,} files; at most {limit:,} files per import: split it into smaller ones"


def _check_photo_count(entries: list[Entry], max_photos: int) -> None:
    photos = [e for e in entries if e.name != INDEX_NAME and not e.name.startswith("thumbs/")]
    if len(photos) > max_photos:
        raise TooLarge(f"the archive holds {len(photos):,} files; at most {max_photos:,} photos per import: "
                       "split it into smaller ones")


# --- folder ------------------------------------------------------------------------


def open_folder(root: Path, *, max_photos: int = MAX_PHOTOS) -> Source:
    """Every regular file under root (links are refused, never followed)."""
    entries, refused = [], []
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in sorted(dirs):
            if (Path(folder) / name).is_symlink():
                refused.append((str((Path(folder) / name).relative_to(root)), "refused: a link, not a folder"))
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
                refused.append((relative, "refused: a link or special file, not a file"))
                continue
            limit = MAX_INDEX_BYTES if relative == INDEX_NAME else MAX_FILE_BYTES
            if info.st_size > limit:
                refused.append((relative, f"too large ({info.st_size / 1e6:.1f} MB; at most {limit / 1e6:.0f} MB)"))
                continue
            entries.append(Entry(relative, info.st_size, _file_reader(path, limit)))
            if len(entries) > max_entries(max_photos):
                raise TooLarge(_too_many(len(entries), max_entries(max_photos)))
    _check_photo_count(entries, max_photos)
    return Source(entries, refused)


def _file_reader(path: Path, limit: int) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise EntryError(f"unreadable: {exc.strerror}") from None
        if len(data) > limit:
            raise EntryError(f"too large (over {limit / 1e6:.0f} MB)")
        return data

    return read
