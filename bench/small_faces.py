"""How small can a face be and still be recognised? CelebA faces pasted small, judged by the side of their box.

    python bench/small_faces.py [--sizes 30,34,40,56,80] [--probes 6] [--galleries 1,10,50] [--draws 150]
                                [--people N] [--workers 2] [--save FILE.npz]

For each CelebA person (FACES_TEST_DATA/celeba) with at least 4 photos, the first 3 are enrolled at full
size (the app's enrollment: Recognizer.enrollment_faces, default model) and up to --probes others are cut
and pasted S px wide, for each S in --sizes, into a 240x240 piece of bench/wild.py's backgrounds (its
face_cut, background and paste), boxed by YuNet at twice the size (the live closer look) and embedded:
one frame each, no track. Then, over --draws random galleries of N people (3 photos each, person
templates, the head's open-set rule), per side of the box (what FACES_MIN_RECOGNISE_PX is compared
with): the share of strangers' probes named (FPIR) and of the members' probes named right (DIR).
About 9 minutes for all 298 people on 2 cores.

Prints a table, then one JSON line: {"bins": [[low, high], ...], "galleries": {N: {"fpir": [...],
"dir": [...], "strangers": [...], "mated": [...]}}, "box_side_by_size": {S: [p10, p50, p90]},
"missed_by_size": {S: share not boxed}, "people": P, "seconds": T}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wild import FACES_DIR, background, box_iou, face_cut, paste_face, read_rgb  # noqa: E402

from model.gallery import templates  # noqa: E402
from model.head import EMBEDDING_DIM  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402

ENROLL = 3
PIECE = 240  # side of the frame piece a face is pasted into
BINS = [(0, 26), (26, 28), (28, 30), (30, 32), (32, 34), (34, 36), (36, 38), (38, 42), (42, 50), (50, 10_000)]
STRANGERS_PER_DRAW = 300

_recognizer: Recognizer | None = None


def _load() -> None:
    global _recognizer
    _recognizer = Recognizer().load()


def person_rows(task: tuple[int, str, tuple[int, ...], int]) -> list[tuple[int, str, int, float, np.ndarray]]:
    """One person's rows: (label, "enrolled" or "probe", pasted size (0: enrolled), box side, embedding);
    a probe YuNet did not box has side 0 and no embedding."""
    label, folder, sizes, probes = task
    photos = sorted(Path(folder).glob("*.jpg"))
    rng = np.random.default_rng(label)
    rows = []
    for index, path in enumerate(photos[: ENROLL + probes]):
        portrait = read_rgb(path)
        if index < ENROLL:
            try:
                faces = _recognizer.enrollment_faces(portrait)[:1]
            except Exception:  # a photo the app would refuse is not enrolled here either
                faces = []
            if faces:
                rows.append((label, "enrolled", 0, float(faces[0].width), _recognizer.embed_faces(portrait, faces)[0]))
            continue
        for size in sizes:
            frame = background(read_rgb(photos[(index + 1) % len(photos)]), rng)[:PIECE, :PIECE].copy()
            cut = face_cut(portrait, size, 0.0)
            side = cut.shape[0]
            left, top = ((PIECE - side) // 2 + int(rng.integers(-20, 21)) for _ in range(2))
            truth = paste_face(frame, cut, left, top, size)
            found = [f for f in _recognizer.find_faces(frame, upsample=1) if box_iou(f.box, truth) >= 0.3]
            if not found:
                rows.append((label, "probe", size, 0.0, None))
                continue
            box_side = float(min(found[0].width, found[0].height))
            rows.append((label, "probe", size, box_side, _recognizer.embed_faces(frame, found[:1])[0]))
    return rows


def judge(labels, kinds, sides, embeddings, rule, galleries, draws: int, seed: int = 0) -> dict:
    """Per gallery size and box-side bin: strangers named, strangers seen, members named right, members seen."""
    rng = np.random.default_rng(seed)
    people = np.unique(labels[kinds == "enrolled"])
    boxed = (kinds == "probe") & (sides > 0)
    bin_of = np.digitize(sides, [low for low, _ in BINS[1:]])
    out = {}
    for n in galleries:
        counts = np.zeros((len(BINS), 4), dtype=np.int64)
        for _ in range(draws):
            chosen = rng.choice(people, size=min(n, len(people) - 10), replace=False)
            rows = np.flatnonzero((kinds == "enrolled") & np.isin(labels, chosen))
            ids, centres, _ = templates(embeddings[rows], labels[rows])
            limits = rule.thresholds(np.array([(labels[rows] == i).sum() for i in ids]), len(ids), centres)
            member = np.isin(labels, chosen)
            strangers = np.flatnonzero(boxed & ~member)
            strangers = rng.choice(strangers, size=min(STRANGERS_PER_DRAW, len(strangers)), replace=False)
            for probes, mated in ((strangers, False), (np.flatnonzero(boxed & member), True)):
                similarities = embeddings[probes] @ centres.T
                best = similarities.argmax(axis=1)
                named = similarities[np.arange(len(probes)), best] >= limits[best]
                if mated:
                    named &= ids[best] == labels[probes]
                np.add.at(counts[:, 2 if mated else 0], bin_of[probes], named)
                np.add.at(counts[:, 3 if mated else 1], bin_of[probes], 1)
        out[n] = counts
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,34,40,56,80", help="face widths to paste, pixels")
    parser.add_argument("--probes", type=int, default=6, help="probe photos a person")
    parser.add_argument("--galleries", default="1,10,50", help="people enrolled, one run each")
    parser.add_argument("--draws", type=int, default=150, help="random galleries a size")
    parser.add_argument("--people", type=int, default=0, help="only the first N people (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", type=Path,
                        help="also write the rows (labels, kinds, sizes, sides, embeddings) to this .npz")
    args = parser.parse_args(argv)
    sizes = tuple(int(v) for v in args.sizes.split(","))
    galleries = [int(v) for v in args.galleries.split(",")]
    celeba = FACES_DIR / "celeba"
    if not celeba.is_dir():
        raise SystemExit(f"needs the shared photos at {celeba} (set FACES_TEST_DATA)")
    folders = sorted(p for p in celeba.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) > ENROLL)
    folders = folders[: args.people] if args.people else folders
    started = time.perf_counter()
    tasks = [(label, str(folder), sizes, args.probes) for label, folder in enumerate(folders)]
    with multiprocessing.get_context("spawn").Pool(args.workers, initializer=_load) as pool:
        rows = [row for person in pool.imap_unordered(person_rows, tasks) for row in person]
    _load()
    labels = np.array([r[0] for r in rows])
    kinds = np.array([r[1] for r in rows])
    pasted = np.array([r[2] for r in rows])
    sides = np.array([r[3] for r in rows])
    embeddings = np.stack([r[4] if r[4] is not None else np.zeros(EMBEDDING_DIM, np.float32) for r in rows])
    if args.save:
        np.savez(args.save, labels=labels, kinds=kinds, sizes=pasted, sides=sides, embeddings=embeddings)
    counts = judge(labels, kinds, sides, embeddings, _recognizer.rule, galleries, args.draws)

    def share(a, b):
        return [round(float(x) / y, 4) if y else None for x, y in zip(a, b)]

    result = {
        "bins": [list(b) for b in BINS],
        "galleries": {n: {"fpir": share(c[:, 0], c[:, 1]), "dir": share(c[:, 2], c[:, 3]),
                          "strangers": c[:, 1].tolist(), "mated": c[:, 3].tolist()} for n, c in counts.items()},
        "box_side_by_size": {s: np.percentile(sides[(pasted == s) & (sides > 0)], [10, 50, 90]).round(1).tolist()
                             for s in sizes},
        "missed_by_size": {s: round(float((sides[pasted == s] == 0).mean()), 4) for s in sizes},
        "people": len(folders),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print("box side (px)   " + "   ".join(f"{n} enrolled: strangers named / members named right" for n in galleries))
    for i, (low, high) in enumerate(BINS):
        cells = []
        for n in galleries:
            g = result["galleries"][n]
            fpir, dir_ = g["fpir"][i], g["dir"][i]
            cells.append(f"{'-' if fpir is None else f'{100 * fpir:.2f}%'} / {'-' if dir_ is None else f'{100 * dir_:.1f}%'}")
        print(f"{low:>4}-{high if high < 10_000 else '':<5}      " + "   ".join(f"{c:<44}" for c in cells))
    print("box side by pasted size (p10, p50, p90):", result["box_side_by_size"])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
