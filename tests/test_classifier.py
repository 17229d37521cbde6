"""The person classifier with an Unknown class: data, class weights, augmentation, the two passes,
the report, export, and bad input. Synthetic clusters, or a real slice of CelebA features
(20 people, 5 photos each, dlib on HOG boxes: the session's feature cache shared with test_train.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from model.backbones import l2_normalise
from model.training.classifier_data import (
    UNKNOWN, ClassifierDataError, FeatureAugment, build_data, class_weights, holdout_rows, mirror_views,
    openset_split, split_data, stranger_photos, truth_of,
)
from model.training.classifier_report import classification_report, classifier_openset, nearest_openset, report_markdown
from model.training.datasets import FeatureSet, dataset_features

# Keras 3 on NumPy 2 warns from inside its own variable conversion; nothing to act on here.
KERAS_WARNING = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
DIM = 64


# Face features sit in a cone: every face shares a direction, people differ around it (centres' cosine ~0.5).
COMMON = l2_normalise(np.random.default_rng(99).normal(size=(1, DIM)).astype(np.float32))


def clusters(people: int, photos: int, *, first: int = 0, spread: float = 0.5, seed: int = 0):
    """Unit rows around `people` centres in the cone (centre ids first..first+people-1, fixed per id;
    `seed` draws the photos' noise)."""
    rows = []
    for person in range(first, first + people):
        offset = np.random.default_rng(person).normal(size=(1, DIM)) / np.sqrt(DIM)
        centre = l2_normalise((COMMON + offset).astype(np.float32))
        noise = np.random.default_rng([seed, person]).normal(scale=spread / np.sqrt(DIM), size=(photos, DIM))
        rows.append(l2_normalise((centre + noise).astype(np.float32)))
    return np.concatenate(rows), np.repeat(np.arange(people), photos)


def feature_set(people: int, photos: int, **options) -> FeatureSet:
    features, labels = clusters(people, photos, **options)
    names = [f"person{i:02d}" for i in range(people)]
    return FeatureSet(features, labels, names, [f"{names[l]}/{i}.jpg" for i, l in enumerate(labels)], "toy")


@pytest.fixture(scope="module")
def toy_data():
    """6 people (2 with many photos), 40 strangers with 3 photos each."""
    people = feature_set(6, 8)
    extra = feature_set(2, 20)  # the first two people again, with more photos: unbalanced
    people = FeatureSet(np.concatenate([people.features, extra.features]),
                        np.concatenate([people.labels, extra.labels]), people.names,
                        people.paths + [p + "b" for p in extra.paths], "toy")
    strangers, _ = clusters(40, 3, first=100)
    return build_data(people, [strangers])


@pytest.fixture(scope="module")
def trained(toy_data):
    from model.training.classifier import ClassifierConfig, train_classifier

    config = ClassifierConfig(epochs=12, fine_tune_epochs=4, seed=0)
    return train_classifier(toy_data, np.eye(DIM, 128, dtype=np.float32), config)


# --- data, weights, augmentation (numpy) -----------------------------------------------------------


def test_data_puts_unknown_last_and_counts_every_row(toy_data):
    assert toy_data.classes[-1] == UNKNOWN and toy_data.unknown == 6
    assert toy_data.counts().tolist() == [28, 28, 8, 8, 8, 8, 120]
    assert toy_data.summary()["strangers"] == 120 and toy_data.summary()["people"] == 6


def test_class_weights_change_with_imbalance(toy_data):
    weights = class_weights(toy_data.labels, len(toy_data.classes))
    assert weights[0] < weights[2] and weights[6] < weights[0]  # the larger a class, the smaller its weight
    per_class_total = weights * toy_data.counts()
    assert np.allclose(per_class_total, per_class_total[0])  # every class weighs the same in all
    assert np.allclose(class_weights(np.repeat(np.arange(3), 5), 3), 1.0)  # balanced data: all ones
    assert class_weights(np.array([0, 0, 2]), 3)[1] == 0  # a class without rows


def test_mirror_views_recover_the_mirror_image_features():
    rng = np.random.default_rng(1)
    plain, mirror = (l2_normalise(rng.normal(size=(5, 16)).astype(np.float32)) for _ in range(2))
    averaged = l2_normalise(plain + mirror)  # what the flip cache holds
    assert np.allclose(mirror_views(averaged, plain), mirror, atol=1e-5)


def test_augmentation_keeps_unit_rows_near_their_class(toy_data):
    rows = np.arange(len(toy_data.labels))
    out = FeatureAugment(view=0.0)(rows, toy_data, np.random.default_rng(0))
    assert out.shape == toy_data.features.shape and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert not np.allclose(out, toy_data.features)
    similarity = np.sum(out * toy_data.features, axis=1)
    assert similarity.min() > 0.6  # changed, but still that photo's neighbourhood


def test_holdout_keeps_a_row_of_every_class_for_training(toy_data):
    keep, held = holdout_rows(toy_data.labels, 0.25, seed=0)
    assert not (keep & held).any() and (keep | held).all()
    assert set(toy_data.labels[keep]) == set(range(7)) and held.sum() == pytest.approx(0.25 * len(held), abs=4)


def test_openset_split_keeps_probes_apart_from_training():
    labels = np.repeat(np.arange(12), 5)
    split = openset_split(labels, enroll=3, fold=0)
    people = {name: set(labels[getattr(split, name)]) for name in ("enrolled", "mated", "unknown_train", "strangers")}
    assert people["enrolled"] == people["mated"] == {0, 2, 4, 6, 8, 10}
    assert not people["unknown_train"] & people["strangers"] and not people["strangers"] & people["enrolled"]
    assert len(split.enrolled) == 18 and len(split.mated) == 12
    assert not set(split.enrolled) & set(split.mated)


# --- bad input ------------------------------------------------------------------------------------------


def test_one_person_or_no_strangers_is_refused_with_a_reason():
    strangers, _ = clusters(3, 2, first=50)
    with pytest.raises(ClassifierDataError, match="at least 2 people"):
        build_data(feature_set(1, 4), [strangers])
    with pytest.raises(ClassifierDataError, match="no strangers"):
        build_data(feature_set(3, 4), [np.zeros((0, DIM), np.float32)])
    with pytest.raises(ClassifierDataError, match="same backbone"):
        build_data(feature_set(3, 4), [np.ones((2, DIM + 1), np.float32)])
    with pytest.raises(ClassifierDataError, match="more than 3"):
        openset_split(np.repeat(np.arange(4), 3), enroll=3)


def test_empty_folders_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ClassifierDataError, match="no photos of strangers"):
        stranger_photos(tmp_path)
    with pytest.raises(ClassifierDataError, match="no folder"):
        stranger_photos(tmp_path / "missing")
    from model.training.classifier_cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no person folders with photos"):
        main(["train", "--images", str(tmp_path / "empty"), "--backbone", "dlib-resnet", "--cache", str(tmp_path)])
    with pytest.raises(SystemExit, match="give --images"):
        main(["train", "--backbone", "dlib-resnet"])


# --- the report ------------------------------------------------------------------------------------------


def test_report_has_a_row_per_person_and_unknown_with_hand_checked_figures():
    classes = ["ann", "bob", UNKNOWN]
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 2, 1, 0, 2, 2, 1])
    rows, overall = classification_report(truth, predicted, classes)
    assert [r["class"] for r in rows] == classes
    ann, bob, unknown = rows
    assert ann["precision"] == pytest.approx(2 / 3) and ann["recall"] == pytest.approx(2 / 3) and ann["support"] == 3
    assert bob["precision"] == pytest.approx(1 / 2) and bob["recall"] == pytest.approx(1 / 2)
    assert unknown["precision"] == pytest.approx(2 / 3) and unknown["recall"] == pytest.approx(2 / 3)
    assert overall["accuracy"] == pytest.approx(5 / 8)
    assert overall["weighted_recall"] == pytest.approx(overall["accuracy"])
    text = report_markdown(rows, overall)
    assert "| Unknown | 0.667 | 0.667 | 0.667 | 3 |" in text and "| bob |" in text
    none = classification_report(np.array([0]), np.array([0]), classes)[0]
    assert none[1]["precision"] is None and none[1]["support"] == 0


def test_openset_scores_of_both_decisions_on_hand_made_probes():
    # Two people; probes 0-1 are ann's, 2 is bob's; strangers are far from both.
    enrolled = l2_normalise(np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0]], np.float32))
    mated = l2_normalise(np.array([[1, 0.05, 0], [0.2, 1, 0], [0, 1, 0.1]], np.float32))
    strangers = l2_normalise(np.array([[0, 0, 1], [0.1, 0, 1]], np.float32))
    found = nearest_openset(enrolled, np.array([0, 0, 1]), mated, np.array([0, 0, 1]), strangers, 0.5)
    assert found["rank1"] == pytest.approx(2 / 3, abs=1e-4) and found["fpir"] == 0
    assert found["accuracy"] == pytest.approx(4 / 5, abs=1e-4)
    probabilities = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]], np.float32)
    stranger_probabilities = np.array([[0.1, 0.1, 0.8], [0.6, 0.1, 0.3]], np.float32)
    found = classifier_openset(probabilities, np.array([0, 0, 1]), stranger_probabilities)
    assert found["fpir"] == 0.5 and found["dir"] == pytest.approx(2 / 3, abs=1e-4)
    assert found["accuracy"] == pytest.approx(3 / 5, abs=1e-4)
    assert classifier_openset(probabilities, np.array([0, 0, 1]), stranger_probabilities, 0.65)["fpir"] == 0


# --- training (Keras) -------------------------------------------------------------------------------------


@pytest.mark.slow
@KERAS_WARNING
def test_the_classifier_learns_and_calls_unseen_strangers_unknown(trained, toy_data):
    from model.training.classifier import decide, predict

    first_pass, second_pass = trained.losses(1), trained.losses(2)
    assert len(first_pass) == 12 and len(second_pass) == 4
    assert first_pass[-1] < 0.5 * first_pass[0]  # pass one learns
    assert second_pass[-1] < first_pass[0]  # pass two starts from pass one, not afresh
    unseen, _ = clusters(30, 2, first=300)
    unknown_rate = np.mean(decide(predict(trained.model, unseen)) == toy_data.unknown)
    own, labels = clusters(6, 3, seed=7)  # new photos of the same people
    own_decisions = decide(predict(trained.model, own))
    assert np.mean(own_decisions == labels) > 0.8
    # Three times chance (1 in 7), and far more often than the people's own new photos.
    assert unknown_rate > 3 / len(toy_data.classes) and unknown_rate > np.mean(own_decisions == toy_data.unknown) + 0.3


@pytest.mark.slow
@KERAS_WARNING
def test_the_second_pass_moves_the_head_and_the_first_does_not(toy_data):
    from model.training.classifier import ClassifierConfig, train_classifier

    start = np.eye(DIM, 128, dtype=np.float32)
    one = train_classifier(toy_data, start, ClassifierConfig(epochs=2, fine_tune_epochs=0))
    assert np.array_equal(one.model.get_layer("head").kernel.numpy(), start)
    two = train_classifier(toy_data, start, ClassifierConfig(epochs=2, fine_tune_epochs=2))
    assert not np.allclose(two.model.get_layer("head").kernel.numpy(), start)


@pytest.mark.slow
@KERAS_WARNING
def test_export_writes_a_savedmodel_and_tflite_files_that_agree_with_keras(trained, toy_data, tmp_path):
    import tensorflow as tf

    from model.training.classifier import predict, save_classifier, load_classifier
    from model.training.classifier_export import export_classifier
    from model.training.export import run_tflite

    files = export_classifier(trained.model, tmp_path / "export", toy_data.features, classes=trained.classes)
    probes = toy_data.features[::17][:6]
    keras_classes = predict(trained.model, probes).argmax(axis=1)
    assert (files["savedmodel"] / "saved_model.pb").exists()
    loaded = tf.saved_model.load(str(files["savedmodel"]))  # kept: its variables live as long as it does
    served = np.asarray(loaded.serve(tf.constant(probes)))
    assert np.array_equal(served.argmax(axis=1), keras_classes)
    assert np.array_equal(run_tflite(files["tflite"], probes).argmax(axis=1), keras_classes)
    assert np.array_equal(run_tflite(files["tflite_int8"], probes).argmax(axis=1), keras_classes)
    assert files["tflite_int8"].stat().st_size < files["tflite"].stat().st_size
    info = json.loads(files["description"].read_text())
    assert info["classes"][-1] == UNKNOWN and "int8" in info
    folder = save_classifier(trained, tmp_path / "saved")
    model, meta = load_classifier(folder)
    assert meta["classes"] == trained.classes and np.allclose(predict(model, probes), predict(trained.model, probes))


# --- a real slice ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slice_features(celeba_dir, recognizer, tmp_path_factory) -> FeatureSet:
    cache = tmp_path_factory.getbasetemp() / "train-feature-cache"  # shared with test_train.py
    return dataset_features(celeba_dir, people=20, per_person=5, recognizer=recognizer, cache_dir=cache,
                            progress=False)


@pytest.mark.slow
@KERAS_WARNING
def test_on_real_features_the_loss_goes_down_and_strangers_are_called_unknown_more_than_chance(slice_features):
    from model.training.classifier import ClassifierConfig, decide, predict, train_classifier

    split = openset_split(slice_features.labels, enroll=3)
    data = split_data(slice_features, split)
    result = train_classifier(data, np.eye(128, dtype=np.float32), ClassifierConfig(epochs=40, fine_tune_epochs=5))
    losses = result.losses()
    assert losses[-1] < 0.5 * losses[0]
    mated = decide(predict(result.model, slice_features.features[split.mated]))
    strangers = decide(predict(result.model, slice_features.features[split.strangers]))
    assert np.mean(mated == truth_of(slice_features, split.mated, data.classes)) > 0.7
    # Unseen strangers get Unknown more often than chance and than the enrolled people's own photos do
    # (but far from always: 26% when this was written; see the README's comparison).
    chance = 1 / len(data.classes)
    assert np.mean(strangers == data.unknown) > max(chance, np.mean(mated == data.unknown))


@pytest.mark.slow
@KERAS_WARNING
def test_command_line_trains_reports_exports_and_prints_json(celeba_dir, slice_features, tmp_path, capsys,
                                                            tmp_path_factory):
    from model.training.classifier_cli import main

    strangers = tmp_path / "strangers"  # a flat folder of other people's photos
    strangers.mkdir()
    others = sorted(p for p in celeba_dir.iterdir() if p.is_dir())[6:10]
    for person in others:
        for photo in sorted(person.glob("*.jpg"))[:3]:
            shutil.copy(photo, strangers / photo.name)
    cache = tmp_path_factory.getbasetemp() / "train-feature-cache"
    out = tmp_path / "model"
    common = ["--images", str(celeba_dir), "--people", "6", "--per-person", "5", "--backbone", "dlib-resnet",
              "--detector", "hog", "--cache", str(cache), "--out", str(out), "--no-progress"]
    result = main(["train", *common, "--strangers", str(strangers), "--epochs", "40", "--fine-tune-epochs", "5",
                   "--val-fraction", "0.4", "--export", "--mirror-views"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["classes"] == 7 and result["data"]["strangers"] == 12 and result["last_loss"] < result["first_loss"]
    assert result["data"]["mirror_views"]  # from the plain-feature cache, computed beside the flip one
    names = [row["class"] for row in result["report"]["classes"]]
    assert names[-1] == UNKNOWN and len(names) == 7 and all(r["support"] >= 1 for r in result["report"]["classes"])
    assert (out / "report.md").read_text().count("\n") == 2 + 7 + 3
    assert {"savedmodel", "tflite", "tflite_int8"} <= set(result["export"])
    scored = main(["report", "--model", str(out), *common[:-3], "--strangers", str(strangers), "--no-progress"])
    assert scored["overall"]["rows"] == 30 + 12 and scored["overall"]["accuracy"] > 0.5


@pytest.mark.slow
@KERAS_WARNING
def test_the_apps_gallery_and_corrections_train_it(tmp_path, monkeypatch, capsys):
    from test_train_corrections import _app_db  # the app's real schema, filled with given features

    from model.training.classifier_cli import main

    monkeypatch.setenv("FACES_WEIGHTS_DIR", str(tmp_path / "weights"))  # no head file: the identity head
    features, labels = clusters(3, 6)
    features = np.pad(features, ((0, 0), (0, 128 - DIM)))
    wrong, _ = clusters(8, 1, first=200)
    corrections = [(np.pad(vector, (0, 128 - DIM)), i % 3) for i, vector in enumerate(wrong)]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _app_db(data_dir / "faces.db", features, labels, ["Ann", "Bob", "Cy"], corrections)
    result = main(["train", "--data", str(data_dir), "--backbone", "dlib-resnet", "--epochs", "20",
                   "--fine-tune-epochs", "2", "--val-fraction", "0", "--out", str(tmp_path / "model"), "--no-progress"])
    assert result["data"]["people"] == 3 and result["data"]["strangers"] == 8 and "report" not in result
    assert json.loads((tmp_path / "model" / "classifier.json").read_text())["classes"] == ["Ann", "Bob", "Cy", UNKNOWN]
    _app_db(tmp_path / "bare.db", features, labels, ["Ann", "Bob", "Cy"])
    with pytest.raises(SystemExit, match="no strangers for the Unknown class"):
        main(["train", "--gallery", str(tmp_path / "bare.db"), "--backbone", "dlib-resnet", "--out", str(tmp_path / "x")])
