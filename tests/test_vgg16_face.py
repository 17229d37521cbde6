"""The vgg16-face backbone with random weights: shapes, preprocessing, save/load round trip.

The real VGG-Face weights cannot be downloaded here; this checks that a file in
the standard Keras layout loads by position and gives the same outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from model.backbones import VGG_FACE_MEAN_BGR, BackboneUnavailable, VGG16Face, get_backbone, vgg_face_preprocess

pytestmark = pytest.mark.slow


def test_missing_weights_file_names_the_file_and_place(tmp_path):
    backbone = VGG16Face(tmp_path / "vgg_face_weights.h5")
    with pytest.raises(BackboneUnavailable, match="vgg_face_weights.h5") as info:
        backbone.embed(np.zeros((1, 224, 224, 3), np.uint8))
    assert str(tmp_path) in str(info.value)


def test_preprocessing_is_bgr_minus_vggface_means():
    chips = np.zeros((1, 2, 2, 3), np.uint8)
    chips[..., 0] = 200  # red
    out = vgg_face_preprocess(chips)
    assert out.dtype == np.float32
    assert np.allclose(out[0, 0, 0], [0 - VGG_FACE_MEAN_BGR[0], 0 - VGG_FACE_MEAN_BGR[1], 200 - VGG_FACE_MEAN_BGR[2]])


@pytest.mark.parametrize("with_top", [True, False], ids=["with-2622-top", "without-top"])
def test_random_weights_round_trip_through_the_weights_file(tmp_path, with_top):
    keras = pytest.importorskip("keras", reason="TensorFlow/Keras is in requirements.txt")
    from model.backbones import build_vgg_face

    keras.utils.set_random_seed(0)
    full = build_vgg_face(include_top=with_top)
    assert full.output_shape == ((None, 2622) if with_top else (None, 4096))
    path = tmp_path / "vgg_face_weights.h5"
    full.save(path)  # legacy HDF5 layout, like the published VGG-Face file

    chips = np.random.default_rng(0).integers(0, 255, size=(2, 224, 224, 3), dtype=np.uint8)
    fc7 = keras.Model(full.input, full.get_layer("fc7").output)
    expected = np.array(fc7(vgg_face_preprocess(chips))).reshape(2, -1)
    expected = expected / np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)

    backbone = VGG16Face(path)
    got = backbone.embed(chips)
    assert got.shape == (2, 4096) and got.dtype == np.float32
    assert np.allclose(got, expected, atol=1e-5)
    assert backbone.embed(chips[:0]).shape == (0, 4096)


def test_unknown_backbone_name_lists_the_choices():
    with pytest.raises(ValueError, match="dlib-resnet, sface, dlib-sface, vgg16-face"):
        get_backbone("resnet-9000")


def test_the_weights_folder_is_passed_down_not_read_from_the_environment(tmp_path, monkeypatch):
    from model.paths import DEFAULT_WEIGHTS_DIR
    from model.recognizer import Recognizer

    monkeypatch.setenv("FACES_WEIGHTS_DIR", str(tmp_path / "ignored"))  # only the app's settings read it
    assert get_backbone("vgg16-face").weights_path == DEFAULT_WEIGHTS_DIR / "vgg_face_weights.h5"
    assert get_backbone("vgg16-face", tmp_path).weights_path == tmp_path / "vgg_face_weights.h5"
    recognizer = Recognizer("vgg16-face", weights_dir=tmp_path)
    twin = recognizer.twin()
    assert twin.weights_dir == tmp_path and twin.backbone.weights_path == tmp_path / "vgg_face_weights.h5"
