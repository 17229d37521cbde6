"""A live track's evidence: how much one embedding of a face counts, and the weighted sum of them all.

model.tracking decides on tracks, not frames: each track's unit embeddings are summed, each weighted by
the face's size, and the fused (normalised) sum is what is matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model.detect import Face


def face_weight(face: Face, full_face_px: float) -> float:
    """How much one embedding of this face counts: 1 from full_face_px up, (side / full_face_px)^2 below."""
    side = min(face.width, face.height)
    return float(min(1.0, max(0.01, (side / full_face_px) ** 2)))


@dataclass
class Evidence:
    """A track's embeddings so far: their weighted sum, total weight and count."""

    total: NDArray[np.float64] | None = None
    weight: float = 0.0
    count: int = 0

    def add(self, embedding: NDArray[np.float32], weight: float, cap: float) -> None:
        """Add one unit embedding; past `cap` of total weight the older ones are scaled down (an exponential mean)."""
        if self.total is None:
            self.total = np.zeros(len(embedding), dtype=np.float64)
        if self.weight + weight > cap and self.weight > 0:
            keep = max(0.0, cap - weight) / self.weight
            self.total *= keep
            self.weight *= keep
        self.total += weight * np.asarray(embedding, dtype=np.float64)
        self.weight += weight
        self.count += 1

    def fused(self) -> NDArray[np.float32]:
        """The fused embedding: float32 [D], unit length."""
        return (self.total / max(float(np.linalg.norm(self.total)), 1e-12)).astype(np.float32)

    def cosine(self, embedding: NDArray[np.float32]) -> float:
        return float(self.fused() @ embedding)
