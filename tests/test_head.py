"""The embedding head: identity start, saving and loading, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from model.head import Head, HeadUnavailable, load_head, save_head


def test_identity_head_leaves_dlib_embeddings_unchanged(tmp_path):
    head = load_head("dlib-resnet", 128, weights_dir=tmp_path)
    x = np.random.default_rng(0).normal(size=(4, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(head(x), x, atol=1e-6)


def test_saved_head_reloads_to_identical_outputs(tmp_path):
    rng = np.random.default_rng(0)
    head = Head(rng.normal(size=(64, 128)).astype(np.float32), "toy", threshold=0.6, info={"loss": "triplet"})
    path = tmp_path / "head_toy.h5"
    save_head(head, path)
    loaded = load_head("toy", 64, path=path)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    assert np.array_equal(loaded(x), head(x))
    assert loaded.threshold == 0.6 and loaded.info["loss"] == "triplet"
    assert not list(tmp_path.glob("*.tmp"))


def test_untrained_wide_backbone_needs_a_head(tmp_path):
    with pytest.raises(HeadUnavailable, match="model.train"):
        load_head("vgg16-face", 4096, weights_dir=tmp_path)


def test_head_for_another_backbone_is_refused(tmp_path):
    path = tmp_path / "head.h5"
    save_head(Head.identity("dlib-resnet"), path)
    with pytest.raises(ValueError, match="trained for dlib-resnet"):
        load_head("other", 128, path=path)
    with pytest.raises(ValueError, match="shape"):
        load_head("dlib-resnet", 64, path=path)


def test_corrupt_head_file_is_a_clear_error(tmp_path):
    path = tmp_path / "head_dlib-resnet.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot read head file"):
        load_head("dlib-resnet", 128, path=path)
