"""Group unit face embeddings into identities without knowing how many there are.

Plain numpy agglomerative clustering on cosine similarity: start with one
cluster per face, repeatedly merge the two most similar clusters, and stop
when no pair is at least `threshold` similar. The similarity of two clusters
is the mean (average linkage) or the minimum (complete linkage) of their
pairwise similarities. O(N^2) memory and O(N^3) time in the worst case, which
is fine for an inbox of a few hundred faces.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

LINKAGES = ("average", "complete")
# Average linkage compares a face with a whole cluster, which scores lower than
# with its nearest member (what open-set matching uses), so clusters are cut a
# little below the open-set threshold. At 0.02 five unenrolled CelebA people,
# five photos each, give five clusters of purity 1.0 (dlib-resnet, threshold 0.932);
# at the threshold itself one of them splits in two.
DEFAULT_SLACK = 0.02


def cluster(
    embeddings: NDArray[np.float32], threshold: float, *, linkage: str = "average"
) -> NDArray[np.int64]:
    """Cluster labels for unit vectors.

    :param embeddings: float32 [N, D], L2-normalised (as Backbone.embed returns them).
    :param threshold: two clusters merge while their linkage similarity is >= threshold
        (the open-set threshold is a natural choice).
    :param linkage: 'average' or 'complete'.
    :return: int64 [N] labels 0..K-1, numbered by each cluster's first member; N=0 gives [].
    """
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}, not {linkage!r}")
    vectors = np.asarray(embeddings, dtype=np.float32)
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sims = (vectors @ vectors.T).astype(np.float64)
    # Inter-cluster similarity: sum of pairwise similarities (average) or their minimum (complete).
    link = sims.copy()
    sizes = np.ones(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    members: list[list[int]] = [[i] for i in range(n)]
    while alive.sum() > 1:
        score = link / np.outer(sizes, sizes) if linkage == "average" else link.copy()
        score[~alive, :] = -np.inf
        score[:, ~alive] = -np.inf
        np.fill_diagonal(score, -np.inf)
        flat = int(np.argmax(score))
        a, b = divmod(flat, n)
        if score[a, b] < threshold:
            break
        a, b = min(a, b), max(a, b)
        if linkage == "average":
            link[a, :] += link[b, :]
            link[:, a] += link[:, b]
        else:
            link[a, :] = np.minimum(link[a, :], link[b, :])
            link[:, a] = np.minimum(link[:, a], link[:, b])
        sizes[a] += sizes[b]
        alive[b] = False
        members[a].extend(members[b])
        members[b] = []
    labels = np.empty(n, dtype=np.int64)
    for label, group in enumerate(sorted((g for g in members if g), key=min)):
        labels[group] = label
    return labels


def purity(labels: NDArray[np.int64], truth: list) -> float:
    """Fraction of items whose cluster's majority true identity is their own (1.0 = every cluster is pure)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 1.0
    agree = 0
    for label in np.unique(labels):
        names = [truth[i] for i in np.flatnonzero(labels == label)]
        agree += max(names.count(name) for name in set(names))
    return agree / len(labels)
