"""The open-set rule's dependence on the gallery's size, and its calibration by simulation."""

import numpy as np
import pytest

from model.open_set import OpenSetRule
from model.training import openset

SIZES = (1, 10, 100)
OFFSETS = ((0.0, 0.04, 0.05), (0.0, 0.02, 0.03))  # one photo, two or more


def test_offsets_are_straight_in_log_people_between_calibrated_sizes_and_sloped_past_them():
    rule = OpenSetRule(base=(0.80, 0.76), per_log_people=0.01, sizes=SIZES, offsets=OFFSETS)
    assert rule.people_offsets(1) == pytest.approx([0.0, 0.0])
    assert rule.people_offsets(10) == pytest.approx([0.04, 0.02])
    assert rule.people_offsets(int(round(10 ** 1.5))) == pytest.approx([0.045, 0.025], abs=1e-4)  # halfway in ln
    assert rule.people_offsets(1000) == pytest.approx([0.05 + 0.01 * np.log(10), 0.03 + 0.01 * np.log(10)])
    assert rule.thresholds(np.array([1, 5, 2]), people=10) == pytest.approx([0.84, 0.78, 0.78])


def test_a_sidecar_without_offsets_keeps_the_log_rule_and_one_with_them_reads_back():
    old = OpenSetRule.from_info({"base": [0.8, 0.7], "per_log_people": 0.02})
    assert old.thresholds(np.array([1, 2]), people=50) == pytest.approx(np.array([0.8, 0.7]) + 0.02 * np.log(50))
    rule = OpenSetRule(base=(0.80, 0.76), per_log_people=0.01, sizes=SIZES, offsets=OFFSETS)
    assert OpenSetRule.from_info(rule.info()) == rule


def clustered(people: int, photos: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    rows = np.repeat(centres, photos, axis=0) + 0.9 * rng.normal(size=(people * photos, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32), np.repeat(np.arange(people), photos)


def test_calibration_holds_strangers_to_the_target_at_every_size(monkeypatch):
    monkeypatch.setattr(openset, "DRAWS", 40)
    monkeypatch.setattr(openset, "PROBES_PER_DRAW", 200)
    monkeypatch.setattr(openset, "CALIBRATION_SIZES", (1, 3, 10, 30))
    embeddings, labels = clustered(people=80, photos=8, dim=24, seed=0)
    rule, table = openset.calibrate(embeddings, labels, fpir=0.02)
    assert rule.sizes == (1, 3, 10, 30) and len(rule.offsets) == len(rule.base)
    for row in rule.offsets:
        assert row[0] == 0.0 and list(row) == sorted(row) and row[-1] > 0.02  # stricter with more people
    assert rule.base[0] == pytest.approx(table[1][1], abs=1e-4)
    for people in (1, 3, 10, 30):
        found = openset.simulate_rule(embeddings, labels, rule, people, 3, seed=5)
        # Calibrated on other draws.
        assert found["fpir"] <= 0.035, (people, found)
        assert found["dir"] > 0.5, (people, found)


def test_extra_raises_every_threshold_of_the_rule_and_not_the_table(monkeypatch):
    monkeypatch.setattr(openset, "DRAWS", 20)
    monkeypatch.setattr(openset, "PROBES_PER_DRAW", 100)
    monkeypatch.setattr(openset, "CALIBRATION_SIZES", (1, 3, 10))
    embeddings, labels = clustered(people=40, photos=8, dim=24, seed=2)
    plain, plain_table = openset.calibrate(embeddings, labels, fpir=0.02)
    raised, raised_table = openset.calibrate(embeddings, labels, fpir=0.02, extra=0.004)
    assert raised_table == plain_table
    for people in (1, 2, 3, 10, 40):
        counts = np.array([1, 2, 3, 4, 5])
        assert raised.thresholds(counts, people) - plain.thresholds(counts, people) == pytest.approx([0.004] * 5)


def test_a_template_like_the_population_mean_face_must_reach_more():
    mean = np.array([0.6, 0.0, 0.0])
    rule = OpenSetRule(base=(0.7,), per_log_people=0.0, population=tuple(mean), population_weight=0.5)
    crowd_like, apart = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    got = rule.thresholds(np.array([1, 1]), templates=np.stack([crowd_like, apart]))
    assert got == pytest.approx([0.7 + 0.5 * (0.6 - 0.36), 0.7 + 0.5 * (0.0 - 0.36)])
    assert rule.thresholds(np.array([1])) == pytest.approx([0.7])  # no template: a typical face's
    assert OpenSetRule.from_info(rule.info()) == rule
    assert OpenSetRule(base=(0.7,), per_log_people=0.0).thresholds(np.array([1]), templates=apart[None]) == [0.7]


def hub_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """People sharing one common face direction to different degrees: those with most of it draw strangers."""
    rng = np.random.default_rng(seed)
    people, photos, dim = 120, 6, 16
    loading = rng.uniform(0.5, 2.5, size=people)
    centres = rng.normal(size=(people, dim))
    centres[:, 0] = loading * 3
    rows = np.repeat(centres, photos, axis=0) + 1.0 * rng.normal(size=(people * photos, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32), np.repeat(np.arange(people), photos), loading


def test_the_population_term_evens_out_how_often_each_person_is_given_to_strangers(monkeypatch):
    from model.gallery import templates

    monkeypatch.setattr(openset, "DRAWS", 40)
    monkeypatch.setattr(openset, "PROBES_PER_DRAW", 200)
    monkeypatch.setattr(openset, "CALIBRATION_SIZES", (1, 3))
    embeddings, labels, loading = hub_data(seed=1)
    worst = {}
    for weight in (0.0, 1.0):
        rule, _ = openset.calibrate(embeddings, labels, fpir=0.02, population_weight=weight)
        assert np.asarray(rule.population) == pytest.approx(embeddings.mean(axis=0), abs=1e-4) or weight == 0
        enrolled = np.concatenate([np.flatnonzero(labels == p)[:3] for p in np.unique(labels)])
        ids, centres, counts = templates(embeddings[enrolled], labels[enrolled])
        limits = rule.thresholds(counts, people=1, templates=centres)
        # Each person alone in the gallery: the share of everyone else's photos given their name.
        shares = [((embeddings[labels != p] @ centres[i]) >= limits[i]).mean() for i, p in enumerate(ids)]
        worst[weight] = float(np.max(shares))
    assert worst[1.0] < 0.7 * worst[0.0], worst
