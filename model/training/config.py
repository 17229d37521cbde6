"""What shapes one head-training run (`TrainConfig`, stored in the head's sidecar) and the
learning-rate schedule it sets. Plain Python and numpy; no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.training.sampling import DEFAULT_K, DEFAULT_P

LOSSES = ("triplet", "contrastive", "arcface")
MININGS = ("semi-hard", "random")
SCHEDULES = ("constant", "step", "one-cycle")
DEFAULT_MARGINS = {"triplet": 0.2, "contrastive": 1.0, "arcface": 0.5}


@dataclass
class TrainConfig:
    """Everything that shapes one training run; stored in the head's sidecar.

    loss: 'triplet', 'contrastive' or 'arcface'. mining (triplet only): 'semi-hard'
    (in-batch, P x K batches) or 'random' (random triplets, the original design).
    margin: None gives the loss's default (triplet 0.2 on squared distance,
    contrastive 1.0 on distance, arcface 0.5 rad). scale and focal/gamma: ArcFace only.
    One epoch is (training photos) / (P * K) steps; every step sees P * K photos,
    triplets or pairs. schedule: 'constant'; 'step' (x step_factor every
    step_epochs); 'one-cycle' (warm up to learning_rate over the first 30% of steps,
    then anneal, while Adam's beta_1 cycles 0.95 -> 0.85 -> 0.95).
    weight_decay: L2 penalty on the head kernel added to the loss, on its distance from the
    starting kernel (decay_to='init', "L2-SP", keeps a good start) or from zero ('zero', plain L2).
    patience: stop after this many epochs without a better validation score (None: run all).
    corrections_per_batch: with corrections given to `train_head`, every step adds a triplet loss
    (margin 0.2) on this many (anchor, positive, correction) triplets of corrected people.
    """

    loss: str = "triplet"
    mining: str = "semi-hard"
    epochs: int = 50
    p: int = DEFAULT_P
    k: int = DEFAULT_K
    margin: float | None = None
    scale: float = 64.0
    focal: bool = False
    gamma: float = 2.0
    learning_rate: float = 1e-4
    schedule: str = "constant"
    step_epochs: int = 20
    step_factor: float = 0.1
    weight_decay: float = 0.1
    decay_to: str = "init"
    patience: int | None = None
    target_far: float = 1e-3
    seed: int = 0
    corrections_per_batch: int = 16

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss '{self.loss}'; choose one of: {', '.join(LOSSES)}")
        if self.mining not in MININGS:
            raise ValueError(f"unknown mining '{self.mining}'; choose one of: {', '.join(MININGS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if self.decay_to not in ("init", "zero"):
            raise ValueError("decay_to must be 'init' or 'zero'")
        if self.margin is None:
            self.margin = DEFAULT_MARGINS[self.loss]

    @property
    def name(self) -> str:
        """A short label: 'triplet/semi-hard', 'triplet/random', 'contrastive', 'arcface', 'arcface+focal'."""
        if self.loss == "triplet":
            return f"triplet/{self.mining}"
        if self.loss == "arcface" and self.focal:
            return "arcface+focal"
        return self.loss


# --- learning-rate schedules ----------------------------------------------------------------


def schedule_at(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> tuple[float, float]:
    """(learning rate, Adam beta_1) for a step (0-based)."""
    base = config.learning_rate
    if config.schedule == "constant":
        return base, 0.9
    if config.schedule == "step":
        return base * config.step_factor ** ((step // steps_per_epoch) // config.step_epochs), 0.9
    # One-cycle (Smith 2018; fastai's defaults): cosine warm-up from base/25, cosine anneal to base/1e4.
    warm = max(1, int(0.3 * total_steps))
    if step < warm:
        t = step / warm
        cos = (1 - np.cos(np.pi * t)) / 2  # 0 -> 1
        return base / 25 + (base - base / 25) * cos, 0.95 - 0.10 * cos
    t = (step - warm) / max(1, total_steps - warm)
    cos = (1 + np.cos(np.pi * t)) / 2  # 1 -> 0
    return base / 1e4 + (base - base / 1e4) * cos, 0.85 + 0.10 * (1 - cos)
