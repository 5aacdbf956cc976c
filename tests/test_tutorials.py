"""The tutorial recipes follow their tutorials: Keras L2 as PyTorch weight decay, vertical flips, clipping
gradient values, fastai 0.7's constant-rate fits."""

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from resnetlab.config import AugmentConfig, load_config
from resnetlab.data.augment import crop_flip, make_generator
from resnetlab.models import get_model
from resnetlab.run.prepare import prepare
from resnetlab.train.session import build_optimizer
from resnetlab.train.stages import lr_for_step
from resnetlab.train.step import train_step
from tests.conftest import tiny_config


@pytest.mark.parametrize("recipe", ["cifar10-preact-resnet56", "tinyimagenet-preact-resnet"])
def test_keras_l2_of_the_tutorial_is_the_recipes_weight_decay(recipe):
    """Keras' l2(reg) adds reg * sum(w^2) over conv and Dense kernels to the loss; one SGD step on that
    loss equals one step of the recipe's optimiser (weight_decay = 2 * reg, BN and biases undecayed)."""
    reg = 5e-4  # the tutorial's
    cfg = load_config(recipe)
    torch.manual_seed(0)
    keras = get_model("preact_resnet56", num_classes=10, stages=[1, 1, 1], filters=[16, 16, 32, 64])
    ours = copy.deepcopy(keras)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    opt = build_optimizer(ours, cfg.optim)
    F.cross_entropy(ours(x), y).backward()
    opt.step()

    kernels = [p for p in keras.parameters() if p.ndim > 1]  # conv and Dense kernels
    plain = torch.optim.SGD(keras.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=False)
    (F.cross_entropy(keras(x), y) + reg * sum((p**2).sum() for p in kernels)).backward()
    plain.step()
    for (name, a), b in zip(ours.named_parameters(), keras.parameters()):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5), name


def test_vertical_flips_mirror_rows_and_leave_other_runs_as_they_were():
    images = torch.arange(40 * 3 * 6 * 6, dtype=torch.int32).reshape(40, 3, 6, 6).to(torch.uint8)
    out = crop_flip(images, AugmentConfig(crop_padding=0, hflip=False, vflip=True), make_generator(0, 1))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 40
    # without vflip nothing more is drawn: a run that does not set it augments exactly as before
    cfg = AugmentConfig(crop_padding=2, hflip=True)
    assert torch.equal(crop_flip(images, cfg, make_generator(0, 1)),
                       crop_flip(images, AugmentConfig(crop_padding=2, hflip=True, vflip=False), make_generator(0, 1)))
    assert load_config("cifar10-resnet50").augment.vflip


def test_grad_clip_value_limits_every_gradient_element(class_folders, tmp_path):
    s = prepare(tiny_config(class_folders, tmp_path, "optim.grad_clip_value=1e-4", "train.precision=fp32"),
                run_name="t")
    x, y = next(iter(s.loaders["train"].epoch(0)))[:2]
    train_step(s, x, y, lr=0.1, n_global=len(y))
    grads = torch.cat([p.grad.flatten() for p in s.model.parameters() if p.grad is not None])
    assert grads.abs().max() == pytest.approx(1e-4)  # the largest were clipped to the value, none above


def test_fastai_fits_are_constant_rate_fits_at_one_rate_for_every_layer():
    cfg = load_config("gtsrb-resnet34-finetune")
    spe = 10
    # stage 1 (head, 1 epoch) and stage 2 (all layers, 3 epochs): 0.01 at every step, one rate for all groups
    assert {lr_for_step(cfg, step, spe) for step in range(4 * spe)} == {0.01}
    assert [st.lr for st in cfg.stages[:2]] == [[0.01], [0.01]]


# each tutorial recipe against the settings ../shared/TUTORIALS.md gives for its tutorial, key by key
KERAS_CIFAR = {"train.monitor": "test", "model.name": "preact_resnet56", "model.stages": [9, 9, 9],
               "model.input_bn": True, "model.stage_shortcut": True, "optim.name": "sgd", "optim.lr": 0.1,
               "optim.momentum": 0.9, "optim.nesterov": False, "optim.decay_norm_and_bias": False, "augment.shift": 0.1,
               "augment.fill": "nearest", "augment.hflip": True, "augment.crop_padding": 0}
KERAS_TINY = {"model.name": "preact_resnet_tiny", "model.stages": [3, 4, 6], "model.filters": [64, 128, 256, 512],
              "model.input_bn": True, "model.stage_shortcut": True, "optim.weight_decay": 1e-3, "train.batch_size": 64,
              "augment.rotation": 18.0, "augment.zoom": 1.15, "augment.zoom_out": 1.15, "augment.shift": 0.2,
              "augment.shear": 0.15, "augment.hflip": True, "augment.fill": "nearest", "augment.crop_padding": 0}
TUTORIAL_KEYS = {
    "gtsrb-resnet34-finetune": {"model.name": "resnet34", "model.weights": "IMAGENET1K_V1", "data.image_size": 96,
                                "augment.rotation": 20.0, "augment.zoom": 1.2, "optim.weight_decay": 5e-4,
                                "augment.fastai_lighting": [0.8, 0.8], "augment.lighting": 0.0,
                                "optim.nesterov": False, "optim.decay_norm_and_bias": True},
    "gtsrb4-resnet34": {"model.name": "resnet34", "data.classes": ["12", "13", "14", "17"], "data.val_fraction": 0.1,
                        "data.test_fraction": 0.1, "augment.rotation": 15.0, "augment.hflip": True,
                        "schedule.name": "step", "schedule.milestones": [7.0], "schedule.gamma": 0.1},
    "intel-resnet34-onecycle": {"model.name": "resnet34", "model.weights": "IMAGENET1K_V1", "data.val_count": 2000,
                                "optim.name": "adam", "schedule.name": "onecycle", "schedule.pct_start": 0.3,
                                "optim.grad_clip_value": 0.1, "optim.grad_clip_norm": 0.0,
                                "optim.decay_norm_and_bias": True, "train.score_untrained": True},
    "cifar10-resnet50": {"model.name": "cifar_resnet50", "data.normalize": "half", "augment.crop_padding": 4,
                         "augment.hflip": True, "augment.vflip": True, "optim.lr": 0.1, "optim.momentum": 0.9,
                         "optim.nesterov": False, "optim.weight_decay": 5e-4, "optim.decay_norm_and_bias": True,
                         "model.zero_init_residual": False, "schedule.name": "cosine", "train.batch_size": 128,
                         "train.monitor": "test"},
    "cifar10-preact-resnet56": {**KERAS_CIFAR, "model.filters": [64, 64, 128, 256], "optim.weight_decay": 1e-3,
                                "schedule.name": "poly", "schedule.power": 1.0, "train.epochs": 100},
    "cifar10-preact-ctrlc-exp1": {**KERAS_CIFAR, "model.filters": [16, 16, 32, 64], "optim.weight_decay": 2e-4,
                                  "schedule.name": "step", "schedule.milestones": [50.0, 75.0], "train.epochs": 85},
    "cifar10-preact-ctrlc-exp2": {**KERAS_CIFAR, "model.filters": [16, 64, 128, 256], "optim.weight_decay": 2e-4,
                                  "schedule.name": "step", "schedule.milestones": [40.0, 45.0], "train.epochs": 50},
    "cifar10-preact-ctrlc-exp3": {**KERAS_CIFAR, "model.filters": [64, 64, 128, 256], "optim.weight_decay": 1e-3,
                                  "schedule.name": "step", "schedule.milestones": [80.0, 90.0], "train.epochs": 100},
    "tinyimagenet-preact-resnet": {**KERAS_TINY, "schedule.name": "poly", "schedule.power": 1.0, "train.epochs": 75},
    "tinyimagenet-preact-ctrlc-exp1": {**KERAS_TINY, "schedule.name": "step", "schedule.milestones": [25.0, 35.0],
                                       "train.epochs": 40},
}


@pytest.mark.parametrize("recipe", sorted(TUTORIAL_KEYS))
def test_each_tutorial_recipe_sets_its_tutorials_keys(recipe):
    cfg = load_config(recipe).to_dict()
    got = {key: cfg[key.split(".")[0]][key.split(".")[1]] for key in TUTORIAL_KEYS[recipe]}
    assert got == TUTORIAL_KEYS[recipe]
    header = [line for line in load_recipe_text(recipe).splitlines() if line.startswith("#")]
    assert 3 <= len(header) <= 6 and "Reported:" in "".join(header) and header[-1].startswith("# Figures:")


def load_recipe_text(recipe: str) -> str:
    from resnetlab.config import recipe_path

    return recipe_path(recipe).read_text()


def test_rolling_back_to_a_kept_epoch_continues_from_it_with_a_new_rate(class_folders, tmp_path, capsys):
    """The ctrl+c method: keep_every keeps epoch_NNN.pt; --from-epoch continues from one with a lower lr,
    the later epochs cut from the metrics and their checkpoints moved aside; unchanged, it is the same run."""
    import json

    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.cli import main
    from tests.conftest import tiny_overrides

    args = tiny_overrides(class_folders, tmp_path / "runs", "data.val_fraction=0.25", "schedule.name=constant",
                          "train.epochs=4", "train.keep_every=2", "train.tensorboard=false")
    assert main(["train", *args]) == 0
    run = tmp_path / "runs" / "run"
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == ["epoch_002.pt", "epoch_004.pt"]
    reference = load_checkpoint(run / "last.pt")["model"]
    shutil.copytree(run, tmp_path / "same")

    assert main(["train", "--resume", str(run), "--from-epoch", "2", "optim.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "rolled back to epoch 2 (epoch_002.pt); epochs 3-4 and what they wrote are in rolled_back/epochs_3-4; " \
           "lr 5.00e-02 at epoch 2, 1.00e-02 from epoch 3" in out
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and [h["lr"] for h in history] == [0.05, 0.05, 0.01, 0.01]
    aside = run / "rolled_back" / "epochs_3-4"  # the abandoned epochs' checkpoints, and their model's results
    assert {"last.pt", "epoch_004.pt", "metrics.jsonl", "eval_test.json", "calibration.json"} <= \
        {p.name for p in aside.iterdir()}
    assert load_checkpoint(run / "best.pt")["epoch"] <= 4 and (run / "eval_test.json").is_file()  # chosen anew
    assert len((aside / "metrics.jsonl").read_text().splitlines()) == 4
    assert json.loads((run / "env.json").read_text())["resumes"][-1]["from_epoch"] == 2

    same = tmp_path / "same"  # rolled back with nothing changed: epochs 3-4 again, bit for bit
    assert main(["train", "--resume", str(same), "--from-epoch", "2"]) == 0
    again = load_checkpoint(same / "last.pt")["model"]
    assert all(torch.equal(reference[k], again[k]) for k in reference)

    for argv, error in [(["--resume", str(run), "--from-epoch", "3"], "has no epoch_003.pt; it keeps epochs 2, 4"),
                        (["--from-epoch", "2", *args], "--from-epoch N rolls a run back: give it with --resume RUN")]:
        code = main(["train", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and error in err[0]


def test_keras_shift_with_nearest_fill_and_zoom_out():
    """Keras' width_shift_range with fill_mode='nearest': a horizontal ramp stays a ramp, moved by up to the
    share asked for, the edge pixel repeated where it moved in; zoom_out shows the whole ramp and more."""
    w = 16
    ramp = (torch.arange(w) * 16).to(torch.uint8).expand(64, 1, w, w).contiguous()
    out = crop_flip(ramp, AugmentConfig(crop_padding=0, hflip=False), make_generator(0))  # no-op: nothing set
    assert torch.equal(out, ramp)
    from resnetlab.data.augment import affine

    shifted = affine(ramp, AugmentConfig(crop_padding=0, hflip=False, shift=0.25, fill="nearest"), make_generator(1))
    rows = shifted[:, 0, w // 2].int()
    assert bool((rows.diff(dim=1) >= 0).all())  # still a ramp
    moved = (rows[:, 0] > 0) | (rows[:, -1] < 240)
    assert 0 < int(moved.sum()) and bool(((rows[:, 0] == 0) | (rows[:, -1] == 240)).all())  # an edge repeated
    assert int((rows - ramp[:, 0, w // 2].int()).abs().max()) <= 0.25 * w * 16 + 16  # at most a quarter of the width
    wide = affine(ramp, AugmentConfig(crop_padding=0, hflip=False, zoom_out=2.0, fill="nearest"), make_generator(2))
    rows = wide[:, 0, w // 2].int()
    assert bool(((rows[:, 0] == 0) & (rows[:, -1] == 240)).any())  # a window wider than the image: both edges


def test_a_monitored_split_is_watched_every_epoch_and_changes_nothing_else(class_folders, tmp_path, capsys):
    import json

    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.cli import main
    from tests.conftest import tiny_overrides

    runs = {}
    for name, extra in (("plain", []), ("watched", ["train.monitor=test"])):
        args = tiny_overrides(class_folders, tmp_path / name, "data.val_fraction=0.25", "train.epochs=3",
                              "train.tensorboard=false", *extra)
        assert main(["train", *args]) == 0
        runs[name] = tmp_path / name / "run"
    out = capsys.readouterr().out
    history = [json.loads(line) for line in (runs["watched"] / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= h["test_top1"] <= 1 and h["test_loss"] > 0 for h in history)
    assert out.count(", monitored)") == 3 and "(test loss" in out
    for name in ("last.pt", "best.pt"):  # the same weights, and best.pt chosen on val alone
        a, b = (load_checkpoint(runs[k] / name) for k in ("plain", "watched"))
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    best = max(history, key=lambda h: h["val_top1"])["epoch"]
    assert load_checkpoint(runs["watched"] / "best.pt")["epoch"] == best
    with pytest.raises(Exception, match="train.monitor=test: the data has no test split"):
        from resnetlab.run.fit import fit
        from tests.conftest import tiny_config

        fit(prepare(tiny_config(class_folders / "train", tmp_path / "none", "train.monitor=test"), run_name="t"))


def test_a_length_given_on_resume_extends_the_last_stage(class_folders, tmp_path, capsys):
    import json

    from resnetlab.cli import main
    from tests.conftest import tiny_overrides

    args = tiny_overrides(class_folders, tmp_path, "train.tensorboard=false",
                          "stages=[{epochs: 1, schedule: constant}, {epochs: 1, schedule: constant}]")
    assert main(["train", *args]) == 0
    run = tmp_path / "run"
    assert main(["train", "--resume", str(run), "train.epochs=3"]) == 0
    assert "note: train.epochs=3: the last stage trains 2 epochs after the earlier stages' 1" in capsys.readouterr().out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((run / "env.json").read_text())["resumes"][-1]["overrides"] == ["train.epochs=3"]


def test_fastai_random_lighting_shifts_brightness_and_scales_contrast_as_fastai_0_7():
    """RandomLighting(b, c): x' = clip((x - mean) * c' + mean + b'), b' in [-b, b] on the [0, 1] scale, c' a factor
    in [1 / (1 + c), 1 + c]; a flat image only moves by b', and its mean moves by b' exactly where nothing clips."""
    from resnetlab.data.augment import lighting

    flat = torch.full((200, 3, 4, 4), 128, dtype=torch.uint8)
    out = lighting(flat, AugmentConfig(fastai_lighting=[0.2, 0.0]), make_generator(3)).float()
    shift = out[:, 0, 0, 0] - 128
    assert bool((out == out[:, :1, :1, :1]).all()) and shift.abs().max() <= 0.2 * 255 + 0.5
    assert shift.min() < -40 and shift.max() > 40  # both ways, up to 51 of 255
    ramp = torch.arange(16, dtype=torch.uint8).mul(4).add(98).view(1, 1, 4, 4).expand(200, 3, 4, 4).contiguous()
    out = lighting(ramp, AugmentConfig(fastai_lighting=[0.0, 0.8]), make_generator(4)).float()
    spread = (out.amax((1, 2, 3)) - out.amin((1, 2, 3))) / 60  # the ramp spans 60 levels
    assert spread.min() >= 1 / 1.8 - 0.05 and spread.max() <= 1.8 + 0.05 and spread.min() < 0.8 and spread.max() > 1.4
    assert torch.equal(lighting(ramp, AugmentConfig(), make_generator(4)), ramp)  # off: untouched


def test_mean_image_normalisation_subtracts_the_training_mean_pixel_by_pixel(class_folders, tmp_path):
    """data.normalize=mean_image (the Keras CIFAR tutorial's): the training split's mean image, no std; the
    predictor and an ONNX export normalise alike; a batch at another size (progressive resizing) gets the
    mean image resized. data.normalize=mean: channel means, no std."""
    import json

    from resnetlab.data import build_data
    from resnetlab.data.augment import normalize
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.run.fit import fit

    s = prepare(tiny_config(class_folders, tmp_path, "data.normalize=mean_image", "train.precision=fp32"),
                run_name="t")
    train = s.data.splits["train"].images
    expected = train.double().mean(0) / 255  # (C, H, W)
    assert s.mean.shape == (3, 16, 16) and torch.allclose(s.mean.double(), expected, atol=1e-6)
    assert s.std.tolist() == [1.0, 1.0, 1.0]
    x = normalize(train[:4], s.mean, s.std, channels_last=False)
    assert torch.allclose(x, train[:4].float() / 255 - s.mean, atol=1e-6)
    assert normalize(train[:4, :, :8, :8], s.mean, s.std, channels_last=False).shape == (4, 3, 8, 8)
    fit(s)
    saved = json.loads((s.run_dir / "data.json").read_text())["mean"]
    assert torch.tensor(saved).shape == (3, 16, 16)
    predictor = Predictor.load(s.run_dir)
    images = s.data.splits["test"].images[:6]
    with torch.no_grad():
        direct = torch.softmax(s.model.eval()(normalize(images, s.mean, s.std, channels_last=False)).float()
                               / predictor.temperature, 1)
    assert torch.allclose(predictor.probabilities(images), direct, atol=1e-5)
    means = build_data(load_config(None, [f"data.dataset={class_folders}", "data.normalize=mean"]), progress=False)
    assert len(means.mean) == 3 and means.std == [1.0, 1.0, 1.0]
    assert load_config("cifar10-preact-resnet56").data.normalize == "mean_image"
    assert load_config("tinyimagenet-preact-resnet").data.normalize == "mean"
