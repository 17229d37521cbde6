"""The comparison report at tiny scale: 20 CelebA people x 5 photos (the session's dlib feature cache,
shared with test_train.py), tiny budgets for the trained rows, a random features file as a control."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from model.training import compare
from model.training.classifier_data import openset_split
from model.training.datasets import dataset_features

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.fixture(scope="module")
def cache(celeba_dir, recognizer, tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "train-feature-cache"  # shared with test_train.py
    dataset_features(celeba_dir, people=20, per_person=5, recognizer=recognizer, cache_dir=folder, progress=False)
    return folder


def test_calibration_sets_aside_whole_strangers_never_trained_on():
    labels = np.repeat(np.arange(24), 4)
    split = openset_split(labels, enroll=2)
    trained, aside = compare.calibration_split(split, labels)
    assert not set(labels[aside]) & set(labels[trained.unknown_train])
    assert set(labels[aside]) | set(labels[trained.unknown_train]) == set(labels[split.unknown_train])
    assert not set(aside) & set(split.strangers) and len(labels[aside]) > 0


def test_a_missing_trainer_gives_a_not_run_row(monkeypatch, celeba_dir):
    monkeypatch.setitem(sys.modules, "model.training.backbone_train", None)  # import fails
    row = compare.trainer_row("small-cnn", celeba_dir, None, None, None, budget=1, size=32, train_people=4,
                              detector="hog", cache=None)
    assert row.status.startswith("not run") and row.accuracy is None
    assert "not run" in compare.markdown([row])


def test_the_report_scores_every_row_on_one_split_and_writes_table_plot_and_json(celeba_dir, cache, recognizer,
                                                                                   tmp_path, capsys):
    reference = dataset_features(celeba_dir, people=20, per_person=5, recognizer=recognizer, cache_dir=cache,
                                 progress=False)
    random_file = tmp_path / "random.npz"  # a control: an embedding that knows nobody
    np.savez(random_file, paths=np.array(reference.paths),
             features=np.random.default_rng(0).normal(size=(len(reference), 32)).astype(np.float32))
    out = tmp_path / "report"
    result = compare.main(["--images", str(celeba_dir), "--out", str(out), "--rows", "dlib-resnet,MobileNetV2,small-cnn",
                           "--people", "20", "--per-person", "5", "--detector", "hog", "--cache", str(cache),
                           "--budget", "4", "--image-size", "32", "--train-people", "4", "--timed", "2",
                           "--epochs", "40", "--fine-tune-epochs", "5",
                           "--features", f"random={random_file}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    rows = {(r["name"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {("dlib-resnet", "classifier"), ("dlib-resnet", "nearest template (app)"),
                         ("random", "classifier"), ("MobileNetV2", "classifier, image mode"), ("small-cnn", "classifier")}
    for row in rows.values():
        assert row["status"] == "ok", row
        for key in ("accuracy", "tar_at_far_1e_3", "dir_at_fpir_1pct", "fpir"):
            assert 0 <= row[key] <= 1
        assert row["train_seconds"] is not None
    dlib, random = rows[("dlib-resnet", "classifier")], rows[("random", "classifier")]
    assert dlib["dir_at_fpir_1pct"] > random["dir_at_fpir_1pct"] and dlib["accuracy"] > 0.6
    assert dlib["ms_per_face"] > 0 and rows[("MobileNetV2", "classifier, image mode")]["ms_per_face"] > 0
    assert rows[("MobileNetV2", "classifier, image mode")]["train_seconds"] < 4 + 30  # the budget holds (plus one epoch)
    split = result["split"]
    assert split["enrolled_people"] == 10 and split["stranger_people"] == 5 and split["mated_probes"] == 20
    table = (out / "compare.md").read_text()
    assert table.count("\n| ") == 2 + 5 and "DIR at FPIR 1%" in table
    assert (out / "compare.png").stat().st_size > 1000 and json.loads((out / "compare.json").read_text()) == result
