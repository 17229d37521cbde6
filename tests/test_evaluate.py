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


def _groups_file(path, rows) -> str:
    path.write_text("person,group\n" + "".join(f"{person},{group}\n" for person, group in rows))
    return str(path)


def test_verify_reports_tar_per_group_and_the_largest_gap(small_set, tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(evaluate.make_pairs(small_set, seed=1, n_folds=2, per_kind=5))
    people = sorted(p.name for p in small_set.iterdir())  # 12 with 3 photos, then 4 with 2
    groups = _groups_file(tmp_path / "groups.csv", [(name, "A" if i < 8 else "B") for i, name in enumerate(people)])
    result = evaluate.main(["verify", "--images", str(small_set), "--pairs", str(pairs), "--cache",
                            str(tmp_path / "cache"), "--groups", groups])
    assert last_json(capsys) == result and result["pairs"] == 20
    rows = {row["group"]: row for row in result["per_group"]["groups"]}
    assert set(rows) == {"A", "B"}
    assert (rows["A"]["photos"], rows["A"]["genuine_pairs"], rows["A"]["impostor_pairs"]) == (24, 24, 252)
    assert (rows["B"]["photos"], rows["B"]["genuine_pairs"], rows["B"]["impostor_pairs"]) == (20, 16, 174)
    for row in rows.values():
        assert 0 <= row["tar_at_far_1e-04"] <= row["tar_at_far_1e-03"] <= 1
    for far in ("tar_at_far_1e-03", "tar_at_far_1e-04"):
        gap = result["per_group"]["gap"][far]
        assert {gap["best"], gap["worst"]} <= {"A", "B"}
        assert gap["points"] == pytest.approx(100 * abs(rows["A"][far] - rows["B"][far]), abs=0.01)


def test_a_groups_file_naming_unknown_people_is_refused_before_any_work(small_set, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(evaluate.make_pairs(small_set, seed=1, n_folds=2, per_kind=5))
    person = sorted(p.name for p in small_set.iterdir())[0]
    bad = _groups_file(tmp_path / "bad.csv", [(person, "A"), ("Nobody Here", "B")])
    args = ["verify", "--images", str(small_set), "--pairs", str(pairs), "--cache", str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match="names 1 people with no photos in .*Nobody Here"):
        evaluate.main(args + ["--groups", bad])
    with pytest.raises(SystemExit, match="no 'person,group' rows"):
        evaluate.main(args + ["--groups", _groups_file(tmp_path / "empty.csv", [])])
    with pytest.raises(SystemExit, match="no groups file"):
        evaluate.main(args + ["--groups", str(tmp_path / "missing.csv")])
    assert not (tmp_path / "cache").exists()  # nothing was embedded
