"""Export a person classifier: TensorFlow SavedModel, TFLite float32 and TFLite int8.

The int8 file is full-integer quantised (weights and activations) with a representative
dataset of training inputs; its input and output stay float32 (quantise and dequantise ops
at the ends), so it takes the same arrays as the float file. Where an op has no int8 kernel
the converter keeps it in float and export.json says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

# Representative rows for int8 calibration: enough to see each class's range, few enough to be quick.
REPRESENTATIVE_ROWS = 200


def _int8_converter(saved: Path, representative: NDArray[np.float32], strict: bool):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rows = np.asarray(representative[:REPRESENTATIVE_ROWS], dtype=np.float32)
    converter.representative_dataset = lambda: ([row[None]] for row in rows)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.target_spec.supported_ops = ops if strict else ops + [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def export_classifier(model, folder: Path, representative: NDArray[np.float32], *, classes: list[str],
                      description: dict | None = None, int8: bool = True) -> dict[str, Path]:
    """Write folder/savedmodel, folder/classifier.tflite (float32), folder/classifier_int8.tflite and
    folder/export.json (classes in output order, input, how int8 was made).

    :param representative: float32 inputs like the training ones (features [N, D] or images [N, S, S, 3]).
    :return: {'savedmodel', 'tflite', 'tflite_int8' (when int8), 'description'}: paths.
    """
    import tensorflow as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    files = {"savedmodel": saved, "tflite": folder / "classifier.tflite"}
    files["tflite"].write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    info = {"classes": list(classes), "output": "softmax probabilities [N, C], classes in this order; "
            "the last is Unknown", "input_shape": list(model.inputs[0].shape), **(description or {})}
    if int8:
        files["tflite_int8"] = folder / "classifier_int8.tflite"
        try:
            data = _int8_converter(saved, representative, strict=True).convert()
            info["int8"] = "full integer (weights and activations); float32 input and output"
        except Exception as exc:  # an op without an int8 kernel: keep that op in float
            data = _int8_converter(saved, representative, strict=False).convert()
            info["int8"] = f"integer where possible, some ops float ({type(exc).__name__})"
        files["tflite_int8"].write_bytes(data)
    files["description"] = folder / "export.json"
    files["description"].write_text(json.dumps(info, indent=2))
    return files
