"""The head a training run starts from, and verification of a head on a FeatureSet.

Shared by `train`, `finetune` and `reports`, so they need not import each other.
Plain numpy; no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from model.head import EMBEDDING_DIM, Head
from model.training import metrics
from model.training.datasets import FeatureSet

REPORT_FARS = (1e-2, 1e-3, 1e-4)


def initial_head(backbone: str, dim: int, seed: int = 0) -> Head:
    """The starting head: the identity for 128-D features, else a random Gaussian
    projection scaled by 1/sqrt(128), which roughly keeps cosine similarities."""
    if dim == EMBEDDING_DIM:
        return Head.identity(backbone)
    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((dim, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)).astype(np.float32)
    return Head(kernel, backbone, info={"trained": False, "init": "random-projection"})


def evaluate_head(head: Head, features: FeatureSet, fars: tuple[float, ...] = REPORT_FARS) -> dict:
    """Verification on all pairs of real photos: TAR and threshold at each FAR, plus pair counts."""
    real = features.originals()
    genuine, impostor = metrics.pair_scores(head(real.features), real.labels)
    result = metrics.verification_at_fars(genuine, impostor, fars)
    result.update(genuine_pairs=int(len(genuine)), impostor_pairs=int(len(impostor)))
    return result
