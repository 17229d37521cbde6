"""Score the recognition pipeline on face datasets.

    python -m model.evaluate verify   --images DIR --pairs FILE [--groups people.csv]
    python -m model.evaluate identify --images DIR --enroll K
    python -m model.evaluate make-pairs --images DIR --out FILE --seed S

Common options: --backbone NAME, --head FILE, --no-flip, --cache DIR, --no-cache. Progress goes to stderr;
the last line of stdout is one JSON object. The head and the cache default to the app's settings
(FACES_WEIGHTS_DIR, FACES_CACHE_DIR).

Photos where HOG finds no face even at upsample 2 are embedded from an assumed
centred face box (the datasets are loosely cropped portraits) and counted in
`no_face`; unreadable files score -1 against everything and are counted in
`unreadable`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from model.gallery import Gallery
from model.head import EMBEDDING_DIM, load_head
from model.images import ImageError, load_image
from model.recognizer import Recognizer
from model.training import datasets, metrics
from model.training.datasets import IMAGE_SUFFIXES


# --- datasets ---------------------------------------------------------------------


def people_photos(images: Path) -> dict[str, list[Path]]:
    """Folder-per-person dataset -> {person: sorted photo paths}, people sorted by name."""
    people = {}
    for folder in sorted(p for p in Path(images).iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if photos:
            people[folder.name] = photos
    if not people:
        raise SystemExit(f"no person folders with photos under {images}")
    return people


def photo_path(images: Path, name: str, index: int) -> Path:
    """LFW naming: DIR/<name>/<name>_<index:04d>.jpg."""
    return Path(images) / name / f"{name}_{index:04d}.jpg"


@dataclass
class Pairs:
    left: list[Path]
    right: list[Path]
    same: NDArray[np.bool_]
    folds: NDArray[np.int64]


def read_pairs(path: Path, images: Path) -> Pairs:
    """Parse an LFW pairs file: header 'folds<TAB>n', then per fold n same and n different pairs."""
    lines = [line.rstrip("\n").split("\t") for line in Path(path).read_text().splitlines() if line.strip()]
    n_folds, per_kind = int(lines[0][0]), int(lines[0][1])
    left, right, same = [], [], []
    for fields in lines[1:]:
        if len(fields) == 3:
            left.append(photo_path(images, fields[0], int(fields[1])))
            right.append(photo_path(images, fields[0], int(fields[2])))
            same.append(True)
        elif len(fields) == 4:
            left.append(photo_path(images, fields[0], int(fields[1])))
            right.append(photo_path(images, fields[2], int(fields[3])))
            same.append(False)
        else:
            raise SystemExit(f"bad line in {path}: {fields}")
    if len(same) != n_folds * 2 * per_kind:
        raise SystemExit(f"{path}: header promises {n_folds}x{2 * per_kind} pairs, found {len(same)}")
    folds = np.arange(len(same)) // (2 * per_kind)
    return Pairs(left, right, np.array(same), folds)


def make_pairs(images: Path, seed: int, n_folds: int = 10, per_kind: int = 300) -> str:
    """An LFW-style pairs file; each fold draws from its own disjoint group of people."""
    rng = random.Random(seed)
    people = people_photos(images)
    names = list(people)
    rng.shuffle(names)
    groups = [names[i::n_folds] for i in range(n_folds)]
    lines = [f"{n_folds}\t{per_kind}"]
    for group in groups:
        multi = [name for name in group if len(people[name]) >= 2]
        if not multi or len(group) < 2:
            raise SystemExit("too few people with two or more photos to make pairs")
        index = {name: [_photo_index(p) for p in people[name]] for name in group}
        same, diff = set(), set()
        for _ in range(100 * per_kind):
            if len(same) >= per_kind:
                break
            name = rng.choice(multi)
            i, j = sorted(rng.sample(index[name], 2))
            same.add(f"{name}\t{i}\t{j}")
        for _ in range(100 * per_kind):
            if len(diff) >= per_kind:
                break
            a, b = sorted(rng.sample(group, 2))
            diff.add(f"{a}\t{rng.choice(index[a])}\t{b}\t{rng.choice(index[b])}")
        if len(same) < per_kind or len(diff) < per_kind:
            raise SystemExit(f"cannot draw {per_kind} distinct pairs per kind in a fold; use a smaller --per-fold")
        lines += sorted(same) + sorted(diff)
    return "\n".join(lines) + "\n"


def _photo_index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


# --- embedding ----------------------------------------------------------------------


@dataclass
class Embedded:
    vectors: dict[Path, NDArray[np.float32]]
    no_face: int
    unreadable: int
    seconds: float
    computed: int  # photos read and embedded in this run (the rest came from the cache)


def embed_portraits(
    recognizer: Recognizer, images: Path, paths: list[Path], cache_dir: Path | None | bool = None
) -> Embedded:
    """Embed the face of each portrait once (see `Recognizer.portrait_face`).

    Backbone features are kept in the same cache as the trainer's
    (`model.training.datasets`, keyed by photo, size, mtime, backbone and flip), so
    scoring another head, or the same set again, skips detection. cache_dir=None
    uses the default cache folder; pass `False` to compute everything afresh.
    """
    backbone = recognizer.backbone.name
    cache_path = datasets.cache_file(images, backbone, cache_dir or None, flip=recognizer.flip,
                                     detector=recognizer.detector.name)
    cached = datasets.read_cache(cache_path) if cache_dir is not False else {}
    features, no_face, unreadable, computed = {}, 0, 0, 0
    start = time.perf_counter()
    for path in tqdm(sorted(set(paths)), desc="embedding", unit="img", file=sys.stderr):
        try:
            key = datasets.photo_key(images, path, backbone, 0)
        except OSError:
            key = None  # a missing file: reported as unreadable below
        if key in cached:
            features[path], detected = cached[key]
            no_face += not detected
            continue
        try:
            photo = load_image(path)
        except ImageError as exc:
            print(f"unreadable: {path}: {exc}", file=sys.stderr)
            unreadable += 1
            continue
        face, detected = recognizer.portrait_face(photo)
        no_face += not detected
        computed += 1
        features[path] = recognizer.features(photo, [face])[0]
        cached[key] = (features[path], detected)
    seconds = time.perf_counter() - start
    if computed and cache_dir is not False:
        datasets.write_cache(cache_path, cached)
    found = list(features)
    vectors = recognizer.embed(np.stack([features[p] for p in found])) if found else []
    return Embedded(dict(zip(found, vectors)), no_face, unreadable, seconds, computed)


def _similarity(embedded: Embedded, a: Path, b: Path) -> float:
    if a not in embedded.vectors or b not in embedded.vectors:
        return -1.0
    return float(embedded.vectors[a] @ embedded.vectors[b])


# --- subcommands ---------------------------------------------------------------------


def verify(recognizer: Recognizer, images: Path, pairs_file: Path, cache: Path | None | bool = None) -> dict:
    pairs = read_pairs(pairs_file, images)
    embedded = embed_portraits(recognizer, images, pairs.left + pairs.right, cache)
    scores = np.array([_similarity(embedded, a, b) for a, b in zip(pairs.left, pairs.right)])
    accuracies = metrics.kfold_accuracy(scores, pairs.same, pairs.folds)
    genuine, impostor = scores[pairs.same], scores[~pairs.same]
    return {
        "accuracy": round(float(np.mean(accuracies)), 4),
        "accuracy_std": round(float(np.std(accuracies)), 4),
        "tar_at_far_1e-3": round(metrics.tar_at_far(genuine, impostor, 1e-3), 4),
        "threshold_at_far_1e-3": round(metrics.threshold_at_far(impostor, 1e-3), 4),
        "pairs": int(len(scores)),
        "no_face": embedded.no_face,
        "unreadable": embedded.unreadable,
        # Detection + landmarks + embedding per photo; None when every photo came from the cache.
        "ms_per_image": round(1000 * embedded.seconds / embedded.computed, 1) if embedded.computed else None,
    }


GROUP_FARS = (1e-3, 1e-4)


def read_group_file(groups_file: Path, images: Path) -> dict[str, str]:
    """{person: group} from a CSV person,group, checked against the dataset before anything is embedded.

    :raises SystemExit: the file has no rows, or names people who have no photos under `images`.
    """
    from model.training.reports import read_groups

    if not Path(groups_file).is_file():
        raise SystemExit(f"no groups file at {groups_file}")
    groups = read_groups(groups_file)
    if not groups:
        raise SystemExit(f"{groups_file}: no 'person,group' rows")
    unknown = sorted(set(groups) - set(people_photos(images)))
    if unknown:
        raise SystemExit(f"{groups_file} names {len(unknown)} people with no photos in {images}: "
                         + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    return groups


def group_verification(recognizer: Recognizer, images: Path, groups: dict[str, str], cache: Path | None | bool = None,
                       fars: tuple[float, ...] = GROUP_FARS) -> dict:
    """TAR at each FAR per group of people (`read_group_file`), over every pair of their photos, and the gap.

    Genuine pairs are each person's own; impostor pairs join two people of the same group, and the
    threshold is set on that group's impostors (`reports.group_report`). FAR 1e-4 needs at least
    10,000 impostor pairs in a group to mean anything: each row gives its pair counts.
    :return: {'groups': rows, 'gap': {'tar_at_far_1e-03': {'points', 'best', 'worst'}, ...}}
        (points: the best group's TAR minus the worst's, in percentage points).
    """
    from model.training.reports import group_report

    people = people_photos(images)
    names = sorted(groups)
    paths = [p for name in names for p in people[name]]
    embedded = embed_portraits(recognizer, images, paths, cache)
    found = [p for p in paths if p in embedded.vectors]
    labels = np.array([names.index(p.parent.name) for p in found], dtype=np.int64)
    vectors = np.stack([embedded.vectors[p] for p in found])
    rows = {}
    for far in fars:
        for row in group_report(vectors, labels, names, groups, far):
            merged = rows.setdefault(row["group"], {k: row[k] for k in
                                                     ("group", "people", "photos", "genuine_pairs", "impostor_pairs")})
            key = f"tar_at_far_{far:.0e}"
            merged[key] = None if row[key] is None else round(row[key], 4)
    gap = {}
    for far in fars:
        key = f"tar_at_far_{far:.0e}"
        scored = [r for r in rows.values() if r[key] is not None]
        if len(scored) >= 2:
            best, worst = max(scored, key=lambda r: r[key]), min(scored, key=lambda r: r[key])
            gap[key] = {"points": round(100 * (best[key] - worst[key]), 2), "best": best["group"], "worst": worst["group"]}
    return {"groups": list(rows.values()), "gap": gap}


def identify(recognizer: Recognizer, images: Path, enroll: int, cache: Path | None | bool = None) -> dict:
    people = people_photos(images)
    enrolled = {name: photos[:enroll] for name, photos in people.items() if len(photos) > enroll}
    mated = [(name, p) for name, photos in enrolled.items() for p in people[name][enroll:]]
    non_mated = [p for name, photos in people.items() if name not in enrolled for p in photos]
    all_paths = [p for photos in enrolled.values() for p in photos] + [p for _, p in mated] + non_mated
    embedded = embed_portraits(recognizer, images, all_paths, cache)

    gallery = Gallery(dim=EMBEDDING_DIM)
    person_id = {name: i for i, name in enumerate(enrolled)}
    photo_id = 0
    for name, photos in enrolled.items():
        for path in photos:
            if path in embedded.vectors:
                gallery.add(photo_id, person_id[name], embedded.vectors[path])
                photo_id += 1

    def best(paths: list[Path]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        found = [p for p in paths if p in embedded.vectors]
        probes = np.stack([embedded.vectors[p] for p in found]) if found else np.zeros((0, EMBEDDING_DIM), np.float32)
        matches = gallery.match(probes, threshold=np.inf)
        scores = np.full(len(paths), -1.0)
        ids = np.full(len(paths), -1)
        where = {p: i for i, p in enumerate(paths)}
        for path, m in zip(found, matches):
            scores[where[path]] = m.similarity
            ids[where[path]] = m.candidate_id if m.candidate_id is not None else -1
        return scores, ids

    mated_scores, mated_ids = best([p for _, p in mated])
    mated_correct = mated_ids == np.array([person_id[name] for name, _ in mated])
    non_mated_scores, _ = best(non_mated)
    result = {
        "rank1": round(float(np.mean(mated_correct)), 4) if len(mated) else None,
        "enrolled_people": len(enrolled),
        "mated_probes": len(mated),
        "non_mated_probes": len(non_mated),
        "no_face": embedded.no_face,
        "unreadable": embedded.unreadable,
    }
    for fpir, key in ((0.01, "dir_at_fpir_0.01"), (0.001, "dir_at_fpir_0.001")):
        value = metrics.dir_at_fpir(mated_scores, mated_correct, non_mated_scores, fpir) if len(non_mated) else None
        result[key] = round(value, 4) if value is not None else None
    if len(non_mated):
        result["threshold_at_fpir_0.01"] = round(metrics.threshold_at_far(non_mated_scores, 0.01), 4)
    return result


def _recognizer(args: argparse.Namespace) -> Recognizer:
    recognizer = Recognizer(args.backbone, detector=args.detector, flip=args.flip, weights_dir=args.weights_dir)
    recognizer.backbone.load()
    recognizer.head = load_head(recognizer.backbone.name, recognizer.backbone.dim, path=args.head,
                                weights_dir=args.weights_dir)
    return recognizer


def _parser() -> argparse.ArgumentParser:
    """The command line; the weights folder and the cache default to the app's settings table."""
    from webapp.settings import from_env

    settings = from_env()
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.set_defaults(weights_dir=Path(settings["WEIGHTS_DIR"]))  # FACES_WEIGHTS_DIR
    common.add_argument("--images", type=Path, required=True, help="folder-per-person photos")
    common.add_argument("--backbone", default=settings["BACKBONE"],
                        help="dlib-resnet, sface, dlib-sface or vgg16-face (default: FACES_BACKBONE, %(default)s)")
    common.add_argument("--detector", default=settings["DETECTOR"],
                        help="yunet, hog or mtcnn (default: FACES_DETECTOR, %(default)s)")
    common.add_argument("--head", type=Path, default=None, help="head file (default: the one the app uses)")
    common.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True,
        help="average each face with its mirror image (default: on, as in the app)",
    )
    common.add_argument(
        "--cache", type=Path, default=Path(settings["CACHE_DIR"]),
        help="folder keeping backbone features between runs, shared with model.train "
             "(default %(default)s; FACES_CACHE_DIR moves it)",
    )
    common.add_argument("--no-cache", dest="cache", action="store_const", const=False, help="compute every photo afresh")
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser("verify", parents=[common], help="LFW 10-fold verification")
    p_verify.add_argument("--pairs", type=Path, required=True)
    p_verify.add_argument("--groups", type=Path, default=None,
                          help="CSV person,group: TAR at FAR 1e-3 and 1e-4 per group and the largest gap")
    p_identify = sub.add_parser("identify", parents=[common], help="open-set identification")
    p_identify.add_argument("--enroll", type=int, default=3, help="photos enrolled per person")
    p_pairs = sub.add_parser("make-pairs", help="write an LFW-style pairs file")
    p_pairs.add_argument("--images", type=Path, required=True)
    p_pairs.add_argument("--out", type=Path, required=True)
    p_pairs.add_argument("--seed", type=int, default=0)
    p_pairs.add_argument("--folds", type=int, default=10)
    p_pairs.add_argument("--per-fold", type=int, default=300, help="same (and different) pairs per fold")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)

    if args.command == "make-pairs":
        text = make_pairs(args.images, args.seed, n_folds=args.folds, per_kind=args.per_fold)
        args.out.write_text(text)
        result = {"pairs": len(text.splitlines()) - 1, "out": str(args.out), "seed": args.seed}
    else:
        recognizer = _recognizer(args)
        if args.command == "verify":
            groups = read_group_file(args.groups, args.images) if args.groups else None  # bad files fail first
            result = verify(recognizer, args.images, args.pairs, args.cache)
            if groups:
                result["per_group"] = group_verification(recognizer, args.images, groups, args.cache)
        else:
            result = identify(recognizer, args.images, args.enroll, args.cache)
        result.update(backbone=recognizer.backbone.name, detector=recognizer.detector.name, flip=args.flip)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
