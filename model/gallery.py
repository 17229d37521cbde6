"""The gallery: one embedding per enrolled photo, and open-set nearest-neighbour matching.

Plain numpy; no model, no Flask. Similarity is cosine (embeddings are unit vectors).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Match:
    """The decision for one probe face.

    person_id: the best person, or None when `similarity` is below the threshold.
    similarity: cosine similarity to that person's closest photo (-1..1), reported even when unknown.
    margin: similarity minus the best similarity of any other person (equal to
        `similarity` when only one person is enrolled); small margins mean a coin toss.
    candidate_id: the best person regardless of the threshold (None for an empty gallery).
    reason: why the face was not matched at all (e.g. too small to recognise), else None.
    """

    person_id: int | None
    similarity: float
    margin: float
    candidate_id: int | None = None
    reason: str | None = None


def match(
    vectors: NDArray[np.float32],
    person_ids: NDArray[np.int64],
    probes: NDArray[np.float32],
    threshold: float,
) -> list[Match]:
    """Match probes against gallery photos, person by person.

    :param vectors: float32 [M, D] unit vectors, one per enrolled photo.
    :param person_ids: int64 [M], whose photo each row is.
    :param probes: float32 [P, D] unit vectors.
    :param threshold: similarity at or above which the best person is accepted.
    :return: one Match per probe, in order.
    """
    if len(probes) == 0:
        return []
    if len(vectors) == 0:
        return [Match(None, 0.0, 0.0) for _ in range(len(probes))]
    sims = probes @ vectors.T  # [P, M]
    rows = np.arange(len(probes))
    best_row = sims.argmax(axis=1)
    best_sim = sims[rows, best_row]
    best_person = person_ids[best_row]
    others = np.where(person_ids[None, :] == best_person[:, None], -np.inf, sims)
    second_sim = others.max(axis=1)
    second_sim = np.where(np.isfinite(second_sim), second_sim, 0.0)
    results = []
    for sim, second, person in zip(best_sim, second_sim, best_person):
        accepted = bool(sim >= threshold)
        results.append(Match(int(person) if accepted else None, float(sim), float(sim - second), int(person)))
    return results


class Gallery:
    """Enrolled embeddings, updated one photo at a time and safe to match from other threads.

    Rows live in a buffer that doubles when full; removing a photo moves the
    last row into its place, so neither adding nor removing rebuilds the gallery.
    """

    def __init__(self, dim: int = 128, capacity: int = 256):
        self.dim = dim
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._people = np.zeros(capacity, dtype=np.int64)
        self._photos = np.zeros(capacity, dtype=np.int64)
        self._row_of_photo: dict[int, int] = {}
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    @property
    def person_ids(self) -> set[int]:
        with self._lock:
            return set(self._people[: self._size].tolist())

    def add(self, photo_id: int, person_id: int, embedding: NDArray[np.float32]) -> None:
        """Add (or replace) one photo's embedding, float32 [D]."""
        embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if embedding.shape[0] != self.dim:
            raise ValueError(f"expected a {self.dim}-D embedding, got {embedding.shape[0]}-D")
        with self._lock:
            row = self._row_of_photo.get(photo_id)
            if row is None:
                if self._size == len(self._vectors):
                    self._grow()
                row = self._size
                self._size += 1
                self._row_of_photo[photo_id] = row
            self._vectors[row] = embedding
            self._people[row] = person_id
            self._photos[row] = photo_id

    def add_many(self, items: Iterable[tuple[int, int, NDArray[np.float32]]]) -> None:
        """Add (photo_id, person_id, embedding) triples."""
        for photo_id, person_id, embedding in items:
            self.add(photo_id, person_id, embedding)

    def remove_photo(self, photo_id: int) -> bool:
        """Drop one photo's embedding; False when it was not there."""
        with self._lock:
            row = self._row_of_photo.pop(photo_id, None)
            if row is None:
                return False
            last = self._size - 1
            if row != last:
                self._vectors[row] = self._vectors[last]
                self._people[row] = self._people[last]
                self._photos[row] = self._photos[last]
                self._row_of_photo[int(self._photos[row])] = row
            self._size = last
            return True

    def remove_person(self, person_id: int) -> int:
        """Drop all photos of a person; returns how many were removed."""
        with self._lock:
            photos = self._photos[: self._size][self._people[: self._size] == person_id].tolist()
        return sum(self.remove_photo(int(photo)) for photo in photos)

    def clear(self) -> None:
        with self._lock:
            self._row_of_photo.clear()
            self._size = 0

    def match(self, probes: NDArray[np.float32], threshold: float) -> list[Match]:
        """Open-set match of float32 [P, D] unit vectors; see `match`."""
        with self._lock:
            return match(self._vectors[: self._size], self._people[: self._size], probes, threshold)

    def _grow(self) -> None:
        capacity = 2 * len(self._vectors)
        for name in ("_vectors", "_people", "_photos"):
            old = getattr(self, name)
            new = np.zeros((capacity,) + old.shape[1:], dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
