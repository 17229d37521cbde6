"""End-to-end backbone training (`model.train_backbone`) at tiny scale on a real CelebA slice.

Five people, 12 photos each, aligned once into 32 px chips (YuNet + ArcFace layout) for the module.
Every arch, loss and schedule trains a few steps in eager mode (no compiled graph: a compiled
IR-ResNet step takes a minute to build on a busy CPU) and must lower its training loss; the
schedules' shapes, ArcFace's margin, the focal weighting, resume, the time budget and bad input
are checked on their own. DenseNet-121 and IR-ResNet-50 are the slow ones (about 30 s each).
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras (with TensorFlow) is in requirements.txt")

from model.training import backbone_callbacks as cb  # noqa: E402
from model.training.backbone_data import FaceChips, load_chips, prepare_chips, save_chips, split_by_person  # noqa: E402
from model.training.backbone_losses import ArcFaceLogits, ArcFaceLoss, ContrastiveLoss  # noqa: E402
from model.training.backbone_models import IR_UNITS, build_embedding  # noqa: E402
from model.training.backbone_schedules import ScheduledAdam, Triangular, curves, make_schedules  # noqa: E402
from model.training.backbone_train import TAR_KEY, BackboneConfig, main, train_backbone  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SIZE, PEOPLE, PHOTOS = 32, 5, 12


@pytest.fixture(scope="module")
def chips(celeba_dir, tmp_path_factory) -> FaceChips:
    cache = tmp_path_factory.mktemp("chip-cache")
    return prepare_chips(celeba_dir, image_size=SIZE, detector="yunet", max_people=PEOPLE, per_person=PHOTOS,
                         cache_dir=cache, progress=False)


def tiny(**options) -> BackboneConfig:
    """A run of a few eager steps on the slice: 3 training people x 4 photos a batch. Without augmentation:
    these runs check that a network learns at all, in as few steps as possible (MobileNet needs three times
    as many with it)."""
    settings = dict(arch="small-cnn", loss="arcface", schedule="step", step_epochs=100, chips_file=None,
                    images=None, epochs=3, image_size=SIZE, p=3, k=4, steps_per_epoch=4, learning_rate=2e-3,
                    augment=False, run_eagerly=True, progress=False)
    settings.update(options)
    config = BackboneConfig(**settings)
    config.images = config.images or "unused: chips are passed in"
    return config


# --- data --------------------------------------------------------------------------------------


def test_chips_are_aligned_faces_cached_and_split_by_person(chips, celeba_dir, tmp_path_factory):
    listed = [p for p in sorted(celeba_dir.iterdir())[:PEOPLE] for p in sorted(p.glob("*.jpg"))[:PHOTOS]]
    assert chips.chips.shape == (len(listed), SIZE, SIZE, 3) and chips.chips.dtype == np.uint8
    assert chips.paths == [p.relative_to(celeba_dir).as_posix() for p in listed]
    assert chips.people() == PEOPLE and chips.detected.mean() > 0.9
    assert chips.chips.std() > 20  # pictures, not blank chips
    train, val = split_by_person(chips.labels, 0.2, seed=0)
    assert not (train & val).any() and (train | val).all()
    assert set(chips.labels[train]).isdisjoint(chips.labels[val]) and len(set(chips.labels[val])) == 2
    path = save_chips(chips, tmp_path_factory.mktemp("chips") / "slice.npz")
    again = load_chips(path, max_people=4)
    assert again.people() == 4 and np.array_equal(again.chips, chips.chips[chips.labels < 4])


# --- schedules ---------------------------------------------------------------------------------------


def test_cyclical_rate_is_triangular_and_momentum_moves_against_it():
    lr, beta_1 = curves(make_schedules("cyclical", 1e-2, steps_per_epoch=10, epochs=6, cycle_epochs=2), 60)
    assert lr[0] == pytest.approx(1e-3) and lr[10] == pytest.approx(1e-2) and lr[20] == pytest.approx(1e-3)
    assert np.allclose(lr[:20], lr[20:40]) and np.allclose(lr[:20], lr[40:60])  # a 20-step cycle
    assert np.allclose(np.diff(lr[:11]), 9e-4) and np.allclose(np.diff(lr[10:21]), -9e-4)  # straight sides
    assert beta_1[0] == pytest.approx(0.95) and beta_1[10] == pytest.approx(0.85)
    assert np.corrcoef(lr, beta_1)[0, 1] == pytest.approx(-1.0)


def test_one_cycle_has_the_head_trainers_shape():
    from model.training.config import TrainConfig, schedule_at

    lr, beta_1 = curves(make_schedules("one-cycle", 3e-3, steps_per_epoch=7, epochs=5), 35)
    expected = np.array([schedule_at(TrainConfig(schedule="one-cycle", learning_rate=3e-3), s, 35, 7) for s in range(35)])
    assert np.allclose(lr, expected[:, 0], rtol=1e-4) and np.allclose(beta_1, expected[:, 1], rtol=1e-4)
    assert int(np.argmax(lr)) == 10 and int(np.argmin(beta_1)) == 10  # peak at 30% of the steps


def test_step_schedule_drops_by_the_factor_every_step_epochs():
    lr, beta_1 = curves(make_schedules("step", 1e-3, steps_per_epoch=5, epochs=9, step_epochs=3, step_factor=0.5), 45)
    assert np.allclose(lr, 1e-3 * 0.5 ** (np.arange(45) // 15)) and np.allclose(beta_1, 0.9)


def test_scheduled_adam_uses_the_momentum_of_each_step_and_beta_2_099():
    momentum = Triangular(0.95, 0.5, half_cycle=2)  # far from Adam's fixed 0.9, so a fixed beta_1 would show
    optimizer = ScheduledAdam(0.1, momentum)
    weight = keras.Variable(np.zeros(3, np.float32))
    grads = np.array([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0], [2.0, 2.0, 2.0]], np.float32)
    m = v = np.zeros(3)
    expected = np.zeros(3)
    for step, g in enumerate(grads, start=1):
        optimizer.apply([keras.ops.convert_to_tensor(g)], [weight])
        b1 = 0.95 + (0.5 - 0.95) * max(0.0, 1 - abs((step - 1) / 2 - 2 * math.floor(1 + (step - 1) / 4) + 1))
        m, v = b1 * m + (1 - b1) * g, 0.99 * v + 0.01 * g * g
        expected = expected - 0.1 * math.sqrt(1 - 0.99 ** step) / (1 - b1 ** step) * m / (np.sqrt(v) + 1e-7)
    assert np.allclose(keras.ops.convert_to_numpy(weight), expected, atol=1e-5)


def test_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="cyclical, one-cycle, step"):
        make_schedules("warm-restarts", 1e-3, steps_per_epoch=1, epochs=1)


# --- losses ------------------------------------------------------------------------------------------


def test_arcface_adds_the_angular_margin_to_the_target_logit_only():
    layer = ArcFaceLogits(3, 64.0, 0.5)
    layer.build((None, 2))
    layer.centres.assign(np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32))  # at 0, 90, 180 degrees
    angles = np.array([0.3, 1.2, 2.9])  # 2.9 rad is past pi - m, where the linear fallback applies
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 0, 0], np.int32)
    logits = keras.ops.convert_to_numpy(layer(embeddings, labels))
    cos = np.cos(angles)
    assert logits[:2, 0] == pytest.approx(64 * np.cos(angles[:2] + 0.5), abs=1e-3)
    assert logits[2, 0] == pytest.approx(64 * (cos[2] - math.sin(math.pi - 0.5) * 0.5), abs=1e-3)
    others = np.stack([np.cos(np.abs(angles - np.pi / 2)), -cos], axis=1)
    assert logits[:, 1:] == pytest.approx(64 * others, abs=1e-3)


def test_focal_weighting_shrinks_the_loss_of_faces_already_right():
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]], np.float32)
    labels = np.array([0, 1], np.int32)
    p = np.exp(logits[[0, 1], [0, 1]]) / np.exp(logits).sum(axis=1)
    plain = float(ArcFaceLoss()(labels, logits))
    focal = float(ArcFaceLoss(focal=True)(labels, logits))
    assert plain == pytest.approx(np.mean(-np.log(p)), rel=1e-5)
    assert focal == pytest.approx(np.mean(-((1 - p) ** 2) * np.log(p)), rel=1e-5)


def test_contrastive_loss_pulls_pairs_of_one_person_and_pushes_others_past_the_margin():
    left = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    right = np.array([[0.6, 0.8], [0.6, 0.8]], np.float32)  # distance sqrt(0.8) = 0.894
    loss = ContrastiveLoss()(np.array([1.0, 0.0], np.float32), np.concatenate([left, right], axis=1))
    assert float(loss) == pytest.approx(0.5 * np.mean([0.8, (1.0 - math.sqrt(0.8)) ** 2]), rel=1e-4)


# --- every arch, loss and schedule learns ---------------------------------------------------------------

RECIPES = [
    pytest.param("small-cnn", "triplet", "step", False, id="small-cnn-triplet-step"),
    pytest.param("small-cnn", "contrastive", "cyclical", False, id="small-cnn-contrastive-cyclical"),
    pytest.param("small-cnn", "arcface", "one-cycle", False, id="small-cnn-arcface-one-cycle"),
    pytest.param("small-cnn", "arcface", "cyclical", True, id="small-cnn-arcface-focal-cyclical"),
    pytest.param("ir-resnet18", "arcface", "step", False, id="ir-resnet18-arcface"),
    pytest.param("mobilenet", "arcface", "step", True, id="mobilenet-arcface-focal"),
    pytest.param("densenet121", "contrastive", "cyclical", False, id="densenet121-siamese-contrastive-cyclical",
                 marks=pytest.mark.slow),
    pytest.param("ir-resnet50", "arcface", "step", True, id="ir-resnet50-arcface-focal", marks=pytest.mark.slow),
]
# (epochs, steps per epoch): the big networks get as few as still show learning every time.
STEPS = {"densenet121": (2, 2), "ir-resnet50": (2, 2), "ir-resnet18": (2, 3), "mobilenet": (2, 4), "small-cnn": (3, 4)}


@pytest.mark.parametrize("arch,loss,schedule,focal", RECIPES)
def test_training_lowers_the_loss_on_real_faces(chips, arch, loss, schedule, focal):
    epochs, steps = STEPS[arch]
    result = train_backbone(tiny(arch=arch, loss=loss, schedule=schedule, focal=focal, epochs=epochs,
                                 steps_per_epoch=steps, learning_rate=1e-3 if arch == "mobilenet" else 2e-3), chips)
    losses = [row["loss"] for row in result.history[1:]]
    assert len(losses) == epochs and all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], f"{arch}/{loss}: loss {losses} did not go down"
    vectors = result.embed(chips.chips[:5])
    assert vectors.shape == (5, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert 0 <= result.metrics[TAR_KEY] <= 1 and 0 <= result.metrics["val_accuracy"] <= 1
    assert result.embedding.get_layer("head").use_bias is False
    if arch in IR_UNITS:  # improved residual units with squeeze-and-excitation, 2-2-2-2 or 3-4-14-3
        names = [layer.name for layer in result.embedding.layers]
        assert sum(n.endswith("_se_scale") for n in names) == sum(IR_UNITS[arch])
        assert sum(n.endswith("_prelu") for n in names) == sum(IR_UNITS[arch]) + 1


def test_augmentation_mirrors_about_half_and_changes_brightness_within_range(chips):
    from model.training.backbone_batches import augment_chips

    batch = chips.chips[:40]
    out = augment_chips(batch, np.random.default_rng(0))
    assert out.shape == batch.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
    mirrored = [np.corrcoef(o.ravel(), b[:, ::-1].ravel())[0, 1] > np.corrcoef(o.ravel(), b.ravel())[0, 1]
                for o, b in zip(out, batch.astype(np.float32))]
    assert 10 <= sum(mirrored) <= 30
    assert np.abs(out.mean(axis=(1, 2, 3)) - batch.mean(axis=(1, 2, 3))).max() > 5  # brightness moved


# --- checkpoints, resume, time budget ---------------------------------------------------------------------


def test_resume_continues_from_the_checkpoints_epoch(chips, tmp_path):
    first = train_backbone(tiny(epochs=1, out=tmp_path), chips)
    state = cb.read_state(tmp_path / "checkpoint")
    assert state["epoch"] == 1 and (tmp_path / "embedding.keras").is_file()
    saved = [w.copy() for w in keras.saving.load_model(tmp_path / "embedding.keras").get_weights()]
    assert all(np.allclose(a, b) for a, b in zip(saved, first.embedding.get_weights()))

    resumed = train_backbone(tiny(epochs=3, out=tmp_path, resume=True), chips)
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[:2] == first.history  # epochs 0 and 1 are the first run's, not trained again
    assert resumed.history[3]["steps"] == 3 * 4  # the optimizer's step count went on from the checkpoint
    assert cb.read_state(tmp_path / "checkpoint")["epoch"] == 3

    shutil.copytree(tmp_path / "checkpoint", tmp_path / "other" / "checkpoint")
    with pytest.raises(ValueError, match="arch: checkpoint 'small-cnn', now 'ir-resnet18'"):
        train_backbone(tiny(arch="ir-resnet18", epochs=4, out=tmp_path / "other", resume=True), chips)


def test_the_time_budget_stops_training_and_the_cli_ends_with_json(chips, tmp_path, capsys):
    path = save_chips(chips, tmp_path / "slice.npz")
    main(["--arch", "small-cnn", "--loss", "triplet", "--schedule", "cyclical", "--chips", str(path),
          "--image-size", str(SIZE), "--epochs", "20", "--steps-per-epoch", "50", "--people-per-batch", "3",
          "--time-budget-s", "0", "--eager", "--out", str(tmp_path / "run"), "--no-progress"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stopped_by_time_budget"] is True and summary["epochs_run"] == 1
    assert summary["arch"] == "small-cnn" and TAR_KEY in summary and "val_accuracy" in summary
    state = cb.read_state(tmp_path / "run" / "checkpoint")
    assert state["epoch"] == 1 and state["history"][-1]["steps"] == 1  # stopped after its first step


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options,message", [
    ({"arch": "resnet-9000"}, "unknown arch 'resnet-9000'; choose one of: densenet121, ir-resnet18"),
    ({"loss": "cosface"}, "unknown loss 'cosface'; choose one of: contrastive, triplet, arcface"),
    ({"loss": "triplet", "focal": True}, "--focal weights ArcFace's softmax"),
    ({"image_size": 16}, "too small"),
    ({"weights": "/nonexistent/w.h5"}, "weights file /nonexistent/w.h5 not found"),
])
def test_bad_options_get_a_clear_error(options, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", r"\(")):
        tiny(**options).check()


def test_a_missing_folder_or_too_few_people_is_refused(celeba_dir, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="images folder .*nowhere not found"):
        train_backbone(tiny(images=tmp_path / "nowhere"))
    one = tmp_path / "one" / "someone"
    one.mkdir(parents=True)
    for photo in sorted((celeba_dir / "celeb_7201").glob("*.jpg"))[:3]:
        shutil.copy(photo, one)
    with pytest.raises(ValueError, match="at least 4 people with two or more photos each \\(found 1\\)"):
        train_backbone(tiny(images=tmp_path / "one", cache_dir=tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--arch", "small-cnn", "--loss", "arcface", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "nowhere not found" in capsys.readouterr().err


def test_a_weights_file_loads_and_a_missing_one_is_refused(tmp_path):
    model = build_embedding("small-cnn", SIZE)
    model.save_weights(tmp_path / "small.weights.h5")
    again = build_embedding("small-cnn", SIZE, weights=tmp_path / "small.weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), again.get_weights()))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_embedding("small-cnn", SIZE, weights=tmp_path / "missing.weights.h5")
    # keras.applications bodies take the user's notop file (ImageNet's, say) of the same architecture
    body = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(SIZE, SIZE, 3))
    body.save_weights(tmp_path / "mobilenetv2_notop.weights.h5")
    loaded = build_embedding("mobilenet", SIZE, weights=tmp_path / "mobilenetv2_notop.weights.h5", mobilenet_alpha=0.35)
    inner = next(layer for layer in loaded.layers if isinstance(layer, keras.Model))
    assert all(np.array_equal(a, b) for a, b in zip(inner.get_weights(), body.get_weights()))
