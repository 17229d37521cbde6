"""What happens around each step and epoch of `train_backbone`: validation, keep-best, checkpoints,
the time budget and the progress bar. Keras callbacks only, so any backend runs them.

A checkpoint is OUT/checkpoint/: `training.weights.h5` (the training network: the embedding
network, and ArcFace's class matrix where there is one), `optimizer.npz` (every optimizer
variable, step count included, in the optimizer's order), `best.weights.h5` (the embedding
network at the best epoch so far) and `state.json` (the epochs done, the history, the best epoch,
and the options it must be resumed with). `state.json` is written last, so a checkpoint is whole
when it names an epoch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from model.training.backbone_data import FaceChips, progress_bar

STATE = "state.json"
TRAINING_WEIGHTS = "training.weights.h5"
OPTIMIZER = "optimizer.npz"
BEST_WEIGHTS = "best.weights.h5"


def as_float(value) -> float:
    return float(np.asarray(ops.convert_to_numpy(value)))


class Validation(keras.callbacks.Callback):
    """After each epoch: score the validation people, add a history row, remember the best epoch.

    :param score: (embeddings [N, 128], labels [N]) -> dict of val_* scores.
    :param key: the score that picks the best epoch (higher is better).
    :param embed: uint8 chips -> embeddings (default: the embedding network's compiled `predict`).
    """

    def __init__(self, embedding, val: FaceChips, score, key: str, history: list[dict],
                 best: dict, optimizer, started: float, embed=None):
        super().__init__()
        self.embed = embed or (lambda chips: embedding.predict(chips.astype(np.float32), batch_size=128, verbose=0))
        self.embedding, self.val, self.score, self.key = embedding, val, score, key
        self.history, self.best, self.optimizer, self.started = history, best, optimizer, started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.score(self.embed(self.val.chips), self.val.labels)
        row = {"epoch": epoch + 1, "loss": float(logs["loss"]) if logs and "loss" in logs else None,
               "lr": as_float(self.optimizer.learning_rate), "beta_1": as_float(self.optimizer.current_beta_1()),
               "steps": int(as_float(self.optimizer.iterations)), "seconds": round(time.monotonic() - self.started, 2),
               **scores}
        self.history.append(row)
        if scores[self.key] > self.best.get("score", -1.0):
            self.best.update(score=scores[self.key], epoch=epoch + 1, weights=self.embedding.get_weights())


class Checkpoint(keras.callbacks.Callback):
    """After each epoch (after Validation): the checkpoint described in the module docstring."""

    def __init__(self, folder: Path, training, embedding, optimizer, history: list[dict], best: dict,
                 fingerprint: dict):
        super().__init__()
        self.folder, self.training, self.embedding, self.optimizer = Path(folder), training, embedding, optimizer
        self.history, self.best, self.fingerprint = history, best, fingerprint

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.training.save_weights(self.folder / TRAINING_WEIGHTS)
        values = {f"v{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(self.optimizer.variables)}
        np.savez(self.folder / OPTIMIZER, **values)
        if self.best.get("epoch") == epoch + 1:
            current = self.embedding.get_weights()
            self.embedding.set_weights(self.best["weights"])
            self.embedding.save_weights(self.folder / BEST_WEIGHTS)
            self.embedding.set_weights(current)
        state = {"epoch": epoch + 1, "history": self.history, "best_epoch": self.best.get("epoch", 0),
                 "best_score": self.best.get("score"), "options": self.fingerprint}
        tmp = self.folder / (STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.folder / STATE)


def read_state(folder: Path) -> dict | None:
    path = Path(folder) / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def check_options(folder: Path, state: dict, fingerprint: dict) -> None:
    """:raises ValueError: the checkpoint in folder was made with other options than `fingerprint`."""
    differ = {k: (state["options"].get(k), v) for k, v in fingerprint.items() if state["options"].get(k) != v}
    if differ:
        shown = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"the checkpoint in {folder} was made with other options ({shown}); "
                         "use the same options, or another --out to start afresh")


def restore(folder: Path, training, embedding, optimizer, state: dict, best: dict) -> None:
    """Load a checkpoint (see `check_options`) into freshly built networks and an optimizer built on
    training's variables; the best epoch's weights go into `best`."""
    folder = Path(folder)
    training.load_weights(folder / TRAINING_WEIGHTS)
    with np.load(folder / OPTIMIZER) as saved:
        values = [saved[k] for k in sorted(saved.files)]
    if len(values) != len(optimizer.variables):
        raise ValueError(f"the checkpoint in {folder} holds {len(values)} optimizer variables, this run has "
                         f"{len(optimizer.variables)}")
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)
    if state.get("best_epoch") and (folder / BEST_WEIGHTS).is_file():
        current = embedding.get_weights()
        embedding.load_weights(folder / BEST_WEIGHTS)
        best.update(score=state["best_score"], epoch=state["best_epoch"], weights=embedding.get_weights())
        embedding.set_weights(current)


class TimeBudget(keras.callbacks.Callback):
    """Stop training once `seconds` have passed since `started` (checked after every step)."""

    def __init__(self, seconds: float | None, started: float):
        super().__init__()
        self.seconds, self.started, self.stopped = seconds, started, False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.seconds is not None and time.monotonic() - self.started >= self.seconds:
            self.stopped = True
            self.model.stop_training = True


class Progress(keras.callbacks.Callback):
    """One bar over every step of the run (tqdm when installed, else a plain line every 5%)."""

    def __init__(self, total_steps: int, done_steps: int, enabled: bool, history: list[dict], key: str):
        super().__init__()
        self.bar = progress_bar(total_steps, "training", enabled)
        self.bar.update(done_steps)
        self.history, self.key, self.enabled = history, key, enabled

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if logs and "loss" in logs:
            self.bar.set_postfix_str(f"loss {float(logs['loss']):.4f}")
        self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = self.history[-1] if self.history else {}
        if self.enabled:
            line = (f"epoch {row.get('epoch')}: loss {row.get('loss')}, {self.key} {row.get(self.key)}, "
                    f"val_accuracy {row.get('val_accuracy')}")
            write = getattr(self.bar, "write", None)  # tqdm's, so the bar is redrawn below the line
            write(line, file=sys.stderr) if write else print(line, file=sys.stderr)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.bar.close()
