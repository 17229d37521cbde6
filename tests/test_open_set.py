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
