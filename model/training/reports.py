"""Reports on a trained head: curves, per-group and per-person tables, and pictures saved as PNG.

Numbers come from plain numpy functions (testable without plotting); `plot_*`
functions draw with matplotlib's object API (no pyplot, no display needed),
save a PNG and return its path. The notebook shows the PNGs; the trainer's
`--report DIR` writes them all with `write_all`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.head import Head
from model.training import metrics
from model.training.datasets import FeatureSet
from model.training.heads import REPORT_FARS, initial_head

# Identification report of a head without a threshold (no validation pairs to set one on).
UNSET_THRESHOLD = 0.5
Scores = tuple[NDArray[np.float64], NDArray[np.float64]]  # (genuine, impostor)


# --- numbers ------------------------------------------------------------------------------


def verification_scores(heads: Mapping[str, Head], features: FeatureSet) -> dict[str, Scores]:
    """{name: (genuine, impostor)} pair similarities of the real photos under each head."""
    real = features.originals()
    return {name: metrics.pair_scores(head(real.features), real.labels) for name, head in heads.items()}


def verification_table(scores: Mapping[str, Scores], fars: Sequence[float] = REPORT_FARS) -> list[dict]:
    """One row per curve: name, TAR and threshold at each FAR, pair counts."""
    rows = []
    for name, (genuine, impostor) in scores.items():
        row = {"name": name, **metrics.verification_at_fars(genuine, impostor, tuple(fars))}
        row.update(genuine_pairs=len(genuine), impostor_pairs=len(impostor))
        rows.append(row)
    return rows


def read_groups(path: Path) -> dict[str, str]:
    """A CSV of person,group (a header row 'person,group' is optional) -> {person: group}."""
    groups = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or not row[0].strip() or row[0].strip().lower() == "person":
                continue
            groups[row[0].strip()] = row[1].strip()
    return groups


def group_report(
    embeddings: NDArray[np.float32],
    labels: NDArray[np.int64],
    names: Sequence[str],
    groups: Mapping[str, str],
    far: float = 1e-3,
) -> list[dict]:
    """Verification per group, a check that the head treats groups alike.

    Genuine pairs are a group's people's own pairs; impostor pairs are between two
    people of the same group (the harder, usual case). For each group:
    tar_at_far (threshold set on that group's impostors), and tar/far at the one
    global threshold (set on all impostors) that the app would use.
    People missing from the CSV are in group '(none)'.
    """
    labels = np.asarray(labels)
    group_of = np.array([groups.get(names[label], "(none)") for label in labels])
    genuine_all, impostor_all = metrics.pair_scores(embeddings, labels)
    threshold = metrics.threshold_at_far(impostor_all, far)
    rows = []
    for group in sorted(set(group_of.tolist())):
        rows_in = group_of == group
        genuine, impostor = metrics.pair_scores(embeddings[rows_in], labels[rows_in])
        rows.append({
            "group": group,
            "people": int(len(np.unique(labels[rows_in]))),
            "photos": int(rows_in.sum()),
            "genuine_pairs": int(len(genuine)),
            "impostor_pairs": int(len(impostor)),
            f"tar_at_far_{far:.0e}": metrics.tar_at_far(genuine, impostor, far) if len(impostor) else None,
            "tar_at_global_threshold": float(np.mean(genuine >= threshold)) if len(genuine) else None,
            "far_at_global_threshold": float(np.mean(impostor >= threshold)) if len(impostor) else None,
        })
    return rows


def identification_report(
    embeddings: NDArray[np.float32], labels: NDArray[np.int64], names: Sequence[str], threshold: float
) -> tuple[list[dict], dict]:
    """Per-person open-set identification, leave one out.

    Each photo is a probe against all the other photos; the answer is the person of
    the most similar photo when the similarity is at least `threshold`, else unknown.
    A probe of someone with no other photo should come back unknown.
    :return: (rows per person: name, photos, tp, fp, fn, precision, recall, f1 (None when
        undefined), overall: probes, accuracy, macro precision/recall/F1, unknown_rate).
    """
    labels = np.asarray(labels)
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    best = sims.argmax(axis=1)
    best_sim = sims[np.arange(len(labels)), best]
    predicted = np.where(best_sim >= threshold, labels[best], -1)
    counts = np.bincount(labels, minlength=len(names))
    has_mate = counts[labels] >= 2
    truth = np.where(has_mate, labels, -1)
    rows = []
    for person in np.unique(labels):
        tp = int(np.sum((predicted == person) & (truth == person)))
        fp = int(np.sum((predicted == person) & (truth != person)))
        fn = int(np.sum((truth == person) & (predicted != person)))
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp + fp + fn else None)
        rows.append({"name": names[person], "photos": int(counts[person]), "tp": tp, "fp": fp, "fn": fn,
                     "precision": precision, "recall": recall, "f1": f1})

    def mean(key: str) -> float | None:
        values = [row[key] for row in rows if row[key] is not None]
        return float(np.mean(values)) if values else None

    overall = {
        "probes": int(len(labels)),
        "threshold": float(threshold),
        "accuracy": float(np.mean(predicted == truth)),
        "macro_precision": mean("precision"),
        "macro_recall": mean("recall"),
        "macro_f1": mean("f1"),
        "unknown_rate": float(np.mean(predicted == -1)),
    }
    return rows, overall


def hardest_wrong_matches(
    embeddings: NDArray[np.float32], labels: NDArray[np.int64], paths: Sequence[str], n: int = 6
) -> list[dict]:
    """The n most similar pairs of different people and the n least similar pairs of one person.

    :return: dicts with kind ('impostor' or 'genuine'), left, right (paths), similarity.
    """
    labels = np.asarray(labels)
    sims = embeddings @ embeddings.T
    left, right = np.triu_indices(len(labels), k=1)
    scores = sims[left, right]
    same = labels[left] == labels[right]
    found = []
    for kind, mask, order in (("impostor", ~same, -1), ("genuine", same, 1)):
        where = np.flatnonzero(mask)
        picked = where[np.argsort(order * scores[where], kind="stable")[:n]]
        found += [{"kind": kind, "left": paths[left[i]], "right": paths[right[i]],
                   "similarity": float(scores[i])} for i in picked]
    return found


def projection_2d(embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
    """PCA of the rows to 2-D: float32 [N, 2] (the first two principal components)."""
    centred = embeddings - embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[:2].T).astype(np.float32)


# --- pictures -------------------------------------------------------------------------------


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_roc_det(scores: Mapping[str, Scores], path: Path, fars: Sequence[float] = REPORT_FARS) -> Path:
    """ROC (TAR against FAR) and DET (FRR against FAR), log FAR axis, one line per curve.

    The legend gives TAR at each FAR in `fars`; dotted lines mark those FARs.
    """
    fig = _figure(11, 4.5)
    roc, det = fig.subplots(1, 2)
    for name, (genuine, impostor) in scores.items():
        far, tar, _ = metrics.roc_curve(genuine, impostor)
        values = metrics.verification_at_fars(genuine, impostor, tuple(fars))
        label = name + ": " + ", ".join(f"{values[f'tar_at_far_{f:.0e}']:.3f}" for f in fars)
        keep = far > 0
        roc.plot(far[keep], tar[keep], label=label)
        det.plot(far[keep], np.maximum(1 - tar[keep], 1e-5), label=name)
    floor = 1 / max(max(len(imp) for _, imp in scores.values()), 1)
    for ax in (roc, det):
        ax.set_xscale("log")
        ax.set_xlim(max(floor, 1e-5), 1)
        ax.set_xlabel("false accept rate (FAR)")
        ax.grid(True, which="both", alpha=0.3)
        for f in fars:
            ax.axvline(f, color="grey", linestyle=":", linewidth=1)
    roc.set_ylabel("true accept rate (TAR)")
    roc.set_title("ROC (legend: TAR at FAR " + ", ".join(f"{f:.0e}" for f in fars) + ")")
    roc.legend(loc="lower right", fontsize=8)
    det.set_yscale("log")
    det.set_ylabel("false reject rate (1 - TAR)")
    det.set_title("DET")
    det.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_training_curve(history: Sequence[dict], path: Path, target_far: float = 1e-3, best_epoch: int | None = None) -> Path:
    """Training loss and validation TAR at the target FAR per epoch; the kept epoch is marked."""
    epochs = np.array([row["epoch"] for row in history])
    loss = np.array([row.get("loss", np.nan) for row in history], dtype=float)
    tar = np.array([row.get(f"val_tar_at_far_{target_far:.0e}", np.nan) for row in history], dtype=float)
    fig = _figure(9, 3.5)
    left, right = fig.subplots(1, 2)
    left.plot(epochs[1:], loss[1:], marker=".")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.grid(True, alpha=0.3)
    right.plot(epochs, tar, marker=".")
    right.set_xlabel("epoch (0 = before training)")
    right.set_ylabel(f"validation TAR at FAR {target_far:.0e}")
    right.grid(True, alpha=0.3)
    if best_epoch is not None:
        right.axvline(best_epoch, color="green", linestyle="--", label=f"kept: epoch {best_epoch}")
        right.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_projection(
    embeddings: NDArray[np.float32], labels: NDArray[np.int64], names: Sequence[str], path: Path,
    *, max_people: int = 12, title: str = "",
) -> Path:
    """2-D PCA of the embeddings of the `max_people` people with the most photos, coloured by person."""
    labels = np.asarray(labels)
    people, counts = np.unique(labels, return_counts=True)
    chosen = people[np.argsort(-counts, kind="stable")[:max_people]]
    rows = np.isin(labels, chosen)
    points = projection_2d(embeddings[rows])
    fig = _figure(6.5, 5.5)
    ax = fig.subplots()
    colours = [f"C{i % 10}" for i in range(len(chosen))]
    markers = "os^Dv<>p*h"
    for i, person in enumerate(chosen):
        mine = labels[rows] == person
        ax.scatter(points[mine, 0], points[mine, 1], s=18, c=colours[i], marker=markers[i // 10 % len(markers)],
                   label=names[person])
    ax.set_title(title or "embeddings, first two principal components")
    ax.legend(fontsize=7, loc="best", ncol=2)
    return _save(fig, path)


def plot_hardest(matches: Sequence[dict], images: Path | None, path: Path) -> Path:
    """A grid of pairs from `hardest_wrong_matches`, each pair side by side with its similarity.

    Photos are read from images/<path>; pairs whose photos are not files (the gallery) show their ids.
    """
    from model.images import ImageError, load_image

    fig = _figure(2.2 * 4, 2.4 * max(1, (len(matches) + 1) // 2))
    axes = np.atleast_2d(fig.subplots(max(1, (len(matches) + 1) // 2), 4))
    for ax in axes.ravel():
        ax.axis("off")
    for i, match in enumerate(matches):
        for j, side in enumerate(("left", "right")):
            ax = axes[i // 2, (i % 2) * 2 + j]
            name = match[side]
            try:
                if images is None:
                    raise ImageError("no photo folder")
                ax.imshow(load_image(Path(images) / name.split("#")[0]))
            except ImageError:
                ax.text(0.5, 0.5, name, ha="center", va="center", fontsize=7, wrap=True)
            if j == 0:
                ax.set_title(f"{match['kind']} {match['similarity']:.3f}", fontsize=8, loc="left")
            ax.text(0, -0.05, Path(name).name, fontsize=6, transform=ax.transAxes, va="top")
    return _save(fig, path)


def plot_comparison(rows: Mapping[str, Mapping[str, float]], path: Path, fars: Sequence[float] = REPORT_FARS,
                    title: str = "TAR at FAR on the same validation people") -> Path:
    """Grouped bars of TAR at each FAR, one group per entry (backbones, or losses)."""
    fig = _figure(max(6, 1.3 * len(rows) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / len(fars)
    x = np.arange(len(rows))
    for i, far in enumerate(fars):
        values = [row.get(f"tar_at_far_{far:.0e}", 0.0) or 0.0 for row in rows.values()]
        ax.bar(x + i * width, values, width, label=f"FAR {far:.0e}")
    ax.set_xticks(x + width * (len(fars) - 1) / 2, list(rows), rotation=15, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("TAR")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def write_all(folder: Path, result, split, *, images: Path | None = None, groups: Path | None = None) -> list[Path]:
    """All reports for one training run (a `train.TrainResult` and its `datasets.Split`), as PNG and JSON.

    Writes roc_det.png (before and after), training.png, projection.png (after),
    hardest.png (after), identification.json and, with a groups CSV, groups.json.
    """
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    val = split.val
    before = initial_head(val.backbone, val.dim, result.config.seed)
    written = [
        plot_roc_det(verification_scores({"before": before, "after": result.head}, val), folder / "roc_det.png"),
        plot_training_curve(result.history, folder / "training.png", result.config.target_far, result.best_epoch),
    ]
    embeddings = result.head(val.features)
    written.append(plot_projection(embeddings, val.labels, val.names, folder / "projection.png"))
    written.append(plot_hardest(hardest_wrong_matches(embeddings, val.labels, val.paths), images, folder / "hardest.png"))
    threshold = result.head.threshold if result.head.threshold is not None else UNSET_THRESHOLD
    rows, overall = identification_report(embeddings, val.labels, val.names, threshold)
    path = folder / "identification.json"
    path.write_text(json.dumps({"overall": overall, "people": rows}, indent=1))
    written.append(path)
    if groups:
        path = folder / "groups.json"
        table = group_report(embeddings, val.labels, val.names, read_groups(groups), result.config.target_far)
        path.write_text(json.dumps(table, indent=1))
        written.append(path)
    return written
