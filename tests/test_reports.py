"""Reports: numbers on synthetic embeddings, pictures and the full set on a real CelebA slice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.head import Head
from model.training import reports
from model.training.datasets import dataset_features


@pytest.fixture(scope="module")
def slice_features(celeba_dir, recognizer, tmp_path_factory):
    """The same slice as tests/test_train.py, from the session's feature cache."""
    cache = tmp_path_factory.getbasetemp() / "train-feature-cache"
    return dataset_features(celeba_dir, people=20, per_person=5, recognizer=recognizer, cache_dir=cache, progress=False)


def _clusters(people=4, per_person=3, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(16, people)))[0].T  # orthogonal people
    labels = np.repeat(np.arange(people), per_person)
    x = centres[labels] + spread * rng.normal(size=(len(labels), 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_identification_report_per_person_and_unknowns():
    emb, labels = _clusters()
    names = ["a", "b", "c", "d", "solo"]
    solo = np.eye(16, dtype=np.float32)[15:16]  # far from everyone
    emb, labels = np.vstack([emb, solo]), np.r_[labels, 4]
    rows, overall = reports.identification_report(emb, labels, names, threshold=0.5)
    by_name = {row["name"]: row for row in rows}
    assert all(by_name[n]["precision"] == 1 and by_name[n]["recall"] == 1 and by_name[n]["f1"] == 1 for n in "abcd")
    assert by_name["solo"]["recall"] is None and by_name["solo"]["fp"] == 0  # correctly unknown
    assert overall["accuracy"] == 1 and overall["unknown_rate"] == pytest.approx(1 / 13)
    _, strict = reports.identification_report(emb, labels, names, threshold=1.01)
    assert strict["unknown_rate"] == 1 and strict["macro_recall"] == 0


def test_group_report_splits_pairs_by_group(tmp_path):
    emb, labels = _clusters(people=6, per_person=4)
    names = [f"p{i}" for i in range(6)]
    csv = tmp_path / "groups.csv"
    csv.write_text("person,group\np0,A\np1,A\np2,A\np3,B\np4,B\n")
    groups = reports.read_groups(csv)
    assert groups == {"p0": "A", "p1": "A", "p2": "A", "p3": "B", "p4": "B"}
    rows = {row["group"]: row for row in reports.group_report(emb, labels, names, groups, far=1e-2)}
    assert set(rows) == {"A", "B", "(none)"}
    assert rows["A"]["people"] == 3 and rows["A"]["genuine_pairs"] == 3 * 6 and rows["A"]["impostor_pairs"] == 3 * 16
    assert rows["(none)"]["impostor_pairs"] == 0 and rows["(none)"]["tar_at_far_1e-02"] is None
    assert rows["A"]["tar_at_global_threshold"] == 1.0 and rows["A"]["far_at_global_threshold"] == 0.0


def test_hardest_wrong_matches_are_the_closest_strangers_and_farthest_mates():
    emb, labels = _clusters(people=3, per_person=3, spread=0.3)
    paths = [f"{label}/{i}.jpg" for i, label in enumerate(labels)]
    found = reports.hardest_wrong_matches(emb, labels, paths, n=2)
    sims = emb @ emb.T
    impostors = [m for m in found if m["kind"] == "impostor"]
    genuines = [m for m in found if m["kind"] == "genuine"]
    assert len(impostors) == 2 and len(genuines) == 2
    other = labels[:, None] != labels[None, :]
    assert impostors[0]["similarity"] == pytest.approx(sims[other].max())
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    assert genuines[0]["similarity"] == pytest.approx(sims[same].min())
    assert impostors[0]["left"].split("/")[0] != impostors[0]["right"].split("/")[0]


def test_pictures_are_written_as_png(tmp_path):
    emb, labels = _clusters(people=5, per_person=6, spread=0.4)
    names = [f"p{i}" for i in range(5)]
    identity = Head(np.eye(16, 128, dtype=np.float32), "toy")
    from model.training.datasets import FeatureSet

    fs = FeatureSet(emb, labels, names, [f"{n}.jpg" for n in range(len(labels))], "toy")
    scores = reports.verification_scores({"before": identity}, fs)
    table = reports.verification_table(scores)
    assert table[0]["name"] == "before" and 0 <= table[0]["tar_at_far_1e-03"] <= 1
    assert reports.projection_2d(emb).shape == (len(labels), 2)
    written = [
        reports.plot_roc_det(scores, tmp_path / "roc.png"),
        reports.plot_projection(emb, labels, names, tmp_path / "proj.png"),
        reports.plot_hardest(reports.hardest_wrong_matches(emb, labels, fs.paths, n=2), None, tmp_path / "hard.png"),
        reports.plot_training_curve([{"epoch": 0, "loss": np.nan, "val_tar_at_far_1e-03": 0.5},
                                     {"epoch": 1, "loss": 0.3, "val_tar_at_far_1e-03": 0.6}], tmp_path / "curve.png",
                                    best_epoch=1),
        reports.plot_comparison({"a": table[0], "b": table[0]}, tmp_path / "cmp.png"),
    ]
    assert all(_is_png(path) for path in written)


@pytest.mark.slow
def test_all_reports_for_a_training_run_on_a_real_slice(slice_features, celeba_dir, tmp_path):
    from model.training.config import TrainConfig
    from model.training.datasets import split_features
    from model.training.train import train_head

    split = split_features(slice_features, seed=0)
    result = train_head(split.train, split.val, TrainConfig(epochs=2, p=4, k=4), progress=False)
    groups = tmp_path / "groups.csv"
    groups.write_text("\n".join(f"{name},{'AB'[i % 2]}" for i, name in enumerate(slice_features.names)))
    written = reports.write_all(tmp_path / "report", result, split, images=celeba_dir, groups=groups)
    assert {p.name for p in written} == {"roc_det.png", "training.png", "projection.png", "hardest.png",
                                         "identification.json", "groups.json"}
    assert all(_is_png(p) for p in written if p.suffix == ".png")
    ident = json.loads((tmp_path / "report" / "identification.json").read_text())
    assert ident["overall"]["probes"] == len(split.val) and len(ident["people"]) == 5
    assert {row["group"] for row in json.loads((tmp_path / "report" / "groups.json").read_text())} <= {"A", "B"}
