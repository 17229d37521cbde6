"""Open-set matching on synthetic unit vectors: no model needed."""

from __future__ import annotations

import numpy as np
import pytest

from model.gallery import Corrections, Gallery, match, templates
from model.open_set import OpenSetRule


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


# --- corrections: "not this person" changes the next match ------------------------------------------------------

# Ada's photos, a look-alike once taken for her (the corrected face) and another photo of that look-alike.
ADA = [unit(1, 0, 0, 0), unit(1, 0.1, 0, 0)]
LOOKALIKE = unit(1, 0, 0.3, 0)
LOOKALIKE_AGAIN = unit(1, 0, 0.35, 0.05)
ADA_AGAIN = unit(1, 0.05, -0.1, 0)  # a new photo of Ada: nearer her photos than the look-alike
THRESHOLD = 0.9


def corrected(*faces: np.ndarray, person: int = 1, level: float | None = None) -> Corrections:
    return Corrections(np.stack(faces), np.full(len(faces), person, dtype=np.int64), level)


def test_a_correction_keeps_the_lookalike_from_the_name_and_not_the_person():
    vectors, people = np.stack(ADA), np.array([1, 1])
    probes = np.stack([LOOKALIKE, LOOKALIKE_AGAIN, ADA_AGAIN, ADA[0]])
    before = match(vectors, people, probes, THRESHOLD)
    assert [m.person_id for m in before] == [1, 1, 1, 1]  # the look-alike is taken for Ada until corrected
    after = match(vectors, people, probes, THRESHOLD, corrections=corrected(LOOKALIKE))
    assert [m.person_id for m in after] == [None, None, 1, 1]
    assert [m.corrected_id for m in after] == [1, 1, None, None]
    assert after[2] == before[2] and after[3] == before[3]  # Ada's own faces: the very same decision


def test_a_corrected_person_is_passed_over_for_the_next_one_under_the_same_rule():
    bob = unit(1, -0.5, 0.3, 0)  # Bob looks like the look-alike too, a little less than Ada does
    vectors, people = np.stack([*ADA, bob]), np.array([1, 1, 2])
    (plain,) = match(vectors, people, LOOKALIKE_AGAIN[None, :], 0.5)
    (fixed,) = match(vectors, people, LOOKALIKE_AGAIN[None, :], 0.5, corrections=corrected(LOOKALIKE))
    assert plain.person_id == 1 and fixed.person_id == 2 and fixed.corrected_id == 1
    assert fixed.similarity == pytest.approx(float(LOOKALIKE_AGAIN @ bob), abs=1e-6)
    assert fixed.margin == pytest.approx(fixed.similarity)  # nobody else is left to compare with
    # Bob is named only when he clears the threshold himself: at 0.999 he does not.
    (strict,) = match(vectors, people, LOOKALIKE_AGAIN[None, :], 0.999, corrections=corrected(LOOKALIKE, level=0.9))
    assert strict.person_id is None and strict.candidate_id == 2


def test_a_correction_far_from_the_face_or_below_the_level_changes_nothing():
    vectors, people = np.stack(ADA), np.array([1, 1])
    probes = np.stack([LOOKALIKE_AGAIN])
    far = match(vectors, people, probes, THRESHOLD, corrections=corrected(unit(0, 0, 0, 1)))
    assert far == match(vectors, people, probes, THRESHOLD)
    strict_level = match(vectors, people, probes, THRESHOLD, corrections=corrected(LOOKALIKE, level=0.9999))
    assert strict_level[0].person_id == 1
    # A correction filed against someone else does not touch Ada.
    other = match(vectors, people, probes, THRESHOLD, corrections=corrected(LOOKALIKE, person=5))
    assert other[0].person_id == 1


def test_the_gallery_applies_corrections_at_once_and_undo_restores():
    gallery = Gallery(dim=4)
    gallery.add_many([(10, 1, ADA[0]), (11, 1, ADA[1])])
    probes = np.stack([LOOKALIKE_AGAIN, ADA_AGAIN])
    assert [m.person_id for m in gallery.match(probes, THRESHOLD)] == [1, 1]
    gallery.add_correction(7, 1, LOOKALIKE)
    assert gallery.correction_ids == {7}
    assert [m.person_id for m in gallery.match(probes, THRESHOLD)] == [None, 1]
    assert gallery.remove_correction(7) and not gallery.remove_correction(7)
    assert [m.person_id for m in gallery.match(probes, THRESHOLD)] == [1, 1]
    gallery.set_corrections([(8, 1, LOOKALIKE), (9, 3, ADA[0])])
    assert gallery.correction_ids == {8, 9} and gallery.match(probes, THRESHOLD)[0].person_id is None
    gallery.remove_person(1)  # a deleted person's corrections go with them
    assert gallery.correction_ids == {9}
    with pytest.raises(ValueError, match="4-D"):
        gallery.add_correction(1, 1, np.ones(3, np.float32))


def test_the_gallery_decides_like_the_matching_function_after_any_changes():
    rng = np.random.default_rng(3)
    rule = OpenSetRule(base=(0.5, 0.45, 0.4), per_log_people=0.01)
    gallery = Gallery(dim=16, capacity=4)
    photos = {}
    for photo_id in range(120):
        v = rng.normal(size=16).astype(np.float32)
        photos[photo_id] = (photo_id % 13, v / np.linalg.norm(v))
        gallery.add(photo_id, *photos[photo_id])
    for photo_id in range(0, 120, 7):  # removals, and photos moved to another person
        gallery.remove_photo(photo_id)
        del photos[photo_id]
    for photo_id in range(1, 120, 11):
        if photo_id in photos:
            photos[photo_id] = (99, photos[photo_id][1])
            gallery.add(photo_id, *photos[photo_id])
    people = np.array([p for p, _ in photos.values()])
    vectors = np.stack([v for _, v in photos.values()])
    # Faces marked "not" the person they are nearest to, and probes like them (or not like anything).
    marked = rng.normal(size=(12, 16)).astype(np.float32)
    marked /= np.linalg.norm(marked, axis=1, keepdims=True)
    faces = [(c, m.candidate_id, v) for c, (m, v) in enumerate(zip(match(vectors, people, marked, -1.0), marked))]
    gallery.set_corrections(faces)
    near = marked + 0.1 * rng.normal(size=marked.shape)
    probes = np.concatenate([rng.normal(size=(40, 16)), near]).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    negatives = Corrections(np.stack([v for _, _, v in faces]), np.array([p for _, p, _ in faces]))
    expected = match(vectors, people, probes, rule, corrections=negatives)
    assert any(m.corrected_id is not None for m in expected)  # corrections took part
    for mine, theirs in zip(gallery.match(probes, rule), expected):
        assert (mine.person_id, mine.candidate_id, mine.corrected_id) == (
            theirs.person_id, theirs.candidate_id, theirs.corrected_id)
        assert mine.similarity == pytest.approx(theirs.similarity, abs=1e-5)
        assert mine.margin == pytest.approx(theirs.margin, abs=1e-5)
