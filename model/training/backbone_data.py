"""Face chips for end-to-end backbone training: detected and aligned once, cached as uint8 arrays.

`prepare_chips(images, image_size=..., detector=...)` reads a folder-per-person dataset
(DIR/<person>/<photo>, CelebA's layout), finds each portrait's face with the project's detector
(`Recognizer.portrait_face`: upsample 1, then 2, then a centred box) and cuts an ArcFace-layout
chip (`model.align.arcface_chips`: eyes, nose tip and mouth corners on a fixed template, scaled
to image_size). Chips are cached in one .npz per dataset, detector and size under the cache dir,
keyed by each photo's path, size and mtime, so a second run reads them in well under a second.
`save_chips` / `load_chips` move a prepared set to a machine without the detector (a GPU box):
the training code needs only numpy and Keras.

`split_by_person` deals people out to training and validation; nobody is in both.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.training.datasets import DEFAULT_CACHE_DIR, list_dataset, read_cache, write_npz_atomically

MIN_PEOPLE = 4  # two to train on (a softmax or a negative needs two), two to validate on (impostor pairs)
SAVE_EVERY = 200  # photos between cache writes, so an interrupted preparation resumes


@dataclass
class FaceChips:
    """chips: uint8 [N, S, S, 3] RGB aligned faces. labels: int64 [N] index into names.
    paths: N photo paths relative to the dataset. detected: bool [N], False for the centred-box fallback."""

    chips: NDArray[np.uint8]
    labels: NDArray[np.int64]
    names: list[str]
    paths: list[str]
    detected: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.chips.shape[1])

    def subset(self, mask: NDArray[np.bool_]) -> "FaceChips":
        index = np.flatnonzero(mask)
        return FaceChips(self.chips[index], self.labels[index], self.names, [self.paths[i] for i in index],
                         self.detected[index])

    def people(self) -> int:
        return int(len(np.unique(self.labels)))


def check_images(images: Path | None) -> Path:
    if images is None:
        raise ValueError("give --images DIR (a folder with one sub-folder of photos per person) or --chips FILE")
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"images folder {images} not found (expected DIR/<person>/<photo>.jpg)")
    return images


def chips_cache_file(images: Path, detector: str, image_size: int, cache_dir: Path | None = None) -> Path:
    digest = hashlib.sha1(str(Path(images).resolve()).encode()).hexdigest()[:12]
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"chips-{detector}-{image_size}px-{Path(images).name}-{digest}.npz"


def _photo_key(images: Path, path: Path) -> str:
    stat = path.stat()
    return f"{path.relative_to(images).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_cache(path: Path) -> dict[str, tuple[NDArray[np.uint8], bool]]:
    return read_cache(path, field="chips", what="chip")


def _write_cache(path: Path, cache: dict[str, tuple[NDArray[np.uint8], bool]], size: int) -> None:
    keys = list(cache)
    chips = np.stack([cache[k][0] for k in keys]) if keys else np.zeros((0, size, size, 3), np.uint8)
    write_npz_atomically(path, keys=np.array(keys, dtype=str), chips=chips,
                      detected=np.array([cache[k][1] for k in keys], dtype=bool))


def prepare_chips(images: Path, *, image_size: int = 112, detector: str = "yunet", max_people: int | None = None,
                  per_person: int | None = None, cache_dir: Path | None = None, progress: bool = True) -> FaceChips:
    """Aligned chips of every photo of the first `max_people` people (by name), cached.

    Cost: about 30-60 ms per new photo with YuNet on one core (detection at upsample 1, dlib's
    landmarks, the warp); about 0.5 s per photo with MTCNN. Memory: N * S^2 * 3 bytes.
    Unreadable photos are left out (reported on stderr).
    """
    from model.align import arcface_chips
    from model.images import ImageError, load_image
    from model.recognizer import Recognizer

    images = check_images(images)
    listing = list_dataset(images, max_people, per_person)
    path = chips_cache_file(images, detector, image_size, cache_dir)
    cache = _read_cache(path)
    todo = [photo for photos in listing.values() for photo in photos if _photo_key(images, photo) not in cache]
    if todo:
        recognizer = Recognizer("dlib-resnet", detector=detector)  # the backbone is never loaded here
        recognizer.detector.load()
        bar = progress_bar(len(todo), "aligning faces", progress)
        for done, photo in enumerate(todo, start=1):
            try:
                picture = load_image(photo)
            except ImageError as exc:
                print(f"unreadable: {photo}: {exc}", file=sys.stderr)
                bar.update(1)
                continue
            face, detected = recognizer.portrait_face(picture)
            cache[_photo_key(images, photo)] = (arcface_chips(picture, [face], size=image_size)[0], detected)
            bar.update(1)
            if done % SAVE_EVERY == 0:
                _write_cache(path, cache, image_size)
        bar.close()
        _write_cache(path, cache, image_size)
    chips, labels, paths, detected = [], [], [], []
    for label, name in enumerate(listing):
        for photo in listing[name]:
            entry = cache.get(_photo_key(images, photo))
            if entry is not None:
                chips.append(entry[0])
                detected.append(entry[1])
                labels.append(label)
                paths.append(photo.relative_to(images).as_posix())
    stacked = np.stack(chips) if chips else np.zeros((0, image_size, image_size, 3), np.uint8)
    return FaceChips(stacked, np.array(labels, np.int64), list(listing), paths, np.array(detected, bool))


def save_chips(chips: FaceChips, path: Path) -> Path:
    """One .npz with chips, labels, names, paths and detected flags (no pickles)."""
    path = Path(path)
    write_npz_atomically(path, chips=chips.chips, labels=chips.labels, names=np.array(chips.names, dtype=str),
                      paths=np.array(chips.paths, dtype=str), detected=chips.detected)
    return path


def load_chips(path: Path, max_people: int | None = None) -> FaceChips:
    """A `save_chips` file, optionally only its first `max_people` people."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chips file {path} not found (write one with --export-chips)")
    with np.load(path, allow_pickle=False) as data:
        chips = FaceChips(data["chips"], data["labels"].astype(np.int64), data["names"].tolist(),
                          data["paths"].tolist(), data["detected"].astype(bool))
    if max_people:
        chips = chips.subset(chips.labels < max_people)
    return chips


def split_by_person(labels: NDArray[np.int64], val_fraction: float = 0.2,
                    seed: int = 0) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(train, val) row masks; people with two or more photos only; at least 2 people on each side.

    (model.training.sampling.split_people does the same for heads but imports OpenCV, which a GPU box
    training from a chips file may not have.)
    :raises ValueError: fewer than MIN_PEOPLE people with two or more photos.
    """
    labels = np.asarray(labels)
    people, counts = np.unique(labels, return_counts=True)
    usable = people[counts >= 2]
    if len(usable) < MIN_PEOPLE:
        raise ValueError(f"training a backbone needs at least {MIN_PEOPLE} people with two or more photos each "
                         f"(found {len(usable)}): two to train on and two other people to validate on")
    order = np.random.default_rng(seed).permutation(usable)
    n_val = min(len(usable) - 2, max(2, int(round(val_fraction * len(usable)))))
    return np.isin(labels, order[n_val:]), np.isin(labels, order[:n_val])


def progress_bar(total: int, desc: str, enabled: bool = True):
    """tqdm on stderr when it is installed, else a plain progress line every 5% (same update/close calls)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc, enabled)
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=not enabled)


class _PlainProgress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self.n, self._shown = max(1, total), desc, enabled, 0, -1
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        step = int(20 * self.n / self.total)
        if self.enabled and step != self._shown:
            self._shown = step
            print(f"{self.desc}: {self.n}/{self.total} {self.postfix}", file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        pass
