"""`python -m model.classifier`: a person classifier with an Unknown class.

    python -m model.classifier train   --images DIR [--strangers DIR] [--data DIR] [--backbone B] --out DIR [--export]
    python -m model.classifier train   --gallery DB --data DIR ...
    python -m model.classifier train   --mode images --images DIR --arch MobileNetV2 [--weights FILE] --out DIR
    python -m model.classifier report  --model DIR --images DIR [--strangers DIR]
    python -m model.classifier compare --images ../shared/faces/celeba --people 50 --out DIR   (model.training.compare)

`train` holds out --val-fraction of each class's photos and writes report.md / report.json
(precision, recall, F1, support per person and for Unknown) beside the model; --export adds a
SavedModel and float32 and int8 TFLite files. Progress goes to stderr; the last line of stdout
is one JSON object. Bad input (no people, one person, no strangers, no Unknown/ folder in the
image mode) stops with a message saying what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from model.training.classifier_data import (
    UNKNOWN, ClassifierData, ClassifierDataError, build_data, gallery_strangers, holdout_rows, mirror_views,
    stranger_features,
)
from model.training.datasets import gallery_source


# --- data --------------------------------------------------------------------------------------------


def _recognizer(args, flip: bool | None = None):
    from model.recognizer import Recognizer

    return Recognizer(args.backbone, detector=args.detector, flip=args.flip if flip is None else flip,
                      weights_dir=args.weights_dir)


def _database(args) -> Path | str | None:
    if args.gallery:
        return args.gallery
    return Path(args.data) / "faces.db" if args.data else None


def embedding_data(args) -> ClassifierData:
    """People from --images (an Unknown/ sub-folder counts as strangers) or the gallery; strangers from
    --strangers and the data folder's corrections."""
    from model.training.datasets import dataset_features, gallery_features

    recognizer = _recognizer(args)
    database = _database(args)
    if args.images:
        people = dataset_features(args.images, recognizer=recognizer, cache_dir=args.cache, people=args.people,
                                  per_person=args.per_person, progress=not args.no_progress)
    elif database:
        people = gallery_features(database, recognizer.backbone.name)
    else:
        raise ClassifierDataError("give --images DIR (one folder per person), --gallery DB or --data DIR")
    strangers = []
    if UNKNOWN in people.names:
        unknown = people.names.index(UNKNOWN)
        strangers.append(people.features[people.labels == unknown])
        people = people.subset(people.labels != unknown)
    if args.strangers:
        strangers.append(stranger_features(args.strangers, recognizer, args.cache))
    if database:
        strangers.append(gallery_strangers(database, people))
    views = _mirror_views(args, people) if args.mirror_views else None
    return build_data(people, strangers, people_views=views)


def _mirror_views(args, people):
    """Mirror-image features of the people's photos, from the flip and plain feature caches."""
    from model.training.datasets import dataset_features

    if not args.images or not args.flip:
        raise ClassifierDataError("--mirror-views needs --images and flip averaging on")
    plain = dataset_features(args.images, recognizer=_recognizer(args, flip=False), cache_dir=args.cache,
                             people=args.people, per_person=args.per_person, progress=not args.no_progress)
    where = {path: i for i, path in enumerate(plain.paths)}
    missing = [p for p in people.paths if p not in where]
    if missing:
        raise ClassifierDataError(f"{len(missing)} photos have no plain features (first: {missing[0]})")
    return mirror_views(people.features, plain.features[[where[p] for p in people.paths]])


# --- train ------------------------------------------------------------------------------------------


def _config(args):
    from model.training.classifier import ClassifierConfig

    return ClassifierConfig(epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs, learning_rate=args.lr,
                            batch_size=args.batch_size, balanced=not args.no_balance, augment=not args.no_augment,
                            time_budget=args.time_budget, min_confidence=args.min_confidence, seed=args.seed)


def _report(model, inputs, truth, classes, min_confidence, folder: Path) -> dict:
    from model.training.classifier import decide, predict
    from model.training.classifier_report import classification_report, report_markdown

    rows, overall = classification_report(truth, decide(predict(model, inputs), min_confidence), classes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(report_markdown(rows, overall))
    (folder / "report.json").write_text(json.dumps({"overall": overall, "classes": rows}, indent=1))
    return {"overall": overall, "classes": rows, "markdown": str(folder / "report.md")}


def train(args) -> dict:
    from model.training.classifier import save_classifier, train_classifier

    config = _config(args)
    if args.mode == "images":
        from model.training.classifier_images import DEFAULT_INPUT_SIZE, load_image_set, train_image_classifier

        if not args.images:
            raise ClassifierDataError("the image mode needs --images DIR (one folder per person plus Unknown/)")
        data = load_image_set(args.images, args.input_size or DEFAULT_INPUT_SIZE, people=args.people,
                              per_person=args.per_person)
        keep, held = holdout_rows(data.labels, args.val_fraction, args.seed)
        result = train_image_classifier(data.subset(keep), args.arch, config, weights=args.weights,
                                        fine_tune_layers=args.fine_tune_layers, progress=not args.no_progress)
        held_inputs, held_truth = data.images[held].astype(np.float32), data.labels[held]
        representative = data.images[keep].astype(np.float32)
        counts = np.bincount(data.labels, minlength=len(data.classes))
        full = {"people": len(data.classes) - 1, "photos": int(counts[:-1].sum()), "strangers": int(counts[-1])}
        name = args.arch
    else:
        from model.head import load_head

        data = embedding_data(args)
        keep, held = holdout_rows(data.labels, args.val_fraction, args.seed)
        kernel = load_head(data.backbone, data.dim, weights_dir=args.weights_dir).kernel
        result = train_classifier(data.subset(keep), kernel, config, progress=not args.no_progress)
        result.info.update(detector=args.detector, flip=args.flip)
        held_inputs, held_truth = data.features[held], data.labels[held]
        representative = data.features[keep]
        full = data.summary()
        name = data.backbone
    out = Path(args.out or Path(args.weights_dir) / f"classifier-{name}")
    summary = {"mode": args.mode, "out": str(out), "classes": len(result.classes), "data": full,
               "held_out": int(held.sum()),
               "seconds": round(result.seconds, 2), "epochs_run": len(result.history),
               "first_loss": round(result.history[0]["loss"], 4) if result.history else None,
               "last_loss": round(result.history[-1]["loss"], 4) if result.history else None}
    if held.any():
        summary["report"] = _report(result.model, held_inputs, held_truth, result.classes, config.min_confidence, out)
    save_classifier(result, out, extra={"held_out": int(held.sum())})
    if args.export:
        from model.training.classifier_export import export_classifier

        files = export_classifier(result.model, out / "export", representative, classes=result.classes,
                                  description={"mode": args.mode, "input": result.info["input"]}, int8=not args.no_int8)
        summary["export"] = {k: str(v) for k, v in files.items()}
    return summary


# --- report -------------------------------------------------------------------------------------------


def report(args) -> dict:
    """Score a saved classifier on a dataset: people it knows by name, everyone else (and --strangers) Unknown."""
    from model.training.classifier import load_classifier

    model, meta = load_classifier(args.model)
    classes = meta["classes"]
    index = {name: i for i, name in enumerate(classes[:-1])}
    if meta["mode"] == "images":
        from model.training.classifier_images import load_image_set

        data = load_image_set(args.images, int(meta["input_size"]), people=args.people, per_person=args.per_person,
                              require_unknown=False)
        inputs = data.images.astype(np.float32)
        names = [data.classes[label] for label in data.labels]
    else:
        from model.training.datasets import dataset_features

        args.backbone, args.flip = meta["backbone"], meta.get("flip", True)
        args.detector = meta.get("detector", args.detector)
        found = dataset_features(args.images, recognizer=_recognizer(args), cache_dir=args.cache, people=args.people,
                                 per_person=args.per_person, progress=not args.no_progress)
        inputs, names = found.features, [found.names[label] for label in found.labels]
        if args.strangers:
            extra = stranger_features(args.strangers, _recognizer(args), args.cache)
            inputs, names = np.concatenate([inputs, extra]), names + [UNKNOWN] * len(extra)
    truth = np.array([index.get(name, len(classes) - 1) for name in names], dtype=np.int64)
    folder = Path(args.out or args.model)
    return {"model": str(args.model), **_report(model, inputs, truth, classes, meta["config"]["min_confidence"], folder)}


# --- command line --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from webapp.settings import from_env

    settings = from_env()
    parser = argparse.ArgumentParser(prog="python -m model.classifier", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.set_defaults(weights_dir=Path(settings["WEIGHTS_DIR"]))  # FACES_WEIGHTS_DIR
    common.add_argument("--images", type=Path, help="one folder per person (an Unknown/ folder holds strangers)")
    common.add_argument("--strangers", type=Path, help="a folder of strangers' photos (flat or one folder each)")
    common.add_argument("--backbone", default=settings["BACKBONE"], help="default FACES_BACKBONE, %(default)s")
    common.add_argument("--detector", default=settings["DETECTOR"], help="default FACES_DETECTOR, %(default)s")
    common.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="mirror-image averaging, as the app does (default on)")
    common.add_argument("--cache", type=Path, default=Path(settings["CACHE_DIR"]), help="feature cache, %(default)s")
    common.add_argument("--people", type=int, default=None, help="only the first N people (by name)")
    common.add_argument("--per-person", type=int, default=None, help="at most N photos per person")
    common.add_argument("--out", type=Path, default=None)
    common.add_argument("--no-progress", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", parents=[common], help="train a classifier")
    p_train.add_argument("--mode", choices=("embeddings", "images"), default="embeddings")
    p_train.add_argument("--gallery", type=gallery_source,
                         help="the app's database (SQLite file or postgresql:// URL): its people (stored features)")
    p_train.add_argument("--data", type=Path, help="the app's data folder: corrections as strangers (and its people)")
    p_train.add_argument("--mirror-views", action="store_true", help="augment with mirror-image features (plain cache)")
    p_train.add_argument("--arch", default="MobileNetV2",
                         help="image mode: MobileNetV2, ResNet50, InceptionResNetV2 or VGG16")
    p_train.add_argument("--weights", type=Path, default=None, help="image mode: your ImageNet weights file (no top)")
    p_train.add_argument("--input-size", type=int, default=None, help="image mode: image side (default 128)")
    p_train.add_argument("--fine-tune-layers", type=int, default=20, help="image mode: CNN layers trained in pass 2")
    p_train.add_argument("--epochs", type=int, default=30, help="pass 1: new layers only")
    p_train.add_argument("--fine-tune-epochs", type=int, default=15, help="pass 2: plus the top of the base")
    p_train.add_argument("--lr", type=float, default=3e-3, help="pass 1 learning rate (pass 2: a tenth)")
    p_train.add_argument("--batch-size", type=int, default=64)
    p_train.add_argument("--no-balance", action="store_true", help="no class weights")
    p_train.add_argument("--no-augment", action="store_true")
    p_train.add_argument("--time-budget", type=float, default=None, help="seconds for both passes")
    p_train.add_argument("--min-confidence", type=float, default=0.0, help="Unknown below this top probability")
    p_train.add_argument("--val-fraction", type=float, default=0.2, help="photos per class held out for the report")
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--export", action="store_true", help="also SavedModel + TFLite (float and int8)")
    p_train.add_argument("--no-int8", action="store_true")
    p_report = sub.add_parser("report", parents=[common], help="score a saved classifier on a dataset")
    p_report.add_argument("--model", type=Path, required=True, help="folder written by train")
    sub.add_parser("compare", add_help=False, help="the comparison report (model.training.compare; --help there)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        from model.training import compare

        return compare.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "report" and not args.images:
            raise ClassifierDataError("report needs --images DIR")
        result = train(args) if args.command == "train" else report(args)
    except (ClassifierDataError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"python -m model.classifier {args.command}: {exc}") from None
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
