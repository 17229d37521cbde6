"""Backbones: aligned face chips in, L2-normalised float32 feature vectors out.

One short class per network behind `Backbone`. Each knows the chip it wants
(size and padding for `align.face_chips`), loads its weights lazily in `load()`,
and batches in `embed()`.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.align import arcface_chips, face_chips, mirrored
from model.detect import Face
from model.paths import DEFAULT_WEIGHTS_DIR

VGG_FACE_WEIGHTS = "vgg_face_weights.h5"
# VGGFace (v1) mean pixel, in B, G, R order; the network expects BGR input minus these.
VGG_FACE_MEAN_BGR = np.array([93.5940, 104.7624, 129.1863], dtype=np.float32)


class BackboneUnavailable(RuntimeError):
    """The backbone cannot run here (its weights file is missing). The message says what to do."""


def l2_normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """Scale each row to unit length (rows of zeros stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class Backbone:
    """A face-embedding network. Subclasses fill in `_load` and `_embed_batch`."""

    name: str = ""
    dim: int = 0
    chip_size: int = 0
    chip_padding: float = 0.25
    batch_size: int = 32

    def __init__(self) -> None:
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> "Backbone":
        """Load the weights once; later calls return at once."""
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    def clone(self) -> "Backbone":
        """The same network and settings as a new, unloaded object, for another thread
        (dlib's network keeps per-call state and must not run on two threads at once)."""
        twin = copy.copy(self)
        twin._loaded = False
        twin._lock = threading.Lock()
        return twin

    def chips(self, frame: NDArray[np.uint8], faces: Sequence[Face]) -> NDArray[np.uint8]:
        """The aligned chips this network wants: dlib's layout at chip_size and chip_padding by default."""
        return face_chips(frame, faces, size=self.chip_size, padding=self.chip_padding)

    def features(self, frame: NDArray[np.uint8], faces: Sequence[Face], *, flip: bool = True) -> NDArray[np.float32]:
        """Features of the given faces: float32 [N, dim], unit rows.

        With flip, each face's chip and its mirror image go in one batch and their features are averaged.
        """
        chips = self.chips(frame, faces)
        if not flip or len(chips) == 0:
            return self.embed(chips)
        both = self.embed(np.concatenate([chips, mirrored(chips)]))
        return l2_normalise(both[: len(chips)] + both[len(chips) :])

    def embed(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Embed aligned chips.

        :param chips: uint8 [N, chip_size, chip_size, 3] RGB from `align.face_chips`.
        :return: float32 [N, dim], each row L2-normalised; N = 0 gives shape (0, dim).
        """
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        parts = [self._embed_batch(chips[i : i + self.batch_size]) for i in range(0, len(chips), self.batch_size)]
        return l2_normalise(np.concatenate(parts, axis=0).astype(np.float32))

    def _load(self) -> None:
        raise NotImplementedError

    def _embed_batch(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        raise NotImplementedError


class DlibResNet(Backbone):
    """dlib's ResNet-34-style face descriptor (128-D), from `face_recognition_models`.

    About 95 ms per face with the plain `dlib-bin` wheel, about 40 ms when dlib
    is built against OpenBLAS (one core).
    """

    name = "dlib-resnet"
    dim = 128
    chip_size = 150
    chip_padding = 0.25

    def __init__(self, model_path: str | None = None):
        super().__init__()
        self._model_path = model_path
        self._net = None

    def _load(self) -> None:
        import dlib

        path = self._model_path
        if path is None:
            import face_recognition_models

            path = face_recognition_models.face_recognition_model_location()
        self._net = dlib.face_recognition_model_v1(path)

    def _embed_batch(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        batch = [np.ascontiguousarray(chip) for chip in chips]
        return np.array(self._net.compute_face_descriptor(batch), dtype=np.float32)


def build_vgg_face(include_top: bool = False):
    """The VGG-Face network (VGG-16 layout) as a Keras model.

    The layer order matches the widely used `vgg_face_weights.h5` file (13 conv
    layers, then fc6/fc7/fc8 as convolutions), so its weights load by position.
    include_top=False ends at fc7 (4096-D); True adds the 2622-way fc8 and softmax.
    """
    import keras
    from keras import layers

    inputs = keras.Input((224, 224, 3), name="bgr_minus_mean")
    x = inputs
    for block, (filters, repeats) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for i in range(1, repeats + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}_{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{block}")(x)
    x = layers.Conv2D(4096, 7, activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="fc6_dropout")(x)
    x = layers.Conv2D(4096, 1, activation="relu", name="fc7")(x)
    if include_top:
        x = layers.Dropout(0.5, name="fc7_dropout")(x)
        x = layers.Conv2D(2622, 1, name="fc8")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Activation("softmax", name="prob")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name="vgg_face")


def vgg_face_preprocess(chips: NDArray[np.uint8]) -> NDArray[np.float32]:
    """RGB uint8 chips -> BGR float32 minus the VGGFace mean (not ImageNet's)."""
    return chips[..., ::-1].astype(np.float32) - VGG_FACE_MEAN_BGR


class VGG16Face(Backbone):
    """VGG-16 with VGG-Face weights, fc7 output (4096-D). About 0.5 s per face on 2 cores.

    Needs `weights/vgg_face_weights.h5` (the standard VGG-Face Keras file, with
    or without the 2622-way top); it is never downloaded.
    :param weights_path: that file (default: model.paths.DEFAULT_WEIGHTS_DIR / vgg_face_weights.h5).
    """

    name = "vgg16-face"
    dim = 4096
    chip_size = 224
    chip_padding = 0.3
    batch_size = 8

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.weights_path = Path(weights_path) if weights_path else DEFAULT_WEIGHTS_DIR / VGG_FACE_WEIGHTS
        self._model = None

    def _load(self) -> None:
        if not self.weights_path.is_file():
            raise BackboneUnavailable(
                f"The vgg16-face backbone needs the VGG-Face weights file '{VGG_FACE_WEIGHTS}'. "
                f"Place it at {self.weights_path} (it is not downloaded automatically), "
                "or use the default backbone dlib-resnet."
            )
        import keras

        full = build_vgg_face(include_top=True)
        try:
            full.load_weights(str(self.weights_path))
            self._model = keras.Model(full.input, full.get_layer("fc7").output, name="vgg_face_fc7")
        except ValueError:  # a file saved without the 2622-way top
            self._model = build_vgg_face(include_top=False)
            self._model.load_weights(str(self.weights_path))

    @property
    def keras_model(self):
        """The loaded Keras model (input: `vgg_face_preprocess` output; output: fc7), for training and export."""
        self.load()
        return self._model

    def _embed_batch(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        out = self._model(vgg_face_preprocess(chips), training=False)
        return np.asarray(out, dtype=np.float32).reshape(len(chips), -1)


class SFace(Backbone):
    """OpenCV's SFace recogniser (128-D, the model zoo's int8 file) through cv2.dnn, on 112x112 ArcFace chips.

    Its embeddings are spread out (strangers' cosine about 0.08 +- 0.09 on CelebA, against
    dlib's 0.83 +- 0.04), which separates strangers at low false-accept rates.
    """

    name = "sface"
    dim = 128
    chip_size = 112
    batch_size = 16

    def __init__(self) -> None:
        super().__init__()
        self._net = None

    def _load(self) -> None:
        import cv2

        from model.zoo import model_file

        self._net = cv2.dnn.readNetFromONNX(str(model_file("sface")))

    def chips(self, frame: NDArray[np.uint8], faces: Sequence[Face]) -> NDArray[np.uint8]:
        return arcface_chips(frame, faces, size=self.chip_size)

    def _embed_batch(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        import cv2

        blob = cv2.dnn.blobFromImages(list(chips), 1.0, (self.chip_size, self.chip_size), (0, 0, 0), swapRB=False)
        self._net.setInput(blob, "data")  # the file's graph input; RGB pixels 0..255
        return np.asarray(self._net.forward(), dtype=np.float32).reshape(len(chips), -1)


# dlib-sface: the unit features of both networks side by side, each scaled by its weight, so the
# cosine of two fused vectors is the weighted mean of the two cosines. Weights squared are in
# proportion to 1 / (the spread of strangers' cosines): 0.04 for dlib, 0.09 for SFace on CelebA,
# which makes the fused cosine the mean of the two z-normalised similarities (up to a constant).
FUSED_WEIGHTS = {"dlib-resnet": (1 / 0.04), "sface": (1 / 0.09)}


class FusedBackbone(Backbone):
    """dlib's ResNet and SFace as one 256-D backbone (see FUSED_WEIGHTS); its head must be trained."""

    name = "dlib-sface"
    dim = 256

    def __init__(self, parts: Sequence[Backbone] | None = None):
        super().__init__()
        self.parts = list(parts) if parts is not None else [DlibResNet(), SFace()]
        total = sum(FUSED_WEIGHTS[part.name] for part in self.parts)
        self.weights = [float(np.sqrt(FUSED_WEIGHTS[part.name] / total)) for part in self.parts]

    def _load(self) -> None:
        for part in self.parts:
            part.load()

    def clone(self) -> "FusedBackbone":
        return FusedBackbone([part.clone() for part in self.parts])

    def features(self, frame: NDArray[np.uint8], faces: Sequence[Face], *, flip: bool = True) -> NDArray[np.float32]:
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        parts = [weight * part.features(frame, faces, flip=flip) for part, weight in zip(self.parts, self.weights)]
        return l2_normalise(np.concatenate(parts, axis=1))

    def chips(self, frame, faces):
        raise TypeError("dlib-sface has no chips of its own; call features()")


BACKBONES: dict[str, type[Backbone]] = {
    DlibResNet.name: DlibResNet, SFace.name: SFace, FusedBackbone.name: FusedBackbone, VGG16Face.name: VGG16Face,
}


def get_backbone(name: str, weights_dir: Path | None = None) -> Backbone:
    """A new, not yet loaded backbone by name ('dlib-resnet' or 'vgg16-face').

    :param weights_dir: folder holding vgg_face_weights.h5 (default: model.paths.DEFAULT_WEIGHTS_DIR);
        dlib-resnet's model comes with `face_recognition_models` and ignores it.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
    if name == VGG16Face.name:
        return VGG16Face(Path(weights_dir or DEFAULT_WEIGHTS_DIR) / VGG_FACE_WEIGHTS)
    return BACKBONES[name]()
