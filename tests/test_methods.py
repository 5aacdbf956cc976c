"""Training methods of issue 13: augmentation policies, random erasing, mixup/CutMix,
progressive resizing and the time budget."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml
from torchvision.transforms import v2

from resnetlab.budget.plan import MARGIN, choose
from resnetlab.budget.probe import MIN_STEPS
from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import AugmentConfig, TrainConfig, load_config
from resnetlab.data import build_data, policy
from resnetlab.data.augment import BatchAugment, erase, make_generator, mix
from resnetlab.errors import UserError
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train.sizes import size_for_epoch, training_size
from tests.conftest import tiny_config

# magnitudes that reach both ends of each op's table, both signs and the torchvision edge cases
# (a shear of -0.6 lands many sampling points exactly on pixel edges)
CASES = {"ShearX": [0.37, -0.6, 0.99], "ShearY": [0.37, -0.6, -0.99], "TranslateX": [12.7, -20.0, 32.0],
         "TranslateY": [-3.2, 31.0], "Rotate": [12.0, -45.0, 135.0, 90.0], "Brightness": [0.37, -0.6, 0.99],
         "Color": [0.37, -0.6], "Contrast": [0.5, -0.99], "Sharpness": [0.9, -0.6], "Posterize": [2.0, 4.0, 7.0],
         "Solarize": [0.0, 0.5, 0.97], "AutoContrast": [0.0], "Equalize": [0.0]}


@pytest.mark.parametrize("channels", [3, 1])
def test_every_policy_op_equals_torchvision_image_by_image(channels):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, channels, 20, 17), dtype=torch.uint8)
    x[0] = x[0] // 3 + 40  # low contrast: autocontrast and equalize have work to do
    x[1] = 7  # flat: the no-op branches
    ref_op = v2.TrivialAugmentWide()._apply_image_or_video_transform
    assert set(CASES) == set(policy.OPS) and set(policy.SPACES["randaugment"]) == set(policy.OPS) | {"Identity"}
    for name, magnitudes in CASES.items():
        for m in magnitudes:
            want = torch.stack([ref_op(im, name, m, interpolation=v2.InterpolationMode.NEAREST, fill={})
                                for im in x])
            got = policy.OPS[name](x, torch.full((5,), m, dtype=torch.float64))
            assert torch.equal(got, want), (name, m, (got != want).float().mean().item())


def test_batched_policy_draws_like_torchvision_per_image():
    """Same image, 3,000 views through the batched policy and through torchvision's per-image
    transform (the streamed path): the share left as it was and the mean brightness agree."""
    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    n = 3000
    batched = policy.apply_policy(image.expand(n, -1, -1, -1), "trivialaugment", 2, 9, make_generator(3))
    torch.manual_seed(3)
    per_image = torch.stack([v2.TrivialAugmentWide()(image[0]) for _ in range(n)])
    for views in (batched, per_image):
        assert (views == image).flatten(1).all(1).float().mean().item() == pytest.approx(0.10, abs=0.03)
    assert batched.float().mean().item() == pytest.approx(per_image.float().mean().item(), rel=0.03)
    again = policy.apply_policy(image.expand(n, -1, -1, -1), "trivialaugment", 2, 9, make_generator(3))
    assert torch.equal(batched, again)  # a pure function of the generator: resume sees the same views
    rand = policy.apply_policy(image.expand(200, -1, -1, -1), "randaugment", 2, 9, make_generator(4))
    assert not torch.equal(rand, batched[:200])


def test_erasing_boxes_follow_torchvision():
    x = torch.full((4000, 3, 32, 32), 200, dtype=torch.uint8)
    fill = torch.tensor([1, 2, 3], dtype=torch.uint8)
    out = erase(x, 0.5, fill, make_generator(0))
    erased = (out[:, 0] == 1)
    hit = erased.flatten(1).any(1)
    assert hit.float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(out[~hit], x[~hit])
    assert (out[hit][:, 1][erased[hit]] == 2).all()  # every channel gets its fill
    share = erased[hit].flatten(1).float().mean(1)
    assert share.min().item() >= 0.015 and share.max().item() <= 0.36  # 0.02-0.33, sides rounded to px
    torch.manual_seed(0)
    ref = v2.RandomErasing(p=1.0)
    ref_share = torch.stack([(ref(torch.ones(3, 32, 32)) == 0)[0].float().mean() for _ in range(2000)])
    assert share.mean().item() == pytest.approx(ref_share.mean().item(), rel=0.06)


def test_mixup_and_cutmix_mix_images_and_targets_by_the_same_share():
    x = torch.stack([torch.full((1, 8, 8), v, dtype=torch.uint8) for v in (0, 100, 200, 250)])
    onehot = torch.eye(4)
    cfg = AugmentConfig(mixup_alpha=0.4)
    for seed in range(5):
        images, soft = mix(x, onehot, cfg, make_generator(seed))
        lam = soft[0, 0].item()  # image 0 keeps lam of itself, takes 1 - lam of image 3 (roll by one)
        assert soft.sum(1).tolist() == pytest.approx([1.0] * 4) and soft[0, 3].item() == pytest.approx(1 - lam)
        assert images[0].float().mean().item() == pytest.approx(round(250 * (1 - lam)), abs=0.5)
    cfg = AugmentConfig(cutmix_alpha=1.0)
    for seed in range(5):
        images, soft = mix(x, onehot, cfg, make_generator(seed))
        taken = (images[1] == 0).float().mean().item()  # image 1's pixels that came from image 0
        assert soft[1, 0].item() == pytest.approx(taken) and soft[1, 1].item() == pytest.approx(1 - taken)
    images, soft = mix(x, onehot, AugmentConfig(mixup_alpha=0.4, mix_prob=0.0), make_generator(0))
    assert torch.equal(images, x) and torch.equal(soft, onehot)
    labels = BatchAugment(AugmentConfig(crop_padding=0, hflip=False, cutmix_alpha=1.0), num_classes=5)(
        x, torch.tensor([0, 1, 2, 4]), make_generator(1))[1]
    assert labels.shape == (4, 5) and labels[:, 3].sum() == 0


def test_training_with_every_method_on(class_folders, tmp_path):
    extra = ("augment.policy=trivialaugment", "augment.erasing=0.5", "augment.mixup_alpha=0.2",
             "augment.cutmix_alpha=1.0", "train.size_start=12", "train.epochs=3", "train.size_ramp=[0,0.5]")
    s = prepare(tiny_config(class_folders, tmp_path, *extra), run_name="t")
    fit(s)
    assert [h["size"] for h in s.state.history] == [12, 16, 16]  # 16 px images, ramp over the first half
    assert all(0 <= h["train_top1"] <= 1 and h["train_loss"] < 5 for h in s.state.history)
    streamed = prepare(tiny_config(class_folders, tmp_path, *extra, "data.cache=stream", "data.num_workers=0",
                                   "data.image_size=16", "train.name=stream"), run_name="t")
    fit(streamed)
    assert [h["size"] for h in streamed.state.history] == [12, 16, 16]


def test_progressive_sizes_are_exact():
    sizes = [size_for_epoch(e, epochs=10, start=16, final=32, ramp=[0.0, 0.75]) for e in range(10)]
    # epoch e sits at e/9 of the run; 16 + t * 16 rounded down to 8 px, the final size from 3/4 on
    assert sizes == [16, 16, 16, 16, 24, 24, 24, 32, 32, 32]
    # a final size off the 8 px grid is still reached (an earlier version stopped at 24 of 28 px)
    sizes = [size_for_epoch(e, epochs=6, start=20, final=28, ramp=[0.0, 0.6]) for e in range(6)]
    assert sizes == [20, 20, 24, 28, 28, 28]
    train = TrainConfig(size_start=16, size_end=24, size_ramp=[0.0, 0.5])
    # trained up to 24 px, evaluated at 32: 0 means "as cached" and never appears here
    assert [training_size(e, epochs=5, cfg=train, image_size=32) for e in range(5)] == [16, 16, 24, 24, 24]
    assert [training_size(e, epochs=3, cfg=TrainConfig(), image_size=32) for e in range(3)] == [0, 0, 0]


def test_budget_plan_fills_the_budget_with_whole_epochs_and_refuses_one_too_small():
    common = dict(step_s={32: 0.1}, epoch_overhead_s=2.0, finish_s=5.0, full_steps=100, sizes=lambda e: [0] * e)
    plan = choose(300.0, 10.0, **common)
    # MARGIN 0.99: 0.99 * 290 - 5 = 282.1 s; 23 full epochs take 276 s, 24 would need 288: so 24 epochs of
    # floor((282.1 - 48) / 2.4) = 97 steps (2,328 > 2,300 steps)
    assert MARGIN == 0.99 and (plan.epochs, plan.steps) == (24, 97)
    assert plan.predicted_s == pytest.approx(10 + 24 * 97 * 0.1 + 24 * 2 + 5)
    assert plan.predicted_s <= 300
    ramp = choose(300.0, 10.0, **{**common, "step_s": {16: 0.04, 32: 0.1},
                                  "sizes": lambda e: [16 if i < e // 2 else 0 for i in range(e)]})
    assert ramp.epochs * ramp.steps > plan.epochs * plan.steps  # small early epochs buy more steps
    with pytest.raises(UserError, match=r"time budget 20s is too small for one epoch here: 100 steps take ~10 s"):
        choose(20.0, 10.0, **common)


WIDE, NARROW = "[64, 128, 256, 512]", "[8, 8, 16, 16]"  # ~200x apart in FLOPs: no timing noise swaps them


def test_time_budget_run_equals_the_fixed_run_of_the_rung_it_chose(class_folders, tmp_path, capsys):
    # no rung gets 100,000 epochs in 10 s: the rule falls back to the rung that gets the most, the narrow one
    s = prepare(tiny_config(class_folders, tmp_path / "budget", "data.val_fraction=0.25", "train.time_budget=10s",
                            f"train.ladder=[{{model.filters: {WIDE}}}, {{model.filters: {NARROW}}}]",
                            "train.ladder_min_epochs=100000"), run_name="t")
    fit(s)
    out = capsys.readouterr().out
    plan = json.loads((s.run_dir / "budget.json").read_text())
    saved = yaml.safe_load((s.run_dir / "config.yaml").read_text())
    wide, narrow = plan["rungs"]
    assert plan["rung"] == 1 and wide["epochs"] < plan["epochs"] == narrow["epochs"]  # both scored on the same clock
    # each rung timed to the full rule
    assert wide["timed_steps"]["16"] >= MIN_STEPS and narrow["timed_steps"]["16"] >= MIN_STEPS
    assert saved["model"]["filters"] == [8, 8, 16, 16]
    assert saved["train"]["epochs"] == plan["epochs"] == len(s.state.history) > 1
    assert "ladder on CPU" in out and " > 1: model.filters=[8, 8, 16, 16]: " in out and "ms a step at" in out
    assert "time budget 10s:" in out and "the run took" in out and 0 < plan["actual_s"]
    # each planned part beside what it took: an overrun names its cause
    assert 0 < plan["actual_steps_s"] < plan["actual_s"] and plan["actual_finish_s"] > 0 and "planned_steps_s" in plan
    fixed = prepare(tiny_config(class_folders, tmp_path / "fixed", "data.val_fraction=0.25", f"model.filters={NARROW}",
                                f"train.epochs={plan['epochs']}",
                                f"train.steps_per_epoch={saved['train']['steps_per_epoch']}"),
                    run_name="t")
    fit(fixed)
    a, b = load_checkpoint(s.run_dir / "last.pt")["model"], load_checkpoint(fixed.run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # timing the rungs left no trace
    with pytest.raises(UserError, match="too small for one epoch"):
        prepare(tiny_config(class_folders, tmp_path / "tiny", "train.time_budget=0.5s"), run_name="t")
    assert not (tmp_path / "tiny").exists()  # refused while planning, before any run folder is made


def test_a_time_budget_counts_from_the_command_start_as_the_user_times_it(class_folders, tmp_path, monkeypatch):
    """`resnetlab train` hands prepare() the moment the command began: start-up and loading the config
    are part of the budget; a library caller's budget starts in prepare()."""
    import resnetlab.cli.train as cli_train
    import resnetlab.run.prepare as run_prepare
    from resnetlab.cli import main

    seen, load = {}, cli_train.load_config

    def loading(*args, **kwargs):
        seen["config_at"] = time.monotonic()
        return load(*args, **kwargs)

    def preparing(cfg, **kwargs):
        seen.update(kwargs)
        raise UserError("prepared")

    monkeypatch.setattr(cli_train, "load_config", loading)
    monkeypatch.setattr(run_prepare, "prepare", preparing)
    assert main(["train", f"data.dataset={class_folders}", f"train.out_dir={tmp_path}"]) == 2
    assert seen["started"] < seen["config_at"]
    monkeypatch.undo()
    s = prepare(tiny_config(class_folders, tmp_path, "train.time_budget=1m"), run_name="t",
                started=time.monotonic() - 40)
    assert 40 <= s.plan.used_s < 60 and 40 <= s.clock.elapsed() < 60


def test_a_smoke_runs_budget_plans_to_validate_and_score_only_its_batches(class_folders, tmp_path, monkeypatch):
    from resnetlab.budget import probe
    from resnetlab.train.distributed import Dist
    from resnetlab.train.session import build_session

    monkeypatch.setattr(probe, "_time_eval", lambda s: 1.0)  # 1 s an image: the plan counts images
    costs = {}
    for limit in (0, 1):  # 9 val and 12 test images; with train.limit_batches=1, one batch of 2 of each
        cfg = tiny_config(class_folders, tmp_path / str(limit), "data.val_fraction=0.25", "train.eval_batch_size=2",
                          f"train.limit_batches={limit}", "train.report=false")
        s = build_session(cfg, build_data(cfg), device=torch.device("cpu"), precision="fp32", dist=Dist(),
                          compile_wanted=False)
        costs[limit] = probe._fixed_costs(s)
        if limit:  # it validates on the images its finish scores: spread through val, not val's first batch
            validated = torch.cat([y for _, y in s.loaders["val"].epoch(0)])
            assert torch.equal(validated, s.data.splits["val"].spread(2).labels) and len(set(validated.tolist())) == 2
    assert costs[0]["finish_s"] == 12 + 9 + 0.5 and costs[1]["finish_s"] == 2 + 2 + 0.5
    assert costs[0]["epoch_overhead_s"] - costs[1]["epoch_overhead_s"] == pytest.approx(9 - 2, abs=0.5)


def test_ladder_takes_the_first_rung_that_gets_its_epochs_and_times_no_further(class_folders, tmp_path):
    s = prepare(tiny_config(class_folders, tmp_path, "train.time_budget=1m", "train.ladder_min_epochs=2",
                            f"train.ladder=[{{model.filters: {NARROW}}}, {{model.filters: {WIDE}}}]"), run_name="t")
    assert s.plan.rung == 0 and s.cfg.model.filters == [8, 8, 16, 16] and s.plan.epochs >= 2
    assert s.plan.rungs[0]["timed_steps"][16] >= MIN_STEPS
    # no rung gets 100,000 epochs: every rung is timed, and the narrow one has the most
    most = prepare(tiny_config(class_folders, tmp_path / "most", "train.time_budget=1m",
                               "train.ladder_min_epochs=100000",
                               f"train.ladder=[{{model.filters: {NARROW}}}, {{model.filters: {WIDE}}}]"), run_name="t")
    assert most.plan.rung == 0 and most.plan.rungs[1]["step_s"] is not None
    assert s.plan.rungs[1]["step_s"] is None and s.plan.table()[-1].endswith("not timed (an earlier rung fits)")
    assert s.plan.table()[0].startswith("ladder on CPU") and "the first rung that gets 2 epochs" in s.plan.table()[0]
    with pytest.raises(UserError, match=r"too small for one epoch of any rung of train.ladder: the fastest, rung 1 "
                                        r"\(model.filters=\[8, 8, 16, 16\]\), takes ~\d+ s an epoch here"):
        prepare(tiny_config(class_folders, tmp_path / "tiny", "train.time_budget=0.5s",
                            f"train.ladder=[{{model.filters: {WIDE}}}, {{model.filters: {NARROW}}}]"), run_name="t")
    assert not (tmp_path / "tiny").exists()


def test_ladder_rule_scores_every_timed_rung_alike_and_steps_past_one_out_of_memory():
    from types import SimpleNamespace

    from resnetlab.budget.plan import _decide
    from resnetlab.config import Config

    data = SimpleNamespace(image_size=28)

    def rung(step_s):  # 100 steps an epoch, 1 s to validate and save, 5 s for the test and report
        return Config(), data, {"step_s": {28: step_s}, "epoch_overhead_s": 1.0, "finish_s": 5.0, "full_steps": 100,
                                "infer_s": 1e-3, "finish_images": 4000, "timed_steps": {28: 30}, "others_cpu": 0.0}

    ladder = [{"model.filters": [32]}, {"model.filters": [16]}, {"model.filters": [8]}]
    # 0.99 * (300 - 10) - 5 = 282.1 s: 0.5 s steps fit 6 epochs of 92 steps, 0.2 s steps 14 of 95
    chosen, plan = _decide(300.0, 10.0, ladder, 10, [rung(0.5), rung(0.2)])
    assert (chosen, plan.epochs, plan.steps) == (1, 14, 95) and [r.get("epochs") for r in plan.rungs] == [6, 14, None]
    assert plan.rungs[2]["note"] == "not timed (an earlier rung fits)"
    assert plan.table()[1].endswith("6 epochs") and plan.table()[2].endswith("14 epochs")
    assert _decide(300.0, 10.0, ladder, 6, [rung(0.5), rung(0.2)])[0] == 0  # the first that gets 6 epochs
    chosen, plan = _decide(300.0, 10.0, ladder, 20, [rung(0.5), rung(0.2), rung(0.2)])
    assert chosen == 1  # none gets 20 epochs: the most, and on a tie the earlier (wider) rung
    chosen, plan = _decide(300.0, 10.0, ladder, 10, [(Config(), data, None), rung(0.2)])
    assert chosen == 1 and plan.rungs[0]["note"] == "out of memory"
    message = _decide(300.0, 10.0, ladder, 10, [rung(5.0), rung(3.0), (Config(), data, None)])
    assert message.startswith("time budget 5m00s is too small for one epoch of any rung of train.ladder: the "
                              "fastest, rung 1 (model.filters=[16]), takes ~301 s an epoch here")


def test_inference_timing_ignores_a_first_batch_that_stalls(monkeypatch):
    from types import SimpleNamespace

    from resnetlab.budget import probe
    from resnetlab.config import Config

    def timed(*seconds):  # each infer call takes the next of these for a batch of 1,000 images
        calls = iter(seconds)
        monkeypatch.setattr(probe, "infer", lambda *a, **k: SimpleNamespace(seconds=next(calls), labels=[0] * 1000))
        loader = SimpleNamespace(epoch=lambda epoch: iter([("images", "labels")]))
        s = SimpleNamespace(loaders={"val": loader}, model=None, mean=None, std=None, device=None, precision=None,
                            cfg=Config(), data=SimpleNamespace(classes=["a", "b"]))
        return probe._time_eval(s), len(list(calls))  # s an image, readings left untaken

    # a new model's first batches stalled (AVX2 emulation, quarter width): the third, agreeing reading counts
    assert timed(2.19, 1.14, 0.21, 9.0) == (pytest.approx(0.21e-3), 1)
    assert timed(0.26, 0.24, 9.0) == (pytest.approx(0.24e-3), 1)  # two that agree: no third batch
    assert timed(0.24, 1.4, 0.25, 9.0) == (pytest.approx(0.24e-3), 1)


def test_bad_ladders_are_one_line_each():
    budget = "train.time_budget=5m"
    with pytest.raises(UserError, match=r"train.ladder\[1\]: unknown config key 'model.filter'; did you mean "
                                        r"'model.filters'\?"):
        load_config(None, [budget, "train.ladder=[{augment.hflip: false}, {model.filter: [8, 8, 16, 16]}]"])
    with pytest.raises(UserError, match=r"train.ladder\[0\] sets stages: a time budget plans one schedule"):
        load_config(None, [budget, "train.ladder=[{stages: [{epochs: 2}]}]"])
    with pytest.raises(UserError, match=r"train.ladder\[0\] sets train.epochs, which a rung may not: the plan sets it"):
        load_config(None, [budget, "train.ladder=[{epochs: 3}]"])
    with pytest.raises(UserError, match=r"^train.ladder\[1\]: train.batch_size must be at least 1$"):
        load_config(None, [budget, "train.ladder=[{}, {batch_size: 0}]"])
    with pytest.raises(UserError, match=r"model.filters='wide' \(train.ladder\[0\]\) should be an integer"):
        load_config(None, [budget, "train.ladder=[{model: {filters: wide}}]"])
    # checked without a budget too
    with pytest.raises(UserError, match=r"train.ladder\[0\]: unknown config key 'model.filter'"):
        load_config(None, ["train.ladder=[{model.filter: [8, 8, 16, 16]}]"])
    assert load_config("fashion-mnist-fast", ["train.time_budget="]).model.filters == [48, 192, 192]
    with pytest.raises(UserError,
                       match=r"train.ladder=3 \(command line\) should be a mapping of config keys to values"):
        load_config(None, [budget, "train.ladder=[3]"])


def test_bad_method_settings_are_one_line_each(class_folders, tmp_path):
    with pytest.raises(UserError,
                       match="is not one of: none, trivialaugment, randaugment; did you mean 'trivialaugment'"):
        load_config(None, ["augment.policy=trivialagument"])
    with pytest.raises(UserError, match="set train.batch_size to 2 or more"):
        load_config(None, ["augment.mixup_alpha=0.2", "train.batch_size=1"])
    with pytest.raises(UserError, match=r"train.time_budget='10 minutes' should be a duration like 90s, 10m"):
        load_config(None, ["train.time_budget=10 minutes"])
    with pytest.raises(UserError, match="with stages, give each stage its epochs"):
        load_config("gtsrb-resnet34-finetune", ["train.time_budget=10m"])
    with pytest.raises(UserError, match="train.size_end=2 is below the 8 px resnet9 needs; set it to 8 or more"):
        prepare(tiny_config(class_folders, tmp_path, "train.size_end=2"), run_name="t")
    with pytest.raises(UserError, match="train.size_start=2 is below the"):
        prepare(tiny_config(class_folders, tmp_path, "train.size_start=2"), run_name="t")


def test_precomputed_head_stage_trains_the_head_as_the_plain_stage_does(class_folders, tmp_path, capsys):
    """With the backbone frozen (BatchNorm too) and no augmentation, training the head on
    precomputed features is the plain head stage, step for step; the backbone is untouched."""
    common = ("train.precision=fp32", "augment.crop_padding=0", "augment.hflip=false")

    def head_stage(name: str, precompute: str) -> dict:
        stages = f"stages=[{{epochs: 2, train: head, train_bn: false{precompute}}}]"
        s = prepare(tiny_config(class_folders, tmp_path / name, *common, stages), run_name="t")
        start = {k: v.clone() for k, v in s.model.state_dict().items()}
        fit(s)
        return start, s.model.state_dict()

    start, plain = head_stage("plain", "")
    _, fast = head_stage("fast", ", precompute: true")
    assert "precomputed the head's inputs for 36 images x 1 view(s) (16 features each)" in capsys.readouterr().out
    for k in plain:
        if k.startswith("fc."):
            assert not torch.equal(plain[k], start[k]) and torch.allclose(fast[k], plain[k], atol=1e-5), k
        else:
            assert torch.equal(fast[k], start[k]), k  # weights and BatchNorm statistics
    views = prepare(tiny_config(class_folders, tmp_path / "views",
                                "stages=[{epochs: 2, train: head, precompute: true, precompute_views: 2}, "
                                "{epochs: 1, train: all}]"), run_name="t")
    fit(views)
    assert len(views.state.history) == 3  # the last stage trained the whole model
    assert "x 3 view(s)" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"stages\[0\].precompute needs train: head"):
        load_config(None, ["stages=[{epochs: 1, train: all, precompute: true}]"])


def test_precomputed_views_alternate_flips_as_the_plain_epochs_do(class_folders, tmp_path):
    """With augment.hflip_alternate and flips the only augmentation, each image is mirrored in
    exactly one of two consecutive precomputed views (a coin flip per view mirrors it in both or
    neither half the time)."""

    from resnetlab.train.precompute import HeadFeatures
    s = prepare(tiny_config(class_folders, tmp_path, "train.precision=fp32", "augment.crop_padding=0",
                            "augment.hflip_alternate=true",
                            "stages=[{epochs: 2, train: head, precompute: true, precompute_views: 2}]"), run_name="t")
    plain, one, two = HeadFeatures(s, 0, lambda line: None).features
    unflipped = [(view - plain).abs().amax(1) < 1e-5 for view in (one, two)]
    assert torch.equal(unflipped[0], ~unflipped[1]), unflipped
    assert 0 < int(unflipped[0].sum()) < len(plain)


def test_ema_averages_batchnorm_statistics_and_copies_counters():
    from resnetlab.train.ema import ModelEma

    model = torch.nn.BatchNorm1d(2)
    ema = ModelEma(model, 0.5)
    model.running_mean.fill_(1.0)
    model.num_batches_tracked.fill_(7)
    ema.update(model)  # decay min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    assert ema.module.running_mean.tolist() == pytest.approx([0.9, 0.9])
    assert ema.module.running_var.tolist() == pytest.approx([1.0, 1.0]) and ema.module.num_batches_tracked == 7
