"""airbench's methods as options of any model (issue 37): each against a reference where one exists."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import ScheduleConfig
from resnetlab.errors import UserError
from resnetlab.models import get_model
from resnetlab.models.tuning import bn_biases, dirac_init, set_batchnorm
from resnetlab.models.whitening import PatchWhitening, fit_whitening, whitening_layer
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train.ema import ModelEma
from resnetlab.train.schedules import lr_at
from resnetlab.train.session import build_optimizer
from tests.conftest import tiny_config


def _patches(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * k * k).double()


def test_the_whitening_stem_decorrelates_the_patches_it_was_fitted_on():
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]])  # correlated channels
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 12, 12, generator=g))
    x = x + 0.5 * x.roll(1, dims=-1)  # and neighbouring pixels
    layer = PatchWhitening(3, kernel_size=2)
    fit_whitening(layer, x, eps=0.0)
    out = F.conv2d(x, layer.weight)  # the bias starts at 0
    first = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = first.T @ first / len(first)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])
    # the covariance it whitens is the raw patches' (uncentred, as airbench's), largest direction first
    p = _patches(x, 2)
    eig = torch.linalg.eigvalsh(p.T @ p / len(p)).flip(0)
    first_filter = layer.weight[0].reshape(-1).double()
    assert first_filter.norm().item() == pytest.approx(eig[0].rsqrt().item(), rel=1e-4)


def test_a_split_too_small_to_fit_the_whitening_stem_is_one_line():
    layer = PatchWhitening(3, kernel_size=2)
    with pytest.raises(UserError, match=r"^the whitening stem needs at least 12 2x2 patches of 3-channel images to "
                                        r"fit its 12 directions; the training split gives 4: add images or set "
                                        r"model.stem=conv$"):
        fit_whitening(layer, torch.randn(1, 3, 3, 3))


def test_airnet_costs_what_airbench94_costs_and_any_family_takes_the_stem():
    model = get_model("airnet94", num_classes=10)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert round(counter.get_total_flops() / 2 / 1e9, 2) == 0.71  # GFLOP a training image: forward + backward
    # airbench94's parameters: whitening 24 x 12 + 24, groups 50,944 + 738,304 + 1,180,672 (convs and BN weights
    # and biases), head 256 x 10: 1,972,792, less the whitening weights (24 x 3 x 2 x 2), a buffer here
    assert sum(p.numel() for p in model.parameters()) == 1_972_792 - 288
    resnet = get_model("cifar_resnet18", num_classes=10, stem="whiten")
    assert resnet.body.conv1.in_channels == 24 and resnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="^model.stem=whiten replaces the first layer pretrained weights"):
        get_model("resnet18", num_classes=10, stem="whiten", weights="DEFAULT")
    with pytest.raises(UserError, match="^airnet's whitening stem is part of it"):
        get_model("airnet", num_classes=10, stem="conv")


def test_dirac_init_makes_each_stride_one_conv_pass_its_channels_through():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 3, 3, padding=1), nn.Conv2d(3, 3, 3, stride=2))
    strided = model[2].weight.clone()
    assert dirac_init(model) == 2
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        y = F.conv2d(x, model[0].weight, padding=1)
        torch.testing.assert_close(y[:, :4], x)
        torch.testing.assert_close(F.conv2d(y, model[1].weight, padding=1), y[:, :3])
    assert torch.equal(model[2].weight, strided)  # stride 2: left as built


def test_frozen_batchnorm_weights_stay_at_one_and_biases_step_at_their_own_rate():
    from resnetlab.config import OptimConfig

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 5, 5))
    set_batchnorm(model, momentum=0.4, freeze_weight=True)
    assert model[1].momentum == 0.4 and not model[1].weight.requires_grad
    assert bn_biases(model) == {id(model[1].bias)}
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.01,
                                             decay_norm_and_bias=True, bn_bias_lr_scale=64.0))
    (fast,) = [g for g in opt.param_groups if g["lr_scale"] != 1]
    assert fast["params"] == [model[1].bias] and fast["lr_scale"] == 64 and fast["weight_decay"] == 0.01 / 64
    for g in opt.param_groups:
        g["lr"] = 0.1 * g["lr_scale"]  # as train_step sets them
    bias = model[1].bias.detach().clone()
    model(torch.randn(4, 3, 5, 5)).sum().backward()
    grad = model[1].bias.grad.clone()
    opt.step()
    # SGD: p -= lr * (grad + wd * p): the decay step is lr x 64 x wd / 64, as every other parameter's
    torch.testing.assert_close(model[1].bias.detach(), bias - 6.4 * (grad + 0.01 / 64 * bias))
    assert torch.equal(model[1].weight.detach(), torch.ones(4))


def test_the_whitening_bias_trains_its_epochs_then_stays(class_folders, tmp_path):
    """model.whiten_bias_epochs=1: the stem's bias moves in epoch 1 and not after, while the rest trains on."""
    s = prepare(tiny_config(class_folders, tmp_path, "model.name=airnet94", "model.filters=[8,16,16]",
                            "model.whiten_bias_epochs=1", "data.image_size=16", "train.epochs=3"), run_name="t")
    (group,) = [g for g in s.optimizer.param_groups if g.get("whiten_bias")]
    assert group["params"] == [s.model.whiten.bias]
    seen = []

    def keep(session, info):
        seen.append((session.model.whiten.bias.detach().clone(), session.model.fc.weight.detach().clone()))

    fit(s, callbacks={"on_batch_end": [keep]})
    spe = s.steps_per_epoch
    assert spe >= 2 and len(seen) == 3 * spe
    bias, fc = zip(*seen)
    assert not torch.equal(bias[spe - 2], bias[spe - 1])  # still training at epoch 1's last step
    assert all(torch.equal(b, bias[spe - 1]) for b in bias[spe:])
    assert not torch.equal(fc[spe], fc[-1])
    assert group["lr_scale"] == 0.0


def test_whiten_bias_epochs_without_a_whitening_stem_is_one_line(class_folders, tmp_path):
    with pytest.raises(UserError, match="^model.whiten_bias_epochs is for a whitening stem, which resnet9 has not"):
        prepare(tiny_config(class_folders, tmp_path, "model.whiten_bias_epochs=3"), run_name="t")


def test_the_triangle_schedule_is_airbenchs():
    def airbench_triangle(steps, start, end, peak):  # airbench94.py's piecewise-linear multipliers
        return np.interp(np.arange(steps), [0, int(peak * steps), steps], [start, 1, end]).tolist()

    cfg = ScheduleConfig(name="triangle", pct_start=0.23, div_factor=5, min_lr_ratio=0.07)
    ours = [lr_at(i, base_lr=2.0, total_steps=100, steps_per_epoch=10, cfg=cfg) for i in range(100)]
    assert ours == pytest.approx([2.0 * m for m in airbench_triangle(100, 0.2, 0.07, 0.23)], rel=1e-6)


def test_lookahead_is_airbenchs_update_with_the_ema():
    net = nn.Linear(3, 2)
    ema = ModelEma(net, 0.95)
    slow = {k: v.clone() for k, v in net.state_dict().items()}  # airbench's LookaheadState
    for step in (5, 10, 15):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * step)
        rho = 0.95**5 * (step / 20) ** 3
        for k, v in net.state_dict().items():
            slow[k].lerp_(v, 1 - rho)
        ema.lookahead(net, step / 20, 5)
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, slow[k])
            torch.testing.assert_close(ema.module.state_dict()[k], slow[k])


def test_the_lookaheads_progress_is_0_in_a_pinned_rise_so_a_budgets_new_length_changes_no_step_before_it():
    from resnetlab.config import Config, evolve
    from resnetlab.train.loop import lookahead_progress
    from resnetlab.train.stages import length_free

    cfg = evolve(Config(), {"schedule.name": "triangle", "schedule.warmup_epochs": 2, "train.epochs": 10,
                            "train.ema_decay": 0.95, "train.lookahead": 5})
    s = SimpleNamespace(cfg=cfg, steps_per_epoch=10, state=SimpleNamespace(end_step=0, end_moves=()))
    assert [lookahead_progress(s, t) for t in (4, 19, 20, 99)] == [0.0, 0.0, 21 / 100, 1.0]
    s.state.end_step = 60  # a correction's new length moves the steps after the rise alone
    assert [lookahead_progress(s, t) for t in (19, 29, 59)] == [0.0, 0.5, 1.0]
    s.state.end_step, s.state.end_moves = 50, ((40, 60),)  # a late move: from step 40 the rest ends at step 50
    assert [lookahead_progress(s, t) for t in (39, 40, 49)] == [40 / 60, 41 / 60, 1.0]
    # a schedule free of the length throughout: the lookahead depends on the length from the first step, so no step
    # is length-free (a time budget plans no correction); without lookahead every step is
    constant = evolve(cfg, {"schedule.name": "constant", "schedule.warmup_epochs": 0})
    assert length_free(constant, 10) == 0
    fresh = SimpleNamespace(end_step=0, end_moves=())
    assert lookahead_progress(SimpleNamespace(cfg=constant, steps_per_epoch=10, state=fresh), 4) == 0.05
    assert length_free(evolve(constant, {"train.lookahead": 0}), 10) == math.inf


def test_fixed_tta_shifts_are_airbenchs_reflect_pad_and_crop():
    from resnetlab.evaluate.inference import shift_diagonal

    x = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    padded = F.pad(x.float(), (1, 1, 1, 1), mode="reflect")
    assert torch.equal(shift_diagonal(x, -1).float(), padded[..., 0:6, 0:6])
    assert torch.equal(shift_diagonal(x, 1).float(), padded[..., 2:8, 2:8])


@pytest.mark.parametrize("extra, message", [
    (("train.lookahead=5",), "train.lookahead pulls the weights to their EMA: set train.ema_decay too"),
    (("train.final_tta=4", "train.final_tta_views=fixed"), "train.final_tta_views=fixed has 1, 2 or 6 views, not "
                                                           "train.final_tta=4"),
    (("model.freeze_bn_weight=true", "stages=[{epochs: 1}]"), "stages set which groups train"),
])
def test_airbench_options_that_conflict_are_one_line(class_folders, tmp_path, extra, message):
    with pytest.raises(UserError, match="^" + message):
        tiny_config(class_folders, tmp_path, *extra)


AIRBENCH = ("model.name=airnet94", "model.filters=[8,16,16]", "model.freeze_bn_weight=true", "model.bn_momentum=0.4",
            "optim.momentum=0.85", "optim.decay_norm_and_bias=true", "optim.bn_bias_lr_scale=64",
            "optim.label_smoothing=0.2", "schedule.name=triangle", "schedule.pct_start=0.23", "schedule.div_factor=5",
            "schedule.min_lr_ratio=0.07", "train.ema_decay=0.95", "train.lookahead=2", "augment.hflip_alternate=true",
            "train.final_tta=6", "train.final_tta_views=fixed", "data.val_fraction=0.25", "data.image_size=16",
            "model.whiten_bias_epochs=1")


def test_an_airbench_run_trains_resumes_exactly_and_scores_with_fixed_views(class_folders, tmp_path, monkeypatch):
    extra = (*AIRBENCH, "train.checkpoint_every=2")
    full = prepare(tiny_config(class_folders, tmp_path / "full", *extra), run_name="t")
    fitted = whitening_layer(full.model).weight.clone()
    assert fitted.abs().sum() > 0  # fitted before the first step
    fit(full)
    assert torch.equal(whitening_layer(full.model).weight, fitted)  # and never trained
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in full.model.modules()
               if isinstance(bn, nn.BatchNorm2d))
    s = prepare(tiny_config(class_folders, tmp_path / "cut", *extra), run_name="t")

    def stop(session, info):
        if info["step"] == 4:  # mid-epoch 2: last.pt was written after step 3... and lookahead at step 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(s, callbacks={"on_batch_end": [stop]})
    with monkeypatch.context() as patch:  # resuming takes the fitted stem from the checkpoint, not a new fit
        patch.setattr("resnetlab.train.session.fit_whitening", lambda *a: pytest.fail("refitted on resume"))
        resumed = prepare(None, run_name="", resume=s.run_dir)
    assert torch.equal(whitening_layer(resumed.model).weight, fitted)
    fit(resumed)
    a, b = load_checkpoint(full.run_dir / "last.pt"), load_checkpoint(s.run_dir / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    # an epoch ends on the slow weights: the model is its EMA
    assert all(torch.equal(a["model"][k], a["ema"]["module"][k]) for k in a["model"])
    import json

    tta = json.loads((full.run_dir / "eval_test.json").read_text())["tta"]
    assert tta["views"] == 6 and tta["reduce"] == "fixed views, logits weighted"
