"""One face followed across frames (`Track`), and which of a detection's faces continue which tracks.

model.tracking's FaceTracker keeps the tracks; this holds what a track is and how a new detection is
laid over them, so that either can be read on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from model.detect import Face, box_iou
from model.evidence import Evidence
from model.gallery import Match

# Match.reason of a track whose fused embedding names someone on less than name_evidence of weight.
PENDING = "not enough frames of this face yet"


def centre(face: Face) -> NDArray[np.float64]:
    """The middle of its box (x, y)."""
    return np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2], dtype=np.float64)


def moved(face: Face, shift: NDArray[np.float64]) -> Face:
    """The face moved by shift (x, y) pixels, box and points alike."""
    box = np.round(face.box + np.r_[shift, shift]).astype(np.int32)
    keypoints = None if face.keypoints is None else (face.keypoints + shift).astype(np.float32)
    return Face(box=box, landmarks=(face.landmarks + shift).astype(np.float32), score=face.score, keypoints=keypoints)


@dataclass
class Track:
    """One face followed across frames; times are stream seconds."""

    track_id: int
    face: Face
    born: float
    seen: float
    velocity: NDArray[np.float64] = field(default_factory=lambda: np.zeros(2))  # box centre, pixels per second
    misses: int = 0
    doubt: bool = False
    last_embedded: float = float("-inf")
    embedded_frame: int = 0  # FaceTracker's frame count at the last embedding
    looks: NDArray[np.float32] | None = None  # appearance() at the last embedding
    at_detection: NDArray[np.int32] | None = None  # its box at the last detection
    found_at: int = 0  # the upsample of the detection that last found it (see FaceTracker search_every_s)
    evidence: Evidence = field(default_factory=Evidence)
    match: Match | None = None  # the fused embedding's match; None before the first embedding
    features: NDArray[np.float32] | None = None  # the last embedding's backbone features, for the inbox
    embedding: NDArray[np.float32] | None = None

    def decision(self, name_evidence: float) -> Match | None:
        """The match to report: the fused one, without its name while the evidence is thinner than name_evidence."""
        if self.match is None or self.match.person_id is None or self.evidence.weight >= name_evidence - 1e-9:
            return self.match
        return dataclasses.replace(self.match, person_id=None, reason=PENDING)


def pair_faces(tracks: list[Track], faces: list[Face], min_iou: float, max_jump: float) -> list[tuple[int, int]]:
    """(track index, face index) pairs: each face continues the track it overlaps by min_iou or more, else one
    it is near (its centre within max_jump of the track's size, its size 0.5-2x), best overlaps first, each
    track and each face at most once."""
    pairs = []
    for ti, track in enumerate(tracks):
        size = max(track.face.width, track.face.height, 1)
        for fi, face in enumerate(faces):
            overlap = box_iou(track.face.box, face.box)
            if overlap >= min_iou:
                pairs.append((1.0 + overlap, ti, fi))
                continue
            near = float(np.linalg.norm(centre(face) - centre(track.face))) / size
            if near <= max_jump and 0.5 <= max(face.width, face.height) / size <= 2.0:
                pairs.append((1.0 - near / (max_jump + 1e-9) * 0.999, ti, fi))
    taken_tracks, taken_faces, chosen = set(), set(), []
    for _, ti, fi in sorted(pairs, reverse=True):
        if ti not in taken_tracks and fi not in taken_faces:
            taken_tracks.add(ti)
            taken_faces.add(fi)
            chosen.append((ti, fi))
    return chosen
