"""End-to-end fine-tuning of a Keras backbone plus the 128-unit head, from photos.

For users with weights and a GPU (it runs on a CPU, slowly):

    python -m model.finetune --images DIR --backbone vgg16-face [--weights weights/vgg_face_weights.h5]
    python -m model.finetune --images DIR --backbone MobileNetV2 --weights my_mobilenetv2.h5 --input-size 160

- `vgg16-face`: the VGG-Face network with every layer frozen except the last
  `--trainable-layers` weighted layers (default 2: fc6 and fc7), as in the original design.
- any `keras.applications` model by name (DenseNet121, MobileNetV2, ResNet50, ...):
  built with include_top=False, pooling='avg', weights=None, then loaded from the
  user's weights file (saved from that same architecture); nothing is downloaded.
  All layers train unless --trainable-layers is given; BatchNorm statistics stay frozen.

Faces are detected and aligned once (dlib, `Recognizer.portrait_face`) and kept
as chips in memory; photo-level augmentation (`sampling.augment_photo`: flip,
brightness/contrast, small rotation and scale) is applied to the chips of every
training batch, before the backbone. The loss is semi-hard triplet loss on
P x K batches. The run writes the fine-tuned model (.keras), its export
(SavedModel + TFLite), and a report that compares backbones on the same
validation people (`comparison.png`, `comparison.json`). The last line of
stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.backbones import VGG_FACE_MEAN_BGR, VGG_FACE_WEIGHTS, DlibResNet, VGG16Face
from model.head import EMBEDDING_DIM
from model.paths import DEFAULT_WEIGHTS_DIR
from model.training import metrics
from model.training.heads import REPORT_FARS, initial_head
from model.training.sampling import augment_photo, pk_batches, split_people

VGG_FACE = "vgg16-face"
# keras.applications preprocessing, by model-name prefix: 'tf' scales to -1..1,
# 'torch' to ImageNet mean/std, 'caffe' to BGR minus the ImageNet mean, 'none'
# means the model rescales by itself.
PREPROCESS_BY_PREFIX = {
    "MobileNetV3": "none", "EfficientNet": "none", "ConvNeXt": "none", "RegNet": "none",
    "MobileNet": "tf", "Xception": "tf", "Inception": "tf", "NASNet": "tf", "ResNet50V2": "tf",
    "ResNet101V2": "tf", "ResNet152V2": "tf", "DenseNet": "torch",
    "ResNet": "caffe", "VGG": "caffe",
}
IMAGENET_MEAN_RGB = np.array([123.675, 116.28, 103.53], dtype=np.float32)
IMAGENET_STD_RGB = np.array([58.395, 57.12, 57.375], dtype=np.float32)
IMAGENET_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
DEFAULT_VGG_TRAINABLE = 2
DEFAULT_INPUT_SIZE = 224  # chip side of keras.applications backbones
# Chip padding for keras.applications backbones (align.face_chips), as dlib-resnet's.
DEFAULT_CHIP_PADDING = DlibResNet.chip_padding


@dataclass
class FinetuneConfig:
    """One fine-tuning run. steps_per_epoch None: (training photos) / (P * K)."""

    epochs: int = 5
    steps_per_epoch: int | None = None
    p: int = 8
    k: int = 4
    margin: float = 0.2
    learning_rate: float = 1e-5
    trainable_layers: int | None = None
    augment: bool = True
    target_far: float = 1e-3
    seed: int = 0


@dataclass
class Chips:
    """Aligned face chips of labelled photos: uint8 [N, S, S, 3] RGB, labels int64 [N]."""

    chips: NDArray[np.uint8]
    labels: NDArray[np.int64]
    names: list[str]
    paths: list[str]

    def subset(self, mask: NDArray[np.bool_]) -> "Chips":
        index = np.flatnonzero(mask)
        return Chips(self.chips[index], self.labels[index], self.names, [self.paths[i] for i in index])


@dataclass
class FinetuneResult:
    model: object  # keras.Model: float32 RGB chips (0..255) -> [N, 128] unit rows
    config: FinetuneConfig
    history: list[dict]
    best_epoch: int
    before: dict
    after: dict
    seconds: float
    info: dict = field(default_factory=dict)


# --- building ---------------------------------------------------------------------------


def preprocess_mode(name: str) -> str:
    """How a backbone wants its pixels: 'vggface', 'tf', 'torch', 'caffe' or 'none'."""
    if name == VGG_FACE:
        return "vggface"
    for prefix, mode in PREPROCESS_BY_PREFIX.items():
        if name.startswith(prefix):
            return mode
    raise ValueError(f"no preprocessing known for '{name}'; pass preprocess='tf'|'torch'|'caffe'|'none'")


def _preprocess(x, mode: str):
    """Keras ops on float32 RGB 0..255, inside the model so exports take raw chips."""
    from keras import ops

    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    if mode == "caffe":
        return ops.flip(x, axis=-1) - IMAGENET_MEAN_BGR
    if mode == "vggface":
        return ops.flip(x, axis=-1) - VGG_FACE_MEAN_BGR
    return x


def freeze_all_but_last(model, trainable_layers: int | None) -> None:
    """Freeze every layer except the last `trainable_layers` layers that have weights (None: freeze none).

    BatchNormalization layers are always frozen: Keras then runs them in inference mode,
    so small fine-tuning batches cannot shift their statistics.
    """
    import keras

    if trainable_layers is not None:
        weighted = [layer for layer in model.layers if layer.weights]
        for layer in weighted[: max(0, len(weighted) - trainable_layers)]:
            layer.trainable = False
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def build_backbone(name: str, weights: Path | None = None, *, input_size: int | None = None,
                   trainable_layers: int | None = None, options: dict | None = None,
                   weights_dir: Path | None = None):
    """A backbone as a Keras model, with the requested layers frozen.

    :param name: 'vgg16-face' or a keras.applications model name ('MobileNetV2', ...).
    :param weights: the weights file (vgg16-face default: <weights_dir>/vgg_face_weights.h5;
        keras.applications: required for real use; None leaves random weights, for tests).
    :param weights_dir: where vgg16-face's file is looked for (default model.paths.DEFAULT_WEIGHTS_DIR).
    :param input_size: chip side (vgg16-face is always 224; applications default 224).
    :param trainable_layers: train only the last N layers that have weights (vgg16-face
        default 2: fc6, fc7); None trains all.
    :param options: extra keyword arguments for the keras.applications constructor (e.g. alpha=0.35).
    :return: (keras.Model on preprocessed input, input_size, preprocess mode).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if name == VGG_FACE:
        path = Path(weights) if weights else Path(weights_dir or DEFAULT_WEIGHTS_DIR) / VGG_FACE_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"vgg16-face needs its weights file at {path} (never downloaded)")
        model = VGG16Face(path).keras_model  # the app's own loader: with or without the 2622-way top
        size = VGG16Face.chip_size
        if trainable_layers is None:
            trainable_layers = DEFAULT_VGG_TRAINABLE
    else:
        constructor = getattr(keras.applications, name, None)
        if constructor is None or not callable(constructor):
            raise ValueError(f"keras.applications has no model '{name}'")
        size = input_size or DEFAULT_INPUT_SIZE
        model = constructor(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg",
                            **(options or {}))
        if weights:
            model.load_weights(str(weights))
    freeze_all_but_last(model, trainable_layers)
    return model, size, preprocess_mode(name)


def embedding_model(backbone, input_size: int, mode: str, kernel: NDArray[np.float32] | None = None, seed: int = 0):
    """chips float32 [N, S, S, 3] RGB 0..255 -> preprocess -> backbone -> Dense(128) -> L2.

    The head kernel starts at `kernel`, or at the identity (128-D features) or a
    random Gaussian projection (others), as in `heads.initial_head`.
    BatchNorm layers are frozen by `build_backbone` and so run in inference mode.
    """
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="rgb_chips")
    features = backbone(_preprocess(inputs, mode))
    features = keras.layers.Flatten(name="features")(features)
    dense = keras.layers.Dense(EMBEDDING_DIM, use_bias=False, name="head")
    outputs = keras.layers.UnitNormalization(name="l2")(dense(features))
    dim = int(features.shape[-1])
    if kernel is None:
        kernel = initial_head("finetune", dim, seed).kernel
    dense.kernel.assign(kernel)
    return keras.Model(inputs, outputs, name="finetuned_embedding")


# --- data -------------------------------------------------------------------------------


def load_chips(images: Path, *, sizes: Sequence[tuple[int, float]], people: int | None = None,
               per_person: int | None = None, recognizer=None, progress: bool = True) -> list[Chips]:
    """Detect each photo's portrait face once and cut aligned chips at each (size, padding).

    :return: one Chips per entry of `sizes`, same photos and order: uint8 [N, size, size, 3] RGB.
    Cost: about 30-70 ms per photo for detection (dlib HOG), whatever the backbones.
    Memory: N * size^2 * 3 bytes per entry (6000 chips of 224 px: 0.9 GB).
    """
    from tqdm import tqdm

    from model.align import face_chips
    from model.images import ImageError, load_image
    from model.training.datasets import list_dataset

    if recognizer is None:
        from model.recognizer import Recognizer

        recognizer = Recognizer()
    recognizer.detector.load()
    images = Path(images)
    listing = list_dataset(images, people, per_person)
    chips: list[list[NDArray[np.uint8]]] = [[] for _ in sizes]
    labels, paths = [], []
    photos = [(label, path) for label, name in enumerate(listing) for path in listing[name]]
    for label, path in tqdm(photos, desc="aligning", unit="img", file=sys.stderr, disable=not progress):
        try:
            photo = load_image(path)
        except ImageError as exc:
            print(f"unreadable: {path}: {exc}", file=sys.stderr)
            continue
        face, _ = recognizer.portrait_face(photo)
        for found, (size, padding) in zip(chips, sizes):
            found.append(face_chips(photo, [face], size=size, padding=padding)[0])
        labels.append(label)
        paths.append(path.relative_to(images).as_posix())
    labels = np.array(labels, dtype=np.int64)
    return [Chips(np.stack(found), labels, list(listing), paths) for found in chips]


# --- training -------------------------------------------------------------------------------


def embed_chips(model, chips: NDArray[np.uint8], batch_size: int = 32) -> NDArray[np.float32]:
    """Run an embedding model on uint8 chips in batches: float32 [N, 128]."""
    from keras import ops

    parts = [ops.convert_to_numpy(model(chips[i : i + batch_size].astype(np.float32), training=False))
             for i in range(0, len(chips), batch_size)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, EMBEDDING_DIM), np.float32)


def verification(embeddings: NDArray[np.float32], labels: NDArray[np.int64], fars=REPORT_FARS) -> dict:
    genuine, impostor = metrics.pair_scores(embeddings, labels)
    return metrics.verification_at_fars(genuine, impostor, tuple(fars))


def finetune(model, train: Chips, val: Chips, config: FinetuneConfig | None = None, *,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune an `embedding_model` end to end with semi-hard triplet loss on P x K batches.

    Keeps the epoch with the best validation TAR at config.target_far (epoch 0 = the start).
    """
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from model.training import losses

    config = config or FinetuneConfig()
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    variables = list(model.trainable_variables)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = losses.semi_hard_triplet_loss(model(x, training=True), y, config.margin)
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    key = f"tar_at_far_{config.target_far:.0e}"
    before = verification(embed_chips(model, val.chips), val.labels)
    history = [{"epoch": 0, "loss": float("nan"), **{f"val_{k}": v for k, v in before.items()}}]
    best_epoch, best_weights, best = 0, [v.numpy() for v in variables], before[key]
    steps = config.steps_per_epoch or max(1, len(train.labels) // (config.p * config.k))
    batches = _forever(lambda: pk_batches(train.labels, p=config.p, k=config.k, rng=rng))
    bar = tqdm(total=config.epochs * steps, desc="fine-tuning", unit="step", file=sys.stderr, disable=not progress)
    for epoch in range(1, config.epochs + 1):
        epoch_losses = []
        for _ in range(steps):
            rows = next(batches)
            chips = train.chips[rows]
            if config.augment:
                chips = np.stack([augment_photo(chip, rng) for chip in chips])
            epoch_losses.append(float(train_step(tf.constant(chips, tf.float32), tf.constant(train.labels[rows]))))
            bar.update(1)
        scores = verification(embed_chips(model, val.chips), val.labels)
        history.append({"epoch": epoch, "loss": float(np.mean(epoch_losses)),
                        **{f"val_{k}": v for k, v in scores.items()}})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", val_tar=f"{scores[key]:.4f}")
        if scores[key] > best:
            best_epoch, best_weights, best = epoch, [v.numpy() for v in variables], scores[key]
    bar.close()
    for variable, value in zip(variables, best_weights):
        variable.assign(value)
    after = verification(embed_chips(model, val.chips), val.labels)
    return FinetuneResult(model, config, history, best_epoch, before, after, time.perf_counter() - start)


def _forever(make: Callable):
    while True:
        yield from make()


def compare_backbones(candidates: dict[str, Callable[[Chips], NDArray[np.float32]]], val: dict[str, Chips],
                      folder: Path | None = None) -> dict[str, dict]:
    """Verification of several embedders on the same validation people, as one table and chart.

    :param candidates: {label: embed function}; each receives the validation Chips cut for it.
    :param val: {label: Chips} (each backbone wants its own chip size; the photos and people are the same).
    :param folder: where to write comparison.png and comparison.json (optional).
    """
    rows = {label: verification(embed(val[label]), val[label].labels) for label, embed in candidates.items()}
    if folder:
        from model.training import reports

        folder = Path(folder)
        reports.plot_comparison(rows, folder / "comparison.png", title="backbones on the same validation people")
        (folder / "comparison.json").write_text(json.dumps(rows, indent=1))
    return rows


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict:
    from webapp.settings import from_env  # the app's settings table: FACES_WEIGHTS_DIR

    weights_dir = Path(from_env()["WEIGHTS_DIR"])
    parser = argparse.ArgumentParser(prog="python -m model.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder-per-person photos")
    parser.add_argument("--backbone", required=True, help="vgg16-face or a keras.applications name")
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"backbone weights file (vgg16-face default: {weights_dir / VGG_FACE_WEIGHTS})")
    parser.add_argument("--input-size", type=int, default=None, help=f"chip side (applications; default {DEFAULT_INPUT_SIZE})")
    parser.add_argument("--trainable-layers", type=int, default=None, help="train only the last N weighted layers")
    parser.add_argument("--people", type=int, default=None)
    parser.add_argument("--per-person", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for the model, export and report")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress

    backbone, size, mode = build_backbone(args.backbone, args.weights, input_size=args.input_size,
                                          trainable_layers=args.trainable_layers, weights_dir=weights_dir)
    padding = VGG16Face.chip_padding if args.backbone == VGG_FACE else DEFAULT_CHIP_PADDING
    dlib_chip = (DlibResNet.chip_size, DlibResNet.chip_padding)
    chips, dlib_chips = load_chips(args.images, sizes=[(size, padding), dlib_chip], people=args.people,
                                   per_person=args.per_person, progress=progress)
    train_mask, val_mask, _ = split_people(chips.labels, val_fraction=args.val_fraction, seed=args.seed)
    train, val = chips.subset(train_mask), chips.subset(val_mask)
    config = FinetuneConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, learning_rate=args.lr,
                            trainable_layers=args.trainable_layers, augment=not args.no_augment, seed=args.seed)
    result = finetune(embedding_model(backbone, size, mode, seed=args.seed), train, val, config, progress=progress)

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / f"finetuned_{args.backbone}.keras"
    result.model.save(model_path)
    summary = {"backbone": args.backbone, "before": result.before, "after": result.after,
               "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1), "model": str(model_path),
               "config": asdict(config), "train_people": int(len(np.unique(train.labels))),
               "val_people": int(len(np.unique(val.labels)))}

    # The default backbone (dlib-resnet, identity head) on the same validation people.
    dlib_val = dlib_chips.subset(val_mask)
    dlib = DlibResNet()
    rows = compare_backbones(
        {"dlib-resnet": lambda c: dlib.embed(c.chips), f"{args.backbone} fine-tuned": lambda c: embed_chips(result.model, c.chips)},
        {"dlib-resnet": dlib_val, f"{args.backbone} fine-tuned": val},
        args.out,
    )
    summary["comparison"] = rows
    if not args.no_export:
        from model.training.export import export_model

        exported = export_model(result.model, args.out / "export",
                                description={"backbone": args.backbone, "input_note": f"aligned RGB chips {size}x{size}, 0..255"})
        summary["export"] = {k: str(v) for k, v in exported.items()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
