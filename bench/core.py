"""Time the recognition core's steps on a 640x480 frame with one face.

    python bench/core.py [--repeat N] [--photo PATH]

Prints one line per figure and, last, one JSON object: detection ms at upsample
0 and 1, landmarks ms per face, embedding ms per face (batch of 1 and of 8),
and which dlib build ran (BLAS or not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.align import face_chips  # noqa: E402
from model.images import load_image  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402

DEFAULT_PHOTO = Path(os.environ.get("FACES_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "faces")) / "samples" / "single_person.jpg"


def best_ms(fn, repeat: int) -> float:
    """Median wall time of `fn` in ms over `repeat` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    args = parser.parse_args()

    import dlib

    recognizer = Recognizer("dlib-resnet", detector="hog").load()
    default = Recognizer().load()  # YuNet + dlib-sface
    portrait = load_image(args.photo)
    frame = np.full((480, 640, 3), 90, np.uint8)
    h, w = portrait.shape[:2]
    frame[115 : 115 + h, 195 : 195 + w] = portrait
    faces = recognizer.find_faces(frame, upsample=0)
    assert len(faces) == 1, "the benchmark frame should hold exactly one detectable face"
    chips1 = face_chips(frame, faces, size=150, padding=0.25)
    yunet_faces = default.find_faces(frame, upsample=0)[:1]
    chips8 = np.repeat(chips1, 8, axis=0)

    result = {
        "dlib_version": dlib.__version__,
        "dlib_blas": bool(getattr(dlib, "DLIB_USE_BLAS", False)),
        "dlib_avx": bool(getattr(dlib, "USE_AVX_INSTRUCTIONS", False)),
        "detect_ms_upsample0": best_ms(lambda: recognizer.detector._detector.run(frame, 0, 0.0), args.repeat),
        "detect_ms_upsample1": best_ms(lambda: recognizer.detector._detector.run(frame, 1, 0.0), max(3, args.repeat // 4)),
        "detect_ms_upsample0_max_side_320": best_ms(lambda: recognizer.find_faces(frame, upsample=0, max_side=320), args.repeat),
        "detect_and_landmarks_ms": best_ms(lambda: recognizer.find_faces(frame, upsample=0), args.repeat),
        "align_ms_per_face": best_ms(lambda: face_chips(frame, faces, size=150, padding=0.25), args.repeat),
        "embed_ms_per_face_batch1": best_ms(lambda: recognizer.backbone.embed(chips1), args.repeat),
        "embed_ms_per_face_batch8": best_ms(lambda: recognizer.backbone.embed(chips8), args.repeat // 2) / 8,
        "yunet_detect_and_landmarks_ms": best_ms(lambda: default.find_faces(frame, upsample=0), args.repeat),
        "sface_embed_ms_per_face": best_ms(
            lambda: default.backbone.parts[1].features(frame, yunet_faces, flip=False), args.repeat),
        "default_features_ms_per_face_with_flip": best_ms(lambda: default.features(frame, yunet_faces), args.repeat),
        "cpu_threads": os.cpu_count(),
    }
    for key, value in result.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}", file=sys.stderr)
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))
    return result


if __name__ == "__main__":
    main()
