"""The three losses of `model.train_backbone` as Keras 3 `Loss` objects, so `Model.fit` runs them on any backend.

The maths is the head trainer's (`model.training.losses`, Keras ops only):

- `contrastive`: Hadsell et al. on pairs, for a Siamese network (one embedding network applied to
  a left and a right chip). y_true: 1.0 for same person, 0.0 for two people; y_pred: [N, 256],
  the left and right embeddings side by side. Margin 1.0 on the Euclidean distance.
- `triplet`: FaceNet's triplet loss (margin 0.2) with semi-hard negatives mined inside each
  P x K batch. y_true: person labels [N]; y_pred: embeddings [N, 128].
- `arcface`: additive angular margin (s = 64, m = 0.5). `ArcFaceLogits` is the layer holding the
  class weight matrix (one unit centre per training person, [128, classes]); it turns
  (embedding, label) into s*cos(theta + m) for the true class and s*cos(theta) for the rest.
  `ArcFaceLoss` is softmax cross-entropy on those logits; with focal=True each row is weighted by
  (1 - p_true)^gamma (Lin et al. 2017, gamma 2), which shrinks the loss of faces already right.
"""

from __future__ import annotations

import keras
from keras import ops

from model.training import losses

LOSSES = ("contrastive", "triplet", "arcface")
ARCFACE_SCALE = losses.ARCFACE_SCALE  # 64
ARCFACE_MARGIN = losses.ARCFACE_MARGIN  # 0.5 rad
FOCAL_GAMMA = losses.FOCAL_GAMMA  # 2
TRIPLET_MARGIN = losses.TRIPLET_MARGIN  # 0.2 on squared distance
CONTRASTIVE_MARGIN = losses.CONTRASTIVE_MARGIN  # 1.0 on distance


class ArcFaceLogits(losses.ArcMargin):
    """ArcFace's class weight matrix as a layer: call(embeddings [N, 128] unit rows, labels int [N]) ->
    logits [N, classes]. Used only while training; the embedding network is saved without it."""


class ContrastiveLoss(keras.losses.Loss):
    def __init__(self, margin: float = CONTRASTIVE_MARGIN, name: str = "contrastive", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = margin

    def call(self, y_true, y_pred):
        half = ops.shape(y_pred)[-1] // 2
        return losses.contrastive_loss(y_pred[:, :half], y_pred[:, half:], ops.reshape(y_true, (-1,)), self.margin)


class TripletLoss(keras.losses.Loss):
    def __init__(self, margin: float = TRIPLET_MARGIN, name: str = "triplet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = margin

    def call(self, y_true, y_pred):
        return losses.semi_hard_triplet_loss(y_pred, ops.reshape(ops.cast(y_true, "int32"), (-1,)), self.margin)


class ArcFaceLoss(keras.losses.Loss):
    def __init__(self, focal: bool = False, gamma: float = FOCAL_GAMMA, name: str = "arcface", **kwargs):
        super().__init__(name=name, **kwargs)
        self.focal, self.gamma = focal, gamma

    def call(self, y_true, y_pred):
        return losses.arcface_loss(y_pred, ops.cast(y_true, "int32"), focal=self.focal, gamma=self.gamma)


def check_loss(loss: str, focal: bool = False) -> None:
    """Raise ValueError for an unknown loss, or focal with a loss other than ArcFace."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss '{loss}'; choose one of: {', '.join(LOSSES)}")
    if focal and loss != "arcface":
        raise ValueError("--focal weights ArcFace's softmax; use it with --loss arcface")


def make_loss(loss: str, focal: bool = False) -> keras.losses.Loss:
    check_loss(loss, focal)
    if loss == "contrastive":
        return ContrastiveLoss()
    if loss == "triplet":
        return TripletLoss()
    return ArcFaceLoss(focal=focal)


def training_model(embedding, loss: str, classes: int):
    """The network `fit` trains, around the embedding network (whose weights it shares).

    contrastive: inputs {"left", "right"} chips -> [N, 256]; triplet: chips -> [N, 128];
    arcface: {"chips", "labels"} -> [N, classes] logits through ArcFaceLogits.
    """
    check_loss(loss)
    shape = embedding.input_shape[1:]
    if loss == "triplet":
        return embedding
    if loss == "contrastive":
        left, right = keras.Input(shape, name="left"), keras.Input(shape, name="right")
        both = keras.layers.Concatenate(name="pair")([embedding(left), embedding(right)])
        return keras.Model({"left": left, "right": right}, both, name="siamese")
    chips, labels = keras.Input(shape, name="chips"), keras.Input((), dtype="int32", name="labels")
    logits = ArcFaceLogits(classes, ARCFACE_SCALE, ARCFACE_MARGIN, name="arcface")(embedding(chips), labels)
    return keras.Model({"chips": chips, "labels": labels}, logits, name="arcface_training")
