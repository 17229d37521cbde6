"""The recognition pipeline: detect, align, embed (backbone + head), match.

`Recognizer` ties the parts together for the web app, the evaluation tool and
the benchmarks; each step is also a public method so callers can cache
between them (the app stores backbone features per photo so a new head can be
applied without re-reading photos).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.backbones import Backbone, get_backbone
from model.detect import Face, FaceDetector, face_nearest_centre, get_detector
from model.gallery import Gallery, Match
from model.head import Head, load_head
from model.open_set import OpenSetRule
from model.quality import MIN_DETAIL, face_detail

# Cosine similarity at which dlib-resnet (identity head, flip averaging on)
# accepts a match: the false-accept rate 1e-3 point over all 18 million
# cross-person photo pairs of ../shared/faces/celeba (see README, "Choosing the threshold").
DEFAULT_THRESHOLD = 0.932
# The backbone when none is named: dlib's ResNet and SFace fused (README, "Accuracy").
DEFAULT_BACKBONE = "dlib-sface"
# The face detector when none is named: 'yunet' or 'hog' (see model.detect).
DEFAULT_DETECTOR = "yunet"
# Faces smaller than this (box side, pixels) are boxed but never named nor kept in the inbox. On CelebA
# faces pasted at 30-80 px (README, "Faces too small to recognise"), boxes of 30-36 px were named as often
# as 36-42 px ones with no more strangers named; under 30 px fewer were named in galleries of 50 people.
DEFAULT_MIN_RECOGNISE_PX = 30
TOO_SMALL = "too small to recognise"
TOO_BLURRED = "too blurred to recognise"
# Enrollment photos: faces smaller than this (box side, pixels) are refused.
DEFAULT_MIN_FACE = 60
# Enrollment photos are detected at this upsampling (finds faces down to about 40 px), on a copy
# scaled to at most ENROLLMENT_MAX_SIDE.
ENROLLMENT_UPSAMPLE = 1
ENROLLMENT_MAX_SIDE = 1600
# Evaluation portraits: HOG tries these upsamplings in turn before assuming a centred face.
PORTRAIT_UPSAMPLES = (1, 2)


@dataclass(frozen=True)
class Recognition:
    """A face found in a frame and who it is: the one type a face has from detection to the answer.

    track_id: the live track it belongs to (None outside a video stream).
    features, embedding: float32 [D] and [128] the match was made from (for a
    tracked face, those of the track's last embedding).
    """

    face: Face
    match: Match
    track_id: int | None = None
    features: NDArray[np.float32] | None = None
    embedding: NDArray[np.float32] | None = None


def stricter(rule: float | OpenSetRule, offset: float) -> float | OpenSetRule:
    """The rule with `offset` added to every similarity it asks for (negative: looser)."""
    if isinstance(rule, OpenSetRule):
        return replace(rule, base=tuple(value + offset for value in rule.base)) if offset else rule
    return float(rule) + offset


class EnrollmentRejected(ValueError):
    """A photo cannot be enrolled; the message is shown to the user as is."""


class Recognizer:
    """detect -> align -> embed -> match, with one backbone and its head.

    :param backbone: a Backbone instance or name (default DEFAULT_BACKBONE).
    :param detector: a FaceDetector instance or name ('yunet' or 'hog'; default DEFAULT_DETECTOR).
    :param head: a Head; default: the backbone's head file, or identity for 128-D backbones.
    :param threshold: open-set threshold; default: the head's own, else DEFAULT_THRESHOLD.
    :param min_recognise_px: smaller faces are boxed with a reason, never embedded or named.
    :param weights_dir: folder of head files and VGG-Face's weights (default: model.paths.DEFAULT_WEIGHTS_DIR).
    :param flip: also embed the mirrored chip and average (2x embedding cost; on CelebA
        TAR at FAR 1e-3 rises from 85.9% to 87.8%, so it is on by default).
    """

    def __init__(
        self,
        backbone: Backbone | str = DEFAULT_BACKBONE,
        head: Head | None = None,
        detector: FaceDetector | str | None = None,
        threshold: float | None = None,
        flip: bool = True,
        weights_dir: Path | None = None,
        min_recognise_px: int = DEFAULT_MIN_RECOGNISE_PX,
    ):
        self.backbone = get_backbone(backbone, weights_dir) if isinstance(backbone, str) else backbone
        self.detector = get_detector(detector) if isinstance(detector, str) else detector or get_detector(DEFAULT_DETECTOR)
        self.head = head
        self._threshold = threshold
        self.flip = flip
        self.min_recognise_px = min_recognise_px
        self.weights_dir = weights_dir  # where head and weight files are read (None: model.paths.DEFAULT_WEIGHTS_DIR)
        # Added to every threshold of the rule (the user's own strictness; webapp.strictness), unless fixed.
        self.strictness = 0.0
        self._parsed_rule: tuple[Head, OpenSetRule] | None = None

    @property
    def threshold(self) -> float:
        """One similarity to show and to cut inbox groups at: the fixed threshold, else the head's
        (for a head with an open-set rule: its threshold for one person with 3 photos)."""
        if self._threshold is not None:
            return self._threshold
        if self.head is not None and self.head.threshold is not None:
            return float(self.head.threshold)
        return DEFAULT_THRESHOLD

    @property
    def rule(self) -> float | OpenSetRule:
        """What a match must clear: a fixed threshold when one was given (FACES_THRESHOLD), else the
        head's open-set rule (stricter as the gallery grows, see model.open_set.OpenSetRule) when it has
        one, else the head's or the default threshold; either raised by `strictness` unless fixed."""
        if self._threshold is not None:
            return self._threshold
        if self.head is not None and "open_set" in self.head.info:
            return stricter(self._head_rule(self.head), self.strictness)
        return stricter(self.threshold, self.strictness)

    def _head_rule(self, head: Head) -> OpenSetRule:
        """The head's rule, read from its sidecar once per head (every frame's match asks for it)."""
        parsed = self._parsed_rule  # read once: another thread may swap it (set_head)
        if parsed is None or parsed[0] is not head:
            parsed = self._parsed_rule = (head, OpenSetRule.from_info(head.info["open_set"]))
        return parsed[1]

    @property
    def threshold_is_fixed(self) -> bool:
        """True when a fixed threshold was given: then `strictness` changes nothing."""
        return self._threshold is not None

    def load(self) -> "Recognizer":
        """Load detector, backbone and head (idempotent). Raises BackboneUnavailable/HeadUnavailable."""
        self.detector.load()
        self.backbone.load()
        if self.head is None:
            self.head = load_head(self.backbone.name, self.backbone.dim, weights_dir=self.weights_dir)
        return self

    def twin(self) -> "Recognizer":
        """A recognizer with the same backbone kind, head, threshold, flip and weights_dir but its own
        detector and network, for a second thread: dlib's objects keep per-call state and
        must not run on two threads at once. Not loaded yet (load() is lazy as ever)."""
        twin = Recognizer(
            self.backbone.clone(),
            head=self.head,
            detector=self.detector.clone(),
            threshold=self._threshold,
            flip=self.flip,
            weights_dir=self.weights_dir,
            min_recognise_px=self.min_recognise_px,
        )
        twin.strictness = self.strictness
        return twin

    def set_head(self, head: Head) -> None:
        """Swap in a new head (one assignment, so concurrent frames see old or new, never half)."""
        self.head = head

    # --- the steps -------------------------------------------------------------

    def find_faces(self, frame: NDArray[np.uint8], *, upsample: int = 0, max_side: int | None = None) -> list[Face]:
        """Faces in an RGB uint8 frame, largest first; see FaceDetector.detect."""
        return self.detector.detect(frame, upsample=upsample, max_side=max_side)

    def features(self, frame: NDArray[np.uint8], faces: list[Face], *, flip: bool | None = None) -> NDArray[np.float32]:
        """Backbone features of the given faces: float32 [N, backbone.dim], unit rows.

        With flip on, the features of the chip and its mirror image are averaged.
        :param flip: None: the recognizer's `flip`; False: the chip alone (half the cost), e.g. for a live
            track's routine re-check.
        """
        self.load()
        return self.backbone.features(frame, faces, flip=self.flip if flip is None else flip and self.flip)

    def embed(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """Backbone features -> float32 [N, 128] embeddings through the head."""
        self.load()
        return self.head(features)

    def embed_faces(self, frame: NDArray[np.uint8], faces: list[Face]) -> NDArray[np.float32]:
        """float32 [N, 128] embeddings of the given faces."""
        return self.embed(self.features(frame, faces))

    # --- whole tasks -------------------------------------------------------------

    def recognize_frame(
        self, frame: NDArray[np.uint8], gallery: Gallery, *, upsample: int = 0, max_side: int | None = None
    ) -> list[Recognition]:
        """Everyone in one frame: detect, align, embed in one batch, match."""
        return self.decide(frame, self.find_faces(frame, upsample=upsample, max_side=max_side), gallery)

    def unrecognisable(self, face: Face, frame: NDArray[np.uint8] | None = None) -> str | None:
        """Why a face cannot be recognised (too small; too blurred, when its frame is given), or None."""
        if min(face.width, face.height) < self.min_recognise_px:
            return TOO_SMALL
        if frame is not None and face_detail(frame, face.box) < MIN_DETAIL:
            return TOO_BLURRED
        return None

    def decide(self, frame: NDArray[np.uint8], faces: list[Face], gallery: Gallery) -> list[Recognition]:
        """Embed every recognisable face in one batch and match it; the others come back unknown with a reason."""
        reasons = [self.unrecognisable(face, frame) for face in faces]
        results = [Recognition(face, Match(None, 0.0, 0.0, reason=reason)) for face, reason in zip(faces, reasons)]
        chosen = [i for i, reason in enumerate(reasons) if reason is None]
        if chosen:
            features = self.features(frame, [faces[i] for i in chosen])
            embeddings = self.embed(features)
            for i, match, feature, embedding in zip(chosen, gallery.match(embeddings, self.rule), features, embeddings):
                results[i] = Recognition(faces[i], match, features=feature, embedding=embedding)
        return results

    def enrollment_faces(
        self, photo: NDArray[np.uint8], *, min_face: int = DEFAULT_MIN_FACE, max_side: int = ENROLLMENT_MAX_SIDE,
        upsample: int = ENROLLMENT_UPSAMPLE,
    ) -> list[Face]:
        """Faces in an enrollment photo (upsampled, so smaller faces are found), largest first.

        :raises EnrollmentRejected: no face, or every face smaller than min_face pixels.
        """
        faces = self.find_faces(photo, upsample=upsample, max_side=max_side)
        if not faces:
            raise EnrollmentRejected("no face found")
        big = [face for face in faces if min(face.width, face.height) >= min_face]
        if not big:
            raise EnrollmentRejected(
                f"face too small ({faces[0].width}x{faces[0].height} px; at least {min_face} px needed)"
            )
        return big

    def portrait_face(self, photo: NDArray[np.uint8]) -> tuple[Face, bool]:
        """The face of a loosely cropped portrait (LFW/CelebA style), for evaluation.

        Tries upsample 1, then 2; when HOG still finds nothing, assumes a centred
        face. Returns (face, detected) where detected is False for that fallback.
        """
        for upsample in PORTRAIT_UPSAMPLES:
            face = face_nearest_centre(self.find_faces(photo, upsample=upsample), photo.shape)
            if face is not None:
                return face, True
        return self.detector.centre_face(photo), False
