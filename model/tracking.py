"""Follow faces across the frames of one video stream, so most frames skip detection and embedding.

Per frame, `FaceTracker.update` does one of two cheap things and one rare one:

- detection frames (every `detect_every` frames, or when nothing is tracked):
  HOG on a scaled-down copy, then detections are paired with tracks by box overlap;
- the frames between: each track's landmarks are refitted inside its last box
  (about 1 ms a face) and the box follows the landmarks;
- embedding runs for new tracks at once, for unsettled tracks every
  `recheck_every` frames and for settled ones every `reembed_every` frames
  (so a different person stepping into the same place is noticed); all faces
  due in a frame go in one batch.

A track also remembers a tiny grayscale thumbnail of its face from the last
embedding. When the face in the box stops looking like it (correlation below
`change_corr`; another person's face scores at most about 0.7 on CelebA,
the same face moving about 1.0), the old decisions are dropped and the face
is embedded again at once, so a different person in the same place is named
on the next frame, not after several re-checks.

Each track keeps its last `votes` decisions and reports the most common one,
so a name does not flicker when one frame's similarity dips below the threshold.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

import cv2

from model.detect import Face, box_iou
from model.gallery import Gallery, Match
from model.recognizer import Recognition, Recognizer


@dataclass
class Track:
    """One face followed across frames."""

    track_id: int
    face: Face
    born: int
    last_embedded: int = -(10**9)
    misses: int = 0
    decisions: deque = field(default_factory=lambda: deque(maxlen=3))
    looks: NDArray[np.float32] | None = None  # appearance() at the last embedding
    # The last embedding's backbone features and embedding, for callers that keep the face (the inbox).
    features: NDArray[np.float32] | None = None
    embedding: NDArray[np.float32] | None = None

    def label(self) -> Match | None:
        """The most common recent decision (ties go to the newest), or None before any."""
        if not self.decisions:
            return None
        counts = Counter(match.person_id for match in self.decisions)
        top = max(counts.values())
        for match in reversed(self.decisions):
            if counts[match.person_id] == top:
                return match
        return None  # unreachable

    def settled(self) -> bool:
        """True when every remembered decision agrees and the memory is full."""
        return len(self.decisions) == self.decisions.maxlen and len({m.person_id for m in self.decisions}) == 1


APPEARANCE_SIDE = 24


def appearance(frame: NDArray[np.uint8], face: Face) -> NDArray[np.float32] | None:
    """A tiny zero-mean, unit-length grayscale picture of the face (None when it is off the frame).

    The square is placed from the landmarks, not the box: detector boxes jitter
    by several pixels between frames, the landmarks much less.
    """
    centre = face.landmarks.mean(axis=0)
    spread = float(np.ptp(face.landmarks[:, 0]))
    half = max(4.0, 0.9 * spread)
    left, top = (int(round(v - half)) for v in centre)
    right, bottom = (int(round(v + half)) for v in centre)
    crop = frame[max(0, top) : max(0, bottom), max(0, left) : max(0, right)]
    if crop.size == 0:
        return None
    gray = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (APPEARANCE_SIDE, APPEARANCE_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = small.ravel() - small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else None


class FaceTracker:
    """Tracks, labels and votes for the faces of one stream. Not thread-safe: one per stream.

    :param recognizer: a loaded Recognizer.
    :param detect_every: run the detector on every n-th frame (1 = every frame).
    :param recheck_every: re-embed a track whose recent decisions disagree after this many frames.
    :param reembed_every: re-embed a settled track after this many frames.
    :param votes: how many recent decisions a track's label is voted from.
    :param max_side: detect on a copy scaled so its longer side is at most this.
    :param upsample: detector upsampling for the scaled copy.
    :param min_iou: a detection continues a track when their boxes overlap this much.
    :param max_misses: drop a track after this many detection frames without it.
    :param change_corr: below this appearance correlation a track is re-identified from scratch.
    """

    def __init__(
        self,
        recognizer: Recognizer,
        *,
        detect_every: int = 5,
        recheck_every: int = 5,
        reembed_every: int = 15,
        votes: int = 3,
        max_side: int | None = 480,
        upsample: int = 0,
        min_iou: float = 0.3,
        max_misses: int = 1,
        change_corr: float = 0.8,
    ):
        self.recognizer = recognizer
        self.detect_every = max(1, detect_every)
        self.recheck_every = recheck_every
        self.reembed_every = reembed_every
        self.votes = votes
        self.max_side = max_side
        self.upsample = upsample
        self.min_iou = min_iou
        self.max_misses = max_misses
        self.change_corr = change_corr
        self.tracks: list[Track] = []
        self.frame_index = -1
        self._next_id = 0

    def update(self, frame: NDArray[np.uint8], gallery: Gallery) -> list[Recognition]:
        """Process the next frame of the stream (RGB uint8) and report every tracked face.

        Each Recognition carries its track id, the voted match, and the features and
        embedding of the track's last embedding (not necessarily this frame's).
        """
        self.frame_index += 1
        if not self.tracks or self.frame_index % self.detect_every == 0:
            self._detect(frame)
        else:
            self._follow(frame)
        looks = {t.track_id: appearance(frame, t.face) for t in self.tracks}
        for track in self.tracks:
            self._notice_change(track, looks[track.track_id])
        self._embed_due(frame, gallery, looks)
        return [
            Recognition(t.face, t.label(), track_id=t.track_id, features=t.features, embedding=t.embedding)
            for t in self.tracks
            if t.decisions
        ]

    def reset(self) -> None:
        """Forget all tracks (e.g. after the gallery or head changed)."""
        self.tracks = []

    def _detect(self, frame: NDArray[np.uint8]) -> None:
        faces = self.recognizer.find_faces(frame, upsample=self.upsample, max_side=self.max_side)
        unmatched = list(range(len(faces)))
        for track in sorted(self.tracks, key=lambda t: t.born):
            overlaps = [(box_iou(track.face.box, faces[i].box), i) for i in unmatched]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= self.min_iou:
                track.face, track.misses = faces[best[1]], 0
                unmatched.remove(best[1])
            else:
                track.misses += 1
        self.tracks = [t for t in self.tracks if t.misses <= self.max_misses]
        for i in unmatched:
            self.tracks.append(Track(self._next_id, faces[i], born=self.frame_index, decisions=deque(maxlen=self.votes)))
            self._next_id += 1

    def _follow(self, frame: NDArray[np.uint8]) -> None:
        """Refit landmarks inside each box and move the box with them."""
        for track in self.tracks:
            refit = self.recognizer.detector.refit(frame, track.face)
            if refit is not None:
                track.face = refit

    def _notice_change(self, track: Track, looks: NDArray[np.float32] | None) -> None:
        """Forget a track's decisions when its face no longer looks like the one last embedded."""
        if track.looks is None or looks is None:
            return
        if float(track.looks @ looks) < self.change_corr:
            track.decisions.clear()

    def _embed_interval(self, track: Track) -> int:
        if not track.decisions:
            return 0
        return self.reembed_every if track.settled() else self.recheck_every

    def _embed_due(self, frame: NDArray[np.uint8], gallery: Gallery, looks: dict) -> None:
        due = [t for t in self.tracks if self.frame_index - t.last_embedded >= self._embed_interval(t)]
        if not due:
            return
        decided = self.recognizer.decide(frame, [t.face for t in due], gallery)  # one batch for every face due
        for track, seen in zip(due, decided):
            track.decisions.append(seen.match)
            track.last_embedded = self.frame_index
            track.looks = looks[track.track_id]
            track.features, track.embedding = seen.features, seen.embedding  # None for a face too small
