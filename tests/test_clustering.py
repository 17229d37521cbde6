"""Clustering unknown faces: synthetic vectors, and three unenrolled CelebA people."""

from __future__ import annotations

import numpy as np
import pytest

from model.clustering import DEFAULT_SLACK, cluster, purity
from model.images import load_image

UNENROLLED = ["celeb_7210", "celeb_7215", "celeb_7220"]  # none is enrolled by the web tests
PHOTOS_EACH = 5


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_empty_and_single():
    assert cluster(np.zeros((0, 4), np.float32), 0.5).tolist() == []
    assert cluster(_unit([[1, 0, 0]]), 0.5).tolist() == [0]


@pytest.mark.parametrize("linkage", ["average", "complete"])
def test_synthetic_groups_split_at_the_threshold(linkage):
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(3, 32)))
    vectors = _unit(np.repeat(centres, 4, axis=0) + 0.05 * rng.normal(size=(12, 32)))
    labels = cluster(vectors, 0.8, linkage=linkage)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert cluster(vectors, 1.01, linkage=linkage).tolist() == list(range(12))  # nothing is that similar
    assert len(set(cluster(vectors, -1.0, linkage=linkage).tolist())) == 1


def test_purity():
    assert purity(np.array([0, 0, 1, 1]), ["a", "a", "b", "b"]) == 1.0
    assert purity(np.array([0, 0, 0, 0]), ["a", "a", "b", "b"]) == 0.5


@pytest.mark.slow
def test_three_unenrolled_people_give_three_pure_clusters(recognizer, celeba_dir):
    embeddings, truth = [], []
    for person in UNENROLLED:
        for path in sorted((celeba_dir / person).glob("*.jpg"))[:PHOTOS_EACH]:
            photo = load_image(path)
            face, _ = recognizer.portrait_face(photo)
            embeddings.append(recognizer.embed_faces(photo, [face])[0])
            truth.append(person)
    labels = cluster(np.stack(embeddings), recognizer.threshold - DEFAULT_SLACK)
    score = purity(labels, truth)
    print(f"clusters: {labels.tolist()}, purity {score:.2f}")
    assert len(set(labels.tolist())) == 3
    assert score >= 0.9
