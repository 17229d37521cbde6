"""Corrections ("not this person") as hard negatives: read from the app's database, sampled, trained on."""

from __future__ import annotations

import sqlite3

import numpy as np

from model.training.datasets import FeatureSet, gallery_corrections, gallery_features
from model.training.sampling import correction_triplets
from webapp import db as app_db


def _unit(rng, n, d=128):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _blob(vector) -> bytes:
    return np.asarray(vector, "<f4").tobytes()


def _app_db(path, features, labels, names, corrections=()):
    """A database with the app's real schema: people, photos and corrections [(features, label)]."""
    conn = app_db.connect(path)
    app_db.migrate(conn)
    for i, name in enumerate(names):
        conn.execute("INSERT INTO people (id, name) VALUES (?, ?)", (i + 1, name))
    for n, (vector, label) in enumerate(zip(features, labels)):
        conn.execute(
            "INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone) "
            "VALUES (?, ?, '[0, 0, 1, 1]', 1, 1, ?, ?, 'dlib-resnet')",
            (int(label) + 1, f"{n}.jpg", _blob(vector), _blob(vector)),
        )
    for vector, label in corrections:
        conn.execute(
            "INSERT INTO corrections (person_id, embedding, features, backbone) VALUES (?, ?, ?, 'dlib-resnet')",
            (int(label) + 1, _blob(vector), _blob(vector)),
        )
    conn.close()


def test_correction_triplets_pair_a_persons_photos_with_their_correction():
    labels = np.array([0, 0, 0, 1, 1, 2])  # person 2 has one photo: no pair to anchor a correction on
    correction_labels = np.array([1, 2, 0])
    triplets = correction_triplets(labels, correction_labels, 200, rng=np.random.default_rng(0))
    assert triplets.shape == (200, 3)
    for anchor, positive, correction in triplets:
        assert anchor != positive and labels[anchor] == labels[positive] == correction_labels[correction]
    assert set(triplets[:, 2].tolist()) == {0, 2}
    assert correction_triplets(labels, np.array([2]), 5, rng=np.random.default_rng(0)).shape == (0, 3)
    assert correction_triplets(labels, np.zeros(0, np.int64), 5, rng=np.random.default_rng(0)).shape == (0, 3)


def test_gallery_corrections_are_read_with_the_label_they_are_not(tmp_path):
    rng = np.random.default_rng(0)
    features, wrong = _unit(rng, 6), _unit(rng, 2)
    _app_db(tmp_path / "faces.db", features, [0, 0, 0, 1, 1, 1], ["Bob", "Ann"], [(wrong[0], 0), (wrong[1], 1)])
    fs = gallery_features(tmp_path / "faces.db")
    assert fs.names == ["Ann", "Bob"]
    found, labels = gallery_corrections(tmp_path / "faces.db", "dlib-resnet", fs.names)
    assert np.allclose(found, wrong) and labels.tolist() == [1, 0]  # not Bob, not Ann
    assert len(gallery_corrections(tmp_path / "faces.db", "vgg16-face", fs.names)[1]) == 0

    with sqlite3.connect(tmp_path / "old.db") as old:  # from before corrections existed
        old.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    assert len(gallery_corrections(tmp_path / "old.db", "dlib-resnet", fs.names)[1]) == 0


def test_training_pushes_a_correction_away_from_the_person():
    from model.training.config import TrainConfig
    from model.training.train import train_head

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(8), 4)
    centres = _unit(rng, 8)
    features = centres[labels] + 0.3 * _unit(rng, 32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    train = FeatureSet(features.astype(np.float32), labels, [f"p{i}" for i in range(8)],
                       [str(i) for i in range(32)], "dlib-resnet")
    val = FeatureSet(_unit(rng, 3), np.arange(3), ["x", "y", "z"], ["x", "y", "z"], "dlib-resnet")
    wrong = (centres[0] + 0.3 * _unit(rng, 1)[0])  # looks like p0, but the app was told it is not
    wrong = (wrong / np.linalg.norm(wrong))[None].astype(np.float32)
    config = TrainConfig(epochs=10, p=4, k=2, learning_rate=1e-2)

    def similarity(result):
        return float((result.head(wrong) @ result.head(features[labels == 0]).T).mean())

    plain = train_head(train, val, config, progress=False)
    corrected = train_head(train, val, config, progress=False, corrections=(wrong, np.array([0])))
    assert similarity(corrected) < similarity(plain) - 0.05


def test_the_command_line_trains_with_the_databases_corrections(tmp_path):
    from model.training.train import main

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(8), 4)
    _app_db(tmp_path / "faces.db", _unit(rng, 32), labels, [f"p{i}" for i in range(8)],
            [(v, i) for i, v in enumerate(_unit(rng, 3))])
    summary = main(["--gallery", str(tmp_path / "faces.db"), "--epochs", "2", "--people-per-batch", "2",
                    "--photos-per-person", "2", "--out", str(tmp_path / "head_dlib-resnet.h5"), "--no-progress"])
    assert summary["corrections"] == 3
