"""Train a face-embedding backbone end to end, from aligned chips (Keras 3 on any backend).

    python -m model.train_backbone --arch densenet121|ir-resnet18|ir-resnet50|mobilenet|small-cnn
        --loss contrastive|triplet|arcface [--focal] --schedule cyclical|one-cycle|step
        --images DIR --epochs N --image-size 112 --out DIR [--weights FILE] [--max-people N]
        [--time-budget-s S] [--resume] [--detector yunet|hog|mtcnn] [--chips FILE] [--export-chips FILE]

The classic recipes: DenseNet-121 as a Siamese network with contrastive loss and a cyclical
learning rate with cyclical momentum; IR-ResNet and MobileNet with ArcFace (s = 64, m = 0.5),
optionally focal; our small CNN as the baseline. Nothing is downloaded: from scratch, or from the
user's weights file. Architectures: `backbone_models`; losses: `backbone_losses`; schedules:
`backbone_schedules`; chips and the person split: `backbone_data`.

Python API (what `python -m model.train_backbone` calls; the comparison report uses it too)::

    from model.training.backbone_train import BackboneConfig, train_backbone
    result = train_backbone(BackboneConfig(arch="small-cnn", loss="arcface", images=Path("celeba"),
                                           epochs=5, image_size=112, out=Path("runs/small")))
    result.embedding       # keras.Model: float32 [N, S, S, 3] RGB chips 0..255 -> [N, 128] unit rows
    result.metrics         # {"val_tar_at_far_1e-03": ..., "val_accuracy": ..., ...} of the kept epoch
    result.history         # one row per epoch (epoch 0: the untrained network), loss, lr, beta_1
    result.embed(chips)    # numpy in, numpy out, in batches
    result.chips_layout    # how to cut chips for it: model.align.arcface_chips(frame, faces, size=S)

Data: chips from `backbone_data.prepare_chips` (the project's detector and ArcFace-layout
alignment, cached as uint8), or a prepared `--chips` file; people are split into training and
validation sets (`--val-fraction`, nobody in both). Each epoch ends with the validation people's
TAR at FAR 1e-3 over all their pairs (`metrics.verification_at_fars`) and the 10-fold accuracy on
balanced pairs (`metrics.kfold_accuracy`); the epoch with the best TAR is kept and saved as
OUT/embedding.keras. A checkpoint (weights, optimizer state, history) is written to
OUT/checkpoint/ after every epoch; `--resume` continues from its epoch. `--time-budget-s` stops
training after that many seconds (the epoch under way ends early and counts). Progress bars go to
stderr (tqdm when installed); the last line of stdout is one JSON object.

Using a trained network in the app (not wired in): a Backbone subclass in model/backbones.py whose
`_load` calls keras.saving.load_model(OUT/embedding.keras), whose `chips` is
`arcface_chips(frame, faces, size=S)`, with dim = 128 and `_embed_batch` = the model on float32
chips; its head is then the identity, since the network already ends in the head's shape.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.training import metrics
from model.training.backbone_batches import make_batches
from model.training.backbone_data import FaceChips, load_chips, prepare_chips, split_by_person
from model.training.backbone_models import ARCHS, check_arch
from model.training.backbone_schedules import SCHEDULES

LOSSES = ("contrastive", "triplet", "arcface")
TARGET_FAR = 1e-3
TAR_KEY = f"val_tar_at_far_{TARGET_FAR:.0e}"  # 'val_tar_at_far_1e-03'
DEFAULT_LR = {"contrastive": 1e-3, "triplet": 1e-3, "arcface": 1e-3}
MAX_ACCURACY_PAIRS = 3000  # genuine pairs (and as many impostor pairs) for the 10-fold accuracy


@dataclass
class BackboneConfig:
    """One run. images or chips_file gives the data; out is where the model and checkpoints go.

    p x k: people per batch x photos per person (triplet, arcface); contrastive batches hold
    p * k pairs, half of them of one person. steps_per_epoch None: training photos / (p * k).
    learning_rate None: DEFAULT_LR for the loss. jit_compile: Keras' ("auto": XLA where it can).
    run_eagerly: no compiled train step (starts in seconds instead of a minute on a busy CPU, for
    runs of a few steps such as the tests; slower per step).
    """

    arch: str = "small-cnn"
    loss: str = "arcface"
    schedule: str = "one-cycle"
    focal: bool = False
    images: Path | None = None
    chips_file: Path | None = None
    out: Path | None = None
    epochs: int = 10
    image_size: int = 112
    weights: Path | None = None
    max_people: int | None = None
    per_person: int | None = None
    time_budget_s: float | None = None
    resume: bool = False
    detector: str = "yunet"
    cache_dir: Path | None = None
    val_fraction: float = 0.2
    p: int = 16
    k: int = 4
    steps_per_epoch: int | None = None
    learning_rate: float | None = None
    cycle_epochs: float = 2.0
    step_epochs: int = 10
    step_factor: float = 0.1
    augment: bool = True
    mobilenet_alpha: float = 1.0
    jit_compile: bool | str = "auto"
    run_eagerly: bool = False
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError (FileNotFoundError for missing paths) with a message fit for the command line."""
        from model.training.backbone_losses import check_loss

        check_arch(self.arch, self.image_size)
        check_loss(self.loss, self.focal)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if self.epochs < 1:
            raise ValueError("--epochs must be 1 or more")
        if self.images is None and self.chips_file is None:
            raise ValueError("give --images DIR (one sub-folder of photos per person) or --chips FILE")
        if self.weights is not None and not Path(self.weights).is_file():
            raise FileNotFoundError(f"weights file {self.weights} not found (nothing is downloaded)")

    @property
    def lr(self) -> float:
        return self.learning_rate or DEFAULT_LR[self.loss]

    def fingerprint(self) -> dict:
        """What a checkpoint must share with the run that resumes it."""
        return {k: getattr(self, k) for k in ("arch", "loss", "focal", "schedule", "image_size", "p", "k", "seed")}


@dataclass
class BackboneResult:
    embedding: object  # keras.Model, the kept epoch's weights
    config: BackboneConfig
    history: list[dict]
    best_epoch: int
    metrics: dict
    seconds: float
    stopped_by_time_budget: bool
    data: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    @property
    def chips_layout(self) -> str:
        return f"model.align.arcface_chips(frame, faces, size={self.config.image_size})"

    def embed(self, chips: NDArray[np.uint8], batch_size: int = 128) -> NDArray[np.float32]:
        return embed(self.embedding, chips, batch_size)

    def summary(self) -> dict:
        return {"arch": self.config.arch, "loss": self.config.loss + ("+focal" if self.config.focal else ""),
                "schedule": self.config.schedule, "image_size": self.config.image_size,
                TAR_KEY: self.metrics.get(TAR_KEY), "val_accuracy": self.metrics.get("val_accuracy"),
                "best_epoch": self.best_epoch, "epochs_run": self.history[-1]["epoch"] if self.history else 0,
                "first_epoch_loss": _loss_of(self.history, 1), "last_epoch_loss": _loss_of(self.history, -1),
                "seconds": round(self.seconds, 1), "stopped_by_time_budget": self.stopped_by_time_budget,
                "backend": _backend(), "data": self.data, **self.files}


def _loss_of(history: list[dict], index: int) -> float | None:
    rows = [row for row in history if row.get("loss") is not None]
    return rows[index if index < 0 else index - 1]["loss"] if rows else None


def _backend() -> str:
    import keras

    return keras.backend.backend()


# --- scoring -------------------------------------------------------------------------------------


def embed(model, chips: NDArray[np.uint8], batch_size: int = 128) -> NDArray[np.float32]:
    """uint8 chips [N, S, S, 3] -> float32 [N, 128] through an embedding model, inference mode."""
    from keras import ops

    parts = [ops.convert_to_numpy(model(chips[i:i + batch_size].astype(np.float32), training=False))
             for i in range(0, len(chips), batch_size)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 128), np.float32)


def verification_scores(embeddings: NDArray[np.float32], labels: NDArray[np.int64], seed: int = 0) -> dict:
    """TAR at FAR 1e-3 over every pair of the validation photos, and 10-fold accuracy on balanced pairs."""
    genuine, impostor = metrics.pair_scores(embeddings, labels)
    scores = {f"val_{k}": v for k, v in metrics.verification_at_fars(genuine, impostor, (TARGET_FAR,)).items()}
    rng = np.random.default_rng(seed)
    n = min(len(genuine), len(impostor), MAX_ACCURACY_PAIRS)
    pair_scores = np.concatenate([rng.choice(genuine, n, replace=False), rng.choice(impostor, n, replace=False)])
    same = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    folds = rng.permutation(np.arange(2 * n) % 10)
    scores["val_accuracy"] = float(np.mean(metrics.kfold_accuracy(pair_scores, same, folds))) if n else 0.0
    return scores


# --- the run ---------------------------------------------------------------------------------------


def load_data(config: BackboneConfig) -> FaceChips:
    """The chips the config names: a prepared file, or a folder aligned (and cached) now."""
    if config.chips_file is not None:
        chips = load_chips(config.chips_file, config.max_people)
        if chips.image_size != config.image_size:
            raise ValueError(f"{config.chips_file} holds {chips.image_size} px chips, "
                             f"not --image-size {config.image_size}")
        return chips
    return prepare_chips(config.images, image_size=config.image_size, detector=config.detector,
                         max_people=config.max_people, per_person=config.per_person, cache_dir=config.cache_dir,
                         progress=config.progress)


def train_backbone(config: BackboneConfig, chips: FaceChips | None = None) -> BackboneResult:
    """Train one backbone (see the module docstring); `chips` skips loading the data again.

    :raises ValueError / FileNotFoundError: bad options or data, with a message saying what to change.
    """
    from model.training import backbone_callbacks as cb

    config.check()
    chips = chips if chips is not None else load_data(config)
    train_mask, val_mask = split_by_person(chips.labels, config.val_fraction, config.seed)
    train, val = chips.subset(train_mask), chips.subset(val_mask)
    steps = config.steps_per_epoch or max(1, len(train) // (config.p * config.k))
    folder = Path(config.out) / "checkpoint" if config.out else None
    state = cb.read_state(folder) if folder and config.resume else None
    if state:
        cb.check_options(folder, state, config.fingerprint())  # before building anything
    first_epoch = state["epoch"] if state else 0

    embedding, training, optimizer, batches = build_run(config, train, steps, first_epoch)
    history: list[dict] = list(state["history"]) if state else []
    best: dict = {}
    started = time.monotonic()
    if state:
        cb.restore(folder, training, embedding, optimizer, state, best)
    else:
        history.append({"epoch": 0, "loss": None, **verification_scores(embed(embedding, val.chips), val.labels,
                                                                         config.seed)})
    embed_val = (lambda x: embed(embedding, x)) if config.run_eagerly else None  # else embedding.predict
    budget = cb.TimeBudget(config.time_budget_s, started)
    callbacks = [cb.Validation(embedding, val, partial(verification_scores, seed=config.seed), TAR_KEY, history,
                               best, optimizer, started, embed_val), budget]
    if folder:
        callbacks.append(cb.Checkpoint(folder, training, embedding, optimizer, history, best, config.fingerprint()))
    callbacks.append(cb.Progress(config.epochs * steps, first_epoch * steps, config.progress, history, TAR_KEY))
    if first_epoch < config.epochs:
        training.fit(batches, epochs=config.epochs, initial_epoch=first_epoch, callbacks=callbacks, verbose=0)

    kept = keep_best(embedding, history, best)
    row = next(r for r in history if r["epoch"] == kept)
    result = BackboneResult(
        embedding, config, history, kept, {k: v for k, v in row.items() if k.startswith("val_")},
        time.monotonic() - started, budget.stopped,
        data={"people": chips.people(), "photos": len(chips), "train_people": train.people(),
              "train_photos": len(train),
              "val_people": val.people(), "val_photos": len(val), "no_face_detected": int((~chips.detected).sum()),
              "steps_per_epoch": steps, "batch": config.p * config.k},
    )
    if config.out:
        result.files = save_result(result, Path(config.out))
    return result


def build_run(config: BackboneConfig, train: FaceChips, steps: int, first_epoch: int):
    """(embedding network, training network, its optimizer built on its variables, batches), compiled."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from model.training.backbone_losses import make_loss, training_model
    from model.training.backbone_models import build_embedding
    from model.training.backbone_schedules import ScheduledAdam, make_schedules

    keras.utils.set_random_seed(config.seed)
    embedding = build_embedding(config.arch, config.image_size, weights=config.weights,
                                mobilenet_alpha=config.mobilenet_alpha)
    batches, classes = make_batches(train, loss=config.loss, p=config.p, k=config.k, augment=config.augment,
                                    seed=config.seed, steps=steps, first_epoch=first_epoch)
    training = training_model(embedding, config.loss, classes)
    lr, momentum = make_schedules(config.schedule, config.lr, steps_per_epoch=steps, epochs=config.epochs,
                                  cycle_epochs=config.cycle_epochs, step_epochs=config.step_epochs,
                                  step_factor=config.step_factor)
    optimizer = ScheduledAdam(lr, momentum)
    training.compile(optimizer=optimizer, loss=make_loss(config.loss, config.focal), jit_compile=config.jit_compile,
                     run_eagerly=config.run_eagerly)
    optimizer.build(training.trainable_variables)
    return embedding, training, optimizer, batches


def keep_best(embedding, history: list[dict], best: dict) -> int:
    """Put the best trained epoch's weights back (epoch 0, the untrained network, never counts); its number."""
    if best.get("weights") is None:
        return history[-1]["epoch"]
    embedding.set_weights(best["weights"])
    return best["epoch"]


def save_result(result: BackboneResult, out: Path) -> dict:
    """OUT/embedding.keras (the kept epoch), OUT/embedding.weights.h5, OUT/summary.json; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"embedding_model": str(out / "embedding.keras"), "embedding_weights": str(out / "embedding.weights.h5"),
             "summary_file": str(out / "summary.json")}
    result.embedding.save(files["embedding_model"])
    result.embedding.save_weights(files["embedding_weights"])
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result.config).items()}
    summary = {**result.summary(), **files, "chips_layout": result.chips_layout, "config": config,
               "history": result.history}
    Path(files["summary_file"]).write_text(json.dumps(summary, indent=1))
    return files


# --- command line ------------------------------------------------------------------------------------


def _parser():
    import argparse

    from webapp.settings import from_env  # the app's settings table: FACES_DETECTOR, FACES_CACHE_DIR

    settings = from_env()
    parser = argparse.ArgumentParser(prog="python -m model.train_backbone", description=__doc__.split("\n\n")[1])
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--loss", choices=LOSSES, required=True)
    parser.add_argument("--focal", action="store_true", help="focal ArcFace loss (gamma 2)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="one-cycle")
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, help="folder-per-person photos, DIR/<person>/<photo>")
    data.add_argument("--chips", type=Path, help="a prepared chips file (--export-chips) instead of --images")
    data.add_argument("--export-chips", type=Path, help="align --images, write the chips to this file and stop")
    data.add_argument("--detector", default=settings["DETECTOR"], help="yunet, hog or mtcnn (default %(default)s)")
    data.add_argument("--cache", type=Path, default=Path(settings["CACHE_DIR"]),
                      help="chip cache (default %(default)s; FACES_CACHE_DIR)")
    data.add_argument("--max-people", type=int, default=None, help="only the first N people (by name)")
    data.add_argument("--per-person", type=int, default=None, help="at most N photos per person")
    data.add_argument("--val-fraction", type=float, default=0.2, help="people held out for validation")
    run = parser.add_argument_group("training")
    run.add_argument("--epochs", type=int, default=10)
    run.add_argument("--image-size", type=int, default=112)
    run.add_argument("--weights", type=Path, help="start from this weights file (see backbone_models)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    run.add_argument("--people-per-batch", type=int, default=16, help="P of P x K")
    run.add_argument("--photos-per-person", type=int, default=4, help="K of P x K")
    run.add_argument("--steps-per-epoch", type=int, default=None)
    run.add_argument("--time-budget-s", type=float, default=None, help="stop training after this many seconds")
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    run.add_argument("--no-augment", action="store_true")
    run.add_argument("--no-jit", action="store_true", help="no XLA compilation")
    run.add_argument("--eager", action="store_true", help="no compiled step: starts at once, slower per step")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, required=False, help="folder for the model, checkpoints and summary")
    run.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = _parser()
    args = parser.parse_args(argv)
    config = BackboneConfig(
        arch=args.arch, loss=args.loss, focal=args.focal, schedule=args.schedule, images=args.images,
        chips_file=args.chips, out=args.out, epochs=args.epochs, image_size=args.image_size, weights=args.weights,
        max_people=args.max_people, per_person=args.per_person, time_budget_s=args.time_budget_s, resume=args.resume,
        detector=args.detector, cache_dir=args.cache, val_fraction=args.val_fraction, p=args.people_per_batch,
        k=args.photos_per_person, steps_per_epoch=args.steps_per_epoch, learning_rate=args.lr,
        augment=not args.no_augment, jit_compile=False if args.no_jit else "auto", run_eagerly=args.eager,
        seed=args.seed,
        progress=not args.no_progress,
    )
    try:
        if args.export_chips:
            chips = load_data(config)
            from model.training.backbone_data import save_chips

            summary = {"chips_file": str(save_chips(chips, args.export_chips)), "people": chips.people(),
                       "photos": len(chips), "image_size": chips.image_size, "detector": config.detector}
        else:
            if args.out is None:
                raise ValueError("give --out DIR for the trained model and its checkpoints")
            summary = train_backbone(config).summary()
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
