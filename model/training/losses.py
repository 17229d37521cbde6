"""Losses for the 128-unit head, in Keras 3 ops (TensorFlow backend). Imported only by the trainers.

All embeddings are unit vectors, so squared Euclidean distance is 2 - 2 cos.

- `triplet_loss`: FaceNet triplet loss on given (anchor, positive, negative) rows, margin 0.2.
- `semi_hard_triplet_loss`: the same, with negatives mined inside a P x K batch.
- `contrastive_loss`: Hadsell et al. on pairs, with a margin on the Euclidean distance.
- `ArcMargin` + `arcface_loss`: additive angular margin (s = 64, m = 0.5), optionally focal.
"""

from __future__ import annotations

import math

import keras
from keras import ops

TRIPLET_MARGIN = 0.2
CONTRASTIVE_MARGIN = 1.0  # Euclidean; unit vectors 90 degrees apart are sqrt(2) = 1.41 apart
ARCFACE_SCALE = 64.0
ARCFACE_MARGIN = 0.5
FOCAL_GAMMA = 2.0
_FAR = 1e9  # stands in for "no such negative" in masked minimums


def squared_distances(embeddings):
    """[N, D] unit rows -> [N, N] squared Euclidean distances (2 - 2 cos, clipped at 0)."""
    return ops.maximum(2.0 - 2.0 * ops.matmul(embeddings, ops.transpose(embeddings)), 0.0)


def triplet_loss(anchor, positive, negative, margin: float = TRIPLET_MARGIN):
    """mean(max(0, d(a,p) - d(a,n) + margin)) over rows, d = squared Euclidean distance."""
    d_ap = ops.sum(ops.square(anchor - positive), axis=-1)
    d_an = ops.sum(ops.square(anchor - negative), axis=-1)
    return ops.mean(ops.relu(d_ap - d_an + margin))


def semi_hard_negatives(distances, labels, margin: float = TRIPLET_MARGIN):
    """In-batch semi-hard negative for every (anchor, positive) pair.

    For anchor a and positive p (same person, p != a), the negative is the closest
    n of another person with d(a,p) < d(a,n) < d(a,p) + margin; when no negative
    lies in that band, the hardest (closest) negative of all.
    :param distances: [N, N] squared distances. labels: int [N].
    :return: (negative [N, N] int row index per (a, p), valid [N, N] bool: p is a positive of a
        and a has at least one negative).
    """
    labels = ops.reshape(labels, (-1, 1))
    same = ops.equal(labels, ops.transpose(labels))
    negative_mask = ops.logical_not(same)[:, None, :]  # [a, 1, n]
    d_ap = distances[:, :, None]  # [a, p, 1]
    d_an = distances[:, None, :]  # [a, 1, n]
    band = ops.logical_and(negative_mask, ops.logical_and(d_an > d_ap, d_an < d_ap + margin))
    semi_hard = ops.argmin(ops.where(band, d_an, _FAR), axis=2)
    hardest = ops.argmin(ops.where(negative_mask, d_an, _FAR), axis=2)
    negative = ops.where(ops.any(band, axis=2), semi_hard, hardest)
    n = ops.shape(distances)[0]
    not_self = ops.logical_not(ops.cast(ops.eye(n), "bool"))
    has_negative = ops.any(ops.logical_not(same), axis=1, keepdims=True)
    valid = ops.logical_and(ops.logical_and(same, not_self), has_negative)
    return negative, valid


def semi_hard_triplet_loss(embeddings, labels, margin: float = TRIPLET_MARGIN):
    """Triplet loss over every (anchor, positive) pair in the batch, with semi-hard negatives.

    :param embeddings: [N, 128] unit rows, a P x K batch. labels: int [N].
    Mining runs on the current distances inside the step; gradients reach anchor,
    positive and the chosen negative.
    """
    distances = squared_distances(embeddings)
    negative, valid = semi_hard_negatives(ops.stop_gradient(distances), labels, margin)
    d_an = ops.take_along_axis(distances, negative, axis=1)  # [a, p] -> d(a, neg(a, p))
    losses = ops.relu(distances - d_an + margin)
    valid = ops.cast(valid, losses.dtype)
    return ops.sum(losses * valid) / ops.maximum(ops.sum(valid), 1.0)


def contrastive_loss(left, right, same, margin: float = CONTRASTIVE_MARGIN):
    """mean(same * d^2 + (1 - same) * max(0, margin - d)^2) / 2, d = Euclidean distance; same is 1/0."""
    d = ops.sqrt(ops.sum(ops.square(left - right), axis=-1) + 1e-12)
    same = ops.cast(same, d.dtype)
    return 0.5 * ops.mean(same * ops.square(d) + (1.0 - same) * ops.square(ops.relu(margin - d)))


class ArcMargin(keras.layers.Layer):
    """ArcFace logits: s * cos(theta + m) for the true class, s * cos(theta) for the others.

    Holds one unit-length centre per training person, [128, classes]. Used only
    while training; the saved head is the Dense kernel alone.
    """

    def __init__(self, classes: int, scale: float = ARCFACE_SCALE, margin: float = ARCFACE_MARGIN, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.scale = scale
        self.margin = margin

    def build(self, input_shape):
        self.centres = self.add_weight(
            shape=(input_shape[-1], self.classes), initializer="glorot_uniform", name="centres"
        )

    def call(self, embeddings, labels):
        centres = self.centres / ops.sqrt(ops.sum(ops.square(self.centres), axis=0, keepdims=True) + 1e-12)
        cos = ops.clip(ops.matmul(embeddings, centres), -1.0 + 1e-7, 1.0 - 1e-7)
        sin = ops.sqrt(1.0 - ops.square(cos))
        cos_m = cos * math.cos(self.margin) - sin * math.sin(self.margin)
        # Past theta = pi - m, cos(theta + m) stops decreasing; use the linear fallback of InsightFace.
        cos_m = ops.where(cos > math.cos(math.pi - self.margin), cos_m, cos - math.sin(math.pi - self.margin) * self.margin)
        one_hot = ops.one_hot(ops.reshape(labels, (-1,)), self.classes)
        return self.scale * ops.where(one_hot > 0, cos_m, cos)


def arcface_loss(logits, labels, focal: bool = False, gamma: float = FOCAL_GAMMA):
    """Softmax cross-entropy on ArcMargin logits; with focal=True, (1 - p)^gamma weights each row."""
    labels = ops.reshape(labels, (-1,))
    log_p = ops.log_softmax(logits, axis=-1)
    log_p_true = ops.take_along_axis(log_p, ops.cast(labels[:, None], "int32"), axis=1)[:, 0]
    if focal:
        return -ops.mean(ops.power(1.0 - ops.exp(log_p_true), gamma) * log_p_true)
    return -ops.mean(log_p_true)
