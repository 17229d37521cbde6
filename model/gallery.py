"""The gallery: one embedding per enrolled photo, and open-set matching against each person's template.

Plain numpy; no model, no Flask. Similarity is cosine (embeddings are unit vectors).
Corrections ("this face is not P") take part in matching at once: a face more like
a face marked "not P" than like any of P's own photos is not given P's name.
Large galleries are searched through an approximate index (model.gallery_index)
and the candidates scored exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model import gallery_index, open_set
from model.open_set import OpenSetRule


@dataclass(frozen=True)
class Match:
    """The decision for one probe face.

    person_id: the best person, or None when `similarity` is below the threshold.
    similarity: cosine similarity to that person's template (-1..1), reported even when unknown.
    margin: similarity minus the best similarity of any other person (equal to
        `similarity` when only one person is enrolled); small margins mean a coin toss.
        Through the approximate index: of any other person it proposed (so never smaller).
    candidate_id: the best person regardless of the threshold (None for an empty gallery).
    reason: why the face was not matched at all (e.g. too small to recognise), else None.
    corrected_id: the person this face would have been named without a correction (it looks more like a
        face marked "not them" than like their own photos), else None; the face is then matched on without them.
    """

    person_id: int | None
    similarity: float
    margin: float
    candidate_id: int | None = None
    reason: str | None = None
    corrected_id: int | None = None


@dataclass(frozen=True)
class Corrections:
    """Faces marked "not this person", as matching uses them.

    vectors: float32 [C, D] unit rows; person_ids: int64 [C], whom each face is NOT.
    level: how similar a probe must be to such a face to be kept from that person (None: the person's own
        open-set threshold, i.e. "would be taken for the corrected face").
    """

    vectors: NDArray[np.float32]
    person_ids: NDArray[np.int64]
    level: float | None = None

    def nearest(self, probe: NDArray[np.float32]) -> dict[int, float]:
        """{person id: highest similarity of the probe (float32 [D]) to a face marked "not them"}."""
        if len(self.person_ids) == 0:
            return {}
        sims = self.vectors @ probe
        found: dict[int, float] = {}
        for person, sim in zip(self.person_ids.tolist(), sims.tolist()):
            found[person] = max(sim, found.get(person, -2.0))
        return found


def templates(
    vectors: NDArray[np.float32], person_ids: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """Each person's template: the normalised mean of their photos' embeddings.

    :return: (person ids [P], templates float32 [P, D] unit rows, photo counts [P]).
    """
    people, index = np.unique(person_ids, return_inverse=True)
    sums = np.zeros((len(people), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, index, vectors)
    norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return people, (sums / norms).astype(np.float32), np.bincount(index, minlength=len(people))


def match(
    vectors: NDArray[np.float32],
    person_ids: NDArray[np.int64],
    probes: NDArray[np.float32],
    threshold: float | OpenSetRule,
    *,
    corrections: Corrections | None = None,
) -> list[Match]:
    """Match probes against the enrolled people's templates (see `templates`).

    On CelebA, matching templates rather than the nearest photo raised open-set DIR at FPIR 1%
    from 87.7% / 63.4% to 91.7% / 80.2% (dlib-sface, half the people never enrolled; README).

    :param vectors: float32 [M, D] unit vectors, one per enrolled photo.
    :param person_ids: int64 [M], whose photo each row is.
    :param probes: float32 [P, D] unit vectors.
    :param threshold: a fixed similarity, or an OpenSetRule, at or above which the best person is accepted.
    :param corrections: faces marked "not this person": a person is passed over for a probe more similar
        (at least the level) to one of their corrections than to any of their photos and their template;
        the next person is then decided on by the same rule.
    :return: one Match per probe, in order.
    """
    if len(probes) == 0:
        return []
    if len(vectors) == 0:
        return [Match(None, 0.0, 0.0) for _ in range(len(probes))]
    people, centres, counts = templates(vectors, person_ids)
    decider = _Decider(people, centres, counts, threshold, corrections, lambda person: vectors[person_ids == person])
    return decider.exact(probes)


class _Decider:
    """The open-set decision over one set of templates, with corrections: exact over all, or among candidates."""

    def __init__(self, people: NDArray[np.int64], centres: NDArray[np.float32], counts: NDArray[np.int64],
                 threshold: float | OpenSetRule, corrections: Corrections | None,
                 photos_of: Callable[[int], NDArray[np.float32]]):
        self.people, self.centres, self.counts = people, centres, counts
        self.threshold = threshold
        self.corrections = corrections if corrections is not None and len(corrections.person_ids) else None
        self.photos_of = photos_of
        corrected = 0 if self.corrections is None else len(np.unique(self.corrections.person_ids))
        # Each corrected person may be passed over, so this many best candidates always hold the best two left.
        self.depth = 2 + corrected
        # What each person's template must reach, worked out once for every probe of this match.
        self.limits = open_set.limits(threshold, counts, templates=centres)

    def limit(self, column: int) -> float:
        return float(self.limits[column])

    def exact(self, probes: NDArray[np.float32]) -> list[Match]:
        """Every template scored: float32 [P, D] probes -> one Match each."""
        sims = probes @ self.centres.T  # [P, people]
        k = min(len(self.people), self.depth)
        if k < len(self.people):
            columns = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            columns = np.broadcast_to(np.arange(len(self.people)), sims.shape)
        return [self.decide(probe, cols, row[cols]) for probe, cols, row in zip(probes, columns, sims)]

    def among(self, probes: NDArray[np.float32], candidates: list[NDArray[np.int64]]) -> list[Match]:
        """Only the candidate template columns of each probe scored (exactly)."""
        return [self.decide(probe, cols, self.centres[cols] @ probe) for probe, cols in zip(probes, candidates)]

    def decide(self, probe: NDArray[np.float32], columns: NDArray[np.int64], sims: NDArray[np.float32]) -> Match:
        """The best person among these columns (with their similarities) who is not passed over, and the margin."""
        nearest_corrections = {} if self.corrections is None else self.corrections.nearest(probe)
        kept: list[tuple[int, float]] = []
        corrected = None
        for i in np.argsort(-sims, kind="stable"):
            column, sim = int(columns[i]), float(sims[i])
            if nearest_corrections and self.passed_over(probe, column, sim, nearest_corrections):
                if not kept and corrected is None and sim >= self.limit(column):
                    corrected = int(self.people[column])
                continue
            kept.append((column, sim))
            if len(kept) == 2:
                break
        if not kept:
            return Match(None, 0.0, 0.0, corrected_id=corrected)
        column, sim = kept[0]
        second = kept[1][1] if len(kept) > 1 else 0.0
        person = int(self.people[column])
        accepted = sim >= self.limit(column)
        return Match(person if accepted else None, sim, sim - second, person, corrected_id=corrected)

    def passed_over(self, probe: NDArray[np.float32], column: int, sim: float, nearest: dict[int, float]) -> bool:
        """Whether the probe looks like a face marked "not this person" more than like the person's own photos."""
        person = int(self.people[column])
        corrected = nearest.get(person)
        if corrected is None:
            return False
        level = self.corrections.level if self.corrections.level is not None else self.limit(column)
        if corrected < level or corrected <= sim:
            return False
        own = self.photos_of(person)
        return len(own) == 0 or corrected > float(np.max(own @ probe))


class Gallery:
    """Enrolled embeddings and corrections, updated one at a time and safe to match from other threads.

    Rows live in a buffer that doubles when full; removing a photo moves the
    last row into its place, so neither adding nor removing rebuilds the gallery.
    Each person's template is kept up to date as photos come and go (a sum and a
    count per person), so matching never recomputes them.

    :param ann_min_photos: above this many photos, candidates come from an approximate index of the
        templates (built in the background; exact matching until it is ready); 0: always exact.
    :param correction_level: see Corrections.level.
    """

    def __init__(self, dim: int = 128, capacity: int = 256, *, ann_min_photos: int = gallery_index.DEFAULT_MIN_PHOTOS,
                 correction_level: float | None = None):
        self.dim = dim
        self.ann_min_photos = ann_min_photos
        self.correction_level = correction_level
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._people = np.zeros(capacity, dtype=np.int64)
        self._photos = np.zeros(capacity, dtype=np.int64)
        self._row_of_photo: dict[int, int] = {}
        self._size = 0
        self._lock = threading.Lock()
        self._ann = gallery_index.IndexKeeper()
        self._clear_templates()
        self._corrections: dict[int, tuple[int, NDArray[np.float32]]] = {}
        self._negatives: Corrections | None = None  # _corrections as arrays, made on the next match

    def __len__(self) -> int:
        return self._size

    def fresh(self, dim: int | None = None, capacity: int = 256) -> "Gallery":
        """An empty gallery with this one's settings (for a rebuild that is swapped in whole)."""
        return Gallery(dim or self.dim, capacity, ann_min_photos=self.ann_min_photos,
                       correction_level=self.correction_level)

    @property
    def person_ids(self) -> set[int]:
        with self._lock:
            return set(self._people[: self._size].tolist())

    @property
    def correction_ids(self) -> set[int]:
        with self._lock:
            return set(self._corrections)

    @property
    def uses_index(self) -> bool:
        """Whether matching goes through the approximate index now."""
        return bool(self.ann_min_photos) and self._size > self.ann_min_photos and self._ann.index is not None

    # --- photos ---------------------------------------------------------------------

    def add(self, photo_id: int, person_id: int, embedding: NDArray[np.float32]) -> None:
        """Add (or replace) one photo's embedding, float32 [D]."""
        embedding = self._vector(embedding)
        with self._lock:
            row = self._row_of_photo.get(photo_id)
            if row is None:
                if self._size == len(self._vectors):
                    self._grow()
                row = self._size
                self._size += 1
                self._row_of_photo[photo_id] = row
            else:
                self._credit(int(self._people[row]), self._vectors[row], -1)
            self._vectors[row] = embedding
            self._people[row] = person_id
            self._photos[row] = photo_id
            self._credit(person_id, embedding, +1)

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
            self._credit(int(self._people[row]), self._vectors[row], -1)
            last = self._size - 1
            if row != last:
                self._vectors[row] = self._vectors[last]
                self._people[row] = self._people[last]
                self._photos[row] = self._photos[last]
                self._row_of_photo[int(self._photos[row])] = row
            self._size = last
            return True

    def remove_person(self, person_id: int) -> int:
        """Drop all photos and corrections of a person; returns how many photos were removed."""
        with self._lock:
            photos = self._photos[: self._size][self._people[: self._size] == person_id].tolist()
            self._set_corrections({cid: c for cid, c in self._corrections.items() if c[0] != person_id})
        return sum(self.remove_photo(int(photo)) for photo in photos)

    def clear(self) -> None:
        """Drop every photo (corrections stay)."""
        with self._lock:
            self._row_of_photo.clear()
            self._size = 0
            self._clear_templates()
            self._ann.index = None

    # --- corrections ----------------------------------------------------------------

    def add_correction(self, correction_id: int, person_id: int, embedding: NDArray[np.float32]) -> None:
        """Add (or replace) a face marked "not person_id": its embedding, float32 [D]."""
        embedding = self._vector(embedding)
        with self._lock:
            self._set_corrections({**self._corrections, correction_id: (person_id, embedding)})

    def remove_correction(self, correction_id: int) -> bool:
        """Drop one correction (undo); False when it was not there."""
        with self._lock:
            if correction_id not in self._corrections:
                return False
            self._set_corrections({cid: c for cid, c in self._corrections.items() if cid != correction_id})
            return True

    def set_corrections(self, items: Iterable[tuple[int, int, NDArray[np.float32]]]) -> None:
        """Replace every correction with these (correction_id, person_id, embedding) triples, in one step."""
        corrections = {correction_id: (person_id, self._vector(embedding))
                       for correction_id, person_id, embedding in items}
        with self._lock:
            self._set_corrections(corrections)

    # --- matching -------------------------------------------------------------------

    def match(self, probes: NDArray[np.float32], threshold: float | OpenSetRule) -> list[Match]:
        """Open-set match of float32 [P, D] unit vectors, corrections applied; see `match`."""
        probes = np.asarray(probes, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            if len(probes) == 0:
                return []
            if self._size == 0:
                return [Match(None, 0.0, 0.0) for _ in range(len(probes))]
            n = self._n_people
            decider = _Decider(self._col_people[:n], self._centres[:n], self._counts[:n], threshold,
                               self._corrections_now(), self._photos_of)
            large = bool(self.ann_min_photos) and self._size > self.ann_min_photos
            if large and self._ann.index is not None:
                results = decider.among(probes, self._ann.candidates(probes, decider.depth, self._col_of_person))
            else:
                results = decider.exact(probes)
            if large:
                self._ann.start_if_due(self.build_index)
        return results

    def build_index(self) -> gallery_index.TemplateIndex | None:
        """Build an index of the templates as they are now and swap it in; None when hnswlib is missing.

        Slow for big galleries (bench/gallery_index.py); runs outside the lock, so matching goes on meanwhile.
        """
        with self._lock:
            n = self._n_people
            people, centres, version = self._col_people[:n].copy(), self._centres[:n].copy(), self._ann.version
        index = self._ann.build(people, centres, version)
        if index is not None:
            with self._lock:
                self._ann.install(index)
        return index

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for a background index build, if one runs; True when none runs any more."""
        return self._ann.wait(timeout)

    # --- inside the lock ------------------------------------------------------------

    def _vector(self, embedding: NDArray[np.float32]) -> NDArray[np.float32]:
        embedding = np.array(embedding, dtype=np.float32).reshape(-1)
        if embedding.shape[0] != self.dim:
            raise ValueError(f"expected a {self.dim}-D embedding, got {embedding.shape[0]}-D")
        return embedding

    def _photos_of(self, person_id: int) -> NDArray[np.float32]:
        return self._vectors[: self._size][self._people[: self._size] == person_id]

    def _set_corrections(self, corrections: dict[int, tuple[int, NDArray[np.float32]]]) -> None:
        self._corrections = corrections
        self._negatives = None

    def _corrections_now(self) -> Corrections | None:
        if not self._corrections:
            return None
        if self._negatives is None or self._negatives.level != self.correction_level:
            people = np.array([person for person, _ in self._corrections.values()], dtype=np.int64)
            vectors = np.stack([vector for _, vector in self._corrections.values()])
            self._negatives = Corrections(vectors, people, self.correction_level)
        return self._negatives

    def _clear_templates(self, capacity: int = 64) -> None:
        self._col_of_person: dict[int, int] = {}
        self._col_people = np.zeros(capacity, dtype=np.int64)
        self._sums = np.zeros((capacity, self.dim), dtype=np.float64)
        self._counts = np.zeros(capacity, dtype=np.int64)
        self._centres = np.zeros((capacity, self.dim), dtype=np.float32)
        self._n_people = 0

    def _credit(self, person_id: int, vector: NDArray[np.float32], sign: int) -> None:
        """Add (sign +1) or take away (-1) one photo's vector in its person's template."""
        column = self._col_of_person.get(person_id)
        if column is None:
            if self._n_people == len(self._col_people):
                self._grow(("_col_people", "_sums", "_counts", "_centres"))
            column = self._n_people
            self._n_people += 1
            self._col_of_person[person_id] = column
            self._col_people[column], self._sums[column], self._counts[column] = person_id, 0.0, 0
        self._sums[column] += sign * vector.astype(np.float64)
        self._counts[column] += sign
        if self._counts[column] <= 0:
            self._drop_column(column)
        else:
            norm = max(float(np.linalg.norm(self._sums[column])), 1e-12)
            self._centres[column] = self._sums[column] / norm
        self._ann.note(person_id)

    def _drop_column(self, column: int) -> None:
        last = self._n_people - 1
        del self._col_of_person[int(self._col_people[column])]
        if column != last:
            for array in (self._col_people, self._sums, self._counts, self._centres):
                array[column] = array[last]
            self._col_of_person[int(self._col_people[column])] = column
        self._n_people = last

    def _grow(self, names: tuple[str, ...] = ("_vectors", "_people", "_photos")) -> None:
        """Double the buffers of these attributes (rows by default)."""
        for name in names:
            old = getattr(self, name)
            new = np.zeros((2 * len(old),) + old.shape[1:], dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
