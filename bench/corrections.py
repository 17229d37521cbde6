"""One "not this person" on real photos: does it stop the look-alike being named, and keep the person named?

    python bench/corrections.py [--people 120] [--enrolled 60] [--per-person 20] [--enroll-photos 5]
                                [--folds 2] [--threshold T] [--level L]

CelebA (../shared/faces/celeba): --enrolled of the first --people people are enrolled with their first
--enroll-photos photos (the default model: dlib-sface features through its head, and the head's open-set
rule, or one fixed --threshold as FACES_THRESHOLD sets), the others are strangers; every photo not
enrolled is a probe. With --folds 2 it runs again with the other people enrolled. Each time a probe of
one person L is named another person P, that is a wrong match a user would correct: the first such photo
of each (L, P) becomes one correction "not P", and the gallery matches every probe again. Reported per
case and in total, before and after that one correction: how many of L's other photos are named P, how
many of P's own probe photos are named P, and how many other probes changed their decision (of those: how
many lost their right name, how many lost a wrong one).
Features come from the feature cache of model.training.datasets (computed once, about 0.1 s a photo).
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.gallery import Gallery  # noqa: E402
from model.open_set import OpenSetRule  # noqa: E402
from model.head import load_head  # noqa: E402
from model.recognizer import Recognizer  # noqa: E402
from model.training.datasets import dataset_features  # noqa: E402

FACES_DIR = Path(os.environ.get("FACES_TEST_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "faces"))


def names_given(gallery: Gallery, probes: np.ndarray, rule: OpenSetRule) -> np.ndarray:
    """The person named for each probe (-1: nobody)."""
    return np.array([-1 if m.person_id is None else m.person_id for m in gallery.match(probes, rule)])


def one_fold(embeddings, labels, names, enrolled_people, args, rule) -> tuple[int, int, list[dict]]:
    """Probes, wrong matches and the correction cases with these people (label numbers) enrolled."""
    rank = np.array([np.sum(labels[:i] == labels[i]) for i in range(len(labels))])  # photo number in its person
    enrolled = np.isin(labels, enrolled_people) & (rank < args.enroll_photos)
    probe_rows = np.flatnonzero(~enrolled)
    probes, owners = embeddings[probe_rows], labels[probe_rows]
    gallery = Gallery(dim=embeddings.shape[1], ann_min_photos=0, correction_level=args.level)
    gallery.add_many((int(i), int(labels[i]), embeddings[i]) for i in np.flatnonzero(enrolled))
    before = names_given(gallery, probes, rule)
    wrong = np.flatnonzero((before >= 0) & (before != owners))
    cases, seen = [], set()
    for k in wrong:
        lookalike, person = int(owners[k]), int(before[k])
        if (lookalike, person) in seen:
            continue
        seen.add((lookalike, person))
        gallery.set_corrections([(1, person, probes[k])])
        after = names_given(gallery, probes, rule)
        gallery.set_corrections([])
        others_of_l = (owners == lookalike) & (np.arange(len(probes)) != k)
        own = owners == person
        rest = ~others_of_l & ~own & (np.arange(len(probes)) != k)
        cases.append({
            "lookalike": names[lookalike], "person": names[person],
            "corrected_face_named_after": bool(after[k] == person),
            "lookalike_photos": int(others_of_l.sum()),
            "lookalike_named_before": int((before[others_of_l] == person).sum()),
            "lookalike_named_after": int((after[others_of_l] == person).sum()),
            "own_photos": int(own.sum()),
            "own_named_before": int((before[own] == person).sum()),
            "own_named_after": int((after[own] == person).sum()),
            "other_probes_changed": int((before[rest] != after[rest]).sum()),
            "others_right_lost": int(((before == owners) & (after != owners) & rest).sum()),
            "others_wrong_undone": int(((before != owners) & (before >= 0) & (after != before) & rest).sum()),
        })
        c = cases[-1]
        print(f"{c['lookalike']} taken for {c['person']}: their other photos named {c['person']} "
              f"{c['lookalike_named_before']} -> {c['lookalike_named_after']} of {c['lookalike_photos']}; "
              f"{c['person']}'s own {c['own_named_before']} -> {c['own_named_after']} of {c['own_photos']}; "
              f"other probes changed {c['other_probes_changed']} ({c['others_right_lost']} lost their right name)",
              flush=True)
    return len(probes), len(wrong), cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=120)
    parser.add_argument("--enrolled", type=int, default=60)
    parser.add_argument("--folds", type=int, default=2, choices=(1, 2))
    parser.add_argument("--threshold", type=float, default=None, help="one fixed threshold instead of the rule")
    parser.add_argument("--per-person", type=int, default=20)
    parser.add_argument("--enroll-photos", type=int, default=5)
    parser.add_argument("--level", type=float, default=None, help="Gallery correction_level (default: the rule's)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    recognizer = Recognizer()  # the app's default model; loaded only for photos not in the feature cache
    features = dataset_features(FACES_DIR / "celeba", recognizer=recognizer, cache_dir=args.cache_dir,
                                people=args.people, per_person=args.per_person, progress=False)
    head = load_head(features.backbone, features.dim)
    rule = OpenSetRule.from_info(head.info["open_set"]) if args.threshold is None else args.threshold
    embeddings = head(features.features)
    order = np.random.default_rng(0).permutation(len(features.names))  # who is enrolled: a fixed draw
    folds = [order[: args.enrolled], order[args.enrolled:]][: args.folds]
    probes = wrong = 0
    cases = []
    for enrolled_people in folds:
        fold_probes, fold_wrong, fold_cases = one_fold(embeddings, features.labels, features.names,
                                                       enrolled_people, args, rule)
        probes, wrong = probes + fold_probes, wrong + fold_wrong
        cases += fold_cases
    total = {key: sum(c[key] for c in cases) for key in (
        "lookalike_photos", "lookalike_named_before", "lookalike_named_after", "own_photos", "own_named_before",
        "own_named_after", "other_probes_changed", "others_right_lost", "others_wrong_undone")}
    total["corrected_face_named_after"] = sum(c["corrected_face_named_after"] for c in cases)
    print(json.dumps({"backbone": features.backbone, "people": len(features.names), "enrolled": args.enrolled,
                      "folds": args.folds, "enroll_photos": args.enroll_photos, "threshold": args.threshold,
                      "level": args.level, "probes": probes, "wrong_matches": wrong, "cases": len(cases),
                      "total": total, "per_case": cases}))


if __name__ == "__main__":
    main()
