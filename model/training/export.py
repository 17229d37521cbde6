"""Export the embedding model as a TensorFlow SavedModel and a TFLite file.

The exported model is the backbone, where it is a Keras model (vgg16-face, or a
fine-tuned `keras.applications` network from `finetune.py`), followed by the
128-unit head and L2 normalisation. dlib's ResNet is not a Keras model, so for
dlib-resnet the export holds the head alone: its input is dlib's 128-D face
descriptor. An `export.json` beside the files says which input the model takes.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.backbones import VGG_FACE_MEAN_BGR, Backbone, VGG16Face
from model.head import EMBEDDING_DIM, Head


def head_model(head: Head):
    """Keras model: float32 features [N, D] -> float32 embeddings [N, 128], unit rows."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    inputs = keras.Input((head.kernel.shape[0],), name="features")
    dense = keras.layers.Dense(EMBEDDING_DIM, use_bias=False, name="head")
    outputs = keras.layers.UnitNormalization(name="l2")(dense(inputs))
    dense.kernel.assign(head.kernel)
    return keras.Model(inputs, outputs, name=f"head_{head.backbone}")


def keras_backbone(backbone: Backbone):
    """The loaded Keras model inside a backbone, or None when it is not a Keras model (dlib)."""
    return getattr(backbone, "keras_model", None)


def vgg_face_embedding_model(backbone_model, head: Head):
    """Keras model for VGG-Face: RGB chips float32 [N, 224, 224, 3] (0..255) -> [N, 128] unit rows.

    Preprocessing (RGB to BGR, minus the VGG-Face mean) is inside the model.
    """
    import keras
    from keras import ops

    size = VGG16Face.chip_size
    inputs = keras.Input((size, size, 3), name="rgb_chips")
    bgr = ops.flip(inputs, axis=-1) - ops.convert_to_tensor(VGG_FACE_MEAN_BGR)
    features = keras.layers.Flatten(name="features")(backbone_model(bgr))
    dense = keras.layers.Dense(EMBEDDING_DIM, use_bias=False, name="head")
    outputs = keras.layers.UnitNormalization(name="l2")(dense(features))
    dense.kernel.assign(head.kernel)
    return keras.Model(inputs, outputs, name="vgg16_face_embedding")


def export_model(model, folder: Path, *, description: dict | None = None) -> dict[str, Path]:
    """Write `model` as folder/savedmodel (TensorFlow SavedModel, signature 'serve') and
    folder/embedding.tflite (float32), plus folder/export.json describing input and output.

    :return: {'savedmodel': dir, 'tflite': file, 'description': file}.
    """
    import tensorflow as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    tflite = folder / "embedding.tflite"
    tflite.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    info = {
        "input": {"name": model.inputs[0].name, "shape": list(model.inputs[0].shape), "dtype": "float32"},
        "output": {"shape": [None, EMBEDDING_DIM], "dtype": "float32", "note": "unit rows; compare by dot product"},
        **(description or {}),
    }
    (folder / "export.json").write_text(json.dumps(info, indent=2))
    return {"savedmodel": saved, "tflite": tflite, "description": folder / "export.json"}


def export_head(head: Head, folder: Path, backbone: Backbone | None = None) -> dict[str, Path]:
    """Export backbone + head where the backbone is a Keras model, else the head alone.

    :param backbone: a Backbone (loaded on demand); default: none, export the head alone.
    """
    keras_model = keras_backbone(backbone) if backbone is not None else None
    if keras_model is not None and backbone.name == VGG16Face.name:
        model = vgg_face_embedding_model(keras_model, head)
        size, padding = VGG16Face.chip_size, VGG16Face.chip_padding
        note = f"aligned RGB face chips {size}x{size} (align.face_chips, padding {padding}), values 0..255"
    else:
        model = head_model(head)
        note = (f"{head.backbone} backbone features [N, {head.kernel.shape[0]}] (Recognizer.features); "
                "the backbone is not a Keras model and is not included")
    return export_model(model, folder, description={"backbone": head.backbone, "input_note": note,
                                                    "threshold": head.threshold})


def run_tflite(path: Path, inputs: NDArray[np.float32]) -> NDArray[np.float32]:
    """Run an exported .tflite file on a batch, one row at a time (for checks, not speed)."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_path=str(path))
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(input_detail["index"], [1, *inputs.shape[1:]])
    interpreter.allocate_tensors()
    rows = []
    for row in np.asarray(inputs, dtype=np.float32):
        interpreter.set_tensor(input_detail["index"], row[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(output_detail["index"])[0])
    return np.stack(rows).astype(np.float32)
