"""Face-embedding networks trained end to end (`python -m model.train_backbone`), in Keras 3 only.

Every model here takes aligned RGB chips, float32 [N, S, S, 3] with pixels 0..255 (the
preprocessing is a layer inside the model, so an export takes raw chips), and ends in the
project's head shape: Dense(128, use_bias=False) then L2 normalisation, [N, 128] unit rows.

- `densenet121`: keras.applications.DenseNet121 (weights=None, or the user's file), global
  average pooling; ImageNet ("torch") pixel scaling, so an ImageNet weights file fits.
- `ir-resnet18`, `ir-resnet50`: ArcFace's improved residual network: each unit is
  BN-Conv3x3-BN-PReLU-Conv3x3-BN with squeeze-and-excitation on the residual branch, stride 2 at
  the first unit of each of 4 stages (64, 128, 256, 512 filters; 2-2-2-2 and 3-4-14-3 units),
  then BN-Dropout-Flatten, the "E" output layer of the paper.
- `mobilenet`: keras.applications.MobileNetV2's body (weights=None, or the user's file) with a
  MobileFaceNet-style global depthwise convolution instead of average pooling (a face's parts
  are not interchangeable, so each position gets its own weight).
- `small-cnn`: our own baseline, four Conv-BN-ReLU pairs with max pooling (32..256 filters).

Only `keras` is imported (lazily), never TensorFlow, so the same code runs on the JAX or
PyTorch backend (KERAS_BACKEND). Nothing is downloaded: keras.applications models are built
with weights=None.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDING_DIM = 128  # the project's head width (model.head.EMBEDDING_DIM; not imported: it pulls in h5py)
ARCHS = ("densenet121", "ir-resnet18", "ir-resnet50", "mobilenet", "small-cnn")
IR_UNITS = {"ir-resnet18": (2, 2, 2, 2), "ir-resnet50": (3, 4, 14, 3)}
IR_FILTERS = (64, 128, 256, 512)
SE_REDUCTION = 16
# ImageNet statistics for DenseNet ("torch" mode of keras.applications), RGB order.
IMAGENET_MEAN_RGB = [123.675, 116.28, 103.53]
IMAGENET_STD_RGB = [58.395, 57.12, 57.375]
SMALLEST_SIDE = 32  # keras.applications and 4 stride-2 stages need at least this


def check_arch(arch: str, image_size: int) -> None:
    """Raise ValueError with the choices for an unknown arch or an image too small for it."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}'; choose one of: {', '.join(ARCHS)}")
    if image_size < SMALLEST_SIDE:
        raise ValueError(f"--image-size {image_size} is too small; {arch} needs at least {SMALLEST_SIDE} px")


def build_embedding(arch: str, image_size: int = 112, *, weights: Path | str | None = None,
                    dropout: float = 0.2, mobilenet_alpha: float = 1.0):
    """One embedding network: float32 [N, S, S, 3] RGB 0..255 -> [N, 128] unit rows.

    :param weights: a weights file. For densenet121 and mobilenet it goes into the
        keras.applications body (a file saved from that architecture with include_top=False, e.g.
        ImageNet's "notop" file at this input size); for the other archs into the whole embedding
        model (an `embedding.weights.h5` of an earlier run). None: random weights.
    :param dropout: before the head of the IR-ResNets (ArcFace uses 0.4 on big sets).
    :param mobilenet_alpha: MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, ...).
    """
    import keras

    check_arch(arch, image_size)
    inputs = keras.Input((image_size, image_size, 3), name="rgb_chips")
    if arch == "densenet121":
        body = keras.applications.DenseNet121(include_top=False, weights=None,
                                              input_shape=(image_size, image_size, 3), pooling="avg")
        _load_body_weights(body, weights)
        x = keras.layers.Rescaling([1 / s for s in IMAGENET_STD_RGB],
                                   [-m / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)],
                                   name="imagenet_scaling")(inputs)
        features = body(x)
    elif arch == "mobilenet":
        body = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=mobilenet_alpha,
                                              input_shape=(image_size, image_size, 3), pooling=None)
        _load_body_weights(body, weights)
        features = global_depthwise(body(_unit_scaling(inputs)))
    elif arch == "small-cnn":
        features = small_cnn(_unit_scaling(inputs))
    else:
        features = ir_resnet(_unit_scaling(inputs), IR_UNITS[arch], dropout=dropout)
    outputs = embedding_head(features)
    model = keras.Model(inputs, outputs, name=f"{arch}_embedding")
    if weights and arch not in ("densenet121", "mobilenet"):
        model.load_weights(str(_existing(weights)))
    return model


def embedding_head(features):
    """The project's head on any feature vector: Dense(128, no bias) then L2 normalisation."""
    import keras

    x = keras.layers.Dense(EMBEDDING_DIM, use_bias=False, name="head")(features)
    return keras.layers.UnitNormalization(name="l2")(x)


# --- the architectures --------------------------------------------------------------------


def _unit_scaling(inputs):
    import keras

    return keras.layers.Rescaling(1 / 127.5, -1.0, name="unit_scaling")(inputs)


def squeeze_excite(x, name: str, reduction: int = SE_REDUCTION):
    """Channel attention: global average -> Dense(C / r, ReLU) -> Dense(C, sigmoid) -> rescale x."""
    import keras

    channels = x.shape[-1]
    w = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    w = keras.layers.Conv2D(max(1, channels // reduction), 1, activation="relu", name=f"{name}_se_reduce")(w)
    w = keras.layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_se_expand")(w)
    return keras.layers.Multiply(name=f"{name}_se_scale")([x, w])


def ir_unit(x, filters: int, stride: int, name: str):
    """Improved residual unit: BN-Conv3x3-BN-PReLU-Conv3x3(stride)-BN-SE, plus the shortcut."""
    import keras
    from keras import layers

    r = layers.BatchNormalization(epsilon=2e-5, name=f"{name}_bn1")(x)
    r = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(r)
    r = layers.BatchNormalization(epsilon=2e-5, name=f"{name}_bn2")(r)
    r = layers.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(r)
    r = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv2")(r)
    r = layers.BatchNormalization(epsilon=2e-5, name=f"{name}_bn3")(r)
    r = squeeze_excite(r, name)
    if stride == 1 and x.shape[-1] == filters:
        shortcut = x
    else:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_short_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=2e-5, name=f"{name}_short_bn")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([r, shortcut])


def ir_resnet(x, units: tuple[int, ...], dropout: float = 0.2):
    """ArcFace's IR-ResNet body and "E" output: stem Conv3x3(64)-BN-PReLU, 4 stages, BN-Dropout-Flatten."""
    from keras import layers

    x = layers.Conv2D(IR_FILTERS[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=2e-5, name="stem_bn")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="stem_prelu")(x)
    for stage, (count, filters) in enumerate(zip(units, IR_FILTERS), start=1):
        for unit in range(count):
            x = ir_unit(x, filters, 2 if unit == 0 else 1, f"stage{stage}_unit{unit + 1}")
    x = layers.BatchNormalization(epsilon=2e-5, name="out_bn")(x)
    x = layers.Dropout(dropout, name="out_dropout")(x)
    return layers.Flatten(name="out_flatten")(x)


def global_depthwise(x):
    """MobileFaceNet's GDConv: a depthwise convolution as large as the feature map, then BN and Flatten."""
    from keras import layers

    x = layers.DepthwiseConv2D((x.shape[1], x.shape[2]), padding="valid", use_bias=False, name="gdconv")(x)
    x = layers.BatchNormalization(name="gdconv_bn")(x)
    return layers.Flatten(name="gdconv_flatten")(x)


def small_cnn(x):
    """Our baseline: 4 blocks of (Conv3x3-BN-ReLU) x 2 + max pooling, 32/64/128/256 filters, global average."""
    from keras import layers

    for block, filters in enumerate((32, 64, 128, 256), start=1):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{i}")(x)
            x = layers.ReLU(name=f"block{block}_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return layers.GlobalAveragePooling2D(name="global_average")(x)


# --- weights files ------------------------------------------------------------------------------


def _existing(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (nothing is downloaded; give a file you have)")
    return path


def _load_body_weights(body, weights: Path | str | None) -> None:
    """A keras.applications body's weights from the user's file (same architecture, include_top=False)."""
    if weights:
        body.load_weights(str(_existing(weights)))
