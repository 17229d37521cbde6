"""Training batches for `train_backbone`, drawn afresh for every (seed, epoch, step), and chip augmentation.

- triplet and arcface: P x K batches, P people (all when there are fewer) with K photos each (repeated
  when a person has fewer), so every anchor has positives and in-batch negatives; arcface also gets the
  labels as an input (its class matrix needs them).
- contrastive: P * K (left, right) pairs, the first half two photos of one person, the rest of two people.

numpy, and keras.utils.PyDataset (so Model.fit takes it on any backend); chips go in as float32 0..255.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model.training.backbone_data import FaceChips


def augment_chips(chips: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.float32]:
    """Random mirror image and brightness/contrast change per chip (numpy; float32 0..255 out)."""
    out = chips.astype(np.float32)
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    gain = rng.uniform(0.8, 1.2, (len(out), 1, 1, 1)).astype(np.float32)
    shift = rng.uniform(-20, 20, (len(out), 1, 1, 1)).astype(np.float32)
    return np.clip(out * gain + shift, 0, 255)


def make_batches(train: FaceChips, *, loss: str, p: int, k: int, augment: bool, seed: int, steps: int,
                 first_epoch: int = 0):
    """(a keras.utils.PyDataset of `steps` batches per epoch, drawn from (seed, epoch, step), the number of classes).

    :param loss: 'contrastive' (pair batches) or 'triplet' / 'arcface' (P x K batches).
    :param first_epoch: the epoch fit starts at (a resumed run draws what the run it continues would have).
    """
    import keras

    labels = np.unique(train.labels, return_inverse=True)[1].astype(np.int32)  # 0..classes-1
    rows_of = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = first_epoch

        def __len__(self) -> int:
            return steps

        def on_epoch_end(self) -> None:
            self.epoch += 1

        def __getitem__(self, index: int):
            rng = np.random.default_rng([seed, self.epoch, index])
            pick = _pick(train.chips, augment, rng)
            if loss == "contrastive":
                left, right, same = _pairs(rows_of, p * k, rng)
                return {"left": pick(left), "right": pick(right)}, same
            people = rng.choice(len(rows_of), size=min(p, len(rows_of)), replace=False)
            rows = np.concatenate([rng.choice(rows_of[c], k, replace=len(rows_of[c]) < k) for c in people])
            if loss == "arcface":
                return {"chips": pick(rows), "labels": labels[rows]}, labels[rows]
            return pick(rows), labels[rows]

    return Batches(), int(labels.max() + 1)


def _pick(chips: NDArray[np.uint8], augment: bool, rng: np.random.Generator):
    return lambda rows: augment_chips(chips[rows], rng) if augment else chips[rows].astype(np.float32)


def _pairs(rows_of: list[NDArray[np.int64]], n: int, rng: np.random.Generator):
    """n (left, right) row pairs: the first half two photos of one person, the rest of two people; same is 1/0."""
    n_same = n // 2
    twice = [c for c, rows in enumerate(rows_of) if len(rows) >= 2]
    same_pairs = [rng.choice(rows_of[c], 2, replace=False) for c in rng.choice(twice, size=n_same)]
    first = rng.integers(0, len(rows_of), size=n - n_same)
    second = (first + rng.integers(1, len(rows_of), size=n - n_same)) % len(rows_of)  # never the same person
    left = np.array([a for a, _ in same_pairs] + [rng.choice(rows_of[c]) for c in first], dtype=np.int64)
    right = np.array([b for _, b in same_pairs] + [rng.choice(rows_of[c]) for c in second], dtype=np.int64)
    return left, right, (np.arange(n) < n_same).astype(np.float32)
