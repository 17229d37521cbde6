"""An approximate nearest-neighbour index over person templates, for galleries too large to scan per face.

The gallery (model.gallery) asks it for a short list of candidate people and
scores those exactly, so similarities stay exact and only the choice of
candidates is approximate. The index is a snapshot: people whose template
changed after it was taken are scored exactly on top of its candidates, until
the next snapshot is built (on a background thread, never on the frame path)
and swapped in with one assignment.

hnswlib (HNSW graphs, inner-product space: templates are unit vectors) does the
searching. It is imported when the first index is built, so a gallery below the
size limit never needs it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

# Galleries with more photos than this are matched through an index. bench/gallery_index.py, 5 photos a person,
# one face a call on 2 busy cores: a numpy scan of the templates took 1.2 ms at 100,000 photos (the index 2.2 ms),
# 5.8 ms at 300,000 (the index 2.5 ms). FACES_ANN_MIN_PHOTOS overrides.
DEFAULT_MIN_PHOTOS = 200_000
# How many people the index proposes per face before exact scoring; the true best person is among them far more
# often than among the first few (recall of the exact top-1, bench/gallery_index.py).
CANDIDATES = 16
# HNSW graph degree and build-time beam width (hnswlib's M, ef_construction). The search beam (ef) grows with
# the index: on crowded synthetic templates (bench/gallery_index.py) M 32 / ef 128 found the exact top-1 of 100%
# of enrolled faces among 20,000 people, but of 90.7% among 200,000, where ef 384 found 98.7%.
GRAPH_DEGREE = 32
BUILD_BEAM = 100
SEARCH_BEAM = 128
SEARCH_BEAM_PER_PERSON = 1 / 500
MAX_SEARCH_BEAM = 512
# A new snapshot is built once this share of the people (at least REBUILD_MIN_CHANGED) changed since the last.
REBUILD_SHARE = 0.02
REBUILD_MIN_CHANGED = 200


class IndexUnavailable(RuntimeError):
    """hnswlib is not installed; the gallery stays on exact matching."""


class TemplateIndex:
    """An HNSW index of person templates as they were at gallery change `version`.

    :param people: int64 [N], the person of each template.
    :param centres: float32 [N, D] unit rows, the templates.
    :param version: the gallery's change counter when the snapshot was taken.
    :param threads: build threads (default: half the cores, so live video keeps the others).
    """

    def __init__(self, people: NDArray[np.int64], centres: NDArray[np.float32], version: int, *,
                 threads: int | None = None):
        try:
            import hnswlib
        except ImportError:
            raise IndexUnavailable("hnswlib is not installed (pip install hnswlib), so matching stays exact") from None
        started = time.perf_counter()
        self.people = np.asarray(people, dtype=np.int64).copy()
        self.version = version
        self._index = hnswlib.Index(space="ip", dim=int(centres.shape[1]))
        self._index.init_index(max_elements=max(1, len(self.people)), ef_construction=BUILD_BEAM, M=GRAPH_DEGREE)
        if len(self.people):
            # Labels are positions in `people`, so any person id (negative too) works.
            self._index.add_items(np.ascontiguousarray(centres, dtype=np.float32), np.arange(len(self.people)),
                                  num_threads=threads or max(1, (os.cpu_count() or 2) // 2))
        self.beam = int(min(MAX_SEARCH_BEAM, max(SEARCH_BEAM, SEARCH_BEAM_PER_PERSON * len(self.people))))
        self.build_s = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.people)

    def candidates(self, probes: NDArray[np.float32], k: int = CANDIDATES) -> NDArray[np.int64]:
        """The (about) k people whose templates are nearest each probe, by person id.

        :param probes: float32 [P, D] unit vectors.
        :return: int64 [P, min(k, len(self))], nearest first (approximately).
        """
        k = min(k, len(self.people))
        if k == 0 or len(probes) == 0:
            return np.zeros((len(probes), 0), dtype=np.int64)
        self._index.set_ef(max(self.beam, k))
        labels, _ = self._index.knn_query(np.ascontiguousarray(probes, dtype=np.float32), k=k, num_threads=1)
        return self.people[labels.astype(np.int64)]


class IndexKeeper:
    """A gallery's current index, which people changed since it was taken, and the background build.

    The gallery calls these under its own lock, except `build`, which runs outside it.
    """

    def __init__(self) -> None:
        self.index: TemplateIndex | None = None
        self.version = 0  # counts template changes, never reset; an index knows the one it was taken at
        self.changed: dict[int, int] = {}  # person id -> version of their last change
        self.failed = False  # hnswlib is missing: never try again
        self._builder: threading.Thread | None = None

    def note(self, person_id: int) -> None:
        """A person's template changed."""
        self.version += 1
        self.changed[person_id] = self.version

    def candidates(self, probes: NDArray[np.float32], depth: int, column_of: dict[int, int]) -> list[NDArray[np.int64]]:
        """Template columns to score for each probe: the index's nearest people, and everyone changed since.

        :param column_of: {person id: template column} of the people enrolled now.
        """
        proposed = self.index.candidates(probes, max(CANDIDATES, depth))
        changed = [column_of[p] for p, v in self.changed.items() if v > self.index.version and p in column_of]
        out = []
        for people in proposed.tolist():
            columns = {column_of[p] for p in people if p in column_of}
            out.append(np.fromiter(columns.union(changed), dtype=np.int64))
        return out

    def build(self, people: NDArray[np.int64], centres: NDArray[np.float32], version: int) -> TemplateIndex | None:
        """An index of this snapshot (slow: call outside the gallery's lock); None when hnswlib is missing."""
        try:
            index = TemplateIndex(people, centres, version)
        except IndexUnavailable as exc:
            self.failed = True
            log.warning("%s", exc)
            return None
        log.info("gallery index of %d people built in %.1f s", len(index), index.build_s)
        return index

    def install(self, index: TemplateIndex) -> None:
        """Use a newly built index, unless a newer one is already in place (one assignment)."""
        if self.index is None or index.version > self.index.version:
            self.index = index
            self.changed = {p: v for p, v in self.changed.items() if v > index.version}

    def start_if_due(self, build: Callable[[], object]) -> None:
        """Run `build` on a background thread when there is no index yet or many people changed since the last."""
        if self.failed or (self._builder is not None and self._builder.is_alive()):
            return
        changed = 0 if self.index is None else sum(1 for v in self.changed.values() if v > self.index.version)
        if self.index is None or changed >= max(REBUILD_MIN_CHANGED, REBUILD_SHARE * len(self.index)):
            self._builder = threading.Thread(target=build, name="gallery-index", daemon=True)
            self._builder.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background build, if one runs; True when none runs any more."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
        return builder is None or not builder.is_alive()
