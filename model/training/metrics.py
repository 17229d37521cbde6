"""Verification and open-set identification metrics on similarity scores (plain numpy).

Scores are similarities: larger means "more likely the same person".
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def threshold_at_far(impostor: NDArray[np.float64], far: float) -> float:
    """The lowest threshold whose false-accept rate (impostor scores >= t) is at most `far`."""
    impostor = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    if len(impostor) == 0:
        return -np.inf
    allowed = int(np.floor(far * len(impostor)))  # impostors that may pass
    if allowed >= len(impostor):
        return float(impostor[-1])
    # Accept strictly above the (allowed+1)-th highest impostor score.
    return float(np.nextafter(impostor[allowed], np.inf))


def tar_at_far(genuine: NDArray[np.float64], impostor: NDArray[np.float64], far: float) -> float:
    """True-accept rate at the threshold given by `threshold_at_far`."""
    threshold = threshold_at_far(impostor, far)
    return float(np.mean(np.asarray(genuine) >= threshold))


def roc_curve(genuine: NDArray[np.float64], impostor: NDArray[np.float64]) -> tuple[NDArray, NDArray, NDArray]:
    """(far, tar, thresholds) for every distinct score, thresholds descending."""
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_each = np.r_[np.diff(scores) != 0, True]
    tar = np.cumsum(labels)[last_of_each] / max(len(genuine), 1)
    far = np.cumsum(1 - labels)[last_of_each] / max(len(impostor), 1)
    return far, tar, scores[last_of_each]


def best_accuracy_threshold(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> float:
    """The threshold that maximises pair accuracy (same iff score >= t) on these pairs."""
    candidates = np.unique(scores)
    midpoints = np.r_[candidates[0] - 1e-6, (candidates[:-1] + candidates[1:]) / 2, candidates[-1] + 1e-6]
    accuracies = [np.mean((scores >= t) == same) for t in midpoints]
    return float(midpoints[int(np.argmax(accuracies))])


def kfold_accuracy(scores: NDArray[np.float64], same: NDArray[np.bool_], folds: NDArray[np.int64]) -> list[float]:
    """LFW protocol: for each fold, pick the threshold on the others and score this one."""
    accuracies = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_accuracy_threshold(scores[~test], same[~test])
        accuracies.append(float(np.mean((scores[test] >= threshold) == same[test])))
    return accuracies


def dir_at_fpir(
    mated_scores: NDArray[np.float64],
    mated_correct: NDArray[np.bool_],
    non_mated_scores: NDArray[np.float64],
    fpir: float,
) -> float:
    """Open-set detection-and-identification rate at a false-positive identification rate.

    :param mated_scores: best gallery similarity of each probe whose person is enrolled.
    :param mated_correct: whether that best match is the right person (rank 1).
    :param non_mated_scores: best gallery similarity of each probe whose person is not enrolled.
    """
    threshold = threshold_at_far(non_mated_scores, fpir)
    return float(np.mean(mated_correct & (mated_scores >= threshold)))


def pair_scores(
    embeddings: NDArray[np.float32], labels: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Cosine similarity of every pair of rows (i < j) of unit embeddings [N, D], split into
    (genuine: same label, impostor: different labels), float64. N = 1500 gives about 1.1M pairs."""
    labels = np.asarray(labels)
    sims = np.asarray(embeddings, dtype=np.float32) @ np.asarray(embeddings, dtype=np.float32).T
    left, right = np.triu_indices(len(labels), k=1)
    scores = sims[left, right].astype(np.float64)
    same = labels[left] == labels[right]
    return scores[same], scores[~same]


def verification_at_fars(
    genuine: NDArray[np.float64], impostor: NDArray[np.float64], fars: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
) -> dict[str, float]:
    """{'tar_at_far_<far>': ..., 'threshold_at_far_<far>': ...} for each FAR (keys like 'tar_at_far_1e-03').

    Same thresholds as `threshold_at_far`, found with a partial sort (fast enough to run every epoch).
    """
    impostor = np.asarray(impostor, dtype=np.float64)
    genuine = np.asarray(genuine, dtype=np.float64)
    result = {}
    for far in fars:
        allowed = int(np.floor(far * len(impostor)))
        if len(impostor) == 0:
            threshold = -np.inf
        elif allowed >= len(impostor):
            threshold = float(impostor.min())
        else:
            kth = -np.partition(-impostor, allowed)[allowed]  # the (allowed+1)-th highest score
            threshold = float(np.nextafter(kth, np.inf))
        result[f"tar_at_far_{far:.0e}"] = float(np.mean(genuine >= threshold)) if len(genuine) else 0.0
        result[f"threshold_at_far_{far:.0e}"] = threshold
    return result
