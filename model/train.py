"""Train the 128-unit head on cached backbone features (Keras 3 on TensorFlow).

    python -m model.train --images DIR   [--loss triplet|contrastive|arcface] [--epochs N] [--out FILE]
    python -m model.train --gallery DB   [...same options...]
    python -m model.train --rollback     [--out FILE | --backbone NAME]

Each photo's backbone features are computed once and cached (`feature_cache`),
so 50 epochs take seconds on a CPU. People are split into train and validation
(and optionally test) sets; no person is in two. The head starts from the
identity for 128-D backbones (so "before" is the backbone itself) and the
epoch with the best validation TAR at the target FAR is kept, so the result is
never worse than the start on validation people. The written head's sidecar
holds the open-set threshold at the target FAR, measured on validation people.

Progress goes to stderr; the last line of stdout is one JSON object with the
validation metrics before and after and the path written. Score the new head on
any set with `python -m model.evaluate ... --head FILE`.

Only this module, `losses`, `export` and `finetune` import TensorFlow, and only
inside functions: the web app never imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model import metrics
from model.feature_cache import FeatureSet, dataset_features, gallery_corrections, gallery_features
from model.head import EMBEDDING_DIM, Head, head_path, save_head, sidecar_path
from model.sampling import (
    DEFAULT_K, DEFAULT_P, correction_triplets, pk_batches, random_pairs, random_triplets, split_people,
)

LOSSES = ("triplet", "contrastive", "arcface")
MININGS = ("semi-hard", "random")
SCHEDULES = ("constant", "step", "one-cycle")
REPORT_FARS = (1e-2, 1e-3, 1e-4)
DEFAULT_MARGINS = {"triplet": 0.2, "contrastive": 1.0, "arcface": 0.5}
HISTORY_DIR_NAME = "history"


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


@dataclass
class Split:
    """A FeatureSet split by person. val and test hold real photos only (no augmented copies)."""

    train: FeatureSet
    val: FeatureSet
    test: FeatureSet | None = None

    def summary(self) -> dict:
        def people(fs: FeatureSet | None) -> int:
            return 0 if fs is None else int(len(np.unique(fs.labels)))

        return {
            "train_people": people(self.train),
            "train_photos": int((~self.train.augmented).sum()),
            "train_augmented": int(self.train.augmented.sum()),
            "val_people": people(self.val),
            "val_photos": len(self.val),
            "test_people": people(self.test),
            "test_photos": 0 if self.test is None else len(self.test),
        }


@dataclass
class TrainResult:
    """What `train_head` returns. history: one dict per epoch (epoch 0 is the starting head)."""

    head: Head
    config: TrainConfig
    history: list[dict]
    best_epoch: int
    before: dict
    after: dict
    seconds: float
    summary: dict = field(default_factory=dict)

    def curve(self, key: str) -> NDArray[np.float64]:
        """One history column as an array, e.g. 'loss' or 'val_tar_at_far_1e-03'."""
        return np.array([row.get(key, np.nan) for row in self.history], dtype=np.float64)


# --- data ---------------------------------------------------------------------------


def load_features(
    images: Path | None = None,
    gallery: Path | None = None,
    *,
    backbone: str = "dlib-resnet",
    cache_dir: Path | None = None,
    people: int | None = None,
    per_person: int | None = None,
    augment: int = 0,
    flip: bool | None = None,
    recognizer=None,
    progress: bool = True,
) -> FeatureSet:
    """Features from a folder-per-person dataset (cached) or from the app's database.

    Train on the features the app uses: flip averaging follows the Recognizer's default
    unless `flip` says otherwise (the gallery stores whatever the app computed).
    """
    if (images is None) == (gallery is None):
        raise ValueError("give exactly one of images (a folder per person) or gallery (the app's database)")
    if gallery is not None:
        if augment:
            raise ValueError("augmentation needs the photos; the gallery stores features only")
        return gallery_features(Path(gallery), backbone)
    return dataset_features(
        Path(images), backbone=backbone, recognizer=recognizer, cache_dir=cache_dir,
        people=people, per_person=per_person, augment=augment, flip=flip, progress=progress,
    )


def split_features(
    features: FeatureSet, *, val_fraction: float = 0.25, test_fraction: float = 0.0, seed: int = 0
) -> Split:
    """Split by person (see `sampling.split_people`); augmented copies stay only in train.

    The split is drawn from the real photos alone, so adding augmented copies does not move anyone.
    """
    real = ~features.augmented
    parts = split_people(features.labels[real], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    train, val, test = (np.isin(features.labels, features.labels[real][part]) for part in parts)
    return Split(
        features.subset(train),
        features.subset(val & real),
        features.subset(test & real) if test.any() else None,
    )


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


def _score(row: dict, target_far: float) -> tuple[float, float]:
    """Keep-best key: TAR at the target FAR, ties broken by the mean TAR over the report FARs."""
    tars = [v for k, v in row.items() if k.startswith("val_tar_at_far_")]
    return row.get(f"val_tar_at_far_{target_far:.0e}", 0.0), float(np.mean(tars)) if tars else 0.0


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


# --- training -----------------------------------------------------------------------------


def train_head(
    train: FeatureSet,
    val: FeatureSet,
    config: TrainConfig | None = None,
    *,
    init: Head | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    corrections: tuple[NDArray[np.float32], NDArray[np.int64]] | None = None,
) -> TrainResult:
    """Train a head on cached features and keep the epoch that verifies validation people best.

    :param train: training rows (augmented copies welcome). val: real photos of other people.
    :param init: starting head (default `initial_head`: identity for 128-D features).
    :param on_epoch: called with each epoch's history row (the notebook draws its loss curve with it).
    :param corrections: (features [C, D], labels [C]) of faces that are NOT person labels[c]
        (`feature_cache.gallery_corrections`): hard negatives for that person's anchors, mixed into
        every step (see TrainConfig.corrections_per_batch). Those of people not in `train` are unused.
    :return: TrainResult; its head carries the threshold at config.target_far on `val` and an
        info dict for the sidecar. Cost: about 1-2 ms per step on 2 cores for 128-D features,
        plus a validation pass per epoch (about 0.1 s for 1500 photos).
    """
    config = config or TrainConfig()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    from keras import ops

    from model import losses

    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    init = init or initial_head(train.backbone, train.dim, config.seed)
    fars = tuple(sorted(set(REPORT_FARS) | {config.target_far}, reverse=True))

    dense = keras.layers.Dense(EMBEDDING_DIM, use_bias=False, name="head")
    dense.build((None, train.dim))
    dense.kernel.assign(init.kernel)
    variables = list(dense.trainable_variables)

    classes, class_labels = np.unique(train.labels, return_inverse=True)
    arc = None
    if config.loss == "arcface":
        arc = losses.ArcMargin(len(classes), scale=config.scale, margin=config.margin)
        arc.build((None, EMBEDDING_DIM))
        # Start each class centre at its person's mean starting embedding, not at random.
        start_embeddings = init(train.features)
        centres = np.zeros((EMBEDDING_DIM, len(classes)), dtype=np.float32)
        np.add.at(centres.T, class_labels, start_embeddings)
        arc.centres.assign(centres / np.maximum(np.linalg.norm(centres, axis=0, keepdims=True), 1e-12))
        variables += list(arc.trainable_variables)

    decay_centre = tf.constant(init.kernel if config.decay_to == "init" else np.zeros_like(init.kernel))
    beta_1 = tf.Variable(0.9, trainable=False, dtype=tf.float32)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, beta_1=beta_1)
    optimizer.build(variables)

    def embed(x):
        return ops.normalize(dense(x), axis=-1)

    def batch_loss(batch):
        loss = main_loss(batch)
        if "correction" in batch:  # "not this person" faces as negatives for that person's pairs
            loss += losses.triplet_loss(
                embed(batch["anchor"]), embed(batch["positive"]), embed(batch["correction"]), losses.TRIPLET_MARGIN
            )
        return loss

    def main_loss(batch):
        if config.loss == "triplet" and config.mining == "semi-hard":
            return losses.semi_hard_triplet_loss(embed(batch["x"]), batch["y"], config.margin)
        if config.loss == "triplet":
            return losses.triplet_loss(embed(batch["a"]), embed(batch["p"]), embed(batch["n"]), config.margin)
        if config.loss == "contrastive":
            return losses.contrastive_loss(embed(batch["a"]), embed(batch["b"]), batch["same"], config.margin)
        logits = arc(embed(batch["x"]), batch["y"])
        return losses.arcface_loss(logits, batch["y"], focal=config.focal, gamma=config.gamma)

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        with tf.GradientTape() as tape:
            loss = batch_loss(batch)
            total = loss + config.weight_decay * ops.sum(ops.square(dense.kernel - decay_centre))
        optimizer.apply(tape.gradient(total, variables), variables)
        return loss

    batch_size = config.p * config.k
    steps_per_epoch = max(1, int(np.ceil(len(train) / batch_size)))
    total_steps = steps_per_epoch * config.epochs
    pk_labels = class_labels if config.loss == "arcface" else train.labels

    def pk_stream():
        while True:
            yield from pk_batches(pk_labels, p=config.p, k=config.k, rng=rng)

    stream = pk_stream()
    correction_features, correction_labels = corrections if corrections is not None else (None, np.zeros(0))
    use_corrections = len(correction_triplets(train.labels, correction_labels, 1, rng=np.random.default_rng(0))) > 0

    def next_batch() -> dict:
        batch = main_batch()
        if use_corrections:
            t = correction_triplets(train.labels, correction_labels, config.corrections_per_batch, rng=rng)
            batch.update(anchor=train.features[t[:, 0]], positive=train.features[t[:, 1]],
                         correction=correction_features[t[:, 2]])
        return batch

    def main_batch() -> dict:
        if config.loss == "triplet" and config.mining == "random":
            t = random_triplets(train.labels, batch_size, rng=rng)
            return {"a": train.features[t[:, 0]], "p": train.features[t[:, 1]], "n": train.features[t[:, 2]]}
        if config.loss == "contrastive":
            left, right, same = random_pairs(train.labels, batch_size, rng=rng)
            return {"a": train.features[left], "b": train.features[right], "same": same}
        rows = next(stream)
        return {"x": train.features[rows], "y": pk_labels[rows].astype(np.int32)}

    before = evaluate_head(init, val, fars) if len(val) else {}
    has_val = bool(before) and before["genuine_pairs"] > 0 and before["impostor_pairs"] > 0
    if not has_val:
        before = {}
        print("validation people give no genuine and impostor pairs: keeping the last epoch, no threshold",
              file=sys.stderr)

    def validate(kernel: NDArray[np.float32]) -> dict:
        if not has_val:
            return {}
        scores = evaluate_head(Head(kernel, train.backbone), val, fars)
        return {f"val_{k}": v for k, v in scores.items() if k.startswith(("tar_", "threshold_"))}

    history = [{"epoch": 0, "loss": float("nan"), "lr": 0.0, **validate(init.kernel)}]
    best_epoch, best_kernel, best_key = 0, init.kernel.copy(), _score(history[0], config.target_far)
    bar = _epoch_bar(config.epochs, progress)
    step = 0
    for epoch in range(1, config.epochs + 1):
        epoch_losses = []
        for _ in range(steps_per_epoch):
            lr, beta = schedule_at(config, step, total_steps, steps_per_epoch)
            optimizer.learning_rate.assign(lr)
            beta_1.assign(beta)
            batch = {k: tf.convert_to_tensor(v) for k, v in next_batch().items()}
            epoch_losses.append(float(train_step(batch)))
            step += 1
        kernel = np.asarray(dense.kernel.numpy(), dtype=np.float32)
        row = {"epoch": epoch, "loss": float(np.mean(epoch_losses)), "lr": float(lr), **validate(kernel)}
        history.append(row)
        key = _score(row, config.target_far)
        if not has_val or key > best_key:
            best_epoch, best_kernel, best_key = epoch, kernel.copy(), key
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", val_tar=f"{key[0]:.4f}", best=best_epoch)
        if on_epoch:
            on_epoch(row)
        if config.patience is not None and has_val and epoch - best_epoch >= config.patience:
            break
    bar.close()

    head = Head(best_kernel, train.backbone)
    after = evaluate_head(head, val, fars) if has_val else {}
    threshold_key = f"threshold_at_far_{config.target_far:.0e}"
    head.threshold = float(after[threshold_key]) if has_val and np.isfinite(after[threshold_key]) else init.threshold
    seconds = time.perf_counter() - start
    result = TrainResult(head, config, history, best_epoch, before, after, seconds)
    head.info = _sidecar_info(result, train, val, epochs_run=len(history) - 1)
    return result


def _epoch_bar(epochs: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=epochs, desc="training", unit="epoch", file=sys.stderr, disable=not enabled)


def _rounded(values: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) and np.isfinite(v) else v) for k, v in values.items()}


def _sidecar_info(result: TrainResult, train: FeatureSet, val: FeatureSet, epochs_run: int) -> dict:
    config = result.config
    return {
        "trained": True,
        "backbone": train.backbone,
        "loss": config.name,
        "epochs": config.epochs,
        "epochs_run": epochs_run,
        "best_epoch": result.best_epoch,
        "config": asdict(config),
        "data": {
            "source": train.source,
            "flip": train.extra.get("flip"),
            "train_people": int(len(np.unique(train.labels))),
            "train_photos": int((~train.augmented).sum()),
            "train_augmented": int(train.augmented.sum()),
            "val_people": int(len(np.unique(val.labels))) if len(val) else 0,
            "val_photos": len(val),
        },
        "validation_before": _rounded(result.before),
        "validation_after": _rounded(result.after),
        "target_far": config.target_far,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(result.seconds, 2),
    }


# --- writing, history and rollback ------------------------------------------------------------


def history_dir(path: Path) -> Path:
    """Where earlier versions of a head file are kept: <its folder>/history/."""
    return Path(path).parent / HISTORY_DIR_NAME


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _archive(path: Path, suffix: str = "") -> Path | None:
    """Copy a head file and its sidecar into history/ as <stem>-<UTC time><suffix>.h5."""
    path = Path(path)
    if not path.exists():
        return None
    target = history_dir(path) / f"{path.stem}-{_timestamp()}{suffix}.h5"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, target)
    if sidecar_path(path).exists():
        shutil.copy2(sidecar_path(path), sidecar_path(target))
    return target


def save_trained_head(head: Head, path: Path | None = None) -> tuple[Path, Path | None]:
    """Write a head atomically, first copying any earlier head there into history/.

    :param path: default `head_path(head.backbone)` (weights/head_<backbone>.h5).
    :return: (path written, archived copy of the earlier head or None).
    The old file stays in place until the new one replaces it in one rename, so a
    running app never sees a missing head.
    """
    path = Path(path) if path else head_path(head.backbone)
    archived = _archive(path)
    save_head(head, path)
    return path, archived


def head_history(path: Path) -> list[Path]:
    """Earlier heads for this file that can be rolled back to, newest first."""
    path = Path(path)
    found = history_dir(path).glob(f"{path.stem}-*.h5")
    return sorted((p for p in found if not p.stem.endswith(".rolled-back")), reverse=True)


def rollback_head(path: Path, to: Path | None = None) -> Path:
    """Put an earlier head back in place of `path` (default: the newest one in history/).

    The current head is kept in history/ as '<stem>-<time>.rolled-back.h5' (never picked
    by a later rollback), and the restored one leaves history/, so rolling back twice
    goes two versions back. The app picks it up with its reload action.
    :return: the history file that was restored.
    :raises FileNotFoundError: no earlier head to roll back to.
    """
    path = Path(path)
    candidates = head_history(path)
    chosen = Path(to) if to else (candidates[0] if candidates else None)
    if chosen is None or not chosen.exists():
        raise FileNotFoundError(f"no earlier head for {path} in {history_dir(path)}")
    _archive(path, suffix=".rolled-back")
    if sidecar_path(chosen).exists():
        os.replace(sidecar_path(chosen), sidecar_path(path))
    elif sidecar_path(path).exists():
        sidecar_path(path).unlink()
    os.replace(chosen, path)
    return chosen


# --- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n\n")[0])
    source = parser.add_argument_group("data")
    source.add_argument("--images", type=Path, help="folder-per-person photos, DIR/<person>/<photo>")
    source.add_argument("--gallery", type=Path, help="the app's SQLite database (stored features)")
    source.add_argument("--backbone", default="dlib-resnet", help="dlib-resnet (default) or vgg16-face")
    source.add_argument("--cache", type=Path, default=None, help="feature cache dir (default ~/.cache/faces-app)")
    source.add_argument("--people", type=int, default=None, help="use only the first N people (by name)")
    source.add_argument("--per-person", type=int, default=None, help="use at most N photos per person")
    source.add_argument("--augment", type=int, default=0, help="augmented copies per photo (--images only)")
    source.add_argument("--no-flip", action="store_true",
                        help="plain features, without mirror-image averaging (only if the app runs with flip off)")
    source.add_argument("--val-fraction", type=float, default=0.25, help="people held out for validation")
    source.add_argument("--test-fraction", type=float, default=0.0, help="people held out for a final test")
    loss = parser.add_argument_group("training")
    loss.add_argument("--loss", choices=LOSSES, default="triplet")
    loss.add_argument("--mining", choices=MININGS, default="semi-hard", help="triplet negatives")
    loss.add_argument("--focal", action="store_true", help="focal ArcFace loss")
    loss.add_argument("--margin", type=float, default=None, help="triplet 0.2, contrastive 1.0, arcface 0.5")
    loss.add_argument("--epochs", type=int, default=50)
    loss.add_argument("--people-per-batch", type=int, default=DEFAULT_P, help="P of P x K")
    loss.add_argument("--photos-per-person", type=int, default=DEFAULT_K, help="K of P x K")
    loss.add_argument("--lr", type=float, default=TrainConfig.learning_rate)
    loss.add_argument("--schedule", choices=SCHEDULES, default="constant",
                      help="constant; step (x --step-factor every --step-epochs); one-cycle (with momentum cycling)")
    loss.add_argument("--step-epochs", type=int, default=TrainConfig.step_epochs)
    loss.add_argument("--step-factor", type=float, default=TrainConfig.step_factor)
    loss.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                      help="L2 penalty on the head kernel (default 0.1, towards the starting kernel)")
    loss.add_argument("--decay-to", choices=("init", "zero"), default="init",
                      help="L2 towards the starting kernel (init, default) or towards zero (plain L2)")
    loss.add_argument("--patience", type=int, default=None, help="early stop after N epochs without progress")
    loss.add_argument("--target-far", type=float, default=1e-3, help="FAR of the open-set threshold")
    loss.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="head file (default weights/head_<backbone>.h5)")
    out.add_argument("--report", type=Path, default=None, help="write PNG reports into this folder")
    out.add_argument("--groups", type=Path, default=None, help="CSV person,group for TAR@FAR per group")
    out.add_argument("--export", type=Path, default=None, help="also export SavedModel + TFLite here")
    out.add_argument("--rollback", action="store_true", help="restore the previous head and exit")
    out.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    out = args.out or head_path(args.backbone)
    if args.rollback:
        restored = rollback_head(out)
        result = {"rolled_back": str(out), "restored": str(restored)}
        print(json.dumps(result))
        return result
    if (args.images is None) == (args.gallery is None):
        raise SystemExit("give --images DIR or --gallery DB")

    config = TrainConfig(
        loss=args.loss, mining=args.mining, epochs=args.epochs, p=args.people_per_batch, k=args.photos_per_person,
        margin=args.margin, focal=args.focal, learning_rate=args.lr, schedule=args.schedule,
        step_epochs=args.step_epochs, step_factor=args.step_factor,
        weight_decay=args.weight_decay, decay_to=args.decay_to, patience=args.patience, target_far=args.target_far, seed=args.seed,
    )
    features = load_features(
        args.images, args.gallery, backbone=args.backbone, cache_dir=args.cache, people=args.people,
        per_person=args.per_person, augment=args.augment, flip=False if args.no_flip else None,
        progress=not args.no_progress,
    )
    split = split_features(features, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    corrections = gallery_corrections(args.gallery, args.backbone, features.names) if args.gallery else None
    result = train_head(split.train, split.val, config, progress=not args.no_progress, corrections=corrections)
    written, archived = save_trained_head(result.head, out)

    summary = {
        "loss": config.name,
        "before": _rounded(result.before),
        "after": _rounded(result.after),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history) - 1,
        "seconds": round(result.seconds, 2),
        "threshold": result.head.threshold,
        "data": split.summary(),
        "corrections": 0 if corrections is None else len(corrections[1]),
        "out": str(written),
        "archived": str(archived) if archived else None,
    }
    if split.test is not None:
        start = initial_head(features.backbone, features.dim, config.seed)
        summary["test_before"] = _rounded(evaluate_head(start, split.test))
        summary["test_after"] = _rounded(evaluate_head(result.head, split.test))
    if args.report:
        from model import reports

        summary["reports"] = [str(p) for p in reports.write_all(
            args.report, result, split, images=args.images, groups=args.groups,
        )]
    if args.export:
        from model import export
        from model.backbones import get_backbone

        files = export.export_head(result.head, args.export, backbone=get_backbone(args.backbone))
        summary["export"] = {k: str(v) for k, v in files.items()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
