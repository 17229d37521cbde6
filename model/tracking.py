"""Follow faces across the frames of one video stream, and decide who each face is from all of its frames.

Time drives the work: `now` is each frame's stream time in seconds (the web app uses the
time the frame arrived). A stream whose frames are dropped under load gets about the same
detections per second of video, and its timed work (detections, closer looks, re-embeddings)
also waits for the frames its interval holds at `full_rate_fps`, so its cost per frame does not grow. Its faces
are predicted across the gaps, and its tracks survive them.

Per frame, `FaceTracker.update`:

1. A frame of another size ends every track (its boxes belong to another picture).
2. Follow: each box moves by its track's velocity over the time since the last frame,
   then the 5 landmarks are refitted inside it (about 1 ms a face; again inside the moved box only when
   they moved, model.follow.follow_face) and the box follows them.
3. Look: a 24x24 grey picture of each face, placed from the landmarks, is compared with the
   one kept from its last embedding. Below `change_corr` (another person at the same place
   scores at most about 0.7 on CelebA, the same face moving about 1.0), or nothing there (a
   blank crop), the track is in doubt: its face left, or someone else stands there.
4. Detect, on a copy scaled to `max_side`, when a track is in doubt; when the picture changed
   outside the tracked people (a grey 32x24 thumbnail against the one of the last detection)
   and `detect_every_s` passed, or at once when much of it changed; and every `detect_still_s`
   anyway. Every `search_every_s` (and on a stream's first frame) the detection looks at
   twice the size (upsample + 1): YuNet then boxes 87-97% of 30-56 px faces tilted 30-45
   degrees instead of 8-43% (bench/wild.py's frames), for about 3x one detection's time; YuNet's
   look then turns the frame 45 degrees each way, one turn on each of the next two frames (`_detect`;
   a stream's first look all on its first frame), for 95% of 30 px faces at 45, about 2x each. The
   pieces keep a frame's wait short, looks of streams started together fall on different frames
   (`search_phase`), and a worker with more than LOOK_STREAMS streams spaces each one's looks (and
   detections-anyway) further apart. A track only such a look
   found is not missed by the plain ones in between. A detection continues the
   track it overlaps, or one it is near (a face moves up to `max_jump` of its size between
   frames). A track without a detection ends when it is in doubt, else after `max_misses`
   detections; the other detections start tracks.
5. Embed, in one batch, every track that is due: new and doubted tracks at once, the others
   every `recheck_s` until their evidence settles, then every `reembed_s`; a named track's chip goes
   without its mirror image unless that disagrees with its evidence (see FaceTracker._features).
6. Decide on the track, not the frame: its unit embeddings are summed, each weighted by face
   size (1 from `full_face_px` up, (side / full_face_px)^2 below; the oldest fade once the
   weight passes `evidence_cap`), and the fused vector is matched. A name needs
   `name_evidence` of weight, so one small face never names anybody, and one stray frame in a
   long track is outweighed by the rest. An embedding whose cosine to the fused one is below
   the threshold is someone else: the evidence starts again from it. A face too small or too
   blurred to recognise (Recognizer.unrecognisable) is not embedded in that frame; too small, it
   is never named while it is, and blurred, it keeps the name its sharper frames gave it.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections import deque

import numpy as np
from numpy.typing import NDArray

from model.detect import Face, finds_agree, found_rank
from model.evidence import Evidence, face_weight
from model.follow import SCENE_SIZE, appearance, follow_face, scene
from model.gallery import Gallery, Match
from model.recognizer import TOO_BLURRED, Recognition, Recognizer
from model.tracks import Track, centre, moved, pair_faces

# A cell changed when its grey level moved more than this (0..255); the picture changed when this share of
# the cells outside the tracked people did (a face of 80 pixels covers about 1% of a 640x480 frame), and
# changed a lot (someone stepped in, the camera moved: detect at once) past SCENE_JUMP.
SCENE_LEVEL, SCENE_SHARE, SCENE_JUMP = 12.0, 0.01, 0.05
FULL_RATE_FPS = 15.0  # FaceTracker's full_rate_fps by default (see the module docstring)
# Around a tracked face, this much (in face widths: left, right, above, below) is taken as its person,
# whose moving shoulders and hair are no reason to look for new faces.
PERSON_MARGINS = (1.0, 1.0, 1.0, 2.0)
# Velocities are smoothed: the newest frame's counts this much.
VELOCITY_SMOOTHING = 0.5
# Closer looks of streams started together would fall on the same frames and hold up the worker's other
# streams together: after its first, each tracker's looks are shifted by its own share of search_every_s
# (its serial number's golden-ratio step, which spreads any number of trackers evenly).
TRACKER_SERIALS = itertools.count()
GOLDEN = (5 ** 0.5 - 1) / 2
# Trackers on one recognizer share a worker (a recognizer never runs on two threads at once). Together they
# take the closer looks and the detections-anyway (detect_still_s) of at most LOOK_STREAMS streams: with more
# streams among the worker's last STREAMS_WINDOW frames, each one's come that much further apart, so looking
# for faces nothing announced costs a worker no more as streams are added. (Detections the picture asks for,
# and settled re-embeddings, keep their pace: spacing the latter measured no faster on bench/live.py.)
LOOK_STREAMS = 2
STREAMS_WINDOW = 60
_recent: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # recognizer -> its last frames' trackers


class FaceTracker:
    """Tracks, fused evidence and decisions for the faces of one stream. Not thread-safe: one per stream.

    :param recognizer: a loaded Recognizer (`recognizer` may be swapped for a twin between frames).
    :param detect_every_s: while the picture changes outside the tracked people, detect at most this often.
    :param detect_still_s: detect at least this often, changed or not.
    :param recheck_s: re-embed a track this often until its evidence reaches settle_evidence.
    :param reembed_s: re-embed a settled track this often.
    :param max_side: detect on a copy scaled so its longer side is at most this.
    :param upsample: detector upsampling for the scaled copy.
    :param min_iou: a detection continues a track when their boxes overlap this much...
    :param max_jump: ...or when its centre is within this many face sizes and its size within 2x.
    :param max_misses: a track that still looks like itself survives this many detections without it.
    :param change_corr: below this appearance correlation a track is in doubt.
    :param full_face_px: faces this big (shorter box side, pixels) count 1 in the evidence.
    :param name_evidence: a track is named only on at least this much evidence.
    :param settle_evidence: evidence after which re-embedding slows from recheck_s to reembed_s.
    :param evidence_cap: past this weight older embeddings fade.
    :param max_gap_s: no motion is predicted over longer gaps between frames.
    :param search_every_s: detect at twice the size this often, for small and tilted faces (0: never).
    :param search_phase: the share (0..1) of search_every_s by which the second closer look comes early
        (None: each tracker its own, see TRACKER_SERIALS).
    :param full_rate_fps: the frame rate the timed work is set for (a camera analysed at 5 fps says 5).
    :param reembed_flip: also embed the mirrored chip when re-checking a named track (2x its cost; the
        recognizer's flip applies to every other embedding).
    """

    def __init__(
        self,
        recognizer: Recognizer,
        *,
        detect_every_s: float = 0.2,
        detect_still_s: float = 1.0,
        recheck_s: float = 0.2,
        reembed_s: float = 2.0,
        max_side: int | None = 480,
        upsample: int = 0,
        min_iou: float = 0.3,
        max_jump: float = 1.0,
        max_misses: int = 1,
        change_corr: float = 0.8,
        full_face_px: float = 100.0,
        name_evidence: float = 1.0,
        settle_evidence: float = 2.0,
        evidence_cap: float = 10.0,
        max_gap_s: float = 1.0,
        search_every_s: float = 3.0,
        search_phase: float | None = None,
        full_rate_fps: float = FULL_RATE_FPS,
        reembed_flip: bool = False,
    ):
        self.recognizer = recognizer
        self.detect_every_s, self.detect_still_s = detect_every_s, detect_still_s
        self.recheck_s, self.reembed_s = recheck_s, reembed_s
        self.max_side, self.upsample = max_side, upsample
        self.search_every_s, self.full_rate_fps = search_every_s, full_rate_fps
        self._serial = next(TRACKER_SERIALS)
        self.search_phase = self._serial * GOLDEN % 1.0 if search_phase is None else search_phase
        self.min_iou, self.max_jump, self.max_misses, self.change_corr = min_iou, max_jump, max_misses, change_corr
        self.full_face_px, self.name_evidence = full_face_px, name_evidence
        self.settle_evidence, self.evidence_cap = settle_evidence, evidence_cap
        self.max_gap_s, self.reembed_flip = max_gap_s, reembed_flip
        self.tracks: list[Track] = []
        self.detections = 0  # detector runs so far
        self.embedded = 0  # faces embedded so far
        self._next_id = 0
        self._shape: tuple[int, ...] | None = None
        self._last_detection: float | None = None
        self._last_search: float | None = None
        self._frames = self._searched_at = self._detected_at = 0  # frames seen; that count at the last look, detection
        self._scene: NDArray[np.float32] | None = None
        self._turns: list[float] = []  # the closer look's turned copies still to look at, one a frame
        self._look_finds: dict[int, tuple] | None = None  # in a closer look: track -> (best find's rank, first find)
        self._head = getattr(recognizer, "head", None)
        self._rematch = False

    def update(self, frame: NDArray[np.uint8], gallery: Gallery, now: float | None = None) -> list[Recognition]:
        """Process the next frame of the stream (RGB uint8) and report every tracked face.

        :param now: the frame's stream time in seconds (default: time.monotonic()); never decreasing.
        :return: one Recognition per track, with its track id, its decision (see Track.decision),
            and the features and embedding of its last embedding (not necessarily this frame's).
        """
        now = time.monotonic() if now is None else float(now)
        if frame.shape[:2] != self._shape:
            self.reset()
            self._shape = frame.shape[:2]
        self._notice_new_head()
        before = {t.track_id: (centre(t.face), t.seen) for t in self.tracks}
        self._follow(frame, now)
        looks = self._look(frame)
        thumbnail = scene(frame)
        self._frames += 1
        stretch = max(1.0, self._streams_here() / LOOK_STREAMS)
        search = self._search_due(now, stretch)
        turns = [self._turns.pop(0)] if self._turns else []
        detect = search or self._detection_due(now, thumbnail, stretch)
        if detect:
            self._detect(frame, now, self.upsample + 1 if search else self.upsample)
            self._last_detection, self._scene, self._detected_at = now, thumbnail, self._frames
            if search and self._last_search is None:  # a stream's first look is taken whole: nothing is tracked yet
                turns, self._turns = self._turns, []
            if search:
                self._searched(now)
        for turn in turns:
            self._detect(frame, now, self.upsample + 1, turn=turn)
        if self._look_finds is not None and not self._turns:
            self._end_missing(set(self._look_finds), self.upsample + 1)  # the closer look's last piece
            self._look_finds = None
        if detect or turns:
            looks = self._look(frame)
        due = [t for t in self.tracks if not t.evidence.count or t.doubt or self._reembed_due(t, now)]
        # Blur only matters where a face would be embedded now or has no name to keep: the others skip the check.
        looked_at = {t.track_id for t in due}
        reasons = {t.track_id: self._unrecognisable(t, frame if t.track_id in looked_at else None) for t in self.tracks}
        self._embed_due(frame, gallery, now, looks, [t for t in due if reasons[t.track_id] is None])
        if self._rematch:
            self._match([t for t in self.tracks if t.evidence.count], gallery)
            self._rematch = False
        for track in self.tracks:
            self._update_velocity(track, before.get(track.track_id), now)
            track.seen = now
        shown = [(t, self._shown(t, reasons[t.track_id])) for t in self.tracks]
        return [
            Recognition(t.face, match, track_id=t.track_id, features=t.features, embedding=t.embedding)
            for t, match in shown
            if match is not None
        ]

    def reset(self) -> None:
        """End every track (e.g. after a frame of another size)."""
        self.tracks, self._turns, self._look_finds = [], [], None
        self._last_detection, self._scene, self._last_search = None, None, None

    def gallery_changed(self) -> None:
        """The gallery changed: match every track's fused embedding again on the next frame (nothing is re-embedded)."""
        self._rematch = True

    # --- the steps -----------------------------------------------------------------

    def _notice_new_head(self) -> None:
        """Embeddings of another head live in another space: every track's evidence starts again."""
        head = getattr(self.recognizer, "head", None)
        if head is self._head:
            return
        self._head = head
        for track in self.tracks:
            track.evidence, track.last_embedded = Evidence(), float("-inf")

    def _follow(self, frame: NDArray[np.uint8], now: float) -> None:
        """Move each box by its velocity, refit the landmarks inside and let the box follow them."""
        height, width = frame.shape[:2]
        kept = []
        for track in self.tracks:
            dt = now - track.seen
            face = track.face
            if 0 < dt <= self.max_gap_s and track.velocity.any():
                size = max(face.width, face.height, 1)
                shift = np.clip(track.velocity * dt, -size, size)
                middle = centre(face) + shift
                shift += np.clip(middle, 0, [width - 1, height - 1]) - middle  # the centre stays in the frame
                face = moved(face, shift)
            refit = follow_face(self.recognizer.detector, frame, face)
            if refit is None:  # the box left the frame
                continue
            track.face = refit
            kept.append(track)
        self.tracks = kept

    def _look(self, frame: NDArray[np.uint8]) -> dict[int, NDArray[np.float32] | None]:
        """Each track's appearance now; a track whose face is gone or changed is put in doubt."""
        looks = {t.track_id: appearance(frame, t.face) for t in self.tracks}
        for track in self.tracks:
            now_looks = looks[track.track_id]
            if now_looks is None:
                track.doubt = True  # nothing there: the face left or is covered
            else:
                track.doubt = track.looks is not None and float(track.looks @ now_looks) < self.change_corr
        return looks

    def _detection_due(self, now: float, thumbnail: NDArray[np.float32], stretch: float) -> bool:
        if self._last_detection is None or any(t.doubt for t in self.tracks):
            return True
        since, frames = now - self._last_detection, self._frames - self._detected_at
        if self._waited(since, frames, self.detect_still_s * stretch):
            return True
        change = self._scene_change(thumbnail)
        return change >= SCENE_JUMP or (self._waited(since, frames, self.detect_every_s) and change >= SCENE_SHARE)

    def _scene_change(self, thumbnail: NDArray[np.float32]) -> float:
        """The share of the picture that changed since the last detection, outside the tracked people (then and now)."""
        changed = np.abs(thumbnail - self._scene) > SCENE_LEVEL
        rows, cols = thumbnail.shape
        cell_w, cell_h = self._shape[1] / cols, self._shape[0] / rows
        outside = np.ones_like(changed)
        left_m, right_m, top_m, bottom_m = PERSON_MARGINS
        for track in self.tracks:
            for box in (box for box in (track.face.box, track.at_detection) if box is not None):
                w, h = box[2] - box[0], box[3] - box[1]
                c0, c1 = int((box[0] - left_m * w) // cell_w), int(np.ceil((box[2] + right_m * w) / cell_w))
                r0, r1 = int((box[1] - top_m * h) // cell_h), int(np.ceil((box[3] + bottom_m * h) / cell_h))
                outside[max(0, r0) : max(0, r1), max(0, c0) : max(0, c1)] = False
        return float(changed[outside].mean()) if outside.any() else 0.0

    def _search_due(self, now: float, stretch: float) -> bool:
        """Whether this detection looks at twice the size, for small and tilted faces (see search_every_s)."""
        if self.search_every_s <= 0 or self._last_search is None:
            return self.search_every_s > 0
        since, frames = now - self._last_search, self._frames - self._searched_at
        return not self._turns and self._waited(since, frames, self.search_every_s * stretch)

    def _streams_here(self) -> int:
        """How many trackers had frames among the last STREAMS_WINDOW on this tracker's recognizer (this one too)."""
        recent = _recent.get(self.recognizer)
        if recent is None:
            recent = _recent[self.recognizer] = deque(maxlen=STREAMS_WINDOW)
        recent.append(self._serial)
        return len(set(recent))

    def _searched(self, now: float) -> None:
        """A closer look was taken now; after the stream's first, the next comes search_phase early."""
        early = self.search_phase * self.search_every_s if self._last_search is None else 0.0
        self._last_search, self._searched_at = now - early, self._frames - round(early * self.full_rate_fps)

    def _detect(self, frame: NDArray[np.uint8], now: float, upsample: int, turn: float | None = None) -> None:
        """A plain detection (upsample), or a piece of the closer look (upsample + 1): upright at twice the size,
        then on each next frame turned by one of the detector's `search_tilts` (YuNet: 45 degrees each way) at the
        plain scale, where small, much tilted faces stand upright (a stream's first look: all at once, see update).
        Tracks none of the look's pieces found miss it at its last."""
        faces = self._find(frame, upsample, turn)
        self.detections += 1
        closer = upsample > self.upsample
        if closer and turn is None:
            self._turns = list(getattr(getattr(self.recognizer, "detector", None), "search_tilts", ()))
            self._look_finds = {}
        found = self._assign(faces, now, upsample, turned=turn is not None)
        if not closer:
            self._end_missing(found, upsample)

    def _find(self, frame: NDArray[np.uint8], upsample: int, turn: float | None) -> list[Face]:
        if turn is not None:
            scale = min(1.0, self.max_side / max(frame.shape[:2])) if self.max_side else 1.0
            return self.recognizer.detector.detect_turned(frame, (turn,), scale=scale)
        max_side = self.max_side * 2 ** (upsample - self.upsample) if self.max_side else None
        return self.recognizer.find_faces(frame, upsample=upsample, max_side=max_side)

    def _assign(self, faces: list[Face], now: float, found_at: int, *, turned: bool) -> set[int]:
        """Each face continues the track it overlaps or is near, or starts one; returns the ids of tracks found.
        A turned find replaces the closer look's earlier find only where more upright and agreeing (finds_agree)."""
        found, taken_faces = set(), set()
        for ti, fi in pair_faces(self.tracks, faces, self.min_iou, self.max_jump):
            taken_faces.add(fi)
            track, face = self.tracks[ti], faces[fi]
            found.add(track.track_id)
            if self._look_finds is not None:
                rank, earlier = found_rank(face), self._look_finds.get(track.track_id)
                if turned and earlier is not None and (earlier[0] <= rank or not finds_agree(face, earlier[1])):
                    continue
                self._look_finds[track.track_id] = (rank, face if earlier is None else earlier[1])
            track.face, track.misses, track.at_detection = face, 0, face.box.copy()
            track.found_at = found_at
        for fi, face in enumerate(faces):
            if fi not in taken_faces:
                self.tracks.append(Track(self._next_id, face, born=now, seen=now, at_detection=face.box.copy(),
                                         found_at=found_at))
                found.add(self._next_id)
                if self._look_finds is not None:
                    self._look_finds[self._next_id] = (found_rank(face), face)
                self._next_id += 1
        return found

    def _end_missing(self, found: set[int], upsample: int) -> None:
        """Tracks a detection at this upsample did not find miss it; one in doubt, or missed too often, ends."""
        kept = []
        for track in self.tracks:
            if track.track_id not in found:
                if track.found_at > upsample and not track.doubt:
                    kept.append(track)  # only a closer look found it: the next one says whether it is gone
                    continue
                track.misses += 1
                if track.doubt or track.misses > self.max_misses:
                    continue  # gone: a blank or changed place with no face found there ends its track
            kept.append(track)
        self.tracks = kept

    def _reembed_due(self, track: Track, now: float) -> bool:
        """Re-embedding by time; a settled track's also waits for frames, an unsettled one's not (its name is due)."""
        if track.evidence.weight < self.settle_evidence:
            return now - track.last_embedded >= self.recheck_s
        since, frames = now - track.last_embedded, self._frames - track.embedded_frame
        return self._waited(since, frames, self.reembed_s)

    def _waited(self, seconds: float, frames: int, interval_s: float) -> bool:
        """Whether timed work is due: interval_s passed, and as many frames as it holds at full_rate_fps."""
        return seconds >= interval_s and frames >= interval_s * self.full_rate_fps - 1e-6

    def _unrecognisable(self, track: Track, frame: NDArray[np.uint8] | None) -> str | None:
        """Why the track's face can't be embedded in this frame (Recognizer.unrecognisable; without the frame,
        size only), or None."""
        unrecognisable = getattr(self.recognizer, "unrecognisable", None)
        return unrecognisable(track.face, frame) if unrecognisable is not None else None

    def _shown(self, track: Track, reason: str | None) -> Match | None:
        """What to report for a track: an unnamed match with the reason while its face is too small, or blurred
        with no evidence yet (a blurred frame of a known track keeps its decision), else its decision."""
        if reason is not None and (reason != TOO_BLURRED or not track.evidence.count):
            return Match(None, 0.0, 0.0, reason=reason)
        return track.decision(self.name_evidence)

    def _embed_due(self, frame: NDArray[np.uint8], gallery: Gallery, now: float, looks: dict,
                   due: list[Track]) -> None:
        if not due:
            return
        features, embeddings = self._features(frame, due)
        self.embedded += len(due)
        same_person = self.recognizer.threshold
        for track, feature, embedding in zip(due, features, embeddings):
            if track.evidence.count and track.evidence.cosine(embedding) < same_person:
                track.evidence = Evidence()  # someone else stands there now: start again from this face
            track.evidence.add(embedding, face_weight(track.face, self.full_face_px), self.evidence_cap)
            track.features, track.embedding = feature, embedding
            track.looks, track.last_embedded, track.doubt = looks.get(track.track_id), now, False
            track.embedded_frame = self._frames
        self._match(due, gallery)

    def _features(self, frame: NDArray[np.uint8], due: list[Track]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Features and embeddings of the tracks' faces, a batch for each kind. A named track's chip (evidence of
        name_evidence or more) goes without its mirror image (half the cost; on CelebA the two embeddings' cosine
        is at least 0.988), and again with it when that embedding disagrees with its evidence: new evidence starts
        from a flipped one."""
        plain = [] if self.reembed_flip else [i for i, t in enumerate(due) if t.evidence.weight >= self.name_evidence]
        flipped = [i for i in range(len(due)) if i not in plain]
        rows = [(group, self.recognizer.features(frame, [due[i].face for i in group], **options))
                for group, options in ((flipped, {}), (plain, {"flip": False})) if group]
        features = np.concatenate([part for _, part in rows])[np.argsort([i for group, _ in rows for i in group])]
        embeddings = self.recognizer.embed(features)
        same_person = self.recognizer.threshold
        again = [i for i in plain if due[i].evidence.cosine(embeddings[i]) < same_person]
        if again:
            features[again] = self.recognizer.features(frame, [due[i].face for i in again])
            embeddings[again] = self.recognizer.embed(features[again])
        return features, embeddings

    def _match(self, tracks: list[Track], gallery: Gallery) -> None:
        if not tracks:
            return
        matches = gallery.match(np.stack([t.evidence.fused() for t in tracks]), self.recognizer.rule)
        for track, match in zip(tracks, matches):
            track.match = match

    def _update_velocity(self, track: Track, before: tuple | None, now: float) -> None:
        if before is None:
            return
        was_at, seen = before
        dt = now - seen
        if dt <= 0:
            return
        if dt > self.max_gap_s:  # the stream paused: where the face went says nothing about its speed
            track.velocity = np.zeros(2)
            return
        measured = (centre(track.face) - was_at) / dt
        track.velocity = (1 - VELOCITY_SMOOTHING) * track.velocity + VELOCITY_SMOOTHING * measured
