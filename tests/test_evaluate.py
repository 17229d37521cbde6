"""The evaluation tool end to end on a small real slice: pairs file, verify, identify."""

from __future__ import annotations

import json
import shutil

import pytest

from model.training import evaluate


@pytest.fixture(scope="module")
def small_set(celeba_dir, tmp_path_factory):
    """16 people: 12 with 3 photos (enrollable with K=2), 4 with 2 photos (never enrolled)."""
    root = tmp_path_factory.mktemp("small_celeba")
    people = sorted(p for p in celeba_dir.iterdir() if len(list(p.glob("*.jpg"))) >= 3)[:16]
    for i, person in enumerate(people):
        (root / person.name).mkdir()
        for photo in sorted(person.glob("*.jpg"))[: 3 if i < 12 else 2]:
            shutil.copy(photo, root / person.name / photo.name)
    return root


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_make_pairs_writes_the_lfw_format(small_set, tmp_path, capsys):
    out = tmp_path / "pairs.txt"
    evaluate.main(["make-pairs", "--images", str(small_set), "--out", str(out), "--seed", "3", "--folds", "2", "--per-fold", "5"])
    assert last_json(capsys)["pairs"] == 20
    lines = out.read_text().splitlines()
    assert lines[0] == "2\t5"
    pairs = evaluate.read_pairs(out, small_set)
    assert pairs.same.sum() == 10 and len(pairs.same) == 20
    assert all(p.exists() for p in pairs.left + pairs.right)
    # Same seed, same file; folds never share a person.
    again = tmp_path / "again.txt"
    evaluate.main(["make-pairs", "--images", str(small_set), "--out", str(again), "--seed", "3", "--folds", "2", "--per-fold", "5"])
    assert again.read_text() == out.read_text()
    fold_people = [{p.parent.name for i, p in enumerate(pairs.left + pairs.right) if pairs.folds[i % 20] == f} for f in (0, 1)]
    assert not fold_people[0] & fold_people[1]


def test_verify_reports_the_protocol_keys(small_set, tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(evaluate.make_pairs(small_set, seed=1, n_folds=2, per_kind=5))
    cache = tmp_path / "cache"
    args = ["verify", "--images", str(small_set), "--pairs", str(pairs), "--cache", str(cache)]
    result = evaluate.main(args)
    assert last_json(capsys) == result
    assert len(list(cache.glob("*.npz"))) == 1 and result["ms_per_image"] > 0
    again = evaluate.main(args)  # from the cache: same scores, nothing computed
    assert again["ms_per_image"] is None
    assert {k: again[k] for k in ("accuracy", "tar_at_far_1e-3", "no_face")} == {
        k: result[k] for k in ("accuracy", "tar_at_far_1e-3", "no_face")
    }
    for key in ("accuracy", "accuracy_std", "tar_at_far_1e-3", "pairs", "no_face", "ms_per_image"):
        assert key in result
    assert result["pairs"] == 20
    assert result["accuracy"] >= 0.8  # dlib separates these portraits well


def test_identify_splits_enrolled_and_non_mated(small_set, capsys):
    result = evaluate.main(["identify", "--images", str(small_set), "--enroll", "2", "--no-cache"])
    assert last_json(capsys) == result
    assert result["enrolled_people"] == 12
    assert result["mated_probes"] == 12
    assert result["non_mated_probes"] == 8
    assert result["rank1"] >= 0.8
    assert 0 <= result["dir_at_fpir_0.01"] <= result["rank1"]
