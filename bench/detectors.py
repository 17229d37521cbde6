"""Face detectors side by side: recall and speed on small and tilted faces in 640x480 frames.

    python bench/detectors.py [--detectors yunet,hog,mtcnn] [--faces 40] [--sizes 30,40,56,80,120]
                              [--tilts 0,30,45] [--upsample 0] [--turn 45] [--seed 0]

The frames are made as in bench/wild.py (its `face_cut`, `background` and `paste`): a CelebA
portrait rotated by A degrees (left or right at random), its middle 60% scaled so the face is
S px wide, pasted with a feathered edge at a random place into a 640x480 frame whose background
is another photo's colours, shuffled and blurred; JPEG at quality 80 and decoded again, like a
live frame. For each size S x tilt A, --faces frames, each face from a different person, drawn
from --seed (each condition from its own generator, so the frames do not depend on which
detectors or other conditions run). Every detector sees the same frames, through
`detector.detect(frame, upsample=U, max_side=640 * 2**U)`: the live path's call (FACES_LIVE_UPSAMPLE 0,
FACES_LIVE_MAX_SIDE 640; U = 1 is its closer look), dlib's 5 landmarks in each box included.
--turn A also detects on copies turned by +A and -A degrees at the frame's own size
(`detector.detect_turned`, as the live closer look does) and merges the faces (`merge_faces`);
--turn 0 turns nothing. The timings are then also given per pass.

A face counts as found when a box overlaps its truth box (the S x S square centred on the face)
with IoU >= 0.3; any other box is a false box. Time is wall time per frame, after one warm-up
frame per detector (loading is not timed; MTCNN's first call also builds TensorFlow's graphs).

Prints a table per detector (found share per size x tilt, false boxes per frame, ms per frame);
the last line is JSON: settings, and per detector its conditions (size, tilt, faces, found,
false_boxes), found_by_size (pooled over tilts), ms_per_frame (median, p90) and load_s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from wild import FACES_DIR, FRAME_H, FRAME_W, JPEG_QUALITY, MIN_IOU, background, box_iou, face_cut, paste, read_rgb  # noqa: E402

from model.detect import get_detector, merge_faces  # noqa: E402


def people_photos(folder: Path) -> list[tuple[str, list[Path]]]:
    """(identity, photos) of every CelebA person, sorted by name."""
    people = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if photos:
            people.append((person.name, photos))
    if len(people) < 2:
        raise SystemExit(f"need CelebA photos under {folder} (FACES_TEST_DATA moves the folder)")
    return people


def make_frame(photo: Path, back_photo: Path, size: int, tilt: int, rng: np.random.Generator):
    """One 640x480 RGB frame with one face S px wide, and its truth box [left, top, right, bottom]."""
    angle = float(tilt) * (1 if rng.random() < 0.5 else -1)
    cut = face_cut(read_rgb(photo), size, angle)
    frame = background(read_rgb(back_photo), rng)
    side = cut.shape[0]
    left, top = int(rng.integers(0, FRAME_W - side + 1)), int(rng.integers(0, FRAME_H - side + 1))
    paste(frame, cut, left, top)
    cx, cy = left + side / 2, top + side / 2
    truth = [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), truth


def condition_frames(people, size: int, tilt: int, count: int, seed: int):
    """`count` (frame, truth) of different people for one condition, from its own generator."""
    pick = random.Random(f"{seed}/{size}/{tilt}")
    chosen = pick.sample(range(len(people)), min(count, len(people)))
    frames = []
    for i, index in enumerate(chosen):
        photo = pick.choice(people[index][1])
        back = pick.choice(people[(index + 1 + pick.randrange(len(people) - 1)) % len(people)][1])
        frames.append(make_frame(photo, back, size, tilt, np.random.default_rng([seed, size, tilt, i])))
    return frames


def judge(boxes: list, truth: list[float]) -> tuple[bool, int]:
    """(the face was found, false boxes): the best-overlapping box is the face's when IoU >= MIN_IOU."""
    overlaps = [box_iou(box, truth) for box in boxes]
    found = bool(overlaps) and max(overlaps) >= MIN_IOU
    return found, len(boxes) - int(found)


def run_detector(name: str, conditions: dict, upsample: int, turn: float = 0.0) -> dict:
    detector = get_detector(name)
    start = time.perf_counter()
    detector.load()
    load_s = time.perf_counter() - start
    first = next(iter(conditions.values()))[0][0]
    max_side = FRAME_W * 2 ** upsample
    angles = (turn, -turn) if turn else ()
    detector.detect(first, upsample=upsample, max_side=max_side)  # warm-up: graphs, caches
    detector.detect_turned(first, angles)
    rows, times, upright_times = [], [], []
    for (size, tilt), frames in conditions.items():
        found = false = 0
        for frame, truth in frames:
            start = time.perf_counter()
            faces = detector.detect(frame, upsample=upsample, max_side=max_side)
            upright_times.append(1000 * (time.perf_counter() - start))
            if angles:
                faces = merge_faces(faces, detector.detect_turned(frame, angles))
            times.append(1000 * (time.perf_counter() - start))
            hit, extra = judge([face.box.tolist() for face in faces], truth)
            found += hit
            false += extra
        rows.append({"size": size, "tilt": tilt, "faces": len(frames), "found": found, "false_boxes": false})
        print(f"{name}: {size:>4} px {tilt:>3} deg  found {found}/{len(frames)}  false boxes {false}", file=sys.stderr)
    sizes = sorted({row["size"] for row in rows})
    by_size = {str(s): round(sum(r["found"] for r in rows if r["size"] == s)
                             / max(1, sum(r["faces"] for r in rows if r["size"] == s)), 3) for s in sizes}
    return {"conditions": rows, "found_by_size": by_size,
            "false_boxes_per_frame": round(sum(r["false_boxes"] for r in rows) / max(1, len(times)), 4),
            "ms_per_frame": {"median": round(float(np.median(times)), 1),
                             "p90": round(float(np.percentile(times, 90)), 1),
                             "upright_median": round(float(np.median(upright_times)), 1)},
            "load_s": round(load_s, 1)}


def print_table(name: str, result: dict, sizes: list[int], tilts: list[int]) -> None:
    share = {(r["size"], r["tilt"]): r["found"] / max(1, r["faces"]) for r in result["conditions"]}
    print(f"\n{name}: found (share of faces), {result['ms_per_frame']['median']} ms a frame (median; "
          f"{result['ms_per_frame']['upright_median']} upright), "
          f"{result['false_boxes_per_frame']} false boxes a frame")
    print("size  " + "  ".join(f"{t:>4} deg" for t in tilts))
    for s in sizes:
        print(f"{s:>4}  " + "  ".join(f"{100 * share[(s, t)]:>7.0f}%" for t in tilts))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectors", default="yunet,hog,mtcnn")
    parser.add_argument("--faces", type=int, default=40, help="frames (one face each) per size x tilt")
    parser.add_argument("--sizes", default="30,40,56,80,120")
    parser.add_argument("--tilts", default="0,30,45")
    parser.add_argument("--upsample", type=int, default=0)
    parser.add_argument("--turn", type=float, default=0.0, help="also detect on copies turned +-this many degrees")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    tilts = [int(t) for t in args.tilts.split(",")]
    people = people_photos(FACES_DIR / "celeba")
    conditions = {(s, t): condition_frames(people, s, t, args.faces, args.seed) for s in sizes for t in tilts}
    results = {}
    for name in args.detectors.split(","):
        results[name] = run_detector(name, conditions, args.upsample, args.turn)
        print_table(name, results[name], sizes, tilts)
    summary = {"settings": {"faces": args.faces, "sizes": sizes, "tilts": tilts, "upsample": args.upsample,
                            "max_side": FRAME_W * 2 ** args.upsample, "turn": args.turn, "seed": args.seed, "min_iou": MIN_IOU},
               "detectors": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
