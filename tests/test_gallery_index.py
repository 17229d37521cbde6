"""The approximate index for large galleries: the same decisions as the exact scan, on synthetic clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from model import gallery_index
from model.gallery import Gallery, Match, match

pytest.importorskip("hnswlib", reason="hnswlib is in requirements.txt")

DIM = 128
THRESHOLD = 0.77


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def around(centres: np.ndarray, within: float, rng) -> np.ndarray:
    """A unit vector about `within` similar to each centre."""
    noise = unit_rows(rng.standard_normal(centres.shape))
    return unit_rows(centres + np.sqrt(1 - within**2) / within * noise)


@pytest.fixture(scope="module")
def clustered():
    """600 people x 5 photos (3,000 rows) around crowded centres, and probes: new photos of 100 of them."""
    rng = np.random.default_rng(7)
    shared = unit_rows(rng.standard_normal((1, DIM)))
    centres = unit_rows(0.6 * shared + 0.8 * unit_rows(rng.standard_normal((600, DIM))))
    people = np.repeat(np.arange(600), 5)
    vectors = around(centres[people], 0.85, rng)
    probes = around(centres[rng.integers(0, 600, 100)], 0.85, rng)
    return vectors, people, probes


def filled(vectors, people, **options) -> Gallery:
    gallery = Gallery(dim=DIM, capacity=len(vectors), **options)
    gallery.add_many(zip(range(len(vectors)), people.tolist(), vectors))
    return gallery


def test_the_index_finds_the_exact_top_person_with_exact_similarities(clustered):
    vectors, people, probes = clustered
    exact = match(vectors, people, probes, THRESHOLD)
    gallery = filled(vectors, people, ann_min_photos=1000)
    assert gallery.build_index() is not None and gallery.uses_index
    approximate = gallery.match(probes, THRESHOLD)
    assert [m.candidate_id for m in approximate] == [m.candidate_id for m in exact]
    assert [m.person_id for m in approximate] == [m.person_id for m in exact]
    for mine, theirs in zip(approximate, exact):  # candidates are re-scored exactly
        assert mine.similarity == pytest.approx(theirs.similarity, abs=1e-5)
        # The runner-up may be one the index did not propose: then the margin is larger, never smaller.
        assert mine.margin >= theirs.margin - 1e-5
    same_margin = [abs(mine.margin - theirs.margin) < 1e-5 for mine, theirs in zip(approximate, exact)]
    assert np.mean(same_margin) >= 0.8


def test_below_the_size_the_exact_path_is_used_and_no_index_is_built(clustered):
    vectors, people, probes = clustered
    gallery = filled(vectors, people, ann_min_photos=len(vectors))  # not more photos than the limit
    gallery.match(probes[:3], THRESHOLD)
    assert gallery.wait_for_index(5) and not gallery.uses_index and gallery._ann.index is None
    never = filled(vectors[:50], people[:50], ann_min_photos=0)  # 0: always exact
    never.match(probes[:1], THRESHOLD)
    assert never._ann.index is None


def test_a_large_gallery_builds_its_index_in_the_background_then_uses_it(clustered):
    vectors, people, probes = clustered
    gallery = filled(vectors, people, ann_min_photos=1000)
    first = gallery.match(probes[:5], THRESHOLD)  # exact meanwhile; the build starts on a thread
    assert gallery.wait_for_index(60) and gallery.uses_index
    assert [m.candidate_id for m in gallery.match(probes[:5], THRESHOLD)] == [m.candidate_id for m in first]


def test_people_changed_after_the_index_was_built_are_scored_exactly(clustered):
    vectors, people, probes = clustered
    gallery = filled(vectors, people, ann_min_photos=1000)
    gallery.build_index()
    newcomer = probes[0]
    gallery.add(10_000, 777, newcomer)  # enrolled after the snapshot: not in the index
    (found,) = gallery.match(newcomer[None, :], THRESHOLD)
    assert found.person_id == 777 and found.similarity == pytest.approx(1.0, abs=1e-5)
    best = gallery.match(probes[1:2], THRESHOLD)[0].candidate_id
    gallery.remove_person(best)  # deleted after the snapshot: never proposed again
    assert gallery.match(probes[1:2], THRESHOLD)[0].candidate_id not in (best, None)
    assert gallery.uses_index


def test_an_empty_gallery_and_a_single_person_through_the_index():
    empty = Gallery(dim=DIM, ann_min_photos=1)
    assert empty.match(np.zeros((1, DIM), np.float32), THRESHOLD) == [Match(None, 0.0, 0.0)]
    index = empty.build_index()
    assert index is not None and len(index) == 0 and index.candidates(np.zeros((2, DIM), np.float32)).shape == (2, 0)
    rng = np.random.default_rng(1)
    centre = unit_rows(rng.standard_normal((1, DIM)))
    one = filled(around(np.repeat(centre, 3, axis=0), 0.9, rng), np.full(3, 42), ann_min_photos=1)
    one.build_index()
    assert one.uses_index
    (found,) = one.match(centre, THRESHOLD)
    assert found.person_id == 42 and found.margin == pytest.approx(found.similarity)


def test_the_index_proposes_people_by_id_nearest_first():
    rng = np.random.default_rng(2)
    centres = unit_rows(rng.standard_normal((50, DIM)))
    people = np.arange(1000, 1050, dtype=np.int64)
    index = gallery_index.TemplateIndex(people, centres, version=3)
    proposed = index.candidates(centres[:4], k=5)
    assert proposed.shape == (4, 5) and proposed[:, 0].tolist() == people[:4].tolist() and index.version == 3
