"""A softmax classifier over the enrolled people plus an Unknown class (Keras 3 on TensorFlow).

The transfer-learning recipe, in two passes:

1. the new layers alone: a softmax over P people + Unknown, on top of a frozen base;
2. then the top of the base as well, at a lower learning rate, starting from pass one.

The base is, in the embedding mode (default), the app's 128-unit head on cached backbone
features: features [D] -> head Dense(128) (from the app's head file) -> L2 -> x scale -> softmax.
In the image mode (`classifier_images`) it is a `keras.applications` CNN on whole images.
Both train through `fit_two_passes` with balanced class weights, augmented batches, and an
optional time budget. A saved classifier is a folder: classifier.keras plus classifier.json
(classes, mode, what the input is, training summary).

TensorFlow is imported inside functions only; the web app never imports this package.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.head import EMBEDDING_DIM
from model.training.classifier_data import ClassifierData, FeatureAugment, class_weights

MODEL_FILE = "classifier.keras"
META_FILE = "classifier.json"


@dataclass
class ClassifierConfig:
    """One training run. Pass 1 trains the new layers for `epochs` at `learning_rate`; pass 2 adds
    the top of the base for `fine_tune_epochs` at learning_rate * fine_tune_factor.

    scale: logits = scale * (unit embedding) . W, so a softmax over unit vectors can be confident.
    balanced: weigh each class by N / (C * count) (`class_weights`), so a person with many photos
    (or a large stranger pool) does not drown the rest. time_budget: seconds for both passes
    together (None: no limit), checked after every batch. min_confidence: below this top
    probability a face is called Unknown even when a person's class wins (0: the argmax decides).
    """

    epochs: int = 30
    fine_tune_epochs: int = 15
    learning_rate: float = 3e-3
    fine_tune_factor: float = 0.1
    batch_size: int = 64
    scale: float = 16.0
    dropout: float = 0.1
    balanced: bool = True
    augment: bool = True
    time_budget: float | None = None
    min_confidence: float = 0.0
    seed: int = 0


@dataclass
class ClassifierResult:
    """A trained classifier. history: one row per epoch (pass, epoch, loss, accuracy)."""

    model: object  # keras.Model: input -> softmax probabilities [N, C]
    classes: list[str]
    config: ClassifierConfig
    history: list[dict]
    seconds: float
    info: dict = field(default_factory=dict)

    def losses(self, pass_: int | None = None) -> NDArray[np.float64]:
        return np.array([row["loss"] for row in self.history if pass_ in (None, row["pass"])])


# --- the shared two-pass loop ---------------------------------------------------------------------


def _batches(n_rows: int, make: Callable, labels: NDArray[np.int64], weights: NDArray[np.float32],
             batch_size: int, seed: int):
    """A keras PyDataset of shuffled batches (x, y, sample weights); make(rows, rng) builds x.

    Every batch is full (the last one wraps round to the epoch's first rows): a batch of another
    size would make TensorFlow trace the training step again, which costs more than the step.
    """
    import keras

    size = min(batch_size, n_rows)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(n_rows)

        def __len__(self) -> int:
            return max(1, int(np.ceil(n_rows / size)))

        def __getitem__(self, index: int):
            rows = np.take(self.order, np.arange(index * size, (index + 1) * size), mode="wrap")
            return make(rows, self.rng), labels[rows], weights[labels[rows]]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(n_rows)

    return Batches()


def _time_budget(seconds: float | None, start: float):
    import keras

    class TimeBudget(keras.callbacks.Callback):
        """Stops training once the budget (for both passes, from `start`) is spent."""

        def on_train_batch_end(self, batch, logs=None):
            if seconds is not None and time.perf_counter() - start > seconds:
                self.model.stop_training = True

    return TimeBudget()


def fit_two_passes(model, set_pass: Callable[[object, int], None], make: Callable, labels: NDArray[np.int64],
                   n_classes: int, config: ClassifierConfig, *, progress: bool = False) -> tuple[list[dict], float]:
    """Train `model` (softmax output) in two passes; set_pass(model, 1 or 2) chooses what is trainable.

    :param make: make(rows int64 [B], rng) -> the batch's inputs (augmented when training).
    :param labels: int64 [N] class of each row. :return: (history rows, seconds).
    """
    import keras

    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    weights = class_weights(labels, n_classes) if config.balanced else np.ones(n_classes, np.float32)
    batches = _batches(len(labels), make, labels, weights, config.batch_size, config.seed)
    history = []
    for pass_, epochs, rate in ((1, config.epochs, config.learning_rate),
                                (2, config.fine_tune_epochs, config.learning_rate * config.fine_tune_factor)):
        if epochs <= 0 or (config.time_budget is not None and time.perf_counter() - start > config.time_budget):
            continue
        set_pass(model, pass_)
        # Recompiled: the trainable layers changed. No XLA: on a CPU its compile time (measured 4x the
        # whole run for the embedding mode) outweighs what it saves on runs this short.
        model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
                      weighted_metrics=["accuracy"], jit_compile=False)
        fitted = model.fit(batches, epochs=epochs, verbose=2 if progress else 0,
                           callbacks=[_time_budget(config.time_budget, start)])
        for epoch, (loss, accuracy) in enumerate(zip(fitted.history["loss"], fitted.history["accuracy"]), 1):
            history.append({"pass": pass_, "epoch": epoch, "loss": float(loss), "accuracy": float(accuracy),
                            "learning_rate": rate})
    return history, time.perf_counter() - start


# --- the embedding mode ------------------------------------------------------------------------------


def embedding_classifier(head_kernel: NDArray[np.float32], n_classes: int, *, scale: float = 16.0,
                         dropout: float = 0.1):
    """Keras model: features float32 [N, D] -> head Dense(128) -> L2 ('embedding') -> softmax [N, C] ('classes').

    :param head_kernel: float32 [D, 128], the app's head (identity for 128-D backbones).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    inputs = keras.Input((head_kernel.shape[0],), name="features")
    head = keras.layers.Dense(EMBEDDING_DIM, use_bias=False, name="head")
    embedding = keras.layers.UnitNormalization(name="embedding")(head(inputs))
    x = keras.layers.Rescaling(scale, name="scale")(embedding)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="classes")(x)
    head.kernel.assign(np.asarray(head_kernel, dtype=np.float32))
    return keras.Model(inputs, outputs, name="person_classifier")


def _set_embedding_pass(model, pass_: int) -> None:
    """Pass 1: the softmax alone; pass 2: the app's head too (the "top layers" of an embedding)."""
    model.get_layer("head").trainable = pass_ == 2


def train_classifier(data: ClassifierData, head_kernel: NDArray[np.float32], config: ClassifierConfig | None = None,
                     *, progress: bool = False) -> ClassifierResult:
    """Train the embedding-mode classifier on `data` (features of people and strangers).

    Cost: well under a second per epoch for a few thousand 128-256-D rows on one core.
    """
    config = config or ClassifierConfig()
    model = embedding_classifier(head_kernel, len(data.classes), scale=config.scale, dropout=config.dropout)
    augment = FeatureAugment() if config.augment else None

    def make(rows, rng):
        return augment(rows, data, rng) if augment else data.features[rows]

    history, seconds = fit_two_passes(model, _set_embedding_pass, make, data.labels, len(data.classes), config,
                                      progress=progress)
    info = {"mode": "embeddings", "backbone": data.backbone, "data": data.summary(),
            "input": {"name": "features", "shape": [None, data.dim], "dtype": "float32",
                      "note": f"{data.backbone} backbone features (Recognizer.features), unit rows"}}
    return ClassifierResult(model, data.classes, config, history, seconds, info)


# --- using a classifier --------------------------------------------------------------------------------


def predict(model, inputs, batch_size: int = 256) -> NDArray[np.float32]:
    """Class probabilities float32 [N, C]."""
    if len(inputs) == 0:
        return np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)
    return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=0), dtype=np.float32)


def decide(probabilities: NDArray[np.float32], min_confidence: float = 0.0) -> NDArray[np.int64]:
    """The class of each row [N]: the most probable, or Unknown (the last class) below min_confidence."""
    best = probabilities.argmax(axis=1)
    unsure = probabilities.max(axis=1) < min_confidence
    return np.where(unsure, probabilities.shape[1] - 1, best).astype(np.int64)


def person_scores(probabilities: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(score [N], person [N]): the most probable person, Unknown left out, and its probability.
    The open-set score: a stranger should get a low one."""
    people = probabilities[:, :-1]
    best = people.argmax(axis=1)
    return people[np.arange(len(people)), best], best.astype(np.int64)


def embedding_model(model, layer: str = "embedding"):
    """The classifier cut at its embedding layer: input -> unit embeddings (for verification)."""
    import keras

    return keras.Model(model.inputs, model.get_layer(layer).output)


def save_classifier(result: ClassifierResult, folder: Path, extra: dict | None = None) -> Path:
    """folder/classifier.keras and folder/classifier.json (classes, mode, input, config, history)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save(folder / MODEL_FILE)
    meta = {"classes": result.classes, **result.info, "config": asdict(result.config),
            "seconds": round(result.seconds, 2), "history": result.history, **(extra or {})}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    return folder


def load_classifier(folder: Path) -> tuple[object, dict]:
    """(keras model, meta) from a folder written by `save_classifier`. :raises FileNotFoundError."""
    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / META_FILE).is_file():
        raise FileNotFoundError(f"no classifier in {folder} (expected {MODEL_FILE} and {META_FILE})")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=False)
    return model, json.loads((folder / META_FILE).read_text())
