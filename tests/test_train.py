"""The head trainer: sampling, splits, losses, mining, training on real features, saving, rollback, CLI.

Real data is a small CelebA slice (20 people, at most 5 photos each) whose dlib
features are computed once per test session into a temporary feature cache.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from model.head import Head, load_head
from model.training.datasets import FeatureSet, dataset_features, gallery_features, list_dataset
from model.training.sampling import (
    augment_photo,
    pk_batches,
    random_pairs,
    random_triplets,
    semi_hard_triplets_numpy,
    split_people,
)

SLICE_PEOPLE, SLICE_PHOTOS = 20, 5


@pytest.fixture(scope="module")
def slice_features(celeba_dir, recognizer, tmp_path_factory) -> FeatureSet:
    """dlib features of a small CelebA slice, cached for the whole session (about 10 s the first time)."""
    cache = tmp_path_factory.getbasetemp() / "train-feature-cache"
    return dataset_features(celeba_dir, people=SLICE_PEOPLE, per_person=SLICE_PHOTOS, recognizer=recognizer,
                            cache_dir=cache, progress=False)


def _unit(rng, n, d=128):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- sampling and splits ----------------------------------------------------------------


def test_split_by_person_never_leaks_on_the_whole_dataset(celeba_dir):
    listing = list_dataset(celeba_dir)
    labels = np.concatenate([np.full(len(photos), i) for i, photos in enumerate(listing.values())])
    for seed in range(3):
        train, val, test = split_people(labels, val_fraction=0.2, test_fraction=0.1, seed=seed)
        assert np.all(train.astype(int) + val + test == 1)  # every photo in exactly one part
        people = [set(labels[mask].tolist()) for mask in (train, val, test)]
        assert not (people[0] & people[1]) and not (people[0] & people[2]) and not (people[1] & people[2])
        assert abs(len(people[1]) - 0.2 * len(listing)) <= 2 and abs(len(people[2]) - 0.1 * len(listing)) <= 2


def test_feature_cache_follows_the_recognizer_flip_setting(slice_features, recognizer, celeba_dir, tmp_path_factory):
    from model.training.datasets import cache_file

    assert slice_features.extra["flip"] == recognizer.flip
    assert slice_features.summary()["photos"] == len(slice_features) <= SLICE_PEOPLE * SLICE_PHOTOS
    cache = tmp_path_factory.getbasetemp() / "train-feature-cache"
    assert cache_file(celeba_dir, "dlib-resnet", cache, flip=recognizer.flip).exists()
    assert cache_file(celeba_dir, "dlib-resnet", cache, flip=True) != cache_file(celeba_dir, "dlib-resnet", cache)


def test_split_features_keeps_augmented_copies_out_of_validation():
    labels = np.repeat(np.arange(12), 4)
    augmented = np.tile([False, False, True, True], 12)
    fs = FeatureSet(_unit(np.random.default_rng(0), 48), labels, [f"p{i}" for i in range(12)],
                    [f"p{i}/{j}" for i, j in zip(labels, range(48))], "toy", augmented=augmented)
    from model.training.datasets import split_features

    split = split_features(fs, val_fraction=0.25, seed=1)
    assert not set(split.train.labels) & set(split.val.labels)
    assert not split.val.augmented.any() and split.train.augmented.any()


def test_pk_batches_are_p_people_by_k_photos():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    batches = list(pk_batches(labels, p=3, k=4, rng=np.random.default_rng(0)))
    assert len(batches) == 3  # 9 people with two or more photos, 3 per batch
    seen = []
    for batch in batches:
        people, counts = np.unique(labels[batch], return_counts=True)
        assert len(people) == 3 and np.all(counts == 4)
        seen += people.tolist()
    assert len(set(seen)) == 9 and 0 not in seen  # the one-photo person never anchors


def test_random_triplets_and_pairs_are_valid():
    labels = np.repeat(np.arange(6), 3)
    rng = np.random.default_rng(0)
    t = random_triplets(labels, 200, rng=rng)
    assert np.all(labels[t[:, 0]] == labels[t[:, 1]]) and np.all(t[:, 0] != t[:, 1])
    assert np.all(labels[t[:, 0]] != labels[t[:, 2]])
    left, right, same = random_pairs(labels, 400, rng=rng)
    assert np.array_equal(labels[left] == labels[right], same > 0)
    assert 0.35 < same.mean() < 0.65 and np.all(left != right)


def test_augment_photo_keeps_shape_and_changes_pixels():
    photo = np.random.default_rng(0).integers(0, 255, size=(60, 50, 3), dtype=np.uint8)
    a = augment_photo(photo, np.random.default_rng(1))
    b = augment_photo(photo, np.random.default_rng(1))
    assert a.shape == photo.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, photo)


# --- losses and mining -----------------------------------------------------------------------


def test_semi_hard_mining_returns_valid_triplets_matching_the_reference():
    from model.training import losses

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4)
    emb = _unit(rng, 24, 8)  # low dimension: a mix of semi-hard, hard and easy negatives
    dist = np.maximum(2 - 2 * emb @ emb.T, 0)
    negative, valid = (np.asarray(v) for v in losses.semi_hard_negatives(dist, labels, 0.2))
    a, p = np.nonzero(valid)
    n = negative[a, p]
    assert len(a) == 6 * 4 * 3  # every ordered (anchor, positive) pair of one person
    assert np.all(labels[a] == labels[p]) and np.all(a != p) and np.all(labels[n] != labels[a])
    semi = 0
    for ai, pi, ni in zip(a, p, n):
        negatives = np.flatnonzero(labels != labels[ai])
        band = negatives[(dist[ai, negatives] > dist[ai, pi]) & (dist[ai, negatives] < dist[ai, pi] + 0.2)]
        if len(band):
            semi += 1
            assert ni in band and dist[ai, ni] == dist[ai, band].min()
        else:
            assert dist[ai, ni] == dist[ai, negatives].min()  # fallback: the hardest negative
    assert semi > 0
    reference = semi_hard_triplets_numpy(emb, labels, 0.2)
    assert {tuple(t) for t in reference} == set(zip(a.tolist(), p.tolist(), n.tolist()))
    expected = np.mean(np.maximum(dist[a, p] - dist[a, n] + 0.2, 0))
    assert float(losses.semi_hard_triplet_loss(emb, labels, 0.2)) == pytest.approx(expected, rel=1e-5)


def test_loss_values_on_hand_made_cases():
    from model.training import losses

    a = np.array([[1.0, 0.0]], np.float32)
    b = np.array([[0.0, 1.0]], np.float32)
    assert float(losses.triplet_loss(a, a, b, 0.2)) == 0.0  # d(a,p)=0, d(a,n)=2
    assert float(losses.triplet_loss(a, b, a, 0.2)) == pytest.approx(2.2)
    assert float(losses.contrastive_loss(a, a, [1.0], 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.contrastive_loss(a, b, [0.0], 1.0)) == 0.0  # sqrt(2) apart: beyond the margin
    arc = losses.ArcMargin(2, scale=64.0, margin=0.5)
    arc.build((None, 2))
    arc.centres.assign(np.eye(2, dtype=np.float32))
    logits = np.asarray(arc(a, np.array([0])))
    assert logits[0, 0] == pytest.approx(64 * np.cos(0.5), rel=1e-3) and logits[0, 1] == pytest.approx(0, abs=1e-3)
    soft = logits / 32  # a less sure prediction, so the focal factor shows
    plain = float(losses.arcface_loss(soft, np.array([0])))
    assert plain == pytest.approx(np.log1p(np.exp(-soft[0, 0])), rel=1e-4)
    assert 0 < float(losses.arcface_loss(soft, np.array([0]), focal=True)) < plain


def test_one_cycle_schedule_warms_up_then_anneals_with_momentum_cycling():
    from model.training.config import TrainConfig, schedule_at

    config = TrainConfig(schedule="one-cycle", learning_rate=1e-3)
    lrs, betas = zip(*(schedule_at(config, s, 100, 10) for s in range(100)))
    peak = int(np.argmax(lrs))
    assert 25 <= peak <= 35 and lrs[peak] == pytest.approx(1e-3, rel=0.02)
    assert lrs[0] == pytest.approx(1e-3 / 25) and lrs[-1] < 1e-5
    assert betas[0] == pytest.approx(0.95) and betas[peak] == pytest.approx(0.85, abs=0.01) and betas[-1] > 0.94
    step = TrainConfig(schedule="step", learning_rate=1e-3, step_epochs=2, step_factor=0.1)
    assert schedule_at(step, 19, 100, 10)[0] == pytest.approx(1e-3) and schedule_at(step, 20, 100, 10)[0] == pytest.approx(1e-4)


# --- training on real features ------------------------------------------------------------------

LOSS_CONFIGS = [
    {"loss": "triplet", "mining": "random"},
    {"loss": "triplet", "mining": "semi-hard"},
    {"loss": "contrastive"},
    {"loss": "arcface"},
    {"loss": "arcface", "focal": True},
]


@pytest.mark.slow
@pytest.mark.parametrize("options", LOSS_CONFIGS, ids=["triplet-random", "triplet-semi-hard", "contrastive", "arcface", "arcface-focal"])
def test_each_loss_goes_down_on_a_real_slice(slice_features, options):
    from model.training.config import TrainConfig
    from model.training.datasets import split_features
    from model.training.train import train_head

    split = split_features(slice_features, val_fraction=0.25, seed=0)
    config = TrainConfig(epochs=12, p=4, k=4, learning_rate=1e-3, weight_decay=1e-4, **options)
    result = train_head(split.train, split.val, config, progress=False)
    loss = result.curve("loss")[1:]
    assert np.all(np.isfinite(loss))
    assert loss[-3:].mean() < 0.9 * loss[:3].mean(), loss
    # Keep-best: never worse than the start on validation people.
    assert result.after["tar_at_far_1e-03"] >= result.before["tar_at_far_1e-03"]
    assert result.head.threshold == pytest.approx(result.after["threshold_at_far_1e-03"])
    assert result.head.info["loss"] == config.name and result.head.info["data"]["val_people"] == 5


@pytest.mark.slow
def test_trained_head_saves_reloads_identically_and_keeps_history(slice_features, tmp_path):
    from model.training.config import TrainConfig
    from model.training.datasets import split_features
    from model.training.export import head_model
    from model.training.head_history import head_history, rollback_head, save_trained_head
    from model.training.train import train_head

    split = split_features(slice_features, seed=0)
    path = tmp_path / "weights" / "head_dlib-resnet.h5"
    first = train_head(split.train, split.val, TrainConfig(epochs=2, p=4, k=4, learning_rate=1e-3), progress=False)
    written, archived = save_trained_head(first.head, path)
    assert written == path and archived is None
    loaded = load_head("dlib-resnet", 128, path=path)
    x = split.val.features
    assert np.array_equal(loaded(x), first.head(x))
    assert loaded.threshold == first.head.threshold
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert {"backbone", "loss", "epochs", "data", "validation_before", "validation_after", "threshold", "date"} <= set(sidecar)
    assert np.allclose(np.asarray(head_model(loaded)(x)), first.head(x), atol=1e-5)  # the Keras layer agrees

    second = Head(np.eye(128, dtype=np.float32)[::-1].copy(), "dlib-resnet", threshold=0.5, info={"n": 2})
    _, archived = save_trained_head(second, path)
    assert archived is not None and archived.parent.name == "history"
    assert head_history(path) == [archived]
    assert np.array_equal(load_head("dlib-resnet", 128, path=path).kernel, second.kernel)

    restored = rollback_head(path)
    assert restored == archived and not archived.exists()
    back = load_head("dlib-resnet", 128, path=path)
    assert np.array_equal(back(x), first.head(x)) and back.threshold == first.head.threshold
    assert head_history(path) == []  # the rolled-back head is kept but never picked again
    assert len(list((tmp_path / "weights" / "history").glob("*.rolled-back.h5"))) == 1
    with pytest.raises(FileNotFoundError):
        rollback_head(path)


@pytest.mark.slow
def test_command_line_trains_writes_and_prints_json(celeba_dir, slice_features, tmp_path, capsys, tmp_path_factory):
    from model.training import train
    from webapp.settings import from_env

    weights_dir = Path(from_env()["WEIGHTS_DIR"])  # where the command line writes without --out
    before = sorted(weights_dir.glob("head_*"))
    out = tmp_path / "head_dlib-resnet.h5"
    cache = tmp_path_factory.getbasetemp() / "train-feature-cache"
    summary = train.main([
        "--images", str(celeba_dir), "--people", str(SLICE_PEOPLE), "--per-person", str(SLICE_PHOTOS),
        "--cache", str(cache), "--loss", "contrastive", "--epochs", "3", "--out", str(out),
        "--report", str(tmp_path / "report"), "--no-progress",
    ])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(summary))
    assert summary["out"] == str(out) and out.exists()
    assert {"tar_at_far_1e-03", "tar_at_far_1e-02", "tar_at_far_1e-04"} <= set(summary["before"]) & set(summary["after"])
    assert {p.split("/")[-1] for p in summary["reports"]} >= {"roc_det.png", "training.png", "projection.png", "hardest.png"}
    assert sorted(weights_dir.glob("head_*")) == before  # nothing written into the app's weights/

    rolled = train.main(["--images", str(celeba_dir), "--people", str(SLICE_PEOPLE), "--per-person", str(SLICE_PHOTOS),
                         "--cache", str(cache), "--epochs", "1", "--out", str(out), "--no-progress"])
    assert rolled["archived"] and (tmp_path / "history").is_dir()
    back = train.main(["--rollback", "--out", str(out)])
    assert back["restored"] == rolled["archived"]


def test_without_validation_pairs_the_last_epoch_is_kept_without_a_threshold():
    from model.training.config import TrainConfig
    from model.training.train import train_head

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 4)
    train = FeatureSet(_unit(rng, 32), labels, [f"p{i}" for i in range(8)], [str(i) for i in range(32)], "dlib-resnet")
    val = FeatureSet(_unit(rng, 3), np.arange(3), ["x", "y", "z"], ["x", "y", "z"], "dlib-resnet")  # one photo each
    result = train_head(train, val, TrainConfig(epochs=3, p=4, k=2), progress=False)
    assert result.best_epoch == 3 and result.before == {} and result.after == {}
    assert result.head.threshold is None and not np.array_equal(result.head.kernel, np.eye(128))


def test_a_wide_backbone_starts_from_a_random_projection_and_round_trips(tmp_path):
    """vgg16-face style features (not 128-D): no identity start, the head must be trained and saved."""
    from model.training.config import TrainConfig
    from model.training.datasets import split_features
    from model.training.head_history import save_trained_head
    from model.training.heads import initial_head
    from model.training.train import train_head

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(16), 4)
    centres = rng.normal(size=(16, 256))
    x = centres[labels] + 0.8 * rng.normal(size=(64, 256))
    fs = FeatureSet((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels,
                    [f"p{i}" for i in range(16)], [str(i) for i in range(64)], "wide")
    start = initial_head("wide", 256)
    assert start.kernel.shape == (256, 128) and start.info["init"] == "random-projection"
    split = split_features(fs, seed=0)
    result = train_head(split.train, split.val, TrainConfig(epochs=5, p=4, k=4, learning_rate=1e-3), progress=False)
    path, _ = save_trained_head(result.head, tmp_path / "head_wide.h5")
    loaded = load_head("wide", 256, path=path)
    assert np.array_equal(loaded(split.val.features), result.head(split.val.features))


# --- the app's database and live pick-up -----------------------------------------------------------


def _app_db(path, features, labels, names):
    """A database with the app's people/photos columns that the trainer reads."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, person_id INTEGER, features BLOB, "
                   "embedding BLOB, backbone TEXT)")
        for i, name in enumerate(names):
            db.execute("INSERT INTO people (id, name) VALUES (?, ?)", (i + 1, name))
        for vector, label in zip(features, labels):
            db.execute("INSERT INTO photos (person_id, features, embedding, backbone) VALUES (?, ?, ?, ?)",
                       (int(label) + 1, np.asarray(vector, "<f4").tobytes(), b"", "dlib-resnet"))
        db.execute("INSERT INTO photos (person_id, features, embedding, backbone) VALUES (1, ?, ?, 'vgg16-face')",
                   (np.zeros(4096, "<f4").tobytes(), b""))


def test_gallery_database_is_read_through_the_app(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    features = _unit(rng, 12)
    _app_db(tmp_path / "faces.db", features, labels, ["Ann", "Bob", "Cy", "Di"])
    fs = gallery_features(tmp_path / "faces.db")
    assert fs.features.shape == (12, 128) and fs.features.dtype == np.float32 and fs.names == ["Ann", "Bob", "Cy", "Di"]
    assert np.allclose(fs.features, features) and np.array_equal(fs.labels, labels)
    assert fs.paths[0].startswith("photo:") and fs.source == str(tmp_path / "faces.db")
    with pytest.raises(ValueError, match="no other photos with stored features"):
        gallery_features(tmp_path / "faces.db", "other")
    with pytest.raises(FileNotFoundError):
        gallery_features(tmp_path / "missing.db")


def test_training_from_the_gallery_database(tmp_path, slice_features):
    from model.training.train import main

    _app_db(tmp_path / "faces.db", slice_features.features, slice_features.labels, slice_features.names)
    summary = main(["--gallery", str(tmp_path / "faces.db"), "--epochs", "2", "--people-per-batch", "4",
                    "--out", str(tmp_path / "head_dlib-resnet.h5"), "--no-progress"])
    assert summary["data"]["train_people"] + summary["data"]["val_people"] == SLICE_PEOPLE
    assert summary["after"]["tar_at_far_1e-03"] >= summary["before"]["tar_at_far_1e-03"]


# --- settings: the command lines take the app's settings table ----------------------------------


def test_the_weights_and_cache_folders_follow_the_apps_settings(tmp_path, monkeypatch):
    from model.training import evaluate, train

    monkeypatch.setenv("FACES_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FACES_CACHE_DIR", str(tmp_path / "cache"))
    args = train._parser().parse_args(["--images", "x"])
    assert args.weights_dir == tmp_path / "weights" and args.cache == tmp_path / "cache"
    args = evaluate._parser().parse_args(["verify", "--images", "x", "--pairs", "p"])
    assert args.weights_dir == tmp_path / "weights" and args.cache == tmp_path / "cache"
    assert evaluate._parser().parse_args(["verify", "--images", "x", "--pairs", "p", "--no-cache"]).cache is False
    expected = re.escape(str(tmp_path / "weights" / "head_dlib-resnet.h5"))
    with pytest.raises(FileNotFoundError, match=expected):  # --rollback looks in FACES_WEIGHTS_DIR
        train.main(["--rollback"])
