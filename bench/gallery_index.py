"""Large galleries: exact numpy matching against the approximate index (model.gallery_index), ms per face.

    python bench/gallery_index.py [--sizes 1000,3000,10000,30000,100000,1000000] [--dim 128]
                                  [--photos-per-person 5] [--probes 200] [--budget-s 300]

Synthetic unit vectors shaped like the gallery's (128-D head embeddings; --dim 256 for backbone-sized
ones), clustered per person: each person's photos lie around their own centre (a photo is about
--within similar to its template), and the centres crowd together (about --crowding similar to each
other), as faces do. For each size it reports: filling the gallery (s), building the index (s), ms per
probe (one face a call, as a frame with one face) for
- `recompute`: the module-level `model.gallery.match`, which computes the templates on every call
  (what Gallery.match did before it kept them up to date; a few probes only at big sizes),
- `exact`: Gallery.match scanning every template,
- `ann`: Gallery.match through the index, candidates scored exactly,
and the recall of the exact top-1 person through the index, for probes of enrolled people (a new photo
of them) and for strangers. Sizes that would not finish within --budget-s in all are skipped and named.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.gallery import Gallery, match  # noqa: E402

THRESHOLD = 0.77  # about dlib-sface's open-set threshold; only person_id depends on it, not the timing
RECOMPUTE_PROBES_LARGE = 3  # module-level match takes seconds a call at a million photos


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def around(centres: np.ndarray, within: float, rng: np.random.Generator) -> np.ndarray:
    """One unit vector near each centre, about `within` similar to it (noise orthogonal on average)."""
    noise = unit_rows(rng.standard_normal(centres.shape, dtype=np.float32))
    spread = np.sqrt(1 - within**2) / within
    return unit_rows(centres + spread * noise)


def people_centres(count: int, dim: int, crowding: float, rng: np.random.Generator) -> np.ndarray:
    """Unit centres whose pairwise similarity is about `crowding` (a shared direction plus their own)."""
    shared = unit_rows(rng.standard_normal((1, dim), dtype=np.float32))
    own = unit_rows(rng.standard_normal((count, dim), dtype=np.float32))
    return unit_rows(np.sqrt(crowding) * shared + np.sqrt(1 - crowding) * own)


def fill(size: int, args, rng: np.random.Generator) -> tuple[Gallery, np.ndarray, np.ndarray, np.ndarray, float]:
    """A gallery of `size` photos; returns (gallery, person centres, vectors, person ids, seconds to fill)."""
    people = max(1, size // args.photos_per_person)
    centres = people_centres(people, args.dim, args.crowding, rng)
    person_ids = np.repeat(np.arange(people, dtype=np.int64), args.photos_per_person)[:size]
    vectors = np.empty((len(person_ids), args.dim), dtype=np.float32)
    for start in range(0, len(person_ids), 100_000):  # in chunks: a million rows of noise at once is 0.5 GB more
        stop = start + 100_000
        vectors[start:stop] = around(centres[person_ids[start:stop]], args.photo_within, rng)
    gallery = Gallery(dim=args.dim, capacity=len(vectors), ann_min_photos=0)
    started = time.perf_counter()
    gallery.add_many(zip(range(len(vectors)), person_ids.tolist(), vectors))
    return gallery, centres, vectors, person_ids, time.perf_counter() - started


def per_probe_ms(run, probes: np.ndarray) -> tuple[float, list]:
    """Mean ms of run(probe[None]) over the probes, and the matches."""
    results = []
    started = time.perf_counter()
    for probe in probes:
        results.append(run(probe[None, :])[0])
    return 1000 * (time.perf_counter() - started) / max(1, len(probes)), results


def one_size(size: int, args, rng: np.random.Generator) -> dict:
    gallery, centres, vectors, person_ids, fill_s = fill(size, args, rng)
    half = args.probes // 2
    enrolled = around(centres[rng.integers(0, len(centres), half)], args.photo_within, rng)
    strangers = around(people_centres(args.probes - half, args.dim, args.crowding, rng), args.photo_within, rng)
    probes = np.concatenate([enrolled, strangers])

    few = probes[: RECOMPUTE_PROBES_LARGE] if size > 100_000 else probes[:20]
    recompute_ms, _ = per_probe_ms(lambda p: match(vectors, person_ids, p, THRESHOLD), few)
    exact_ms, exact = per_probe_ms(lambda p: gallery.match(p, THRESHOLD), probes)

    started = time.perf_counter()
    index = gallery.build_index()
    build_s = time.perf_counter() - started
    if index is None:
        raise SystemExit("hnswlib is not installed: pip install -c requirements.lock hnswlib")
    gallery.ann_min_photos = 1  # from here on every match goes through the index
    assert gallery.uses_index
    ann_ms, ann = per_probe_ms(lambda p: gallery.match(p, THRESHOLD), probes)

    same = np.array([a.candidate_id == e.candidate_id for a, e in zip(ann, exact)])
    sims = np.array([abs(a.similarity - e.similarity) for a, e in zip(ann, exact) if a.candidate_id == e.candidate_id])
    return {
        "photos": size, "people": len(centres), "fill_s": round(fill_s, 2), "index_build_s": round(build_s, 2),
        "recompute_ms": round(recompute_ms, 3), "exact_ms": round(exact_ms, 3), "ann_ms": round(ann_ms, 3),
        "recall_enrolled": round(float(same[:half].mean()), 4), "recall_strangers": round(float(same[half:].mean()), 4),
        "max_similarity_error": float(sims.max()) if len(sims) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,3000,10000,30000,100000,1000000")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--photos-per-person", type=int, default=5)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--photo-within", type=float, default=0.85, help="photo-to-own-centre similarity")
    parser.add_argument("--crowding", type=float, default=0.35, help="similarity between people's centres")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip sizes that would not fit in this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows, skipped, spent = [], [], 0.0
    for size in sorted(int(s) for s in args.sizes.split(",")):
        if rows:  # the cost grows about linearly with the size: guess from the last one
            guess = (time.perf_counter() - last_started) * size / rows[-1]["photos"]
            if spent + guess > args.budget_s:
                skipped.append(size)
                print(f"{size} photos skipped: about {guess:.0f} s more would pass the {args.budget_s:.0f} s budget")
                continue
        last_started = time.perf_counter()
        row = one_size(size, args, rng)
        spent += time.perf_counter() - last_started
        rows.append(row)
        print(f"{size:>8} photos ({row['people']} people): exact {row['exact_ms']:.3f} ms, ann {row['ann_ms']:.3f} ms "
              f"(index {row['index_build_s']:.1f} s), recompute {row['recompute_ms']:.1f} ms; top-1 recall "
              f"{row['recall_enrolled']:.3f} enrolled, {row['recall_strangers']:.3f} strangers", flush=True)
    faster_from = None  # the smallest size from which the index was faster at every size measured
    for row in reversed(rows):
        if row["ann_ms"] >= row["exact_ms"]:
            break
        faster_from = row["photos"]
    print(json.dumps({"dim": args.dim, "photos_per_person": args.photos_per_person, "probes": args.probes,
                      "sizes": rows, "skipped": skipped, "ann_faster_from": faster_from}))


if __name__ == "__main__":
    main()
