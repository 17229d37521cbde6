"""Find faces in RGB frames: OpenCV's YuNet (the default), dlib's HOG detector or MTCNN, with dlib's 5 landmarks.

Boxes everywhere in this project are int [left, top, right, bottom] in pixels of
the frame that was passed in, clipped to it. dlib types stay inside this module
and `align.py`.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray


# YuNet: detections scoring below this are dropped; boxes overlapping more are merged; at most this many.
YUNET_SCORE = 0.6
YUNET_NMS = 0.3
YUNET_TOP_K = 5000
# The closer look's turned copies (degrees): YuNet boxes faces tilted up to about 30 degrees, and a copy
# turned 45 degrees either way brings a face tilted 30-70 degrees upright (bench/detectors.py --turn).
SEARCH_TILTS = (45.0, -45.0)
# On turned copies only faces up to this share of the frame's shorter side count: the turned frame's whole
# outline scored 0.6-0.7 as a face there (400-500 px boxes). At 0.25 (120 px at 480) faces of 120 px tilted
# 45 degrees were found only upright, with tilted points: bench/wild.py named 70-85% of them, 90-95% at 0.4.
TURNED_LARGEST = 0.4
MERGE_INSIDE = 0.8
MERGE_TILT_STEP = 10.0
# A turned find stands in for the first find of a face only where it puts the eye line where that one did
# (finds_agree): on the copy turned the wrong way (a face tilted 30 degrees then stands at 75) YuNet's points
# still lean to level, so that find reads as the most upright of all while its eye line in the frame lies on the
# other side of level. The first find's points lean to level too, but keep their side; finds on the right copy
# put the eye line up to 51 degrees from the first find's (small faces, whose points lean the most).
TURN_AGREES = 55.0
LEVEL_DEG = 5.0  # a first find this close to level says nothing of the side


@dataclass(frozen=True)
class Face:
    """One detected face.

    box: int32 [4] = left, top, right, bottom (frame pixels, clipped).
    landmarks: float32 [5, 2] = (x, y) of dlib's 5 points (eye corners, nose base).
    score: detector confidence; larger is surer. Faces placed by `centre_face` get -inf.
    """

    box: NDArray[np.int32]
    landmarks: NDArray[np.float32]
    score: float
    # YuNet's 5 points (x, y): eye centres (image left first), nose tip, mouth corners (image left first).
    # None for HOG faces; model.align derives them from `landmarks` then.
    keypoints: NDArray[np.float32] | None = None
    # Degrees the copy it was found on was turned (FaceDetector.detect_turned); 0: the frame itself.
    turned: float = 0.0

    @property
    def width(self) -> int:
        return int(self.box[2] - self.box[0])

    @property
    def height(self) -> int:
        return int(self.box[3] - self.box[1])


class FaceDetector:
    """dlib's HOG frontal detector plus the 5-point shape predictor.

    Cost on a 640x480 frame on one core: about 31 ms at upsample 0 and 128 ms at
    upsample 1 (HOG), plus about 1 ms per face for landmarks.
    """

    name = "hog"
    # Angles the live closer look turns the frame by (see detect_turned); none for HOG, which finds no small faces.
    search_tilts: tuple[float, ...] = ()

    def __init__(self, predictor_path: str | None = None):
        self.predictor_path = predictor_path
        self._detector = None
        self._predictor = None
        self._lock = threading.Lock()

    def load(self) -> "FaceDetector":
        """Load the detector and predictor once; later calls do nothing."""
        with self._lock:
            if self._detector is None:
                import dlib

                path = self.predictor_path
                if path is None:
                    import face_recognition_models

                    path = face_recognition_models.pose_predictor_five_point_model_location()
                self._predictor = dlib.shape_predictor(path)
                self._detector = dlib.get_frontal_face_detector()
        return self

    def clone(self) -> "FaceDetector":
        """A new, unloaded detector with the same files, for another thread (dlib's objects keep per-call state)."""
        return FaceDetector(self.predictor_path)

    def detect(self, frame: NDArray[np.uint8], *, upsample: int = 0, max_side: int | None = None) -> list[Face]:
        """Find the frontal faces in a frame.

        :param frame: uint8 [H, W, 3] RGB.
        :param upsample: 0 for live frames; 1 finds faces down to about 40 px at 4x the cost.
        :param max_side: when the longer side exceeds it, detect on a scaled-down copy;
            boxes and landmarks are still in the original frame's pixels.
        :return: faces sorted by area, largest first.
        """
        self.load()
        height, width = frame.shape[:2]
        scale = 1.0
        small = frame
        if max_side and max(height, width) > max_side:
            scale = max_side / max(height, width)
            # No side below 1 pixel: a 1x4000 frame scaled to 640 made cv2.resize assert on a 0-wide copy.
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._detector.run(small, upsample, 0.0)
        boxes = [np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float64) / scale for r in rects]
        faces = [self._face_at(frame, box, score) for box, score in zip(boxes, scores)]
        faces = [face for face in faces if face.width > 0 and face.height > 0]
        return sorted(faces, key=lambda face: face.width * face.height, reverse=True)

    def centre_face(self, frame: NDArray[np.uint8], *, fraction: float = 0.45) -> Face:
        """Assume one face in the middle of a loosely cropped portrait (LFW-style).

        Used only when the caller knows the photo holds a centred face that HOG
        missed (profile, occlusion); landmarks are still fitted to the pixels.
        """
        self.load()
        height, width = frame.shape[:2]
        side = fraction * min(height, width)
        cx, cy = width / 2, height / 2
        box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        return self._face_at(frame, box, float("-inf"))

    def face_in(self, frame: NDArray[np.uint8], box: NDArray | list[int]) -> Face:
        """The face in a known [left, top, right, bottom] box (e.g. one stored at enrollment), landmarks fitted in it."""
        self.load()
        return self._face_at(frame, np.asarray(box, dtype=np.float64), float("-inf"))

    def refit(self, frame: NDArray[np.uint8], face: Face) -> Face | None:
        """Follow a face into the next video frame without detecting (about 1 ms).

        Landmarks are refitted inside the old box and the box moves by their
        mean shift. Returns None when the box has left the frame.
        """
        self.load()
        moved = self._face_at(frame, face.box.astype(np.float64), face.score)
        shift = (moved.landmarks - face.landmarks).mean(axis=0)
        box = face.box.astype(np.float64) + np.r_[shift, shift]
        height, width = frame.shape[:2]
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            return None
        keypoints = None if face.keypoints is None else (face.keypoints + shift).astype(np.float32)
        # Refit once more inside the moved box so the landmarks match the box they report.
        return self._face_at(frame, box, face.score, keypoints)

    def detect_turned(self, frame: NDArray[np.uint8], angles: tuple[float, ...] | None = None, *,
                      scale: float = 1.0, largest: float = TURNED_LARGEST) -> list[Face]:
        """Faces found on copies of the frame turned by each angle (degrees, counter-clockwise) about its
        centre and scaled, mapped back into the frame; for small faces tilted more than the detector copes
        with. Faces wider or taller than `largest` x the frame's shorter side are dropped.
        angles default to the detector's `search_tilts`.

        The detector's own points (YuNet's) are found on the turned copy, where the face is upright, and
        turned back with it.
        Cost: one detection per angle on a canvas that holds the whole turned frame (about 2x its
        pixels at 45 degrees). Merge with the upright faces through `merge_faces`.
        """
        height, width = frame.shape[:2]
        faces = []
        for angle in self.search_tilts if angles is None else angles:
            matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
            cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
            size = (max(1, int(np.ceil(width * cos + height * sin))), max(1, int(np.ceil(width * sin + height * cos))))
            matrix[:, 2] += (size[0] - width) / 2, (size[1] - height) / 2
            # Edges replicated, not black: a black wedge's corners gave YuNet false faces.
            turned = cv2.warpAffine(frame, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            back = cv2.invertAffineTransform(matrix)
            biggest = largest * min(height, width) * scale
            faces += [self._turned_back(frame, face, back, scale, angle) for face in self.detect(turned)
                      if max(face.width, face.height) <= biggest]
        return [face for face in faces if face is not None]

    def _turned_back(self, frame: NDArray[np.uint8], face: Face, back: NDArray[np.float64], scale: float,
                     angle: float) -> Face | None:
        """A face found on a turned copy, in the frame's pixels (None when its centre is outside the frame).

        dlib's landmarks are fitted again in the frame: the tracker refits them there every frame and moves
        the box by their shift, so landmarks from the upright copy made its box jump off the face."""
        def points(xy: NDArray) -> NDArray[np.float32]:
            return (np.asarray(xy, np.float64) @ back[:, :2].T + back[:, 2]).astype(np.float32)

        cx, cy = points([[(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2]])[0]
        height, width = frame.shape[:2]
        if not (0 <= cx < width and 0 <= cy < height):
            return None  # found on the replicated edge
        half_w, half_h = face.width / scale / 2, face.height / scale / 2
        box = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
        keypoints = None if face.keypoints is None else points(face.keypoints)
        return dataclasses.replace(self._face_at(frame, box, face.score, keypoints), turned=angle)

    def _face_at(self, frame: NDArray[np.uint8], box: NDArray[np.float64], score: float,
                 keypoints: NDArray[np.float32] | None = None) -> Face:
        import dlib

        height, width = frame.shape[:2]
        left, top, right, bottom = (int(round(v)) for v in box)
        shape = self._predictor(frame, dlib.rectangle(left, top, right, bottom))
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        clipped = np.array(
            [max(0, left), max(0, top), min(width, right), min(height, bottom)], dtype=np.int32
        )
        return Face(box=clipped, landmarks=landmarks, score=float(score), keypoints=keypoints)


class YuNetDetector(FaceDetector):
    """OpenCV's YuNet detector (cv2.FaceDetectorYN, the model zoo's int8 file), with dlib's 5 landmarks
    refitted inside each box for dlib's chips and YuNet's own 5 points kept for SFace's.

    Cost on a 640x480 frame on one core: about 13 ms; it finds faces down to about 30 px and
    tilted by up to 45 degrees, where HOG at upsample 0 finds none under about 80 px.

    :param score_threshold: detections scoring less are dropped (YuNet's confidence, 0..1).
    :param nms_threshold: overlapping boxes above this IoU are merged.
    """

    name = "yunet"
    search_tilts = SEARCH_TILTS

    def __init__(self, predictor_path: str | None = None, *, score_threshold: float = YUNET_SCORE,
                 nms_threshold: float = YUNET_NMS):
        super().__init__(predictor_path)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._yunet = None
        self._input_size: tuple[int, int] | None = None

    def load(self) -> "YuNetDetector":
        super().load()
        with self._lock:
            if self._yunet is None:
                from model.zoo import model_file

                self._yunet = cv2.FaceDetectorYN.create(
                    str(model_file("yunet")), "", (320, 320), self.score_threshold, self.nms_threshold, YUNET_TOP_K
                )
        return self

    def clone(self) -> "YuNetDetector":
        return YuNetDetector(self.predictor_path, score_threshold=self.score_threshold,
                             nms_threshold=self.nms_threshold)

    def detect(self, frame: NDArray[np.uint8], *, upsample: int = 0, max_side: int | None = None) -> list[Face]:
        """Faces in an RGB frame, largest first (see FaceDetector.detect).

        upsample > 0 detects on a copy enlarged 2**upsample times (at most to max_side),
        for enrollment photos of small faces; YuNet needs it far less than HOG.
        """
        self.load()
        height, width = frame.shape[:2]
        scale = 2.0 ** max(0, upsample)
        if max_side:
            scale = min(scale, max_side / max(height, width))
        scaled = frame
        if scale != 1.0:  # scaled first: the colour swap then has fewer pixels to copy (1.6 ms on a 640x480 frame)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            scaled = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        bgr = cv2.cvtColor(np.ascontiguousarray(scaled), cv2.COLOR_RGB2BGR)  # YuNet reads BGR
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._input_size:
            self._yunet.setInputSize(size)
            self._input_size = size
        _, found = self._yunet.detect(bgr)
        faces = []
        for row in [] if found is None else found:
            left, top, w, h = (float(v) / scale for v in row[:4])
            keypoints = (row[4:14].reshape(5, 2) / scale).astype(np.float32)
            face = self._face_at(frame, np.array([left, top, left + w, top + h]), float(row[14]), keypoints)
            if face.width > 0 and face.height > 0:
                faces.append(face)
        return sorted(faces, key=lambda face: face.width * face.height, reverse=True)


class MTCNNDetector(FaceDetector):
    """MTCNN (the PyPI package mtcnn 1.0.0, on TensorFlow; see model/detect_mtcnn.py), with dlib's 5
    landmarks refitted inside each box and MTCNN's own 5 points kept as `keypoints`, as YuNet's are.

    TensorFlow is imported in `load()`, never at import, so only a server started with
    FACES_DETECTOR=mtcnn loads it. Speed and recall next to YuNet and HOG: bench/detectors.py.
    """

    name = "mtcnn"

    def __init__(self, predictor_path: str | None = None, *, score_threshold: float | None = None):
        super().__init__(predictor_path)
        self.score_threshold = score_threshold
        self._mtcnn = None

    def load(self) -> "MTCNNDetector":
        super().load()
        with self._lock:
            if self._mtcnn is None:
                from model.detect_mtcnn import load_mtcnn

                self._mtcnn = load_mtcnn()
        return self

    def clone(self) -> "MTCNNDetector":
        return MTCNNDetector(self.predictor_path, score_threshold=self.score_threshold)

    def detect(self, frame: NDArray[np.uint8], *, upsample: int = 0, max_side: int | None = None) -> list[Face]:
        """Faces in an RGB frame, largest first (see FaceDetector.detect); upsample > 0 searches down to 12 px."""
        from model.detect_mtcnn import MIN_FACE_PX, SCORE_THRESHOLD, SMALLEST_FACE_PX, mtcnn_rows

        self.load()
        height, width = frame.shape[:2]
        scale = min(1.0, max_side / max(height, width)) if max_side and min(height, width) > 0 else 1.0
        small = frame
        if scale != 1.0:
            small = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA)
        rows = mtcnn_rows(self._mtcnn, small, min_face_px=SMALLEST_FACE_PX if upsample > 0 else MIN_FACE_PX,
                          score_threshold=self.score_threshold or SCORE_THRESHOLD)
        faces = []
        for row in rows:
            keypoints = (row[5:15].reshape(5, 2) / scale).astype(np.float32)
            face = self._face_at(frame, row[:4].astype(np.float64) / scale, float(row[4]), keypoints)
            if face.width > 0 and face.height > 0:
                faces.append(face)
        return sorted(faces, key=lambda face: face.width * face.height, reverse=True)


DETECTORS: dict[str, type[FaceDetector]] = {"yunet": YuNetDetector, "hog": FaceDetector, "mtcnn": MTCNNDetector}


def get_detector(name: str) -> FaceDetector:
    """A new, not yet loaded detector by name ('yunet', 'hog' or 'mtcnn')."""
    try:
        return DETECTORS[name]()
    except KeyError:
        raise ValueError(f"unknown detector '{name}'; choose one of: {', '.join(DETECTORS)}") from None


def face_nearest_centre(faces: list[Face], frame_shape: tuple[int, ...]) -> Face | None:
    """Pick the face whose box centre is closest to the frame centre (None for no faces)."""
    if not faces:
        return None
    height, width = frame_shape[:2]
    centre = np.array([width / 2, height / 2])

    def distance(face: Face) -> float:
        box_centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
        return float(np.linalg.norm(box_centre - centre))

    return min(faces, key=distance)


def merge_faces(faces: list[Face], more: list[Face], *, max_iou: float = YUNET_NMS) -> list[Face]:
    """Both lists' faces, largest first. Of any two that overlap by more than max_iou, or where one lies
    mostly (`MERGE_INSIDE`) inside the other (an upright pass's loose box around a tilted face), the one
    that stood less upright where it was found is dropped, or on a tie (same `MERGE_TILT_STEP`) the less
    sure: YuNet's points on a tilted face lean towards upright, so that face's chip is aligned worse."""
    def same(a: Face, b: Face) -> bool:
        inside = box_overlap(a.box, b.box) / max(1, min(a.width * a.height, b.width * b.height))
        return box_iou(a.box, b.box) > max_iou or inside >= MERGE_INSIDE

    kept: list[Face] = []
    for face in sorted(faces + more, key=found_rank):
        if not any(same(face, other) for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda face: face.width * face.height, reverse=True)


def found_rank(face: Face) -> tuple[int, float]:
    """Of two finds of one face, the lower ranks better: found more upright (in MERGE_TILT_STEPs), then surer."""
    return round(abs(found_tilt(face)) / MERGE_TILT_STEP), -face.score


def found_tilt(face: Face) -> float:
    """How far the face's eye line was from level (degrees) on the copy it was found on; 0 without points."""
    return 0.0 if face.keypoints is None else _degrees(eye_line(face) - face.turned)


def eye_line(face: Face) -> float:
    """The angle of the face's eye line in the frame (degrees, from its detector's points); 0 without points."""
    if face.keypoints is None:
        return 0.0
    dx, dy = face.keypoints[1] - face.keypoints[0]
    return float(np.degrees(np.arctan2(dy, dx)))


def finds_agree(turned: Face, first: Face) -> bool:
    """Whether a turned find puts the face's eye line where its first find did: within TURN_AGREES degrees,
    and on the same side of level unless the first one is within LEVEL_DEG of level."""
    a, b = eye_line(turned), eye_line(first)
    same_side = abs(b) < LEVEL_DEG or a * b > 0
    return same_side and abs(_degrees(a - b)) <= TURN_AGREES


def _degrees(angle: float) -> float:
    """The angle in -180..180."""
    return float((angle + 180) % 360 - 180)


def box_overlap(a: NDArray, b: NDArray) -> float:
    """The area two [left, top, right, bottom] boxes share."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return float(width * height) if width > 0 and height > 0 else 0.0


def box_iou(a: NDArray, b: NDArray) -> float:
    """Intersection over union of two [left, top, right, bottom] boxes."""
    inter = box_overlap(a, b)
    if inter == 0.0:
        return 0.0
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union
