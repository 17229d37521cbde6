"""The image mode of the person classifier: whole images through a `keras.applications` CNN.

The recipe's own point: naming a person in a picture where the face is not visible (turned away,
far off), so nothing here detects or aligns a face. The dataset is one folder per person plus an
`Unknown/` folder of other people and scenes; photos without a visible face are welcome.

Each image is centre-cropped to a square and resized to `input_size`. The model is
images float32 [N, S, S, 3] RGB 0..255 -> the network's own preprocessing -> CNN (include_top=False,
average pooling; ImageNet weights from a file the user supplies, random otherwise; nothing is
downloaded) -> 'features' -> dropout -> softmax over people + Unknown. Pass 1 trains the softmax
alone; pass 2 also the top `fine_tune_layers` weighted layers of the CNN at a lower rate, BatchNorm
statistics frozen. From random weights there is nothing to keep: pass 2 trains every layer,
BatchNorm included, and pass 1 (a softmax on random features) only warms the softmax up, so one
epoch of it is plenty. Training batches are augmented like enrollment photos (`sampling.augment_photo`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from model.training.classifier import ClassifierConfig, ClassifierResult, fit_two_passes
from model.training.classifier_data import MIN_PEOPLE, UNKNOWN, ClassifierDataError
from model.training.datasets import IMAGE_SUFFIXES
from model.training.sampling import augment_photo

IMAGE_ARCHS = ("MobileNetV2", "ResNet50", "InceptionResNetV2", "VGG16")
# Smallest input keras.applications accepts per network (others: 32).
MIN_INPUT_SIZE = {"InceptionResNetV2": 75}
DEFAULT_INPUT_SIZE = 128
# Weighted layers of the CNN trained in pass 2 when it starts from the user's ImageNet weights.
DEFAULT_FINE_TUNE_LAYERS = 20


@dataclass
class ImageSet:
    """Whole images of labelled people: uint8 [N, S, S, 3] RGB, labels int64 [N] in 0..P (P = Unknown)."""

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    classes: list[str]
    paths: list[str]

    def subset(self, mask) -> "ImageSet":
        index = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return ImageSet(self.images[index], self.labels[index], self.classes, [self.paths[i] for i in index])


def square_resize(photo: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """The centred square of an RGB photo [H, W, 3], resized to [size, size, 3]."""
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(photo[top:top + side, left:left + side])
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def image_folders(folder: Path, *, people: int | None = None, per_person: int | None = None,
                  unknown_per_person: int | None = None, require_unknown: bool = True) -> dict[str, list[Path]]:
    """{class: photos} of DIR/<person>/* with 'Unknown' last; people sorted by name.

    :param unknown_per_person: photos kept from Unknown/ (default: per_person times the people).
    :raises ClassifierDataError: no such folder, no Unknown/ folder (when required), fewer than 2 people.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ClassifierDataError(f"no dataset folder at {folder}")
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != UNKNOWN):
        photos = _photos(sub)
        if photos:
            found[sub.name] = photos[:per_person] if per_person else photos
        if people and len(found) >= people:
            break
    unknown_dir = folder / UNKNOWN
    unknown = _photos(unknown_dir) if unknown_dir.is_dir() else []
    if require_unknown and not unknown:
        raise ClassifierDataError(f"no {UNKNOWN}/ folder with photos in {folder}: the image mode learns the "
                                  f"{UNKNOWN} class from it (other people, scenes, anyone not enrolled)")
    if len(found) < MIN_PEOPLE:
        raise ClassifierDataError(f"a classifier needs at least {MIN_PEOPLE} person folders with photos in "
                                  f"{folder}, found {len(found)}")
    limit = unknown_per_person or (per_person * len(found) if per_person else None)
    found[UNKNOWN] = unknown[:limit] if limit else unknown
    return found


def load_image_set(folder: Path, size: int, **options) -> ImageSet:
    """Every photo of `image_folders`, square-cropped and resized to `size`; unreadable files are skipped."""
    from model.images import ImageError, load_image

    listing = image_folders(folder, **options)
    images, labels, paths = [], [], []
    for label, photos in enumerate(listing.values()):
        for photo in photos:
            try:
                images.append(square_resize(load_image(photo), size))
            except ImageError:
                continue
            labels.append(label)
            paths.append(photo.relative_to(folder).as_posix())
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), list(listing), paths)


def image_classifier(arch: str, n_classes: int, *, input_size: int = DEFAULT_INPUT_SIZE, weights: Path | None = None,
                     dropout: float = 0.2, options: dict | None = None):
    """(Keras model images float32 [N, S, S, 3] 0..255 -> softmax [N, C], the CNN inside it).

    :param arch: a keras.applications name (IMAGE_ARCHS are the documented ones).
    :param weights: the user's weights file for that CNN (include_top=False); None: random weights.
    :raises ValueError: unknown network, or an input smaller than it accepts.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from model.training.finetune import _preprocess, build_backbone

    smallest = MIN_INPUT_SIZE.get(arch, 32)
    if input_size < smallest:
        raise ValueError(f"{arch} needs images of at least {smallest} px (got {input_size})")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"no weights file at {weights} (ImageNet weights are never downloaded)")
    cnn, size, mode = build_backbone(arch, weights, input_size=input_size, options=options)
    inputs = keras.Input((size, size, 3), name="images")
    features = keras.layers.Identity(name="features")(cnn(_preprocess(inputs, mode)))
    x = keras.layers.Dropout(dropout, name="dropout")(features)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=f"{arch}_person_classifier"), cnn


def _pass_setter(cnn, fine_tune_layers: int | None, from_scratch: bool = False):
    """Pass 1: the CNN frozen. Pass 2: its top `fine_tune_layers` weighted layers with BatchNorm frozen
    (the user's ImageNet statistics kept); from scratch, every layer, BatchNorm learning its statistics."""
    from model.training.finetune import freeze_all_but_last

    def set_pass(model, pass_: int) -> None:
        cnn.trainable = pass_ == 2
        if pass_ == 2:
            for layer in cnn.layers:  # each one: build_backbone froze the BatchNorm layers one by one
                layer.trainable = True
            if not from_scratch:
                freeze_all_but_last(cnn, fine_tune_layers)

    return set_pass


def train_image_classifier(data: ImageSet, arch: str, config: ClassifierConfig | None = None, *,
                           weights: Path | None = None, fine_tune_layers: int | None = DEFAULT_FINE_TUNE_LAYERS,
                           options: dict | None = None, progress: bool = False) -> ClassifierResult:
    """Train the image-mode classifier (two passes, balanced class weights, augmented images).

    :param fine_tune_layers: weighted layers of the CNN trained in pass 2 with user weights;
        ignored without weights (the whole CNN trains, BatchNorm too). Cost on 2 CPU cores: about 30 ms an image
        an epoch for MobileNetV2 at 128 px, several times that for ResNet50.
    """
    config = config or ClassifierConfig(epochs=3, fine_tune_epochs=3, learning_rate=1e-3, batch_size=16)
    size = data.images.shape[1]
    model, cnn = image_classifier(arch, len(data.classes), input_size=size, weights=weights, dropout=config.dropout,
                                  options=options)
    layers = fine_tune_layers if weights is not None else None

    def make(rows, rng):
        batch = data.images[rows]
        if config.augment:
            batch = np.stack([augment_photo(image, rng) for image in batch])
        return batch.astype(np.float32)

    set_pass = _pass_setter(cnn, layers, from_scratch=weights is None)
    history, seconds = fit_two_passes(model, set_pass, make, data.labels, len(data.classes), config, progress=progress)
    counts = np.bincount(data.labels, minlength=len(data.classes))
    info = {"mode": "images", "arch": arch, "weights": str(weights) if weights else None,
            "fine_tune_layers": layers, "input_size": size,
            "data": {"people": len(data.classes) - 1, "photos": int(counts[:-1].sum()), "strangers": int(counts[-1])},
            "input": {"name": "images", "shape": [None, size, size, 3], "dtype": "float32",
                      "note": "RGB 0..255, the centred square of the photo resized (classifier_images.square_resize)"}}
    return ClassifierResult(model, data.classes, config, history, seconds, info)
