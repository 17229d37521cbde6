"""Export (SavedModel + TFLite) and end-to-end fine-tuning, at tiny scale on the CPU.

Nothing is downloaded: the "user-given weights files" are random weights saved to tmp.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.head import Head

# Keras 3 on NumPy 2 warns from inside its own variable conversion; nothing to act on here.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.fixture(scope="module")
def tiny_chips(celeba_dir, recognizer):
    """Aligned chips of 4 people x 4 photos, at 64 px (MobileNetV2), 224 px (VGG-Face) and 150 px (dlib)."""
    from model.training.finetune import load_chips

    return load_chips(celeba_dir, sizes=[(64, 0.25), (224, 0.3), (150, 0.25)], people=4, per_person=4,
                      recognizer=recognizer, progress=False)


def test_head_export_matches_the_numpy_head(tmp_path):
    from model.training.export import export_head, run_tflite

    rng = np.random.default_rng(0)
    head = Head(rng.normal(size=(128, 128)).astype(np.float32), "dlib-resnet", threshold=0.9)
    files = export_head(head, tmp_path / "export")
    assert (files["savedmodel"] / "saved_model.pb").exists() and files["tflite"].stat().st_size > 0
    x = rng.normal(size=(3, 128)).astype(np.float32)
    assert np.allclose(run_tflite(files["tflite"], x), head(x), atol=1e-5)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(files["savedmodel"]))
    served = loaded.serve(tf.constant(x))
    assert np.allclose(np.asarray(served), head(x), atol=1e-5)
    info = json.loads(files["description"].read_text())
    assert info["backbone"] == "dlib-resnet" and info["threshold"] == 0.9 and "features" in info["input_note"]


def test_mobilenetv2_from_a_user_weights_file_finetunes(tiny_chips, tmp_path):
    import keras

    from model.training.finetune import FinetuneConfig, build_backbone, embed_chips, embedding_model, finetune

    chips = tiny_chips[0]
    keras.utils.set_random_seed(0)
    small = {"alpha": 0.35}  # the smallest MobileNetV2, to keep the test quick
    user = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg", **small)
    weights = tmp_path / "mobilenetv2.weights.h5"
    user.save_weights(weights)

    backbone, size, mode = build_backbone("MobileNetV2", weights, input_size=64, options=small)
    assert size == 64 and mode == "tf"
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), user.get_weights()))
    assert not any(layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    model = embedding_model(backbone, size, mode)
    train, val = chips.subset(chips.labels < 2), chips.subset(chips.labels >= 2)
    start = [v.numpy().copy() for v in model.trainable_variables]
    result = finetune(model, train, val, FinetuneConfig(epochs=1, steps_per_epoch=2, p=2, k=2, learning_rate=1e-3),
                      progress=False)
    assert len(result.history) == 2 and np.isfinite(result.history[1]["loss"])
    changed = any(not np.array_equal(a, v.numpy()) for a, v in zip(start, model.trainable_variables))
    assert changed == (result.best_epoch == 1)  # keep-best restores the start when the step did not help
    embeddings = embed_chips(result.model, val.chips)
    assert embeddings.shape == (len(val.labels), 128)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)


def test_vgg16_face_with_all_but_the_last_layers_frozen_takes_a_step(tiny_chips):
    """The weights-file round trip is the app's own loader (tests/test_vgg16_face.py); here random weights."""
    import keras

    from model.backbones import build_vgg_face
    from model.training.finetune import FinetuneConfig, embedding_model, finetune, freeze_all_but_last

    keras.utils.set_random_seed(0)
    backbone = build_vgg_face(include_top=False)
    freeze_all_but_last(backbone, 2)
    assert [layer.name for layer in backbone.layers if layer.trainable and layer.weights] == ["fc6", "fc7"]
    model = embedding_model(backbone, 224, "vggface")
    chips = tiny_chips[1]
    train, val = chips.subset(chips.labels < 2), chips.subset(chips.labels == 2)
    conv1 = backbone.get_layer("conv1_1").kernel.numpy().copy()
    fc7 = backbone.get_layer("fc7").kernel.numpy().copy()
    result = finetune(model, train, val, FinetuneConfig(epochs=1, steps_per_epoch=1, p=2, k=2, augment=False,
                                                        learning_rate=1e-3), progress=False)
    assert np.isfinite(result.history[1]["loss"])
    assert np.array_equal(backbone.get_layer("conv1_1").kernel.numpy(), conv1)  # frozen
    if result.best_epoch == 1:
        assert not np.array_equal(backbone.get_layer("fc7").kernel.numpy(), fc7)


def test_unknown_application_and_missing_vgg_weights_are_clear_errors(tmp_path):
    from model.training.finetune import build_backbone

    with pytest.raises(ValueError, match="keras.applications has no model"):
        build_backbone("NoSuchNet")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_backbone("vgg16-face", tmp_path / "missing.h5")


def test_backbone_comparison_report_on_the_same_people(tiny_chips, tmp_path):
    from model.backbones import DlibResNet
    from model.training.finetune import build_backbone, compare_backbones, embed_chips, embedding_model

    small, _, dlib_size = tiny_chips
    backbone, size, mode = build_backbone("MobileNetV2", None, input_size=64)
    mobilenet = embedding_model(backbone, size, mode)
    dlib = DlibResNet()
    rows = compare_backbones(
        {"dlib-resnet": lambda c: dlib.embed(c.chips), "MobileNetV2 (random)": lambda c: embed_chips(mobilenet, c.chips)},
        {"dlib-resnet": dlib_size, "MobileNetV2 (random)": small},
        tmp_path,
    )
    assert list(rows) == ["dlib-resnet", "MobileNetV2 (random)"]
    assert rows["dlib-resnet"]["tar_at_far_1e-02"] > rows["MobileNetV2 (random)"]["tar_at_far_1e-02"]
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert json.loads((tmp_path / "comparison.json").read_text()).keys() == rows.keys()


def test_vgg16_face_embedding_model_matches_backbone_plus_head():
    """The model `export_head` writes for vgg16-face: raw RGB chips in, the app's embeddings out."""
    import keras

    from model.backbones import build_vgg_face, l2_normalise, vgg_face_preprocess
    from model.training.export import vgg_face_embedding_model

    keras.utils.set_random_seed(0)
    backbone = build_vgg_face(include_top=False)
    rng = np.random.default_rng(0)
    head = Head(rng.normal(size=(4096, 128)).astype(np.float32), "vgg16-face")
    chips = rng.integers(0, 255, size=(2, 224, 224, 3), dtype=np.uint8)
    expected = head(l2_normalise(np.asarray(backbone(vgg_face_preprocess(chips))).reshape(2, -1)))
    got = np.asarray(vgg_face_embedding_model(backbone, head)(chips.astype(np.float32)))
    assert np.allclose(got, expected, atol=1e-4)
