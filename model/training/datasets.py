"""Backbone features computed once per photo and reused, so training a head takes seconds.

Two sources give the same `FeatureSet`:

- `dataset_features(images)`: a folder-per-person dataset (DIR/<person>/*.jpg).
  Each photo's portrait face (`Recognizer.portrait_face`) is embedded by the
  backbone once and stored in an .npz under the cache dir, keyed by the photo's
  path relative to DIR, its size and mtime, and the backbone. A changed or new
  photo is recomputed; the rest load in milliseconds. With `augment=N` the cache
  also holds N augmented copies per photo (see `sampling.augment_photo`); they
  are the only way augmentation reaches a head trained on cached features.
- `gallery_features(db)`: the app's database (SQLite file or PostgreSQL URL), read-only, through
  `webapp.training_reads.read_training_photos` (the app owns its schema); each
  photo's backbone features are stored there. `gallery_corrections` reads its
  "not this person" corrections, the trainer's extra hard negatives.

`load_features` picks one of the two; `split_features` splits a FeatureSet by
person. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.training.sampling import augment_photo, split_people

# Where features are cached when the caller names no folder; the CLIs pass the
# CACHE_DIR setting instead (FACES_CACHE_DIR, webapp/settings.py).
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "faces-app"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# Save the cache every this many newly computed photos, so an interrupted run resumes.
SAVE_EVERY = 200


@dataclass
class FeatureSet:
    """Backbone features of labelled photos.

    features: float32 [N, D] unit rows. labels: int64 [N], index into `names`.
    paths: N photo ids (path relative to the dataset, or 'photo:<id>' for the gallery).
    detected: bool [N], False where the face was an assumed centred box.
    augmented: bool [N], True for augmented copies (train on them, never evaluate on them).
    """

    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    names: list[str]
    paths: list[str]
    backbone: str
    detected: NDArray[np.bool_] | None = None
    augmented: NDArray[np.bool_] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.detected is None:
            self.detected = np.ones(n, dtype=bool)
        if self.augmented is None:
            self.augmented = np.zeros(n, dtype=bool)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, mask: NDArray[np.bool_] | NDArray[np.int64]) -> "FeatureSet":
        """The rows selected by a boolean mask or index array (names are kept whole)."""
        index = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=np.int64)
        return FeatureSet(
            self.features[index],
            self.labels[index],
            self.names,
            [self.paths[i] for i in index],
            self.backbone,
            self.detected[index],
            self.augmented[index],
            self.source,
            dict(self.extra),
        )

    def originals(self) -> "FeatureSet":
        """Only the real photos, without augmented copies."""
        return self.subset(~self.augmented)

    def summary(self) -> dict:
        """Counts for the notebook and the sidecar: people, photos, photos per person, no-face fallbacks."""
        real = ~self.augmented
        counts = np.bincount(self.labels[real], minlength=len(self.names))
        counts = counts[counts > 0]
        return {
            "source": self.source,
            "backbone": self.backbone,
            "people": int(len(counts)),
            "photos": int(real.sum()),
            "augmented_copies": int(self.augmented.sum()),
            "photos_per_person_min": int(counts.min()) if len(counts) else 0,
            "photos_per_person_median": float(np.median(counts)) if len(counts) else 0.0,
            "photos_per_person_max": int(counts.max()) if len(counts) else 0,
            "people_with_one_photo": int((counts == 1).sum()),
            "no_face_detected": int((~self.detected[real]).sum()),
            **self.extra,
        }


# --- folder-per-person datasets --------------------------------------------------


def list_dataset(images: Path, people: int | None = None, per_person: int | None = None) -> dict[str, list[Path]]:
    """{person: sorted photo paths} for DIR/<person>/*, people sorted by name.

    :param people: keep only the first `people` people (by name) that have photos.
    :param per_person: keep at most this many photos (the first, by name) per person.
    """
    found = {}
    for folder in sorted(p for p in Path(images).iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if photos:
            found[folder.name] = photos[:per_person] if per_person else photos
        if people and len(found) >= people:
            break
    if not found:
        raise FileNotFoundError(f"no person folders with photos under {images}")
    return found


def cache_file(images: Path, backbone: str, cache_dir: Path | None = None, flip: bool = False,
               detector: str = "hog") -> Path:
    """The .npz holding one dataset's features for one backbone and detector (HOG's files keep their old names)."""
    digest = hashlib.sha1(str(Path(images).resolve()).encode()).hexdigest()[:12]
    suffix = ("-flip" if flip else "") + ("" if detector == "hog" else f"-{detector}")
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"features-{backbone}{suffix}-{Path(images).name}-{digest}.npz"


def photo_key(images: Path, path: Path, backbone: str, copy: int) -> str:
    stat = path.stat()
    rel = path.relative_to(images).as_posix()
    return f"{rel}|{stat.st_size}|{stat.st_mtime_ns}|{backbone}|{copy}"


def read_cache(path: Path, field: str = "features", what: str = "feature") -> dict[str, tuple[NDArray, bool]]:
    """A keyed cache file: key -> (its `field` row, whether a face was detected); {} when missing or unreadable."""
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: (f, bool(d)) for k, f, d in zip(data["keys"].tolist(), data[field], data["detected"])}
    except (OSError, KeyError, ValueError) as exc:
        print(f"{what} cache {path} unreadable ({exc}); recomputing", file=sys.stderr)
        return {}


def write_npz_atomically(path: Path, **arrays) -> None:
    """np.savez to path so that a reader sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_cache(path: Path, entries: dict[str, tuple[NDArray[np.float32], bool]]) -> None:
    """Write the feature cache atomically (see write_npz_atomically)."""
    keys = list(entries)
    dim = len(next(iter(entries.values()))[0]) if entries else 0
    features = np.stack([entries[k][0] for k in keys]) if keys else np.zeros((0, dim), np.float32)
    write_npz_atomically(path, keys=np.array(keys, dtype=str), features=features.astype(np.float32),
                         detected=np.array([entries[k][1] for k in keys], dtype=bool))


def dataset_features(
    images: Path,
    *,
    backbone: str = "dlib-resnet",
    recognizer=None,
    cache_dir: Path | None = None,
    people: int | None = None,
    per_person: int | None = None,
    augment: int = 0,
    seed: int = 0,
    flip: bool | None = None,
    weights_dir: Path | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Backbone features of every photo of a folder-per-person dataset, cached.

    :param images: DIR/<person>/<photo>.
    :param backbone: backbone name; ignored when `recognizer` is given (its backbone is used).
    :param recognizer: a `Recognizer` to compute missing features with (default: a new one,
        loaded only when something is missing). Its backbone and flip setting are used.
    :param cache_dir: where the .npz lives (default DEFAULT_CACHE_DIR, ~/.cache/faces-app).
    :param augment: augmented copies per photo, cached too (copy i of a photo is always
        the same picture, drawn from `seed`); 0 for none.
    :param flip: average each face's features with its mirror image's, as the app does
        (default: the Recognizer's own default). Ignored when `recognizer` is given
        (its `flip` is used). Flipped and plain features are cached in separate files.
    :param weights_dir: weight files for a new Recognizer (vgg16-face's; default model.paths').
    :return: a FeatureSet; unreadable photos are left out (reported on stderr).
    Cost: about 75 ms per new photo with dlib-resnet on one core (detection at upsample 1
    and 2 when needed, plus the ResNet), per augmented copy too; cached photos are free.
    """
    from model.images import ImageError, load_image

    images = Path(images)
    listing = list_dataset(images, people, per_person)
    if recognizer is None:
        from model.recognizer import Recognizer

        options = {} if flip is None else {"flip": flip}
        recognizer = Recognizer(backbone, weights_dir=weights_dir, **options)  # loaded only if needed
    backbone = recognizer.backbone.name
    path = cache_file(images, backbone, cache_dir, flip=recognizer.flip, detector=recognizer.detector.name)
    cache = read_cache(path)
    todo = [
        (name, photo, copy)
        for name, photos in listing.items()
        for photo in photos
        for copy in range(augment + 1)
        if photo_key(images, photo, backbone, copy) not in cache
    ]
    if todo:
        recognizer.load()
        bar = _progress(len(todo), "backbone features", progress)
        fresh = 0
        for name, photo, copy in todo:
            try:
                picture = load_image(photo)
            except ImageError as exc:
                print(f"unreadable: {photo}: {exc}", file=sys.stderr)
                bar.update(1)
                continue
            if copy:
                rng = np.random.default_rng([seed, copy, int(hashlib.sha1(str(photo).encode()).hexdigest()[:8], 16)])
                picture = augment_photo(picture, rng)
            face, detected = recognizer.portrait_face(picture)
            cache[photo_key(images, photo, backbone, copy)] = (recognizer.features(picture, [face])[0], detected)
            fresh += 1
            bar.update(1)
            if fresh % SAVE_EVERY == 0:
                write_cache(path, cache)
        bar.close()
        write_cache(path, cache)

    features, labels, paths, detected, augmented = [], [], [], [], []
    names = list(listing)
    for label, name in enumerate(names):
        for photo in listing[name]:
            for copy in range(augment + 1):
                entry = cache.get(photo_key(images, photo, backbone, copy))
                if entry is None:
                    continue  # unreadable
                features.append(entry[0])
                detected.append(entry[1])
                labels.append(label)
                paths.append(photo.relative_to(images).as_posix() + (f"#aug{copy}" if copy else ""))
                augmented.append(copy > 0)
    dim = len(features[0]) if features else 0
    return FeatureSet(
        np.asarray(features, dtype=np.float32).reshape(-1, dim),
        np.asarray(labels, dtype=np.int64),
        names,
        paths,
        backbone,
        np.asarray(detected, dtype=bool),
        np.asarray(augmented, dtype=bool),
        source=str(images),
        extra={"flip": bool(recognizer.flip)},
    )


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled)


# --- the app's database --------------------------------------------------------------


def gallery_source(text: str) -> Path | str:
    """A --gallery argument: the app's SQLite file (a Path), or its PostgreSQL URL kept as written."""
    return text if text.startswith(("postgresql://", "postgres://")) else Path(text)


def gallery_features(db: Path | str, backbone: str = "dlib-resnet") -> FeatureSet:
    """Every enrolled photo's stored backbone features, from the app's database (read-only).

    db: its SQLite file, or the postgresql:// URL of FACES_DATABASE_URL.

    Photos of other backbones or without features are skipped. Labels follow people sorted by name.
    :raises FileNotFoundError: no such file. ValueError: no photo of that backbone has features.
    """
    from webapp.training_reads import describe, read_training_photos

    db = gallery_source(str(db))
    rows = read_training_photos(db, backbone)
    if not rows:
        raise ValueError(f"no {backbone} photos with stored features in {describe(db)}")
    names = sorted({name for _, name, _ in rows})
    label_of = {name: i for i, name in enumerate(names)}
    features = np.stack([vector for _, _, vector in rows]).astype(np.float32)
    labels = np.array([label_of[name] for _, name, _ in rows], dtype=np.int64)
    return FeatureSet(features, labels, names, [f"photo:{pid}" for pid, _, _ in rows], backbone,
                      source=describe(db))


def gallery_corrections(
    db: Path | str, backbone: str, names: Sequence[str]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The app's "not this person" corrections, as hard negatives (read-only).

    :param names: the FeatureSet's names (see `gallery_features`); corrections of people not in it are left out.
    :return: (features float32 [C, D], labels int64 [C]: the index into `names` of the person each face is NOT).
    A database from before corrections existed gives none.
    """
    from webapp.training_reads import read_training_corrections

    label_of = {name: i for i, name in enumerate(names)}
    found = read_training_corrections(gallery_source(str(db)), backbone)
    rows = [(name, vector) for name, vector in found if name in label_of]
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    features = np.stack([vector for _, vector in rows]).astype(np.float32)
    return features, np.array([label_of[name] for name, _ in rows], dtype=np.int64)


# --- choosing and splitting -------------------------------------------------------------


@dataclass
class Split:
    """A FeatureSet split by person. val and test hold real photos only (no augmented copies)."""

    train: FeatureSet
    val: FeatureSet
    test: FeatureSet | None = None

    def summary(self) -> dict:
        def people(fs: FeatureSet | None) -> int:
            return 0 if fs is None else int(len(np.unique(fs.labels)))

        return {
            "train_people": people(self.train),
            "train_photos": int((~self.train.augmented).sum()),
            "train_augmented": int(self.train.augmented.sum()),
            "val_people": people(self.val),
            "val_photos": len(self.val),
            "test_people": people(self.test),
            "test_photos": 0 if self.test is None else len(self.test),
        }


def load_features(
    images: Path | None = None,
    gallery: Path | None = None,
    *,
    backbone: str = "dlib-resnet",
    cache_dir: Path | None = None,
    people: int | None = None,
    per_person: int | None = None,
    augment: int = 0,
    flip: bool | None = None,
    recognizer=None,
    weights_dir: Path | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features from a folder-per-person dataset (cached) or from the app's database.

    Train on the features the app uses: flip averaging follows the Recognizer's default
    unless `flip` says otherwise (the gallery stores whatever the app computed).
    """
    if (images is None) == (gallery is None):
        raise ValueError("give exactly one of images (a folder per person) or gallery (the app's database)")
    if gallery is not None:
        if augment:
            raise ValueError("augmentation needs the photos; the gallery stores features only")
        return gallery_features(gallery, backbone)
    return dataset_features(
        Path(images), backbone=backbone, recognizer=recognizer, cache_dir=cache_dir, people=people,
        per_person=per_person, augment=augment, flip=flip, weights_dir=weights_dir, progress=progress,
    )


def split_features(
    features: FeatureSet, *, val_fraction: float = 0.25, test_fraction: float = 0.0, seed: int = 0
) -> Split:
    """Split by person (see `sampling.split_people`); augmented copies stay only in train.

    The split is drawn from the real photos alone, so adding augmented copies does not move anyone.
    """
    real = ~features.augmented
    parts = split_people(features.labels[real], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    train, val, test = (np.isin(features.labels, features.labels[real][part]) for part in parts)
    return Split(
        features.subset(train),
        features.subset(val & real),
        features.subset(test & real) if test.any() else None,
    )
