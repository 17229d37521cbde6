"""Learning-rate and momentum schedules for `model.train_backbone`, as Keras 3 ops (any backend).

- `cyclical` (Smith 2017, "Cyclical learning rates"): triangular cycles between lr / 10 and lr,
  `cycle_epochs` long (default 2 epochs: up for one, down for one), with cyclical momentum moving
  the other way, Adam's beta_1 from 0.95 (at the lowest rate) to 0.85 (at the highest).
- `one-cycle` (Smith 2018; fastai's shape, the same as `model.training.config.schedule_at`): a cosine
  warm-up from lr / 25 to lr over the first 30% of the steps, then a cosine anneal to lr / 1e4;
  beta_1 0.95 -> 0.85 -> 0.95 against it.
- `step`: lr times `step_factor` every `step_epochs` epochs; beta_1 fixed at 0.9.

Each schedule is a `keras.optimizers.schedules.LearningRateSchedule`, a function of the optimizer's
step count, so it runs inside the compiled train step on TensorFlow, JAX or PyTorch alike.
`ScheduledAdam` is Adam with beta_2 = 0.99 whose beta_1 follows a momentum schedule.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

SCHEDULES = ("cyclical", "one-cycle", "step")
CYCLICAL_LOW = 0.1  # the cyclical rate's floor, as a share of its peak
MOMENTUM_LOW, MOMENTUM_HIGH = 0.85, 0.95
ONE_CYCLE_WARM = 0.3
ONE_CYCLE_START, ONE_CYCLE_END = 1 / 25, 1 / 1e4
ADAM_BETA_2 = 0.99


class Triangular(keras.optimizers.schedules.LearningRateSchedule):
    """A value moving linearly from `start` to `peak` over `half_cycle` steps and back, again and again.

    With start > peak it moves the other way (cyclical momentum against a cyclical rate).
    """

    def __init__(self, start: float, peak: float, half_cycle: int):
        self.start, self.peak, self.half_cycle = float(start), float(peak), max(1, int(half_cycle))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        cycle = ops.floor(1.0 + step / (2.0 * self.half_cycle))
        distance = ops.abs(step / self.half_cycle - 2.0 * cycle + 1.0)  # 1 at the cycle's ends, 0 at its peak
        return self.start + (self.peak - self.start) * ops.maximum(0.0, 1.0 - distance)

    def get_config(self) -> dict:
        return {"start": self.start, "peak": self.peak, "half_cycle": self.half_cycle}


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine from `start` up to `peak` over the first `warm` share of `total` steps, then down to `end`."""

    def __init__(self, start: float, peak: float, end: float, total: int, warm: float = ONE_CYCLE_WARM):
        self.start, self.peak, self.end = float(start), float(peak), float(end)
        self.total = max(1, int(total))
        self.warm_steps = max(1, int(warm * self.total))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = ops.clip(step / self.warm_steps, 0.0, 1.0)
        down = ops.clip((step - self.warm_steps) / max(1, self.total - self.warm_steps), 0.0, 1.0)
        rising = self.start + (self.peak - self.start) * (1.0 - ops.cos(math.pi * up)) / 2.0
        falling = self.end + (self.peak - self.end) * (1.0 + ops.cos(math.pi * down)) / 2.0
        return ops.where(step < self.warm_steps, rising, falling)

    def get_config(self) -> dict:
        return {"start": self.start, "peak": self.peak, "end": self.end, "total": self.total}


class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`initial` times `factor` every `every` steps."""

    def __init__(self, initial: float, factor: float, every: int):
        self.initial, self.factor, self.every = float(initial), float(factor), max(1, int(every))

    def __call__(self, step):
        drops = ops.floor(ops.cast(step, "float32") / self.every)
        return self.initial * ops.power(self.factor, drops)

    def get_config(self) -> dict:
        return {"initial": self.initial, "factor": self.factor, "every": self.every}


class Constant(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, step):
        return ops.cast(step, "float32") * 0.0 + self.value

    def get_config(self) -> dict:
        return {"value": self.value}


def make_schedules(name: str, learning_rate: float, *, steps_per_epoch: int, epochs: int,
                   cycle_epochs: float = 2.0, step_epochs: int = 10, step_factor: float = 0.1):
    """(learning-rate schedule, beta_1 schedule) for one run.

    :param steps_per_epoch: optimizer steps in an epoch. epochs: the whole run's (one-cycle spans it).
    :param cycle_epochs: cyclical only: one full triangle (up and down) in epochs.
    :param step_epochs, step_factor: step only.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; choose one of: {', '.join(SCHEDULES)}")
    if name == "cyclical":
        half = max(1, round(cycle_epochs * steps_per_epoch / 2))
        return (Triangular(CYCLICAL_LOW * learning_rate, learning_rate, half),
                Triangular(MOMENTUM_HIGH, MOMENTUM_LOW, half))
    if name == "one-cycle":
        total = steps_per_epoch * epochs
        return (OneCycle(ONE_CYCLE_START * learning_rate, learning_rate, ONE_CYCLE_END * learning_rate, total),
                OneCycle(MOMENTUM_HIGH, MOMENTUM_LOW, MOMENTUM_HIGH, total))
    return StepDecay(learning_rate, step_factor, step_epochs * steps_per_epoch), Constant(0.9)


def curves(schedules, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The (learning rate, beta_1) a pair of schedules gives at steps 0..steps-1, float64 [steps] each."""
    at = np.arange(steps, dtype=np.float32)
    return tuple(np.asarray(ops.convert_to_numpy(s(at)), dtype=np.float64) for s in schedules)


class ScheduledAdam(keras.optimizers.Adam):
    """Adam (beta_2 = 0.99 by default) whose beta_1 is read from `momentum` at every step.

    Bias correction uses the current beta_1, as fastai's one-cycle does; `momentum` is a function
    of the step count (a LearningRateSchedule), so it lives in the compiled step.
    """

    def __init__(self, learning_rate, momentum, beta_2: float = ADAM_BETA_2, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=MOMENTUM_HIGH, beta_2=beta_2, **kwargs)
        self.momentum = momentum

    def current_beta_1(self):
        return self.momentum(self.iterations)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.current_beta_1(), dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        alpha = lr * ops.sqrt(1.0 - ops.power(beta_2, step)) / (1.0 - ops.power(beta_1, step))
        self.assign(m, m * beta_1 + gradient * (1.0 - beta_1))
        self.assign(v, v * beta_2 + ops.square(gradient) * (1.0 - beta_2))
        self.assign_sub(variable, alpha * m / (ops.sqrt(v) + self.epsilon))

    def get_config(self) -> dict:
        config = super().get_config()
        config["momentum"] = keras.saving.serialize_keras_object(self.momentum)
        return config
