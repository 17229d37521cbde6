"""Tracking faces across frames of synthetic videos made from real photos, timed in stream seconds."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from model.detect import Face, box_iou
from model.evidence import face_weight
from model.gallery import Gallery
from model.images import load_image
from model.follow import follow_face
from model.tracking import FaceTracker
from model.tracks import PENDING

FPS = 15


def portrait(celeba_dir, person: str, index: int):
    return load_image(celeba_dir / person / f"{person}_{index:04d}.jpg")


def video(photos, steps: int = 20, step_px: int = 6):
    """Frames 640x480 with each photo sliding right, side by side; returns frames and photo offsets."""
    frames, offsets = [], []
    for k in range(steps):
        frame = np.full((480, 640, 3), 80, np.uint8)
        placed = []
        for j, photo in enumerate(photos):
            x, y = 20 + 320 * j + k * step_px, 115
            frame[y : y + 250, x : x + 250] = photo[:, : max(0, min(250, 640 - x))]
            placed.append((x, y))
        frames.append(frame)
        offsets.append(placed)
    return frames, offsets


def placed(photo, x: int, y: int = 115, scale: float = 1.0, size=(480, 640)):
    """One frame with the photo (scaled) at (x, y) on a plain background."""
    frame = np.full((*size, 3), 80, np.uint8)
    if scale != 1.0:
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = photo.shape[:2]
    frame[y : y + h, x : x + w] = photo[: size[0] - y, : size[1] - x]
    return frame


@pytest.fixture(scope="module")
def gallery(recognizer, celeba_dir):
    gallery = Gallery()
    for index in (6, 7, 8):
        photo = portrait(celeba_dir, "celeb_7201", index)
        face, _ = recognizer.portrait_face(photo)
        gallery.add(index, 7201, recognizer.embed_faces(photo, [face])[0])
    return gallery


class CountingRecognizer:
    """Wraps the real recognizer and counts detector and embedding calls; `threshold` may be pinned."""

    def __init__(self, recognizer, threshold: float | None = None):
        self._r = recognizer
        self.detections = 0
        self.embedded_faces = 0
        self.calls = []  # each features() call: (faces, whether the mirrored chip was asked for)
        self.detector = recognizer.detector
        self.head = recognizer.head
        self.threshold = recognizer.threshold if threshold is None else threshold
        self.rule = recognizer.rule if threshold is None else threshold

    def find_faces(self, frame, **kw):
        self.detections += 1
        return self._r.find_faces(frame, **kw)

    def features(self, frame, faces, **options):
        self.embedded_faces += len(faces)
        self.calls.append((len(faces), options.get("flip", True)))
        return self._r.features(frame, faces, **options)

    def embed(self, features):
        return self._r.embed(features)

    def unrecognisable(self, face, frame=None):
        return self._r.unrecognisable(face, frame)


def tracker(recognizer, **options) -> FaceTracker:
    return FaceTracker(recognizer, max_side=640, **options)


def test_one_face_is_followed_with_one_track_and_few_detections_and_embeddings(recognizer, celeba_dir, gallery):
    counting = CountingRecognizer(recognizer)
    faces_tracker = tracker(counting)
    frames, offsets = video([portrait(celeba_dir, "celeb_7201", 1)])
    ids = set()
    first_box = None
    for k, (frame, where) in enumerate(zip(frames, offsets)):
        faces = faces_tracker.update(frame, gallery, now=k / FPS)
        assert len(faces) == 1
        ids.add(faces[0].track_id)
        assert faces[0].match.person_id == 7201
        if first_box is None:
            first_box = faces[0].face.box.copy()
        dx = where[0][0] - offsets[0][0][0]
        assert box_iou(faces[0].face.box, first_box + np.array([dx, 0, dx, 0])) > 0.6  # the box follows the face
    assert len(ids) == 1
    # 1.33 s of a still background: detected at 0 s and after 1 s (detect_still_s); the face's
    # own movement is no reason to detect. Embedded at 0 and 0.2 s, then its evidence has settled.
    assert counting.detections == 2
    assert counting.embedded_faces == 2


def test_a_track_carries_across_dropped_frames_without_costing_more(recognizer, celeba_dir, gallery):
    """A face crossing the frame in 1 s, seen at 30 fps and with 3 of every 4 frames dropped."""
    photo = portrait(celeba_dir, "celeb_7201", 2)
    frames = [placed(photo, 10 + 12 * k) for k in range(31)]  # 360 pixels a second
    work = {}
    for step in (1, 4):
        counting = CountingRecognizer(recognizer)
        # One phase for both: by default each tracker takes its own from its serial number, which then depends
        # on how many trackers earlier tests made, and a second closer look inside this 1 s clip costs one more.
        faces_tracker = tracker(counting, search_phase=0.0)
        ids = set()
        for k in range(0, len(frames), step):
            [face] = faces_tracker.update(frames[k], gallery, now=k / 30)
            ids.add(face.track_id)
            assert face.match.person_id == 7201, k
            true_left = 10 + 12 * k + 70  # where the face sits in the portrait
            assert abs(int(face.face.box[0]) - true_left) < 25, (k, face.face.box)
        assert len(ids) == 1, step  # the gaps of 48 pixels do not break the track
        work[step] = counting.detections + counting.embedded_faces
    # Detections and embeddings follow stream time, so fewer frames never cost more per second of video.
    assert work[4] <= work[1]


def test_known_and_unknown_side_by_side(recognizer, celeba_dir, gallery):
    faces_tracker = tracker(recognizer)
    photos = [portrait(celeba_dir, "celeb_7201", 2), portrait(celeba_dir, "celeb_7205", 1)]
    frames, _ = video(photos, steps=8, step_px=3)
    for k, frame in enumerate(frames):
        faces = faces_tracker.update(frame, gallery, now=k / FPS)
    labels = [f.match.person_id for f in sorted(faces, key=lambda f: f.face.box[0])]
    assert labels == [7201, None]


def test_a_face_that_leaves_ends_its_track_on_the_first_blank_frame(recognizer, celeba_dir, gallery):
    faces_tracker = tracker(recognizer)
    frames, _ = video([portrait(celeba_dir, "celeb_7201", 1)], steps=3)
    for k, frame in enumerate(frames):
        assert len(faces_tracker.update(frame, gallery, now=k / FPS)) == 1
    empty = np.full((480, 640, 3), 80, np.uint8)
    for k in range(3, 6):
        assert faces_tracker.update(empty, gallery, now=k / FPS) == []  # never a name on a blank frame
    assert faces_tracker.tracks == []


def test_a_frame_of_another_size_ends_the_tracks(recognizer, celeba_dir, gallery):
    faces_tracker = tracker(recognizer)
    photo = portrait(celeba_dir, "celeb_7201", 1)
    [before] = faces_tracker.update(placed(photo, 300), gallery, now=0.0)
    small = placed(photo, 10, 5, size=(300, 400))
    [after] = faces_tracker.update(small, gallery, now=1 / FPS)
    assert after.track_id != before.track_id
    assert after.face.box[2] <= 400 and after.face.box[3] <= 300 and after.face.box[0] < 150  # found there
    assert faces_tracker.update(np.full((200, 200, 3), 80, np.uint8), gallery, now=2 / FPS) == []


def test_a_different_person_in_the_same_place_is_noticed(recognizer, celeba_dir, gallery):
    faces_tracker = tracker(recognizer)
    known = placed(portrait(celeba_dir, "celeb_7201", 1), 195)
    stranger = placed(portrait(celeba_dir, "celeb_7205", 1), 195)
    for k in range(20):
        faces = faces_tracker.update(known, gallery, now=k / FPS)
    assert faces[0].match.person_id == 7201
    labels = [faces_tracker.update(stranger, gallery, now=(20 + k) / FPS)[0].match.person_id for k in range(30)]
    # The face no longer looks like the one embedded: re-identified on the very next frame.
    assert labels == [None] * 30


def test_a_stranger_is_not_named_on_one_view_that_looks_like_someone(recognizer, celeba_dir, gallery):
    """celeb_7251 looks like the enrolled celeb_7201: photo 2 scores 0.919 against them and photo 4 0.950.

    With the threshold between the two, a per-frame decision names photo 4 the moment it shows.
    The track's fused embedding (photo 2 for a second, photo 4 for a third of one) stays under it.
    """
    counting = CountingRecognizer(recognizer, threshold=0.942)
    faces_tracker = tracker(counting)
    usual, odd = portrait(celeba_dir, "celeb_7251", 2), portrait(celeba_dir, "celeb_7251", 4)
    shown = [usual] * 15 + [odd] * 5 + [usual] * 10
    for k, photo in enumerate(shown):
        faces = faces_tracker.update(placed(photo, 150 + 2 * k), gallery, now=k / FPS)
        assert [f.match.person_id for f in faces] == [None], k
    assert counting.embedded_faces >= 4  # the odd view was embedded, and outweighed
    lone = gallery.match(recognizer.embed_faces(odd, [recognizer.portrait_face(odd)[0]]), 0.942)[0]
    assert lone.person_id == 7201  # on its own, that view would have been named


def test_a_small_face_is_named_once_enough_of_it_was_seen(recognizer, celeba_dir, gallery):
    """A face of 72 px counts about half: unnamed on its first frame, named after its second embedding."""
    faces_tracker = tracker(recognizer)
    photo = portrait(celeba_dir, "celeb_7201", 1)
    decisions = []
    for k in range(10):
        [face] = faces_tracker.update(placed(photo, 200, 150, scale=0.72 if k < 6 else 1.0), gallery, now=k / FPS)
        decisions.append((face.match.person_id, face.match.reason))
        assert face.face.width < 90 or k >= 6
    assert decisions[0] == (None, PENDING)  # the similarity is there, the evidence not yet
    assert decisions[3:] == [(7201, None)] * 7  # named from 0.2 s on, when the second embedding came
    assert len({f.track_id for f in faces_tracker.update(placed(photo, 200, 150), gallery, now=0.7)}) == 1


def test_a_face_counts_in_its_evidence_by_its_shorter_side():
    """1 from full_face_px up, (side / full_face_px)^2 below, never nothing."""
    def sized(width, height):
        return Face(np.array([10, 10, 10 + width, 10 + height], np.int32), np.zeros((5, 2), np.float32), 1.0)

    assert face_weight(sized(40, 52), 40) == 1.0 and face_weight(sized(120, 120), 40) == 1.0
    assert face_weight(sized(30, 40), 40) == pytest.approx(0.5625)  # two embeddings name a 30 px face
    assert face_weight(sized(1, 1), 40) == 0.01


def test_a_gallery_change_rematches_tracks_without_embedding_again(recognizer, celeba_dir, gallery):
    counting = CountingRecognizer(recognizer)
    faces_tracker = tracker(counting)
    stranger = portrait(celeba_dir, "celeb_7205", 1)
    frame = placed(stranger, 195)
    [before] = faces_tracker.update(frame, gallery, now=0.0)
    assert before.match.person_id is None
    grown = Gallery()
    grown.add_many((i, 7201, gallery._vectors[i]) for i in range(len(gallery)))
    face, _ = recognizer.portrait_face(stranger)
    grown.add(99, 7205, recognizer.embed_faces(stranger, [face])[0])
    embedded = counting.embedded_faces
    faces_tracker.gallery_changed()
    [after] = faces_tracker.update(frame, grown, now=1 / FPS)
    assert after.track_id == before.track_id and after.match.person_id == 7205  # named at once
    assert counting.embedded_faces == embedded


def test_a_face_too_small_to_recognise_is_boxed_with_its_reason_and_never_embedded(recognizer, celeba_dir, gallery):
    from model.recognizer import TOO_SMALL

    counting = CountingRecognizer(recognizer)
    counting.unrecognisable = lambda face, frame=None: TOO_SMALL  # every face is too small here
    faces_tracker = tracker(counting)
    photo = portrait(celeba_dir, "celeb_7201", 1)
    for k in range(5):
        [face] = faces_tracker.update(placed(photo, 200), gallery, now=k / FPS)
        assert (face.match.person_id, face.match.reason, face.embedding) == (None, TOO_SMALL, None)
    assert counting.embedded_faces == 0


def test_closer_looks_cost_no_more_a_frame_when_a_stream_is_slowed():
    """A closer look (upsample + 1) every search_every_s, and no more often than that holds frames at 15 fps."""
    from fakes import fake_recognizer

    recognizer = fake_recognizer()
    frames = [np.full((480, 640, 3), 120, np.uint8)] * 100
    for fps, expected in ((15.0, [0, 45, 90]), (1.0, [0, 45, 90]), (30.0, [0, 90])):
        tracker = FaceTracker(recognizer, search_every_s=3.0, search_phase=0.0)
        assert looks_at(recognizer, [tracker], frames, fps) == [expected], fps


def looks_at(recognizer, trackers, frames, fps=FPS, upsample=1):
    """For each tracker (all on `recognizer`, fed the frames in turn), the frame numbers on which it took a
    closer look (a detection at upsample 1; 0: a plain detection)."""
    calls = []
    find_faces = recognizer.find_faces
    recognizer.find_faces = lambda frame, upsample=0, max_side=None: (
        calls.append(upsample) or find_faces(frame, upsample=upsample, max_side=max_side))
    looked = [[] for _ in trackers]
    for i, frame in enumerate(frames):
        for searched, tracker in zip(looked, trackers):
            before = len(calls)
            tracker.update(frame, Gallery(dim=128), i / fps)
            if upsample in calls[before:]:
                searched.append(i)
    recognizer.find_faces = find_faces
    return looked


def test_streams_started_together_take_their_closer_looks_on_different_frames():
    from fakes import fake_recognizer

    recognizer = fake_recognizer()
    frames = [np.full((480, 640, 3), 120, np.uint8)] * 100
    second = sorted(looks_at(recognizer, [FaceTracker(recognizer)], frames)[0][1] for _ in range(5))
    # The first look is on the first frame; the next ones come search_phase early, spread over the 45 frames.
    assert all(0 < s <= 45 for s in second) and min(np.diff(second)) >= 4, second
    assert looks_at(recognizer, [FaceTracker(recognizer, search_phase=0.5)], frames) == [[0, 23, 68]]


def test_a_worker_with_more_streams_spaces_their_closer_looks_further_apart():
    """Trackers on one recognizer share a worker: past LOOK_STREAMS streams its looks cost it no more."""
    from fakes import fake_recognizer

    from model.tracking import LOOK_STREAMS

    frames = [np.full((480, 640, 3), 120, np.uint8)] * 200
    for streams in (LOOK_STREAMS, 2 * LOOK_STREAMS):
        recognizer = fake_recognizer()
        trackers = [FaceTracker(recognizer, search_phase=0.0) for _ in range(streams)]
        gap = 45 * streams // LOOK_STREAMS
        assert looks_at(recognizer, trackers, frames) == [list(range(0, 200, gap))] * streams, streams


def test_a_worker_with_more_streams_spaces_their_detections_anyway_too():
    """A still picture is detected on every detect_still_s (15 frames at 15 fps); past LOOK_STREAMS streams on
    one worker, each stream's come further apart, while a picture that changes is still detected at once."""
    from fakes import fake_recognizer

    from model.tracking import LOOK_STREAMS

    still = [np.full((480, 640, 3), 120, np.uint8)] * 100
    for streams in (LOOK_STREAMS, 2 * LOOK_STREAMS):
        recognizer = fake_recognizer()
        trackers = [FaceTracker(recognizer, search_every_s=0) for _ in range(streams)]
        gap = 15 * streams // LOOK_STREAMS
        assert looks_at(recognizer, trackers, still, upsample=0) == [list(range(0, 100, gap))] * streams, streams
    changing = still[:20] + [np.full((480, 640, 3), 200, np.uint8)] * 10
    trackers = [FaceTracker(recognizer, search_every_s=0) for _ in range(2 * LOOK_STREAMS)]
    assert all(20 in found for found in looks_at(recognizer, trackers, changing, upsample=0))


class TurningDetector:
    """The fake detector with a closer look's turned copies: each run is recorded, and the turned copies
    find the faces in `turned` (angle -> boxes) while it holds them."""

    search_tilts = (45.0, -45.0)

    def __init__(self):
        from fakes import FakeDetector

        self.fake, self.runs, self.turned = FakeDetector(), [], {}

    def __getattr__(self, name):
        return getattr(self.fake, name)

    def detect(self, frame, *, upsample=0, max_side=None):
        self.runs.append(f"upright x{upsample + 1}")
        return self.fake.detect(frame, upsample=upsample, max_side=max_side)

    def detect_turned(self, frame, angles, *, scale=1.0):
        self.runs.append(f"turned {angles[0]:+.0f}")
        return [self.fake.face_in(frame, box) for angle in angles for box in self.turned.get(angle, [])]


def test_the_closer_look_takes_one_piece_a_frame_and_a_turned_find_outlasts_the_plain_detections():
    from fakes import FakeBackbone

    from model.recognizer import Recognizer

    detector = TurningDetector()
    tracker = FaceTracker(Recognizer(FakeBackbone(), detector=detector).load(), search_phase=0.0)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[200:230, 300:330] = np.random.default_rng(1).integers(0, 256, (30, 30, 3))  # too small upright
    detector.turned = {45.0: [[300, 200, 330, 230]]}
    runs, ids = [], []
    for i in range(140):
        if i == 50:
            detector.turned = {}  # the face is no longer found
        before = len(detector.runs)
        tracks = tracker.update(frame, Gallery(dim=128), i / FPS)
        runs.append(detector.runs[before:])
        ids.append([t.track_id for t in tracks])
    # The stream's first look is whole; the later ones take a piece a frame.
    assert runs[:2] == [["upright x2", "turned +45", "turned -45"], []]
    assert runs[45:49] == [["upright x2"], ["turned +45"], ["turned -45"], []]
    assert all(len([r for r in frame_runs if r != "upright x1"]) <= 1 for frame_runs in runs[1:])
    # Found by a turned copy, kept by the plain detections and by the upright piece that misses it; missed by
    # two whole looks (frames 90-92, 135-137), it ends at the last piece of the second, not at its first.
    assert all(track_ids == [0] for track_ids in ids[:137]), ids
    assert ids[137:] == [[], [], []]


def test_a_slowed_stream_detects_no_more_a_frame_but_a_slow_camera_keeps_its_schedule():
    """Timed detections wait for the frames their interval holds at full_rate_fps (15 by default)."""
    from fakes import fake_recognizer

    recognizer = fake_recognizer()
    frames = [np.full((480, 640, 3), 120, np.uint8) for _ in range(2)]
    frames[1][:60, :100] = 220  # every frame changes a little (2% of the picture): a detection when it is due
    counts = {}
    for name, fps, options in (("slowed", 2.0, {}), ("camera", 2.0, {"full_rate_fps": 2.0})):
        tracker = FaceTracker(recognizer, search_every_s=0, **options)
        for i in range(40):
            tracker.update(frames[i % 2], Gallery(dim=128), i / fps)
        counts[name] = tracker.detections
    # 2 fps: the slowed stream detects every 3 frames (0.2 s at 15 fps), the camera on every frame (0.2 s passed).
    assert counts == {"slowed": 14, "camera": 40}, counts


def test_a_still_face_is_followed_with_one_landmark_fit_and_a_moving_one_with_two(recognizer, celeba_dir, monkeypatch):
    photo = portrait(celeba_dir, "celeb_7201", 1)
    still, moved = placed(photo, 195), placed(photo, 207)
    [face] = recognizer.find_faces(still)
    fits = []
    fit = recognizer.detector.face_in
    monkeypatch.setattr(recognizer.detector, "face_in", lambda frame, box: fits.append(1) or fit(frame, box))
    once = follow_face(recognizer.detector, still, follow_face(recognizer.detector, still, face))
    assert len(fits) == 2  # the points stay where the detection fitted them: one fit a frame
    twice = recognizer.detector.refit(still, face)
    assert np.abs(once.box - twice.box).max() <= 2 and np.abs(once.landmarks - twice.landmarks).max() <= 2
    fits.clear()
    followed = follow_face(recognizer.detector, moved, once)  # 12 px further, not predicted: fitted twice
    assert len(fits) == 2
    refit = recognizer.detector.refit(moved, once)
    assert np.array_equal(followed.box, refit.box) and np.array_equal(followed.landmarks, refit.landmarks)
    assert followed.score == face.score
    gone = dataclasses.replace(face, box=face.box + np.array([700, 0, 700, 0]), landmarks=face.landmarks + [700, 0])
    assert follow_face(recognizer.detector, still, gone) is None


def test_a_named_track_is_rechecked_without_the_mirrored_chip(recognizer, celeba_dir, gallery):
    frame = placed(portrait(celeba_dir, "celeb_7201", 1), 195)
    for reembed_flip, expected in ((False, [(1, True), (1, False), (1, False)]), (True, [(1, True)] * 3)):
        counting = CountingRecognizer(recognizer)
        faces_tracker = tracker(counting, reembed_flip=reembed_flip)
        for k in range(40):  # 2.6 s: embedded when new (named on it), at 0.2 s (then settled) and at 2.2 s
            [face] = faces_tracker.update(frame, gallery, now=k / FPS)
            assert face.match.person_id == 7201, k
        assert counting.calls == expected, reembed_flip


def test_a_track_short_of_a_name_is_rechecked_with_the_mirrored_chip(recognizer, celeba_dir, gallery):
    counting = CountingRecognizer(recognizer)
    faces_tracker = tracker(counting, full_face_px=200)  # the 108-px face weighs (108 / 200)^2, 0.29, a frame
    frame = placed(portrait(celeba_dir, "celeb_7201", 1), 195)
    names = [faces_tracker.update(frame, gallery, now=k / FPS)[0].match.person_id for k in range(16)]
    assert names[0] is None and names[-1] == 7201
    assert counting.calls == [(1, True)] * 4 + [(1, False)]  # named on the 4th (weight 1.17), then plain


def test_a_settled_track_whose_plain_embedding_disagrees_starts_again_from_a_flipped_one(recognizer, celeba_dir,
                                                                                         gallery):
    counting = CountingRecognizer(recognizer)
    faces_tracker = tracker(counting)
    known = placed(portrait(celeba_dir, "celeb_7201", 1), 195)
    stranger = placed(portrait(celeba_dir, "celeb_7205", 1), 195)
    for k in range(20):
        faces_tracker.update(known, gallery, now=k / FPS)
    assert counting.calls == [(1, True), (1, False)]
    [face] = faces_tracker.update(stranger, gallery, now=20 / FPS)
    assert face.match.person_id is None
    # In doubt and settled: the chip alone first, then, as it is someone else, with its mirror image.
    assert counting.calls[2:] == [(1, False), (1, True)]
    [track] = faces_tracker.tracks
    assert track.evidence.count == 1
    flipped = recognizer.embed_faces(stranger, [track.face])[0]
    assert float(track.embedding @ flipped) > 0.9999  # its evidence starts from the flipped embedding
