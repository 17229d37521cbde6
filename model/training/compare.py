"""The comparison report: several embedding sources, each with the person classifier, on one open-set split.

    python -m model.classifier compare --images ../shared/faces/celeba --people 50 --out reports/compare
        [--rows dlib-resnet,sface,dlib-sface,ResNet50,small-cnn] [--budget 120] [--features NAME=FILE.npz]

One split of the dataset (`classifier_data.openset_split`): half the people enrolled with their
first --enroll photos, their other photos mated probes; a quarter strangers for the classifier's
Unknown class (a third of them set aside to place the classifier's decision threshold at FPIR 1%);
a quarter strangers never seen, the non-mated probes. Every row is scored on the
same probes: accuracy (name or Unknown, by the method's own decision), TAR at FAR 1e-3 over all
pairs of the unseen strangers' photos (people no model was trained on), DIR at FPIR 1%, the
training time and the time per face. Rows:

- shipped backbones (`dlib-resnet`, `sface`, `dlib-sface`): cached features (YuNet boxes, flip
  averaging), the app's head, then the classifier; and beside each, the app's nearest-template
  decision (its head's open-set rule where it has one, else a threshold at FPIR 1% on the
  Unknown-training strangers, the data the classifier gets);
- `ResNet50` (or any keras.applications name): the classifier's image mode, from scratch, on whole
  images, within --budget seconds;
- `small-cnn` (or another arch of `python -m model.train_backbone`): that trainer's backbone, with
  ArcFace, trained on the --train-people people after the split's (never on them) within
  --budget, then the classifier on its embeddings; "not run" where the trainer is not installed;
- `--features NAME=FILE.npz` (arrays `paths`, relative to --images, and `features` [N, D]): any other source.

Writes compare.md (the table), compare.png (a plot, when matplotlib is installed) and
compare.json; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.backbones import FUSED_WEIGHTS, l2_normalise
from model.training import classifier_report as scores
from model.training.classifier import ClassifierConfig, embedding_model, predict, train_classifier
from model.training.classifier_data import OpenSetSplit, openset_split, split_data, truth_of
from model.training.datasets import FeatureSet, dataset_features
from model.training.heads import initial_head
from model.training.metrics import threshold_at_far

SHIPPED = ("dlib-resnet", "sface", "dlib-sface")
DEFAULT_ROWS = SHIPPED + ("ResNet50", "small-cnn")
# Rows trained by model.train_backbone (the rest that are not shipped go through the classifier's image mode).
TRAINER_ARCHS = ("small-cnn", "ir-resnet18", "ir-resnet50", "mobilenet", "densenet121")
TIMED_PHOTOS = 8  # photos timed afresh per shipped backbone for ms per face


@dataclass
class Row:
    """One line of the table. Figures are None when the row did not run (status says why)."""

    name: str
    method: str
    accuracy: float | None = None
    tar_at_far_1e_3: float | None = None
    dir_at_fpir_1pct: float | None = None
    fpir: float | None = None
    train_seconds: float | None = None
    ms_per_face: float | None = None
    status: str = "ok"
    note: str = ""


# --- features shared by the rows -------------------------------------------------------------------


def shipped_features(images: Path, backbone: str, *, detector: str, cache: Path | None, people: int | None,
                     per_person: int | None) -> FeatureSet:
    """A shipped backbone's features from the cache; dlib-sface fused from its two parts' caches, as the
    app fuses them (FusedBackbone: each part weighted, concatenated, re-normalised)."""
    from model.recognizer import Recognizer

    def part(name: str) -> FeatureSet:
        return dataset_features(images, recognizer=Recognizer(name, detector=detector), cache_dir=cache,
                                people=people, per_person=per_person)

    if backbone != "dlib-sface":
        return part(backbone)
    parts = [part(name) for name in ("dlib-resnet", "sface")]
    common = sorted(set(parts[0].paths) & set(parts[1].paths), key=parts[0].paths.index)
    total = sum(FUSED_WEIGHTS.values())
    blocks = []
    for found in parts:
        where = {p: i for i, p in enumerate(found.paths)}
        weight = float(np.sqrt(FUSED_WEIGHTS[found.backbone] / total))
        blocks.append(weight * found.features[[where[p] for p in common]])
    first = parts[0].subset(np.array([parts[0].paths.index(p) for p in common], dtype=np.int64))
    return FeatureSet(l2_normalise(np.concatenate(blocks, axis=1)), first.labels, first.names, first.paths,
                      "dlib-sface", first.detected, source=first.source, extra=first.extra)


def aligned(found: FeatureSet, paths: list[str]) -> FeatureSet:
    """`found` in the order of `paths`. :raises ValueError: a photo is missing."""
    where = {p: i for i, p in enumerate(found.paths)}
    missing = [p for p in paths if p not in where]
    if missing:
        raise ValueError(f"{found.backbone}: {len(missing)} photos have no features (first: {missing[0]})")
    return found.subset(np.array([where[p] for p in paths], dtype=np.int64))


def features_file(path: Path, like: FeatureSet, name: str) -> FeatureSet:
    """Features of another source from an .npz (`paths`, `features` [N, D]), labelled like `like`."""
    with np.load(path, allow_pickle=False) as data:
        paths, vectors = [str(p) for p in data["paths"]], np.asarray(data["features"], np.float32)
    found = FeatureSet(l2_normalise(vectors), np.zeros(len(paths), np.int64), like.names, paths, name)
    found = aligned(found, like.paths)
    found.labels = like.labels.copy()
    return found


def time_per_face(backbone: str, detector: str, photos: list[Path]) -> float:
    """Milliseconds per photo for detection, landmarks and features (with flip), measured afresh."""
    from model.images import load_image
    from model.recognizer import Recognizer

    recognizer = Recognizer(backbone, detector=detector).load()
    pictures = [load_image(p) for p in photos]
    recognizer.features(pictures[0], [recognizer.portrait_face(pictures[0])[0]])  # warm-up
    start = time.perf_counter()
    for picture in pictures:
        recognizer.features(picture, [recognizer.portrait_face(picture)[0]])
    return 1000 * (time.perf_counter() - start) / len(pictures)


# --- rows ----------------------------------------------------------------------------------------------


def calibration_split(split: OpenSetSplit, labels: NDArray[np.int64]) -> tuple[OpenSetSplit, NDArray[np.int64]]:
    """Every third Unknown-training stranger (by person) set aside: the classifier's decision threshold is
    set on them, people it never trained on, as the app's rule was set on people it never saw."""
    people = np.unique(labels[split.unknown_train])[::3]
    aside = np.isin(labels[split.unknown_train], people)
    return replace(split, unknown_train=split.unknown_train[~aside]), split.unknown_train[aside]


def score_classifier(model, inputs, found: FeatureSet, split: OpenSetSplit, calibration: NDArray[np.int64],
                     classes: list[str], min_confidence: float, embed_layer: str) -> dict:
    """The open-set figures of a trained classifier on the split's probes. inputs(rows) -> model inputs.

    Its decision: the argmax, Unknown also below a confidence that names 1% of the set-aside strangers.
    """
    from model.training.classifier import person_scores

    rows = np.concatenate([calibration, split.mated, split.strangers])
    start = time.perf_counter()
    everything = predict(model, inputs(rows))  # one call: each call of another size traces the model again
    ms = 1000 * (time.perf_counter() - start) / len(rows)
    aside, mated, strangers = np.split(everything, [len(calibration), len(calibration) + len(split.mated)])
    confidence = max(min_confidence, threshold_at_far(person_scores(aside)[0], scores.FPIR))
    truth = truth_of(found, split.mated, classes)
    figures = scores.classifier_openset(mated, truth, strangers, confidence)
    figures["argmax_fpir"] = scores.classifier_openset(mated, truth, strangers, min_confidence)["fpir"]
    unseen = l2_normalise(predict(embedding_model(model, embed_layer), inputs(split.strangers)))
    figures["tar"] = scores.verification(unseen, found.labels[split.strangers])["tar_at_far_1e-03"]
    figures.update(ms=ms, confidence=confidence)
    return figures


def _classifier_note(figures: dict, note: str) -> str:
    return (f"{note}; Unknown below p = {figures['confidence']:.2f} (argmax alone names "
            f"{100 * figures['argmax_fpir']:.0f}% of strangers)").lstrip("; ")


def classifier_row(name: str, found: FeatureSet, split: OpenSetSplit, kernel: NDArray[np.float32],
                   config: ClassifierConfig, *, backbone_ms: float | None = None, backbone_seconds: float = 0.0,
                   note: str = "") -> Row:
    """The classifier on one source's features: trained on the split's enrolled photos and Unknown strangers."""
    train_split, calibration = calibration_split(split, found.labels)
    data = split_data(found, train_split)
    result = train_classifier(data, kernel, config)
    figures = score_classifier(result.model, lambda rows: found.features[rows], found, split, calibration,
                               data.classes, config.min_confidence, "embedding")
    return Row(name, "classifier", figures["accuracy"], figures["tar"], figures["dir_at_fpir_0.01"], figures["fpir"],
               round(backbone_seconds + result.seconds, 1),
               None if backbone_ms is None else round(backbone_ms + figures["ms"], 1),
               note=_classifier_note(figures, note))


def nearest_row(name: str, found: FeatureSet, split: OpenSetSplit, head, rule, *, backbone_ms: float | None) -> Row:
    """The app's decision on the same split: templates of the enrolled photos through the app's head."""
    from model.gallery import templates

    embeddings = head(found.features)
    note = "the head's open-set rule"
    if rule is None:  # no calibrated rule: a threshold letting 1% of the Unknown-training strangers through
        _, centres, _ = templates(embeddings[split.enrolled], found.labels[split.enrolled])
        rule = threshold_at_far((embeddings[split.unknown_train] @ centres.T).max(axis=1), scores.FPIR)
        note = f"threshold {rule:.3f} at FPIR 1% on the Unknown-training strangers"
    figures = scores.nearest_openset(embeddings[split.enrolled], found.labels[split.enrolled],
                                     embeddings[split.mated], found.labels[split.mated],
                                     embeddings[split.strangers], rule)
    tar = scores.verification(embeddings[split.strangers], found.labels[split.strangers])["tar_at_far_1e-03"]
    return Row(name, "nearest template (app)", figures["accuracy"], tar, figures["dir_at_fpir_0.01"], figures["fpir"],
               0.0, None if backbone_ms is None else round(backbone_ms, 1), note=note)


def image_row(arch: str, images: Path, found: FeatureSet, split: OpenSetSplit, *, size: int,
              budget: float, seed: int = 0) -> Row:
    """The classifier's image mode (keras.applications, random weights) on the split's whole images."""
    from model.images import load_image
    from model.training.classifier_images import ImageSet, square_resize, train_image_classifier

    train_split, calibration = calibration_split(split, found.labels)
    data = split_data(found, train_split)
    rows = np.concatenate([train_split.enrolled, train_split.unknown_train])
    pictures = np.stack([square_resize(load_image(images / found.paths[i]), size) for i in range(len(found))])
    train = ImageSet(pictures[rows], data.labels, data.classes, [found.paths[i] for i in rows])
    config = ClassifierConfig(epochs=2, fine_tune_epochs=1000, learning_rate=1e-3, batch_size=32,
                              time_budget=budget, seed=seed)
    result = train_image_classifier(train, arch, config)
    figures = score_classifier(result.model, lambda r: pictures[r].astype(np.float32), found, split, calibration,
                               data.classes, 0.0, "features")
    note = f"from scratch, {size} px whole images, {len(result.history)} epochs in {budget:.0f} s"
    return Row(arch, "classifier, image mode", figures["accuracy"], figures["tar"], figures["dir_at_fpir_0.01"],
               figures["fpir"], round(result.seconds, 1), round(figures["ms"], 1), note=_classifier_note(figures, note))


def trained_features(arch: str, images: Path, found: FeatureSet, *, budget: float, size: int, train_people: int,
                     detector: str, cache: Path | None, per_person: int | None = None,
                     seed: int = 0) -> tuple[FeatureSet, float, float, str]:
    """A backbone of `model.train_backbone` (ArcFace loss), trained within `budget` seconds on the next
    `train_people` people after the split's (never on them), then run on the split's chips.

    :return: (its 128-D features of found's photos, training seconds, ms per face with detection and alignment, note).
    :raises ImportError: the trainer is not installed.
    """
    from model.training.backbone_data import prepare_chips
    from model.training.backbone_train import BackboneConfig, train_backbone

    split_people = {found.names[label] for label in np.unique(found.labels)}
    chips = prepare_chips(images, image_size=size, detector=detector, cache_dir=cache, progress=False,
                          max_people=len(found.names) + train_people, per_person=per_person)
    outside = ~np.isin(np.array(chips.names)[chips.labels], sorted(split_people))
    config = BackboneConfig(arch=arch, loss="arcface", schedule="step", step_epochs=10_000, images=images, epochs=500,
                            image_size=size, time_budget_s=budget, detector=detector, seed=seed, progress=False)
    result = train_backbone(config, chips.subset(outside))
    where = {p: i for i, p in enumerate(chips.paths)}
    rows = np.array([where[p] for p in found.paths], dtype=np.int64)
    start = time.perf_counter()
    vectors = result.embed(chips.chips[rows])
    ms = 1000 * (time.perf_counter() - start) / len(rows) + time_alignment(detector, size, images, found.paths[:8])
    note = (f"{arch} + ArcFace from scratch on {int(outside.sum())} chips of {train_people} other people, "
            f"{size} px, {result.history[-1]['epoch']} epochs in {budget:.0f} s")
    return (FeatureSet(l2_normalise(vectors), found.labels, found.names, found.paths, arch), result.seconds, ms, note)


def time_alignment(detector: str, size: int, images: Path, paths: list[str]) -> float:
    """Milliseconds per photo for detection, landmarks and an ArcFace-layout chip."""
    from model.align import arcface_chips
    from model.images import load_image
    from model.recognizer import Recognizer

    recognizer = Recognizer("dlib-resnet", detector=detector)
    recognizer.detector.load()
    pictures = [load_image(images / p) for p in paths]
    start = time.perf_counter()
    for picture in pictures:
        arcface_chips(picture, [recognizer.portrait_face(picture)[0]], size=size)
    return 1000 * (time.perf_counter() - start) / max(1, len(pictures))


def trainer_row(arch: str, images: Path, found: FeatureSet, split: OpenSetSplit, config: ClassifierConfig,
                **options) -> Row:
    """A backbone from `model.train_backbone` (see `trained_features`), then the classifier on its embeddings."""
    try:
        own, seconds, ms, note = trained_features(arch, images, found, **options)
    except ImportError as exc:
        return Row(arch, "classifier", status=f"not run: the backbone trainer is not installed ({exc})")
    return classifier_row(arch, own, split, initial_head(arch, own.dim).kernel, config, backbone_ms=ms,
                          backbone_seconds=seconds, note=note)


# --- the table and the plot -----------------------------------------------------------------------


def _cell(value, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:g}"


def markdown(rows: list[Row], header: str = "") -> str:
    lines = [header, ""] if header else []
    lines += ["| embeddings | decision | accuracy | TAR at FAR 1e-3 | DIR at FPIR 1% | strangers named | "
              "training time (s) | ms per face | note |", "| --- " * 9 + "|"]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.name} | {r.method} | {r.status} | | | | | | |")
            continue
        lines.append(f"| {r.name} | {r.method} | {_cell(r.accuracy)} | {_cell(r.tar_at_far_1e_3)} | "
                     f"{_cell(r.dir_at_fpir_1pct)} | {_cell(r.fpir)} | {_cell(r.train_seconds, False)} | "
                     f"{_cell(r.ms_per_face, False)} | {r.note} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> Path | None:
    """Grouped bars (accuracy, TAR at FAR 1e-3, DIR at FPIR 1%) per row that ran; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    ran = [r for r in rows if r.status == "ok"]
    fig = Figure(figsize=(max(7.0, 1.4 * len(ran) + 2), 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(ran))
    for i, (key, label) in enumerate((("accuracy", "accuracy"), ("tar_at_far_1e_3", "TAR at FAR 1e-3"),
                                      ("dir_at_fpir_1pct", "DIR at FPIR 1%"))):
        ax.bar(x + 0.27 * i, [getattr(r, key) or 0.0 for r in ran], 0.27, label=label)
    ax.set_xticks(x + 0.27, [f"{r.name}\n{r.method}" for r in ran], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("the same open-set split: each embedding with the classifier (and the app's decision)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --- the run ------------------------------------------------------------------------------------------------


def run(images: Path, out: Path, *, rows: tuple[str, ...] = DEFAULT_ROWS, people: int | None = 50,
        per_person: int | None = None, enroll: int = 3, fold: int = 0, detector: str = "yunet",
        cache: Path | None = None, budget: float = 120.0, image_size: int = 64, train_people: int = 100,
        extra: dict[str, Path] | None = None, config: ClassifierConfig | None = None, timed: int = TIMED_PHOTOS) -> dict:
    """Every row on one split; writes compare.md, compare.png and compare.json into `out`."""
    from model.head import load_head
    from model.recognizer import Recognizer

    config = config or ClassifierConfig()
    images, out = Path(images), Path(out)
    shipped = [r for r in rows if r in SHIPPED]
    sources = {name: shipped_features(images, name, detector=detector, cache=cache, people=people,
                                      per_person=per_person) for name in shipped or ["dlib-resnet"]}
    reference = next(iter(sources.values()))
    paths = sorted(set.intersection(*(set(f.paths) for f in sources.values())), key=reference.paths.index)
    sources = {name: aligned(found, paths) for name, found in sources.items()}
    reference = next(iter(sources.values()))
    split = openset_split(reference.labels, enroll=enroll, fold=fold)
    sample = [images / p for p in paths[:timed]]
    table: list[Row] = []
    for name in shipped:
        found = sources[name]
        head = load_head(name, found.dim)
        ms = time_per_face(name, detector, sample) if timed else None
        table.append(classifier_row(name, found, split, head.kernel, config, backbone_ms=ms,
                                    note="pretrained (shipped); time: the classifier"))
        rule = Recognizer(name, head=head).rule if "open_set" in head.info else None
        table.append(nearest_row(name, found, split, head, rule, backbone_ms=ms))
    for name, path in (extra or {}).items():
        other = features_file(path, reference, name)
        table.append(classifier_row(name, other, split, initial_head(name, other.dim).kernel, config,
                                    note=f"features from {Path(path).name}"))
    used = {reference.names[label] for label in np.unique(reference.labels)}
    for name in rows:
        if name in SHIPPED:
            continue
        if name in TRAINER_ARCHS:
            table.append(trainer_row(name, images, reference, split, config, budget=budget, size=image_size,
                                     train_people=train_people, detector=detector, cache=cache, per_person=per_person,
                                     seed=config.seed))
        else:
            table.append(image_row(name, images, reference, split, size=image_size, budget=budget, seed=config.seed))
    header = (f"{len(used)} people of {images.name}, fold {fold}: " + json.dumps(split.summary(reference.labels)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(table, header))
    picture = plot(table, out / "compare.png")
    result = {"split": split.summary(reference.labels), "rows": [asdict(r) for r in table],
              "markdown": str(out / "compare.md"), "plot": str(picture) if picture else None}
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    from webapp.settings import from_env

    settings = from_env()
    parser = argparse.ArgumentParser(prog="python -m model.classifier compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="one folder per person")
    parser.add_argument("--out", type=Path, required=True, help="folder for compare.md, compare.png, compare.json")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated (default %(default)s)")
    parser.add_argument("--people", type=int, default=50, help="the first N people by name (default 50)")
    parser.add_argument("--per-person", type=int, default=None)
    parser.add_argument("--enroll", type=int, default=3, help="photos enrolled per person (default 3, as the app)")
    parser.add_argument("--fold", type=int, choices=(0, 1), default=0)
    parser.add_argument("--detector", default="yunet")
    parser.add_argument("--cache", type=Path, default=Path(settings["CACHE_DIR"]))
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of training per trained backbone")
    parser.add_argument("--image-size", type=int, default=64, help="image side for the trained backbones")
    parser.add_argument("--train-people", type=int, default=100,
                        help="people after the split's that model.train_backbone rows train on (default 100)")
    parser.add_argument("--features", action="append", default=[], metavar="NAME=FILE.npz")
    parser.add_argument("--timed", type=int, default=TIMED_PHOTOS, help="photos timed per shipped backbone (0: none)")
    parser.add_argument("--epochs", type=int, default=ClassifierConfig.epochs, help="classifier pass 1")
    parser.add_argument("--fine-tune-epochs", type=int, default=ClassifierConfig.fine_tune_epochs, help="pass 2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.features)
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    try:
        result = run(args.images, args.out, rows=rows, people=args.people, per_person=args.per_person,
                     enroll=args.enroll, fold=args.fold, detector=args.detector, cache=args.cache, budget=args.budget,
                     image_size=args.image_size, train_people=args.train_people,
                     extra={k: Path(v) for k, v in extra.items()},
                     config=ClassifierConfig(epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs, seed=args.seed),
                     timed=args.timed)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"python -m model.classifier compare: {exc}") from None
    print(json.dumps(result))
    print(f"table: {result['markdown']}", file=sys.stderr)
    return result
