"""Open-set matching on synthetic unit vectors: no model needed."""

from __future__ import annotations

import numpy as np
import pytest

from model.gallery import Gallery, OpenSetRule, match, templates


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_best_person_margin_and_unknown():
    vectors = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0, 1, 0)])
    people = np.array([7, 7, 9])
    probes = np.stack([unit(1, 0.05, 0), unit(0, 0, 1), unit(0.1, 1, 0)])
    results = match(vectors, people, probes, threshold=0.8)
    template_7 = unit(*(vectors[0] + vectors[1]))  # a person is matched by the normalised mean of their photos
    assert results[0].person_id == 7
    assert results[0].similarity == pytest.approx(float(probes[0] @ template_7), abs=1e-6)
    assert results[0].margin == pytest.approx(results[0].similarity - float(probes[0] @ vectors[2]), abs=1e-6)
    assert results[1].person_id is None and results[1].candidate_id is not None
    assert results[2].person_id == 9


def test_margin_ignores_other_photos_of_the_same_person():
    vectors = np.stack([unit(1, 0), unit(0.99, 0.14), unit(0, 1)])
    results = match(vectors, np.array([1, 1, 2]), np.stack([unit(1, 0.02)]), threshold=0.5)
    assert results[0].margin > 0.9  # second-best *person* is 2, not photo 2 of person 1


def test_single_person_margin_equals_similarity_and_empty_cases():
    one = match(np.stack([unit(1, 0)]), np.array([3]), np.stack([unit(1, 0)]), threshold=0.5)[0]
    assert one.margin == pytest.approx(one.similarity)
    assert match(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), np.stack([unit(1, 0)]), 0.5)[0].person_id is None
    assert match(np.stack([unit(1, 0)]), np.array([3]), np.zeros((0, 2), np.float32), 0.5) == []


def test_add_remove_and_growth_keep_rows_consistent():
    rng = np.random.default_rng(0)
    gallery = Gallery(dim=8, capacity=2)
    vectors = {}
    for photo_id in range(50):
        v = rng.normal(size=8).astype(np.float32)
        vectors[photo_id] = v / np.linalg.norm(v)
        gallery.add(photo_id, person_id=photo_id % 5, embedding=vectors[photo_id])
    assert len(gallery) == 50
    for photo_id in range(0, 50, 3):
        assert gallery.remove_photo(photo_id)
        del vectors[photo_id]
    assert not gallery.remove_photo(0)
    assert len(gallery) == len(vectors)
    # The rows left are exactly the photos left: each person's template is the mean of their remaining photos,
    # and it matches itself under that person.
    for person in range(5):
        mean = np.mean([v for p, v in vectors.items() if p % 5 == person], axis=0)
        result = gallery.match((mean / np.linalg.norm(mean))[None, :].astype(np.float32), threshold=0.999)[0]
        assert result.person_id == person
        assert result.similarity == pytest.approx(1.0, abs=1e-5)
    removed = gallery.remove_person(2)
    assert removed == sum(1 for p in vectors if p % 5 == 2)
    assert 2 not in gallery.person_ids


def test_wrong_dimension_is_refused():
    with pytest.raises(ValueError, match="8-D"):
        Gallery(dim=8).add(1, 1, np.ones(4, np.float32))


def test_templates_are_the_normalised_means():
    vectors = np.stack([unit(1, 0), unit(0, 1), unit(1, 1)])
    people, centres, counts = templates(vectors, np.array([4, 4, 2]))
    assert people.tolist() == [2, 4] and counts.tolist() == [1, 2]
    assert np.allclose(centres, np.stack([unit(1, 1), unit(1, 1)]), atol=1e-6)


def test_the_open_set_rule_is_stricter_for_few_photos_and_many_people():
    rule = OpenSetRule(base=(0.80, 0.78, 0.76), per_log_people=0.02)
    assert rule.thresholds(np.array([1])) == pytest.approx([0.80])  # one person: no extra
    ten = rule.thresholds(np.array([1, 2, 3, 9] + [3] * 6))
    assert ten[0] == pytest.approx(0.80 + 0.02 * np.log(10)) and ten[3] == pytest.approx(0.76 + 0.02 * np.log(10))
    # A probe that is named in a one-person gallery is not named once 100 people are enrolled.
    probe = unit(1, 0.6)
    alone = match(np.stack([unit(1, 0)]), np.array([1]), probe[None, :], rule)[0]
    crowd_vectors = np.concatenate([[unit(1, 0)], [unit(-1, k / 50) for k in range(99)]]).astype(np.float32)
    crowd = match(crowd_vectors, np.arange(100), probe[None, :], rule)[0]
    assert alone.similarity == pytest.approx(crowd.similarity)
    assert alone.person_id == 1 and crowd.person_id is None
