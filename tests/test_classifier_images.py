"""The classifier's image mode: whole images (no face detection) through a keras.applications CNN,
at tiny scale: 3 CelebA people x 4 photos plus an Unknown/ folder, 32 px, the smallest MobileNetV2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from model.training.classifier_data import UNKNOWN, ClassifierDataError
from model.training.classifier_images import image_folders, load_image_set, square_resize

KERAS_WARNING = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SMALL = {"alpha": 0.35}  # the smallest MobileNetV2, to keep the tests quick


@pytest.fixture(scope="module")
def folders(celeba_dir, tmp_path_factory):
    """DIR/<person>/ for 3 people, DIR/Unknown/ with 6 other people's photos, and a photo with no face
    in each of one person's folder and Unknown/ (a back of a head, a wall: the image mode allows them)."""
    root = tmp_path_factory.mktemp("image_mode")
    people = sorted(p for p in celeba_dir.iterdir() if p.is_dir())
    for person in people[:3]:
        (root / person.name).mkdir()
        for photo in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(photo, root / person.name / photo.name)
    (root / UNKNOWN).mkdir()
    for person in people[3:9]:
        shutil.copy(sorted(person.glob("*.jpg"))[0], root / UNKNOWN / f"{person.name}.jpg")
    wall = np.full((90, 120, 3), (120, 110, 100), np.uint8)
    Image.fromarray(wall).save(root / UNKNOWN / "wall.jpg")
    Image.fromarray(wall[:, ::-1].copy()).save(root / people[0].name / "turned_away.jpg")
    return root


def test_folders_list_people_then_unknown_and_keep_faceless_photos(folders):
    listing = image_folders(folders)
    assert list(listing)[-1] == UNKNOWN and len(listing) == 4
    assert len(listing[UNKNOWN]) == 7 and any(p.name == "turned_away.jpg" for photos in listing.values() for p in photos)
    data = load_image_set(folders, 32)
    assert data.images.shape == (5 + 4 + 4 + 7, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.classes[-1] == UNKNOWN and np.bincount(data.labels).tolist() == [5, 4, 4, 7]


def test_square_resize_takes_the_centre():
    photo = np.zeros((40, 100, 3), np.uint8)
    photo[:, 30:70] = 255  # the centred 40 x 40 square is white
    assert square_resize(photo, 20).min() == 255


def test_bad_folders_are_refused_with_a_reason(folders, tmp_path):
    no_unknown = tmp_path / "no_unknown"
    for person in list(image_folders(folders))[:2]:
        shutil.copytree(folders / person, no_unknown / person)
    with pytest.raises(ClassifierDataError, match="no Unknown/ folder"):
        image_folders(no_unknown)
    assert image_folders(no_unknown, require_unknown=False)[UNKNOWN] == []  # report: strangers optional
    one = tmp_path / "one"
    shutil.copytree(folders / UNKNOWN, one / UNKNOWN)
    shutil.copytree(no_unknown / next(iter(image_folders(folders))), one / "solo")
    with pytest.raises(ClassifierDataError, match="at least 2 person folders"):
        image_folders(one)
    with pytest.raises(ClassifierDataError, match="no dataset folder"):
        image_folders(tmp_path / "missing")


@KERAS_WARNING
def test_networks_refuse_small_inputs_and_missing_weights(tmp_path):
    from model.training.classifier_images import image_classifier

    with pytest.raises(ValueError, match="at least 75 px"):
        image_classifier("InceptionResNetV2", 3, input_size=64)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        image_classifier("MobileNetV2", 3, input_size=32, weights=tmp_path / "none.h5")


@pytest.mark.slow
@KERAS_WARNING
def test_user_weights_load_and_pass_two_trains_only_the_top_layers(tmp_path):
    import keras

    from model.training.classifier_images import _pass_setter, image_classifier

    user = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg",
                                          **SMALL)
    weights = tmp_path / "imagenet_notop.weights.h5"
    user.save_weights(weights)
    model, cnn = image_classifier("MobileNetV2", 4, input_size=32, weights=weights, options=SMALL)
    assert all(np.array_equal(a, b) for a, b in zip(cnn.get_weights(), user.get_weights()))
    set_pass = _pass_setter(cnn, 6)
    set_pass(model, 1)
    assert not cnn.trainable_weights and model.get_layer("classes").trainable_weights
    set_pass(model, 2)
    weighted = [layer for layer in cnn.layers if layer.weights]
    trainable = [layer for layer in weighted if layer.trainable]
    assert 0 < len(trainable) <= 6 and set(trainable) <= set(weighted[-6:])  # the top, BatchNorm frozen


@pytest.mark.slow
@KERAS_WARNING
def test_the_image_classifier_learns_from_random_weights(folders):
    from model.training.classifier import ClassifierConfig
    from model.training.classifier_images import train_image_classifier

    data = load_image_set(folders, 32)
    # From scratch the second pass is the training (the whole CNN, BatchNorm learning); one trace only.
    # One batch of all 20 photos: BatchNorm's batch statistics stay steady, so the loss falls smoothly.
    config = ClassifierConfig(epochs=0, fine_tune_epochs=10, learning_rate=1e-2, batch_size=32, augment=False)
    result = train_image_classifier(data, "MobileNetV2", config, options=SMALL)
    losses = result.losses(2)
    assert len(losses) == 10 and losses[-2:].mean() < 0.5 * losses[:2].mean()
    assert result.info["fine_tune_layers"] is None
    assert result.classes[-1] == UNKNOWN and result.info["data"]["strangers"] == 7


@pytest.mark.slow
@KERAS_WARNING
def test_command_line_image_mode_reports_people_and_unknown(folders, tmp_path, capsys):
    from model.training.classifier_cli import main

    out = tmp_path / "model"
    result = main(["train", "--mode", "images", "--images", str(folders), "--arch", "MobileNetV2", "--input-size",
                   "32", "--epochs", "2", "--fine-tune-epochs", "0", "--batch-size", "8", "--val-fraction", "0.3",
                   "--out", str(out), "--no-progress"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["mode"] == "images" and result["classes"] == 4 and result["held_out"] >= 4
    assert [row["class"] for row in result["report"]["classes"]][-1] == UNKNOWN
    scored = main(["report", "--model", str(out), "--images", str(folders), "--no-progress"])
    assert scored["overall"]["rows"] == 20
    with pytest.raises(SystemExit, match="no Unknown/ folder"):
        main(["train", "--mode", "images", "--images", str(folders / UNKNOWN), "--out", str(tmp_path / "x")])
