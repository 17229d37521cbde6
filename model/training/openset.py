"""The open-set rule of a head, and the starting head of the fused dlib-sface backbone.

    python -m model.training.openset calibrate --images DIR [--backbone B --detector D]
    python -m model.training.openset fused-head --images DIR
    python -m model.training.openset report --images DIR [--backbone B --detector D]

`calibrate` simulates galleries of 1 to 200 people with k = 1, 2, 3 or 5 photos each
(strangers are people never enrolled) and sets `OpenSetRule` so that at most
`--fpir` of strangers' photos get a name at every size: the threshold for a
person with k photos is base[k] (simulated with one person enrolled) plus what
each simulated size adds for k photos (in between, straight in ln(people); past
200, the steepest straight line fitted over all sizes). Every threshold also
carries the population term (`OpenSetRule`: POPULATION_WEIGHT x how like the
mean of all these embeddings a template is), which the simulation applies as
the app does, and the mean goes with the rule; `--extra` (SHIPPED_EXTRA) is
then added to every threshold. It prints the rule as JSON (last line), for a
head's sidecar ("open_set").

`fused-head` builds the head that dlib-sface starts from: the top 128
principal directions of the fused features (98% of their variance on CelebA),
calibrates its rule and writes model/heads/dlib-sface.h5 with its sidecar.
`report` measures a head's rule on fresh random galleries (FPIR and DIR per size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model import open_set
from model.backbones import FusedBackbone, l2_normalise
from model.gallery import templates
from model.head import SHIPPED_HEADS_DIR, Head, save_head
from model.open_set import OpenSetRule
from model.training import metrics

GALLERY_SIZES = (1, 3, 10, 50, 200)  # reported
CALIBRATION_SIZES = (1, 2, 3, 5, 10, 20, 50, 100, 200)
PHOTOS_PER_PERSON = (1, 2, 3, 5)
DRAWS = 300
PROBES_PER_DRAW = 600
# How far a template's likeness to the population's mean face raises its threshold: on CelebA, half the people
# as the population and the other half simulated, 0.5 cut the worst single-person galleries' share of strangers
# named from 14-19% to 6-7% at the same overall 1%, for 0.0-0.3 points of members named; 1.0 cost more.
POPULATION_WEIGHT = 0.5
# The shipped rule's share of strangers' photos named at every size; below the 1% target because the wild
# bench's worst condition of 200 strangers runs well above its overall share (README: Recognition in the wild).
SHIPPED_FPIR = 0.005
# Added to every threshold of the shipped rule. Live video draws the same look-alike stranger in condition
# after condition, so at the 0.5% calibration alone the wild bench's worst condition of 200 strangers reached
# 1.5% in two seeds of four; +0.004 held all five seeds to 1.0%. It is about what calibrating at 0.4% adds up
# to 20 people, without that calibration's jump at 100 (+0.02, CelebA's twins under two names).
SHIPPED_EXTRA = 0.004


def _draws(embeddings, labels, people: int, photos: int, seed: int):
    """Random galleries: per draw (template person ids, templates [P, D], probe rows of strangers, mated probe rows)."""
    rng = np.random.default_rng([seed, people, photos])
    eligible = np.flatnonzero(np.bincount(labels) > photos)
    for _ in range(DRAWS):
        chosen = rng.choice(eligible, size=min(people, len(eligible) - 10), replace=False)
        rows, mated = [], []
        for person in chosen:
            own = rng.permutation(np.flatnonzero(labels == person))
            rows.extend(own[:photos])
            mated.extend(own[photos:])
        ids, centres, _ = templates(embeddings[np.array(rows)], labels[np.array(rows)])
        strangers = rng.choice(np.flatnonzero(~np.isin(labels, chosen)), size=PROBES_PER_DRAW, replace=False)
        mated = rng.choice(mated, size=min(PROBES_PER_DRAW, len(mated)), replace=False)
        yield ids, centres, strangers, np.asarray(mated)


def _crowd_rule(embeddings: NDArray[np.float32], weight: float) -> OpenSetRule:
    """A rule that is only the population term: its mean face taken from these embeddings."""
    mean = embeddings.astype(np.float64).mean(axis=0)
    return OpenSetRule((0.0,), 0.0, population=tuple(round(float(v), 5) for v in mean), population_weight=weight)


def _best(probes: NDArray[np.float32], centres: NDArray[np.float32], limits) -> tuple[NDArray, NDArray]:
    """As the app decides: each probe's most similar template, and by how much it clears that one's limit."""
    sims = probes @ centres.T
    best = sims.argmax(axis=1)
    return best, sims[np.arange(len(probes)), best] - np.broadcast_to(limits, len(centres))[best]


def stranger_thresholds(embeddings: NDArray[np.float32], labels: NDArray[np.int64], people: int, photos: int,
                        fpir: float, crowd: OpenSetRule, seed: int = 0) -> float:
    """The similarity (less the crowd term) above which `fpir` of strangers' photos get a name, over random
    galleries."""
    scores = [_best(embeddings[strangers], centres, crowd.crowd_offsets(centres))[1]
              for _, centres, strangers, _ in _draws(embeddings, labels, people, photos, seed)]
    return metrics.threshold_at_far(np.concatenate(scores), fpir)


def calibrate(embeddings: NDArray[np.float32], labels: NDArray[np.int64], fpir: float = SHIPPED_FPIR,
              population_weight: float = POPULATION_WEIGHT, extra: float = 0.0) -> tuple[OpenSetRule, dict]:
    """The rule, and the simulated thresholds it was fitted to ({k: {people: threshold}}); `extra` is added to
    every threshold of the rule (not to the table)."""
    crowd = _crowd_rule(embeddings, population_weight)
    table = {k: {n: stranger_thresholds(embeddings, labels, n, k, fpir, crowd) for n in CALIBRATION_SIZES}
             for k in PHOTOS_PER_PERSON}
    measured = {k: np.array([table[k][n] for n in CALIBRATION_SIZES]) for k in PHOTOS_PER_PERSON}
    # k = 4 photos sits between 3 and 5; the last entry serves 5 and more.
    rows = [measured[1], measured[2], measured[3], (measured[3] + measured[5]) / 2, measured[5]]
    # Past the largest size: the steepest of the straight lines fitted in ln(people) over all sizes. Not the
    # last stretch's: with 200 of CelebA's 298 people enrolled, the few people left as strangers make it steep.
    slope = max(np.polyfit(np.log(CALIBRATION_SIZES), row, 1)[0] for row in measured.values())
    # base: one person enrolled; offsets: what each size adds, never less than for fewer people.
    return OpenSetRule(tuple(round(float(row[0]) + extra, 4) for row in rows), round(float(max(slope, 0.0)), 4),
                       CALIBRATION_SIZES,
                       tuple(tuple(round(float(v), 4) for v in np.maximum.accumulate(row - row[0])) for row in rows),
                       crowd.population, population_weight), table


def simulate_rule(embeddings: NDArray[np.float32], labels: NDArray[np.int64], rule: OpenSetRule | float,
                  people: int, photos: int, seed: int = 1) -> dict:
    """Random galleries of `people` with `photos` each: share of strangers' photos named (FPIR) and of the
    enrolled people's other photos named right (DIR), under the rule."""
    named = strangers_seen = right = mated_seen = 0
    for ids, centres, strangers, mated in _draws(embeddings, labels, people, photos, seed):
        limits = open_set.limits(rule, np.full(len(ids), photos), templates=centres)
        for rows, count_right in ((strangers, False), (mated, True)):
            best, margin = _best(embeddings[rows], centres, limits)
            accepted = margin >= 0
            if count_right:
                right += int((accepted & (ids[best] == labels[rows])).sum())
                mated_seen += len(rows)
            else:
                named += int(accepted.sum())
                strangers_seen += len(rows)
    return {"fpir": round(named / strangers_seen, 4), "dir": round(right / mated_seen, 4)}


def split_report(embeddings: NDArray[np.float32], labels: NDArray[np.int64], enroll: int = 3,
                 fpir: float = 0.01, crowd: OpenSetRule | None = None) -> list[dict]:
    """The README's open-set split: people with an even (fold 0) or odd (fold 1) index are enrolled with their
    first `enroll` photos, their other photos are mated probes, everyone else's photos non-mated probes.
    Per fold: DIR at FPIR `fpir`, with the threshold set on these very strangers (the best any threshold does);
    with `crowd` (a rule's population term) its offsets are taken from the scores first."""
    folds = []
    for fold in (0, 1):
        enrolled, mated, strangers = [], [], []
        for person in np.unique(labels):
            rows = np.flatnonzero(labels == person)
            if person % 2 == fold and len(rows) > enroll:
                enrolled.extend(rows[:enroll])
                mated.extend(rows[enroll:])
            elif person % 2 != fold:
                strangers.extend(rows)
        ids, centres, _ = templates(embeddings[enrolled], labels[enrolled])
        offsets = 0.0 if crowd is None else crowd.crowd_offsets(centres)
        best, mated_score = _best(embeddings[mated], centres, offsets)
        correct = ids[best] == labels[mated]
        stranger_score = _best(embeddings[strangers], centres, offsets)[1]
        value = metrics.dir_at_fpir(mated_score, correct, stranger_score, fpir)
        folds.append({"fold": fold, "enrolled_people": int(len(ids)), "mated": len(mated),
                      "non_mated": len(strangers), "dir_at_fpir": round(float(value), 4)})
    return folds


def fused_features(images: Path, detector: str) -> tuple[NDArray[np.float32], NDArray[np.int64], list[str]]:
    """dlib-sface features of a folder-per-person dataset, from the two parts' cached features."""
    from model.recognizer import Recognizer
    from model.training.datasets import dataset_features

    fused = FusedBackbone()
    parts = [dataset_features(images, recognizer=Recognizer(part.name, detector=detector)) for part in fused.parts]
    common = sorted(set(parts[0].paths) & set(parts[1].paths))
    index = [{path: i for i, path in enumerate(part.paths)} for part in parts]
    blocks = [weight * part.features[[where[p] for p in common]] for part, where, weight
              in zip(parts, index, fused.weights)]
    labels = parts[0].labels[[index[0][p] for p in common]]
    return l2_normalise(np.concatenate(blocks, axis=1)), labels, parts[0].names


def principal_head(features: NDArray[np.float32], backbone: str, dim: int = 128) -> Head:
    """A head projecting onto the top `dim` principal directions (uncentred: cosines stay comparable)."""
    values, vectors = np.linalg.eigh(features.T.astype(np.float64) @ features / len(features))
    order = np.argsort(values)[::-1][:dim]
    kept = float(values[order].sum() / values.sum())
    return Head(vectors[:, order].astype(np.float32), backbone, info={"trained": False, "init": "pca",
                                                                      "variance_kept": round(kept, 4)})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m model.training.openset", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["calibrate", "fused-head", "report"])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--backbone", default="dlib-sface")
    parser.add_argument("--detector", default="yunet")
    parser.add_argument("--fpir", type=float, default=SHIPPED_FPIR)
    parser.add_argument("--extra", type=float, default=SHIPPED_EXTRA, help="added to every threshold of the rule")
    parser.add_argument("--out", type=Path, default=SHIPPED_HEADS_DIR / "dlib-sface.h5")
    args = parser.parse_args(argv)

    if args.command == "fused-head":
        features, labels, names = fused_features(args.images, args.detector)
        head = principal_head(features, "dlib-sface")
    elif args.backbone == "dlib-sface":
        from model.head import load_head

        features, labels, names = fused_features(args.images, args.detector)
        head = load_head("dlib-sface", FusedBackbone.dim)
    else:
        from model.head import load_head
        from model.recognizer import Recognizer
        from model.training.datasets import dataset_features

        recognizer = Recognizer(args.backbone, detector=args.detector)
        found = dataset_features(args.images, recognizer=recognizer)
        features, labels = found.features, found.labels
        head = load_head(args.backbone, recognizer.backbone.dim)
    embeddings = head(features)
    if args.command == "report":  # the head's own rule, on fresh random galleries, and the fixed split
        from model.recognizer import Recognizer

        rule = Recognizer(args.backbone, head=head).rule  # what the app would apply with this head
        result = {f"{k}_photos": {str(n): simulate_rule(embeddings, labels, rule, n, k) for n in GALLERY_SIZES}
                  for k in (1, 3)}
        result["split"] = split_report(embeddings, labels, crowd=rule if isinstance(rule, OpenSetRule) else None)
        print(json.dumps(result))
        return result
    rule, table = calibrate(embeddings, labels, args.fpir, extra=args.extra)
    print(json.dumps({str(k): {str(n): round(t, 4) for n, t in row.items()} for k, row in table.items()}),
          file=sys.stderr)
    result = {"open_set": {**rule.info(), "fpir": args.fpir, "extra": args.extra},
              "photos": int(len(labels)), "people": int(len(np.unique(labels)))}
    if args.command == "fused-head":
        head.info.update(result, source=str(args.images), detector=args.detector)
        head.threshold = float(rule.thresholds(np.array([3]))[0])  # one person with 3 photos
        save_head(head, args.out)
        result["out"] = str(args.out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
