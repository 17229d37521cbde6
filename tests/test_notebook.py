"""notebooks/retrain_head.ipynb runs top to bottom headless on a small CelebA slice and writes a head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.training.datasets import dataset_features

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "retrain_head.ipynb"

pytestmark = pytest.mark.slow


def test_notebook_executes_headless_and_saves_a_head(celeba_dir, recognizer, tmp_path, tmp_path_factory, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from model.head import load_head
    from webapp.settings import from_env

    # Fill the session's feature cache first (shared with tests/test_train.py), so the kernel only reads it.
    cache = tmp_path_factory.getbasetemp() / "train-feature-cache"
    dataset_features(celeba_dir, people=20, per_person=5, recognizer=recognizer, cache_dir=cache, progress=False)
    out = tmp_path / "weights" / "head_dlib-resnet.h5"
    for name, value in {
        "FACES_NB_IMAGES": celeba_dir, "FACES_NB_PEOPLE": 20, "FACES_NB_PER_PERSON": 5, "FACES_NB_EPOCHS": 3,
        "FACES_NB_OUT": out, "FACES_NB_CACHE": cache, "FACES_NB_REPORTS": tmp_path / "reports",
    }.items():
        monkeypatch.setenv(name, str(value))
    weights_dir = Path(from_env()["WEIGHTS_DIR"])  # where the notebook saves without FACES_NB_OUT
    before = sorted(weights_dir.glob("head_*"))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it without outputs"
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # for a look when something is off

    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    head = load_head("dlib-resnet", 128, path=out)
    assert head.info["trained"] and head.info["epochs"] == 3 and head.threshold is not None
    assert not np.array_equal(head.kernel, np.eye(128)) or head.info["best_epoch"] == 0
    assert {p.name for p in (tmp_path / "reports").glob("*.png")} == {
        "training.png", "roc_det.png", "projection.png", "hardest.png"}
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4
    assert sorted(weights_dir.glob("head_*")) == before  # the app's weights/ is untouched
