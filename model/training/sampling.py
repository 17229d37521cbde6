"""Who trains with whom: splits by person, P x K batches, triplets, pairs, and photo augmentation.

Plain numpy (and OpenCV for augmentation); no TensorFlow. Every function takes
its random generator or seed, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
from numpy.typing import NDArray

DEFAULT_P = 32  # people per batch
DEFAULT_K = 4  # photos per person per batch


def split_people(
    labels: NDArray[np.int64], *, val_fraction: float = 0.25, test_fraction: float = 0.0, seed: int = 0
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
    """Split rows by person: every photo of a person lands in exactly one part.

    People with two or more photos are shuffled and dealt out by fraction (so
    validation has genuine pairs); people with one photo are dealt out the same
    way separately, so each part gets its share of them.
    :return: (train, val, test) boolean masks over the rows; test is empty when test_fraction is 0.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    people, counts = np.unique(labels, return_counts=True)
    parts: list[list[int]] = [[], [], []]
    for group in (people[counts >= 2], people[counts < 2]):
        group = rng.permutation(group)
        n_val = int(round(val_fraction * len(group)))
        n_test = int(round(test_fraction * len(group)))
        parts[1] += group[:n_val].tolist()
        parts[2] += group[n_val : n_val + n_test].tolist()
        parts[0] += group[n_val + n_test :].tolist()
    train, val, test = (np.isin(labels, part) for part in parts)
    return train, val, test


def pk_batches(
    labels: NDArray[np.int64], *, p: int = DEFAULT_P, k: int = DEFAULT_K, rng: np.random.Generator
) -> Iterator[NDArray[np.int64]]:
    """One epoch of class-balanced batches: P people x K photos each, as row indices [P*K].

    Only people with two or more photos take part (a triplet needs a positive).
    People with fewer than K photos repeat photos; with more, K are drawn without
    replacement. Each person appears once per epoch, so the number of batches is
    (eligible people) // P (at least one when there are two or more people).
    """
    labels = np.asarray(labels)
    rows_of = {int(person): np.flatnonzero(labels == person) for person in np.unique(labels)}
    eligible = np.array([person for person, rows in rows_of.items() if len(rows) >= 2])
    if len(eligible) < 2:
        raise ValueError("P x K sampling needs at least two people with two or more photos")
    p = min(p, len(eligible))
    order = rng.permutation(eligible)
    for start in range(0, len(order) - p + 1, p):
        batch = []
        for person in order[start : start + p]:
            rows = rows_of[int(person)]
            batch.append(rng.choice(rows, size=k, replace=len(rows) < k))
        yield np.concatenate(batch)


def random_triplets(labels: NDArray[np.int64], n: int, *, rng: np.random.Generator) -> NDArray[np.int64]:
    """n random (anchor, positive, negative) row triplets, as in the original design: int64 [n, 3].

    Anchor and positive are two different photos of one person (people with two
    or more photos); the negative is any photo of someone else.
    """
    labels = np.asarray(labels)
    people, counts = np.unique(labels, return_counts=True)
    eligible = people[counts >= 2]
    if len(eligible) == 0 or len(people) < 2:
        raise ValueError("random triplets need a person with two photos and a second person")
    rows_of = {int(person): np.flatnonzero(labels == person) for person in people}
    anchors_people = rng.choice(eligible, size=n)
    triplets = np.empty((n, 3), dtype=np.int64)
    for t, person in enumerate(anchors_people):
        triplets[t, :2] = rng.choice(rows_of[int(person)], size=2, replace=False)
        while True:
            negative = rng.integers(len(labels))
            if labels[negative] != person:
                break
        triplets[t, 2] = negative
    return triplets


def correction_triplets(
    labels: NDArray[np.int64], correction_labels: NDArray[np.int64], n: int, *, rng: np.random.Generator
) -> NDArray[np.int64]:
    """n triplets against stored corrections: int64 [n, 3] (anchor row, positive row, correction index).

    A correction is a face the app was told is NOT person `correction_labels[c]`; it is the
    negative for two different photos of that person. Only corrections whose person has two
    or more rows in `labels` are used; with none, the result is empty [0, 3].
    """
    labels = np.asarray(labels)
    rows_of = {int(person): np.flatnonzero(labels == person) for person in np.unique(correction_labels)}
    usable = np.array([c for c, person in enumerate(correction_labels) if len(rows_of[int(person)]) >= 2], dtype=np.int64)
    if len(usable) == 0 or n <= 0:
        return np.zeros((0, 3), dtype=np.int64)
    triplets = np.empty((n, 3), dtype=np.int64)
    for t, c in enumerate(rng.choice(usable, size=n)):
        triplets[t, :2] = rng.choice(rows_of[int(correction_labels[c])], size=2, replace=False)
        triplets[t, 2] = c
    return triplets


def random_pairs(
    labels: NDArray[np.int64], n: int, *, rng: np.random.Generator, positive_fraction: float = 0.5
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    """n random pairs for contrastive loss: (left rows, right rows, same float32 [n] 1/0).

    About `positive_fraction` of them are two different photos of one person.
    """
    triplets = random_triplets(labels, n, rng=rng)
    same = (rng.random(n) < positive_fraction).astype(np.float32)
    right = np.where(same > 0, triplets[:, 1], triplets[:, 2])
    return triplets[:, 0], right, same


def semi_hard_triplets_numpy(
    embeddings: NDArray[np.float32], labels: NDArray[np.int64], margin: float = 0.2
) -> NDArray[np.int64]:
    """Reference in-batch semi-hard mining on unit embeddings (squared Euclidean distances).

    For every (anchor, positive) pair of one person: the closest negative with
    d(a,p) < d(a,n) < d(a,p) + margin; when there is none, the hardest (closest) negative.
    :return: int64 [T, 3] row triplets (anchor, positive, negative).
    The training loss uses the same rule in Keras ops (`losses.semi_hard_triplet_loss`).
    """
    dist = np.maximum(2.0 - 2.0 * embeddings @ embeddings.T, 0.0)
    same = labels[:, None] == labels[None, :]
    triplets = []
    for a in range(len(labels)):
        negatives = np.flatnonzero(~same[a])
        if len(negatives) == 0:
            continue
        for p in np.flatnonzero(same[a]):
            if p == a:
                continue
            d_an = dist[a, negatives]
            band = (d_an > dist[a, p]) & (d_an < dist[a, p] + margin)
            pool = negatives[band] if band.any() else negatives
            triplets.append((a, p, pool[np.argmin(dist[a, pool])]))
    return np.array(triplets, dtype=np.int64).reshape(-1, 3)


# --- photo augmentation ------------------------------------------------------------------


def augment_photo(
    photo: NDArray[np.uint8],
    rng: np.random.Generator,
    *,
    flip: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    max_degrees: float = 8.0,
    max_scale: float = 0.08,
) -> NDArray[np.uint8]:
    """A randomly changed copy of an RGB uint8 photo [H, W, 3], same shape.

    Applied to whole photos before detection and the backbone, so the face
    detector and aligner see it too. Changes: a left-right flip with probability
    `flip`; brightness shift up to +-brightness*255 and contrast factor within
    1 +- contrast; rotation up to +-max_degrees and scale within 1 +- max_scale
    about the centre (borders replicate the edge pixels).
    """
    out = photo[:, ::-1] if rng.random() < flip else photo
    height, width = out.shape[:2]
    angle = rng.uniform(-max_degrees, max_degrees)
    scale = 1.0 + rng.uniform(-max_scale, max_scale)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    gain = 1.0 + rng.uniform(-contrast, contrast)
    shift = rng.uniform(-brightness, brightness) * 255
    mean = out.mean()
    out = (out.astype(np.float32) - mean) * gain + mean + shift
    return np.clip(out, 0, 255).astype(np.uint8)
