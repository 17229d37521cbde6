"""Verification and identification metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from model.training import metrics


def test_threshold_at_far_lets_through_at_most_the_allowed_impostors():
    impostor = np.linspace(0, 1, 1000)
    for far in (0.1, 0.01, 0.001):
        t = metrics.threshold_at_far(impostor, far)
        assert np.mean(impostor >= t) <= far
        assert np.mean(impostor >= t) >= far - 2 / 1000


def test_tar_at_far():
    genuine = np.array([0.9, 0.8, 0.7, 0.2])
    impostor = np.array([0.1, 0.2, 0.3, 0.75])
    assert metrics.tar_at_far(genuine, impostor, 0.25) == pytest.approx(0.75)  # one impostor may pass: beat 0.3
    assert metrics.tar_at_far(genuine, impostor, 0.0) == pytest.approx(0.5)  # must beat 0.75


def test_roc_curve_ends_at_one_one():
    far, tar, thresholds = metrics.roc_curve(np.array([0.9, 0.6]), np.array([0.5, 0.7]))
    assert far[-1] == 1 and tar[-1] == 1
    assert np.all(np.diff(thresholds) < 0)


def test_kfold_accuracy_on_separable_scores_is_perfect():
    rng = np.random.default_rng(1)
    same = np.tile([True] * 5 + [False] * 5, 10)
    scores = np.where(same, rng.uniform(0.6, 1, same.size), rng.uniform(0, 0.4, same.size))
    folds = np.repeat(np.arange(10), 10)
    assert metrics.kfold_accuracy(scores, same, folds) == [1.0] * 10


def test_dir_at_fpir_counts_only_correct_and_confident():
    mated = np.array([0.9, 0.8, 0.95, 0.4])
    correct = np.array([True, True, False, True])
    non_mated = np.linspace(0, 0.85, 100)
    # At FPIR 1% the threshold sits just above the highest non-mated score (0.85).
    assert metrics.dir_at_fpir(mated, correct, non_mated, 0.01) == pytest.approx(0.25)
