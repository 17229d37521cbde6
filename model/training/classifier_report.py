"""How well a person classifier does: the per-class report, and the open-set scores shared with the
app's nearest-neighbour decision, on the same probes (plain numpy; no TensorFlow).

Open-set scores, for probes of enrolled people (mated) and of strangers never seen in training:
- `dir_at_fpir_0.01`: share of mated probes named right when the score threshold lets 1% of the
  strangers be named (set on these very strangers, as `openset.split_report` does: the best any
  threshold can do);
- `accuracy`: share of all probes (mated and strangers) given the right answer, a name or Unknown,
  by the method's own decision (the classifier's argmax, the app's open-set rule);
- `fpir` and `dir`: strangers named, and mated probes named right, by that same decision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from model.training import metrics

FPIR = 0.01


def classification_report(truth: NDArray[np.int64], predicted: NDArray[np.int64],
                          classes: Sequence[str]) -> tuple[list[dict], dict]:
    """Precision, recall, F1 and support per class (Unknown included, as the last class), and overall.

    :param truth: int64 [N] the right class of each row; predicted: int64 [N].
    :return: (rows: class, precision, recall, f1, support (None where undefined: no prediction of, or
        no row of, that class), overall: rows, accuracy, macro and support-weighted precision/recall/F1).
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    rows = []
    for index, name in enumerate(classes):
        tp = int(np.sum((predicted == index) & (truth == index)))
        said = int(np.sum(predicted == index))
        support = int(np.sum(truth == index))
        precision = tp / said if said else None
        recall = tp / support if support else None
        f1 = (2 * precision * recall / (precision + recall) if precision and recall
              else (0.0 if precision is not None and recall is not None else None))
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})

    def average(key: str, weighted: bool) -> float | None:
        kept = [row for row in rows if row[key] is not None and row["support"]]
        if not kept:
            return None
        weights = [row["support"] if weighted else 1 for row in kept]
        return float(np.average([row[key] for row in kept], weights=weights))

    overall = {"rows": int(len(truth)), "accuracy": float(np.mean(truth == predicted)) if len(truth) else None}
    for key in ("precision", "recall", "f1"):
        overall[f"macro_{key}"] = average(key, weighted=False)
        overall[f"weighted_{key}"] = average(key, weighted=True)
    return rows, overall


def report_markdown(rows: Sequence[dict], overall: dict) -> str:
    """The report as a Markdown table, one line per class, then accuracy and averages."""
    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = ["| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['class']} | {cell(r['precision'])} | {cell(r['recall'])} | {cell(r['f1'])} | {r['support']} |"
              for r in rows]
    lines.append(f"| **accuracy** | | | {cell(overall['accuracy'])} | {overall['rows']} |")
    for kind in ("macro", "weighted"):
        lines.append(f"| {kind} average | {cell(overall[f'{kind}_precision'])} | {cell(overall[f'{kind}_recall'])} "
                     f"| {cell(overall[f'{kind}_f1'])} | {overall['rows']} |")
    return "\n".join(lines) + "\n"


def openset_scores(mated_score: NDArray, mated_right: NDArray[np.bool_], stranger_score: NDArray,
                   mated_named_right: NDArray[np.bool_], strangers_named: NDArray[np.bool_],
                   fpir: float = FPIR) -> dict:
    """The open-set figures (module docstring) from each probe's best-person score and the decisions.

    :param mated_score: float [M] best person's score of each mated probe; mated_right: bool [M] that
        person is right (rank 1). stranger_score: float [S] best person's score of each stranger.
    :param mated_named_right: bool [M] the decision named the right person; strangers_named: bool [S]
        the decision gave a stranger a name.
    """
    mated, strangers = len(mated_score), len(stranger_score)
    right_answers = int(np.sum(mated_named_right)) + int(np.sum(~np.asarray(strangers_named)))
    return {
        f"dir_at_fpir_{fpir:g}": round(metrics.dir_at_fpir(mated_score, mated_right, stranger_score, fpir), 4),
        "rank1": round(float(np.mean(mated_right)), 4),
        "accuracy": round(right_answers / max(1, mated + strangers), 4),
        "dir": round(float(np.mean(mated_named_right)), 4),
        "fpir": round(float(np.mean(strangers_named)), 4),
        "mated_probes": mated,
        "stranger_probes": strangers,
    }


def classifier_openset(mated_probabilities: NDArray[np.float32], mated_truth: NDArray[np.int64],
                       stranger_probabilities: NDArray[np.float32], min_confidence: float = 0.0,
                       fpir: float = FPIR) -> dict:
    """Open-set figures of a classifier: the score is the best person's probability (Unknown left out);
    its decision is the argmax (Unknown is the last class), Unknown also below min_confidence."""
    from model.training.classifier import decide, person_scores

    mated_score, mated_best = person_scores(mated_probabilities)
    stranger_score, _ = person_scores(stranger_probabilities)
    mated_decision = decide(mated_probabilities, min_confidence)
    unknown = stranger_probabilities.shape[1] - 1
    return openset_scores(mated_score, mated_best == mated_truth, stranger_score, mated_decision == mated_truth,
                          decide(stranger_probabilities, min_confidence) != unknown, fpir)


def nearest_openset(enrolled: NDArray[np.float32], enrolled_labels: NDArray[np.int64], mated: NDArray[np.float32],
                    mated_labels: NDArray[np.int64], strangers: NDArray[np.float32], rule, fpir: float = FPIR) -> dict:
    """Open-set figures of the app's decision: each person's template (`gallery.templates`), the best
    template's cosine as the score, and the app's rule (an `OpenSetRule` or a fixed threshold) to decide.

    :param enrolled: float32 [E, 128] unit embeddings of the enrolled photos, enrolled_labels [E] their people.
    """
    from model.gallery import templates
    from model.open_set import limits as rule_limits

    ids, centres, counts = templates(enrolled, enrolled_labels)
    limits = rule_limits(rule, counts, templates=centres)

    def best(probes: NDArray[np.float32]) -> tuple[NDArray, NDArray, NDArray]:
        sims = probes @ centres.T
        column = sims.argmax(axis=1)
        score = sims[np.arange(len(probes)), column]
        return score, ids[column], score >= limits[column]

    mated_score, mated_best, mated_accepted = best(mated)
    stranger_score, _, strangers_accepted = best(strangers)
    right = mated_best == mated_labels
    return openset_scores(mated_score, right, stranger_score, right & mated_accepted, strangers_accepted, fpir)


def verification(embeddings: NDArray[np.float32], labels: NDArray[np.int64], fars=(1e-3,)) -> dict:
    """TAR at each FAR over every pair of these rows (unit embeddings), with the pair counts."""
    genuine, impostor = metrics.pair_scores(embeddings, labels)
    found = metrics.verification_at_fars(genuine, impostor, tuple(fars))
    result = {k: round(v, 4) for k, v in found.items() if k.startswith("tar_")}
    result.update(genuine_pairs=int(len(genuine)), impostor_pairs=int(len(impostor)))
    return result
