"""The offline trainer reads a PostgreSQL store: `--gallery postgresql://...`, in a session that cannot write."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from model.training.datasets import gallery_corrections, gallery_features, gallery_source
from webapp import db
from webapp.training_reads import _read_only

PEOPLE, PHOTOS = 12, 4


def _store(url: str, rng) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """People with clustered 128-D features, one other backbone's photo, and one correction."""
    names = [f"Person {i:02d}" for i in range(PEOPLE)]
    centres = rng.normal(size=(PEOPLE, 128))
    labels = np.repeat(np.arange(PEOPLE), PHOTOS)
    features = centres[labels] + 0.3 * rng.normal(size=(len(labels), 128))
    features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    conn = db.connect(url)
    db.migrate(conn)
    ids = [conn.execute("INSERT INTO people (name) VALUES (?) RETURNING id", (name,)).fetchone()[0] for name in names]
    for n, (vector, label) in enumerate(zip(features, labels)):
        conn.execute("INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone) "
                     "VALUES (?, ?, '[0, 0, 1, 1]', 1, 1, ?, ?, 'dlib-resnet')",
                     (ids[label], f"p{n}.jpg", db.to_blob(vector), db.to_blob(vector)))
    conn.execute("INSERT INTO photos (person_id, file, box, width, height, embedding, features, backbone) "
                 "VALUES (?, 'vgg.jpg', '[0, 0, 1, 1]', 1, 1, ?, ?, 'vgg16-face')",
                 (ids[0], db.to_blob(np.zeros(128, np.float32)), db.to_blob(np.zeros(4096, np.float32))))
    conn.close()
    return features, labels, names


def test_gallery_features_come_from_postgresql_as_from_sqlite(postgres):
    url = postgres.new_database().replace("postgres@", "postgres:hunter2@")  # trust login: any password
    features, labels, names = _store(url, np.random.default_rng(0))
    assert gallery_source(url) == url  # a URL is not turned into a path
    found = gallery_features(url)
    assert found.names == names and np.array_equal(found.labels, labels)
    assert np.allclose(found.features, features)
    assert "hunter2" not in found.source and found.source.endswith(url.rsplit("@", 1)[1])  # kept in reports
    with pytest.raises(ValueError, match="no other photos with stored features") as raised:
        gallery_features(url, "other")
    assert "hunter2" not in str(raised.value)
    extra, _ = gallery_corrections(url, "dlib-resnet", names)
    assert len(extra) == 0  # no corrections yet


def test_the_trainer_cannot_write_to_the_store(postgres):
    url = postgres.new_database()
    _store(url, np.random.default_rng(1))
    with _read_only(url) as conn:
        with pytest.raises(sqlite3.Error, match="read-only"):
            conn.execute("DELETE FROM photos")
    conn = db.connect(url)
    assert conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == PEOPLE * PHOTOS + 1
    conn.close()


def test_training_a_head_from_a_postgresql_gallery(postgres, tmp_path):
    from model.training.train import main

    url = postgres.new_database()
    _store(url, np.random.default_rng(2))
    summary = main(["--gallery", url, "--epochs", "2", "--people-per-batch", "4", "--photos-per-person", "2",
                    "--out", str(tmp_path / "head_dlib-resnet.h5"), "--no-progress"])
    assert summary["data"]["train_people"] + summary["data"]["val_people"] == PEOPLE
    assert (tmp_path / "head_dlib-resnet.h5").stat().st_size > 0
