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


def test_a_saved_head_on_stored_features_rebuilds_a_gallery(tmp_path):
    """What the app's "reload head" does: a new head file, applied to stored backbone features."""
    from model.gallery import Gallery

    rng = np.random.default_rng(0)
    people = np.repeat(np.arange(4), 3)
    features = rng.normal(size=(12, 128)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    kernel = np.linalg.qr(rng.normal(size=(128, 128)))[0].astype(np.float32)
    save_head(Head(kernel, "dlib-resnet", threshold=0.4), tmp_path / "head_dlib-resnet.h5")

    head = load_head("dlib-resnet", 128, weights_dir=tmp_path)
    assert head.threshold == 0.4
    embeddings = head(features)
    gallery = Gallery(dim=embeddings.shape[1])
    gallery.add_many(zip(range(100, 112), people.tolist(), embeddings))
    assert len(gallery) == 12 and gallery.person_ids == {0, 1, 2, 3}
    # Each person's template (the normalised mean of their photos) matches them.
    centres = np.stack([embeddings[people == person].mean(axis=0) for person in (0, 1)])
    matches = gallery.match(centres / np.linalg.norm(centres, axis=1, keepdims=True), threshold=0.99)
    assert [m.person_id for m in matches] == [0, 1]
