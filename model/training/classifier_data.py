"""What the person classifier learns from: enrolled people plus one Unknown class (plain numpy, no TensorFlow).

The enrolled people come from a folder-per-person dataset or the app's gallery (`datasets`); the
Unknown class from strangers: a folder of strangers' photos (flat, or one sub-folder per
stranger), an `Unknown/` sub-folder of the dataset itself, and, from the app's data folder, the
"not this person" corrections. (The inbox's dismissed faces cannot be used: the app deletes
their rows and files when they are dismissed.)

Also here: balanced class weights, augmentation on features (mirror views from the feature
cache, same-person mixing, noise on the sphere), and the open-set split shared with the
nearest-neighbour decision, so both are scored on the very same probes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.backbones import l2_normalise
from model.training.datasets import FeatureSet, IMAGE_SUFFIXES

UNKNOWN = "Unknown"
# Fewest enrolled people a classifier is trained for; with one person the app's nearest-neighbour
# decision is the tool (a one-person softmax learns "person vs everyone else" only).
MIN_PEOPLE = 2


class ClassifierDataError(ValueError):
    """The data cannot train a classifier; the message says what is missing."""


@dataclass
class ClassifierData:
    """Rows for the classifier: features float32 [N, D] unit rows, labels int64 [N] in 0..P,
    where P (the last class) is Unknown. classes: P people's names then 'Unknown'.
    views: optional float32 [N, D] mirror-image features of the same rows (augmentation only).
    """

    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    classes: list[str]
    backbone: str
    views: NDArray[np.float32] | None = None
    info: dict = field(default_factory=dict)

    @property
    def unknown(self) -> int:
        return len(self.classes) - 1

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def counts(self) -> NDArray[np.int64]:
        return np.bincount(self.labels, minlength=len(self.classes))

    def subset(self, mask: NDArray[np.bool_]) -> "ClassifierData":
        views = None if self.views is None else self.views[mask]
        return ClassifierData(self.features[mask], self.labels[mask], self.classes, self.backbone, views, dict(self.info))

    def summary(self) -> dict:
        counts = self.counts()
        return {"people": len(self.classes) - 1, "photos": int(counts[:-1].sum()), "strangers": int(counts[-1]),
                "photos_per_person_min": int(counts[:-1].min()), "photos_per_person_max": int(counts[:-1].max()),
                "backbone": self.backbone, "mirror_views": self.views is not None, **self.info}


def build_data(people: FeatureSet, strangers: list[NDArray[np.float32]], *,
               people_views: NDArray[np.float32] | None = None) -> ClassifierData:
    """Enrolled people (each name of `people` with photos is a class) plus Unknown from `strangers`.

    :param people: real photos of the enrolled people (augmented copies are kept: they are training rows).
    :param strangers: arrays float32 [M_i, D] of strangers' features; together they must not be empty.
    :raises ClassifierDataError: fewer than MIN_PEOPLE people, no strangers, or features of another size.
    """
    present = np.unique(people.labels)
    names = [people.names[i] for i in present]
    if UNKNOWN in names:
        raise ClassifierDataError(f"a person may not be called '{UNKNOWN}': that name is the strangers' class")
    if len(names) < MIN_PEOPLE:
        raise ClassifierDataError(f"a classifier needs at least {MIN_PEOPLE} people, found {len(names)} "
                                  f"({', '.join(names) or 'none'}); with one person use the app's own decision")
    pool = [np.asarray(s, dtype=np.float32) for s in strangers if len(s)]
    if not pool:
        raise ClassifierDataError(f"no strangers for the {UNKNOWN} class: give a folder of strangers' photos "
                                  f"(--strangers DIR), an {UNKNOWN}/ folder in the dataset, or a data folder "
                                  "with corrections (--data DIR)")
    unknown = np.concatenate(pool)
    if unknown.shape[1] != people.dim:
        raise ClassifierDataError(f"strangers have {unknown.shape[1]}-D features, people {people.dim}-D: "
                                  "compute both with the same backbone")
    index = np.searchsorted(present, people.labels)
    views = None
    if people_views is not None:  # strangers have no mirror views: they keep their own features
        views = np.concatenate([people_views, unknown]).astype(np.float32)
    return ClassifierData(
        np.concatenate([people.features, unknown]).astype(np.float32),
        np.concatenate([index, np.full(len(unknown), len(names))]).astype(np.int64),
        names + [UNKNOWN], people.backbone, views,
        info={"source": people.source, "stranger_sources": len(pool)},
    )


def class_weights(labels: NDArray[np.int64], n_classes: int) -> NDArray[np.float32]:
    """Balanced weights float32 [C]: N / (C * count_c), so every class weighs the same in the loss
    however many photos it has (a class without rows gets 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.astype(np.float32)


# --- augmentation on features ------------------------------------------------------------------


def mirror_views(averaged: NDArray[np.float32], plain: NDArray[np.float32]) -> NDArray[np.float32]:
    """The mirror image's own features, recovered from the two cached kinds (float32 [N, D] unit rows).

    The flip cache holds l2(a + b) of a face's features a and its mirror image's b (both unit);
    the plain cache holds a. Then b = 2 (avg . a) avg - a exactly, with no extra backbone pass.
    """
    dots = np.sum(averaged * plain, axis=1, keepdims=True)
    return l2_normalise(2 * dots * averaged - plain)


@dataclass
class FeatureAugment:
    """Random changes to feature rows for one training batch.

    view: chance of taking a row's mirror-image features (when views are known).
    mix: chance of pulling a row towards another row of the same class, by up to `mix_max`.
    noise: standard deviation of Gaussian noise per unit vector (scaled by 1/sqrt(D)), then re-normalised.
    """

    view: float = 0.5
    mix: float = 0.3
    mix_max: float = 0.4
    noise: float = 0.1

    def __call__(self, rows: NDArray[np.int64], data: ClassifierData, rng: np.random.Generator) -> NDArray[np.float32]:
        """Augmented features float32 [len(rows), D] of those rows of `data`."""
        x = data.features[rows].copy()
        if data.views is not None and self.view > 0:
            take = rng.random(len(rows)) < self.view
            x[take] = data.views[rows[take]]
        if self.mix > 0:
            labels = data.labels[rows]
            for i in np.flatnonzero(rng.random(len(rows)) < self.mix):
                mates = np.flatnonzero(data.labels == labels[i])
                t = rng.uniform(0, self.mix_max)
                x[i] = (1 - t) * x[i] + t * data.features[rng.choice(mates)]
        if self.noise > 0:
            x = x + rng.normal(scale=self.noise / np.sqrt(x.shape[1]), size=x.shape).astype(np.float32)
        return l2_normalise(x)


# --- splits ---------------------------------------------------------------------------------------


def holdout_rows(labels: NDArray[np.int64], fraction: float, seed: int = 0) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(train, held out) masks: `fraction` of each class's rows held out, at least one row kept for training."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n = min(int(round(fraction * len(rows))), len(rows) - 1)
        held[rows[:n]] = True
    return ~held, held


@dataclass
class OpenSetSplit:
    """One fold of the open-set split, as row indices into a FeatureSet.

    enrolled: the first `enroll` photos of each enrolled person (what the gallery and the classifier
    learn); mated: their other photos (probes that should get a name); unknown_train: strangers the
    classifier's Unknown class learns from; strangers: other strangers, never seen (probes that
    should stay unknown). The nearest-neighbour decision uses no strangers at all.
    """

    enrolled: NDArray[np.int64]
    mated: NDArray[np.int64]
    unknown_train: NDArray[np.int64]
    strangers: NDArray[np.int64]

    def summary(self, labels: NDArray[np.int64]) -> dict:
        return {"enrolled_people": int(len(np.unique(labels[self.enrolled]))), "enrolled_photos": len(self.enrolled),
                "mated_probes": len(self.mated), "unknown_train_people": int(len(np.unique(labels[self.unknown_train]))),
                "unknown_train_photos": len(self.unknown_train),
                "stranger_people": int(len(np.unique(labels[self.strangers]))), "stranger_probes": len(self.strangers)}


def openset_split(labels: NDArray[np.int64], *, enroll: int = 3, fold: int = 0) -> OpenSetSplit:
    """The README's open-set split (`openset.split_report`): people with an even (fold 0) or odd (fold 1)
    index are enrolled with their first `enroll` photos; everyone else is a stranger. Strangers are
    halved by person: every other one trains the Unknown class, the rest are the non-mated probes.

    :raises ClassifierDataError: too few people for two enrolled and one stranger of each kind.
    """
    labels = np.asarray(labels)
    enrolled, mated, unknown_train, strangers = [], [], [], []
    stranger_index = 0
    for person in np.unique(labels):
        rows = np.flatnonzero(labels == person)
        if person % 2 == fold:
            if len(rows) > enroll:
                enrolled.extend(rows[:enroll])
                mated.extend(rows[enroll:])
            continue
        (unknown_train if stranger_index % 2 == 0 else strangers).extend(rows)
        stranger_index += 1
    split = OpenSetSplit(*(np.asarray(part, dtype=np.int64) for part in (enrolled, mated, unknown_train, strangers)))
    if len(np.unique(labels[split.enrolled])) < MIN_PEOPLE or not len(split.unknown_train) or not len(split.strangers):
        raise ClassifierDataError(f"the open-set split needs at least {MIN_PEOPLE} people with more than {enroll} "
                                  "photos and two strangers; use more people")
    return split


def split_data(features: FeatureSet, split: OpenSetSplit) -> ClassifierData:
    """The classifier's training rows for one split: enrolled photos plus the Unknown-training strangers."""
    return build_data(features.subset(split.enrolled), [features.features[split.unknown_train]])


def truth_of(features: FeatureSet, rows: NDArray[np.int64], classes: list[str]) -> NDArray[np.int64]:
    """Class index [len(rows)] each row should get: its person's class, else Unknown (the last class)."""
    index = {name: i for i, name in enumerate(classes[:-1])}
    return np.array([index.get(features.names[label], len(classes) - 1) for label in features.labels[rows]],
                    dtype=np.int64)


# --- strangers' photos ------------------------------------------------------------------------------


def has_person_folders(folder: Path) -> bool:
    return any(p.is_dir() and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir()) for p in folder.iterdir())


def stranger_photos(folder: Path) -> list[Path]:
    """Every photo directly in `folder` or one level below, sorted. :raises ClassifierDataError: none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClassifierDataError(f"no folder of strangers' photos at {folder}")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    found += sorted(q for p in folder.iterdir() if p.is_dir() for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ClassifierDataError(f"no photos of strangers in {folder}")
    return found


def gallery_strangers(database: Path | str, people: FeatureSet) -> NDArray[np.float32]:
    """The app's "not this person" corrections as strangers' features float32 [C, D] (read-only).

    A correction says only who a face is not; it may be another enrolled person, so a data folder
    whose corrections are mostly mix-ups between enrolled people teaches Unknown the wrong faces.
    """
    from model.training.datasets import gallery_corrections

    features, _ = gallery_corrections(database, people.backbone, people.names)
    return features.reshape(-1, people.dim) if len(features) else np.zeros((0, people.dim), np.float32)


def stranger_features(folder: Path, recognizer, cache_dir: Path | None = None) -> NDArray[np.float32]:
    """Backbone features float32 [M, D] of every photo under a strangers' folder (cached like a dataset's)."""
    from model.images import ImageError, load_image
    from model.training import datasets

    folder = Path(folder)
    backbone = recognizer.backbone.name
    path = datasets.cache_file(folder, backbone, cache_dir, flip=recognizer.flip, detector=recognizer.detector.name)
    cache = datasets.read_cache(path)
    rows, fresh = [], 0
    for photo in stranger_photos(folder):
        key = datasets.photo_key(folder, photo, backbone, 0)
        if key not in cache:
            try:
                picture = load_image(photo)
            except ImageError as exc:
                print(f"unreadable: {photo}: {exc}", file=sys.stderr)
                continue
            recognizer.load()
            face, detected = recognizer.portrait_face(picture)
            cache[key] = (recognizer.features(picture, [face])[0], detected)
            fresh += 1
        rows.append(cache[key][0])
    if fresh:
        datasets.write_cache(path, cache)
    return np.asarray(rows, dtype=np.float32).reshape(-1, recognizer.backbone.dim)
