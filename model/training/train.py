"""Train the 128-unit head on cached backbone features (Keras 3 on TensorFlow).

    python -m model.train --images DIR   [--loss triplet|contrastive|arcface] [--epochs N] [--out FILE]
    python -m model.train --gallery DB   [...same options...]
    python -m model.train --rollback     [--out FILE | --backbone NAME]

Each photo's backbone features are computed once and cached (`datasets`),
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
inside functions: the web app never imports model.training. The weights folder and
the feature cache default to the app's settings (FACES_WEIGHTS_DIR, FACES_CACHE_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.head import EMBEDDING_DIM, Head, head_path
from model.training.config import LOSSES, MININGS, SCHEDULES, TrainConfig, schedule_at
from model.training.datasets import FeatureSet, gallery_corrections, gallery_source, load_features, split_features
from model.training.head_history import rollback_head, save_trained_head
from model.training.heads import REPORT_FARS, evaluate_head, initial_head
from model.training.sampling import DEFAULT_K, DEFAULT_P, correction_triplets, pk_batches, random_pairs, random_triplets


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


def _score(row: dict, target_far: float) -> tuple[float, float]:
    """Keep-best key: TAR at the target FAR, ties broken by the mean TAR over the report FARs."""
    tars = [v for k, v in row.items() if k.startswith("val_tar_at_far_")]
    return row.get(f"val_tar_at_far_{target_far:.0e}", 0.0), float(np.mean(tars)) if tars else 0.0


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
        (`datasets.gallery_corrections`): hard negatives for that person's anchors, mixed into
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

    from model.training import losses

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


# --- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    """The command line; the weights folder and the cache default to the app's settings table."""
    from webapp.settings import from_env

    settings = from_env()
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n\n")[0])
    parser.set_defaults(weights_dir=Path(settings["WEIGHTS_DIR"]))  # FACES_WEIGHTS_DIR
    source = parser.add_argument_group("data")
    source.add_argument("--images", type=Path, help="folder-per-person photos, DIR/<person>/<photo>")
    source.add_argument("--gallery", type=gallery_source,
                        help="the app's database (stored features): its SQLite file, or FACES_DATABASE_URL")
    source.add_argument("--backbone", default="dlib-resnet", help="dlib-resnet (default) or vgg16-face")
    source.add_argument("--cache", type=Path, default=Path(settings["CACHE_DIR"]),
                        help="feature cache dir (default %(default)s; FACES_CACHE_DIR moves it)")
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
    loss.add_argument("--target-far", type=float, default=TrainConfig.target_far, help="FAR of the open-set threshold")
    loss.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None,
                     help="head file (default weights/head_<backbone>.h5; FACES_WEIGHTS_DIR moves the folder)")
    out.add_argument("--report", type=Path, default=None, help="write PNG reports into this folder")
    out.add_argument("--groups", type=Path, default=None, help="CSV person,group for TAR@FAR per group")
    out.add_argument("--export", type=Path, default=None, help="also export SavedModel + TFLite here")
    out.add_argument("--rollback", action="store_true", help="restore the previous head and exit")
    out.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    out = args.out or head_path(args.backbone, args.weights_dir)
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
        weights_dir=args.weights_dir, progress=not args.no_progress,
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
        from model.training import reports

        summary["reports"] = [str(p) for p in reports.write_all(
            args.report, result, split, images=args.images, groups=args.groups,
        )]
    if args.export:
        from model.backbones import get_backbone
        from model.training import export

        files = export.export_head(result.head, args.export, backbone=get_backbone(args.backbone, args.weights_dir))
        summary["export"] = {k: str(v) for k, v in files.items()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
