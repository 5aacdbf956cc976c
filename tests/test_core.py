"""The core's promises: which checkpoint is scored, the test split scored once, one-line errors
instead of tracebacks, and every registered model training at the default settings."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from resnetlab.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from resnetlab.cli import main
from resnetlab.config import ScheduleConfig
from resnetlab.data import build_data
from resnetlab.data.readers.manifest import read_split_file
from resnetlab.errors import UserError
from resnetlab.run.fit import check_callbacks, fit
from resnetlab.run.prepare import prepare
from resnetlab.run.progress import diverged
from resnetlab.train.schedules import lr_at
from tests.conftest import REPO, tiny_config, tiny_overrides, write_class_folders


def test_without_val_there_is_no_best_checkpoint_and_the_output_says_so(class_folders, tmp_path, capsys):
    s = prepare(tiny_config(class_folders, tmp_path), run_name="t")
    result = fit(s)
    assert not (s.run_dir / "best.pt").exists() and (s.run_dir / "last.pt").exists()
    assert result["test"]["checkpoint"] == "last.pt"
    out = capsys.readouterr().out
    assert "no validation split, so no best checkpoint is chosen: the model is last.pt" in out
    assert "last.pt: no val split to choose on" in out


def test_best_is_chosen_on_val_and_the_test_split_is_scored_once(class_folders, tmp_path, monkeypatch):
    import resnetlab.evaluate.trained as finish

    scored = []
    real = finish.evaluate_split

    def counting(run_dir, model, name, *args, **kw):
        scored.append((name, model.source))
        return real(run_dir, model, name, *args, **kw)

    monkeypatch.setattr(finish, "evaluate_split", counting)
    s = prepare(tiny_config(class_folders, tmp_path, "data.val_fraction=0.25", "train.epochs=3", "train.report=true"),
                run_name="t")
    fit(s)
    assert scored == [("test", "best.pt")]
    history = [json.loads(line) for line in (s.run_dir / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(history, key=lambda h: h["val_top1"])["epoch"]  # the first of equal scores
    assert load_checkpoint(s.run_dir / "best.pt")["epoch"] == best_epoch
    test = json.loads((s.run_dir / "eval_test.json").read_text())
    assert test["checkpoint"] == "best.pt" and "calibration" in test and (s.run_dir / "report.html").is_file()


def test_callbacks_with_an_unknown_event_are_refused():
    with pytest.raises(UserError, match="unknown callback event 'on_epoch_ends': did you mean 'on_epoch_end'"):
        check_callbacks({"on_epoch_ends": [print]})


def test_split_file_keys_with_commas_and_quotes(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=6, size=16, splits=("train",))
    (root / "train" / "ant" / "000.png").rename(root / "train" / "ant" / 'a,"b".png')
    s = prepare(tiny_config(root, tmp_path / "runs", "data.val_fraction=0.3", "train.epochs=1"), run_name="t")
    keys = [key for key, _, _ in read_split_file(s.run_dir / "split.csv")]
    assert 'train/ant/a,"b".png' in keys
    data = build_data(s.cfg, split_file=s.run_dir / "split.csv", progress=False)
    assert sum(len(v) for v in data.splits.values()) == 18
    with pytest.raises(UserError, match="does not exist: a run folder keeps its images and splits there"):
        read_split_file(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("key,label,split\nx,ant\n")
    with pytest.raises(UserError, match=r"bad.csv row 2: expected key,label,split"):
        read_split_file(bad)


def test_a_fp16_trained_run_predicts_and_exports_on_cpu(class_folders, tmp_path, capsys):
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=1", "data.val_fraction=0.25"), run_name="t")
    fit(s)
    for name in ("last.pt", "best.pt"):  # as if trained with train.precision=fp16 on a GPU
        state = load_checkpoint(s.run_dir / name)
        state["config"]["train"]["precision"] = "fp16"
        save_checkpoint(s.run_dir / name, state)
    assert main(["predict", str(s.run_dir), str(class_folders / "test" / "ant"), "--device", "cpu"]) == 0
    assert main(["export", str(s.run_dir), "--format", "torchscript"]) == 0
    assert "agreement with best.pt" in capsys.readouterr().out


def test_resume_that_leaves_nothing_to_train_says_so(class_folders, tmp_path, capsys):
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=1"), run_name="t")
    fit(s)
    assert main(["train", "--resume", str(s.run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetlab train: error: nothing to train:") and "train.epochs=2 or more" in err
    assert len(err.splitlines()) == 1


def test_resume_mid_epoch_with_fewer_steps_left(class_folders, tmp_path):
    """A mid-epoch checkpoint at step 3, resumed with train.limit_batches=2: the epoch is already
    done; training goes on with the next one (an unbound learning rate crashed here before)."""
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=2", "train.checkpoint_every=3"), run_name="t")

    def stop(session, info):
        if info["step"] == 3:  # after last.pt was written at step 3 of 4 (36 images, batch 8)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(s, callbacks={"on_batch_end": [stop]})
    assert load_checkpoint(s.run_dir / "last.pt")["step_in_epoch"] == 3
    r = prepare(None, run_name="", resume=s.run_dir, overrides=["train.limit_batches=2"])
    fit(r)
    assert load_checkpoint(s.run_dir / "last.pt")["epoch"] == 2


def test_damaged_run_files_are_one_line_errors(class_folders, tmp_path, capsys):
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=1", "data.val_fraction=0.25"), run_name="t")
    fit(s)
    (s.run_dir / "calibration.json").write_text("{not json")
    assert main(["predict", str(s.run_dir), str(class_folders / "test" / "ant")]) == 2
    (s.run_dir / "calibration.json").unlink()
    (s.run_dir / "config.yaml").write_text("model: [unclosed")
    assert main(["evaluate", str(s.run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert "calibration.json is not valid JSON" in err[0] and "config.yaml is not valid YAML" in err[1]


def test_onecycle_with_a_one_step_rise_starts_at_the_peak():
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25)  # 0.25 * 4 steps = 1: torch's OneCycleLR divides by 0
    values = [lr_at(i, base_lr=1.0, total_steps=4, steps_per_epoch=4, cfg=cfg) for i in range(4)]
    final = 1.0 / 25 / 1e4
    assert values[0] == 1.0 and values[1] == pytest.approx(final + (1 - final) * 0.75)
    assert values[2] == pytest.approx(final + (1 - final) * 0.25) and values[3] == pytest.approx(final)


def test_a_checkpoint_keeps_only_this_process_rng_state(monkeypatch):
    """As on a machine with 8 GPUs where this process drives GPU 1: the checkpoint holds GPU 1's
    generator only (every GPU's made a resume on fewer GPUs fail), and an older checkpoint with one
    state per GPU gives back the entry of this process's GPU."""
    mine = torch.full((16,), 1, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": mine)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)] * 8)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    state = rng_state()
    assert set(state) == {"torch", "cuda"} and state["cuda"] is mine
    set_rng_state(state)
    per_gpu = [torch.full((16,), g, dtype=torch.uint8) for g in range(8)]  # written by an earlier version
    set_rng_state({"torch": state["torch"], "cuda": per_gpu})
    set_rng_state({"torch": state["torch"], "cuda": []})  # written with no GPU in use: nothing to restore
    assert restored == [mine, per_gpu[1]]


def test_a_peer_failure_and_a_local_error_read_differently():
    code = textwrap.dedent("""
        import torch.distributed as dist
        from resnetlab.train.distributed import failure_line
        print(failure_line(RuntimeError("x")))
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        print(failure_line(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\\nmore")))
        print(failure_line(dist.DistNetworkError("Connection closed by peer [127.0.0.1]:29500")))
        print(failure_line(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")))
        dist.destroy_process_group()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "None"  # no process group: not a torchrun matter, a bug keeps its traceback
    assert lines[1] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (in rank 0 of 1)"
    assert lines[2].startswith("another process of this run failed or timed out (Connection closed by peer")
    assert lines[3].startswith("another process of this run failed or timed out ([../gloo")


def test_a_dangling_symlink_is_listed_with_the_skipped_files(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=6, size=16, splits=("train",))
    link = root / "train" / "bee" / "gone.png"
    os.symlink(tmp_path / "nowhere.png", link)
    s = prepare(tiny_config(root, tmp_path / "runs", "train.epochs=1"), run_name="t")
    assert (str(link), "a symbolic link whose target does not exist") in s.data.skipped
    fit(s)
    assert "gone.png,a symbolic link whose target does not exist" in (s.run_dir / "skipped_images.csv").read_text()


def test_divergence_is_recognised():
    assert diverged({"train_loss": 11.0}, 10) and not diverged({"train_loss": 2.4}, 10)
    assert diverged({"train_loss": float("nan")}, 10) and not diverged({"train_loss": 9.0}, 1)


def test_early_stopping_counts_epochs_without_a_gain_and_keeps_the_best(class_folders, tmp_path, capsys):
    from resnetlab.train.loop import epochs_without_gain

    history = [{"val_top1": v} for v in (0.5, 0.6, 0.605, 0.59, 0.61)]
    assert epochs_without_gain(history, 0.0) == 0 and epochs_without_gain(history, 0.01) == 3
    # a learning rate of 1e-9 learns nothing (only BatchNorm statistics settle): val top-1 soon stops
    # gaining, and the run stops 2 epochs after its best one
    s = prepare(tiny_config(class_folders, tmp_path, "data.val_fraction=0.25", "train.epochs=8", "optim.lr=1e-9",
                            "train.early_stop_patience=2"), run_name="t")
    fit(s)
    n = len(s.state.history)
    assert n < 8 and epochs_without_gain(s.state.history, 0.0) == 2
    tops = [h["val_top1"] for h in s.state.history]
    assert load_checkpoint(s.run_dir / "best.pt")["epoch"] == tops.index(max(tops)) + 1 == n - 2
    out = capsys.readouterr().out
    assert f"early stop after epoch {n}: val top-1 has not gained more than 0 points for 2 epochs" in out
    with pytest.raises(UserError, match="needs a validation split"):
        fit(prepare(tiny_config(class_folders, tmp_path, "train.early_stop_patience=2", "train.name=b"), run_name="t"))


def test_ema_warms_up_resumes_exactly_and_is_what_predict_uses(class_folders, tmp_path, capsys):
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.train.ema import ModelEma

    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEma(model, 0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first decay min(0.999, 1/10): 0.1 * 0 + 0.9 * 1
    ema.update(model)  # then min(0.999, 2/11): 2/11 * 0.9 + 9/11 * 1
    assert ema.module.weight[0, 0].item() == pytest.approx(2 / 11 * 0.9 + 9 / 11)

    extra = ("data.val_fraction=0.25", "train.epochs=2", "train.ema_decay=0.9", "train.checkpoint_every=2")
    full = prepare(tiny_config(class_folders, tmp_path / "full", *extra, "train.eval_raw=true"), run_name="t")
    fit(full)
    assert {"val_top1_raw", "val_top1"} <= set(full.state.history[0])
    s = prepare(tiny_config(class_folders, tmp_path / "cut", *extra), run_name="t")

    def stop(session, info):
        if info["step"] == 5:  # the last step of epoch 2; last.pt was written after step 4, mid-epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(s, callbacks={"on_batch_end": [stop]})
    fit(prepare(None, run_name="", resume=s.run_dir))
    a, b = load_checkpoint(full.run_dir / "last.pt"), load_checkpoint(s.run_dir / "last.pt")
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6  # 3 steps an epoch (27 train images, batch 8)
    # without train.eval_raw, val is scored once an epoch: the EMA weights only
    assert "val_top1_raw" not in b["history"][0] and "val_top1" in b["history"][0]
    best = load_checkpoint(full.run_dir / "best.pt")
    loaded = Predictor.load(full.run_dir).model.state_dict()
    assert all(torch.equal(loaded[k], best["ema"]["module"][k]) for k in loaded)
    assert json.loads((full.run_dir / "eval_test.json").read_text())["checkpoint"] == "best.pt (EMA weights)"
    with pytest.raises(UserError, match=r"train.ema_decay must be in \(0, 1\)"):
        tiny_config(class_folders, tmp_path, "train.ema_decay=1.5")


def test_compile_true_without_a_compiler_is_one_line_and_auto_goes_on(class_folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "no-compilers-here"))
    monkeypatch.delenv("CXX", raising=False)
    args = tiny_overrides(class_folders, tmp_path / "a", "train.compile=true")
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["resnetlab train: error: train.compile=true: torch.compile needs a C++ compiler (g++) on the CPU "
                   "and none is installed; use train.compile=false, or auto to go on without it"]
    assert not (tmp_path / "a").exists()  # refused before the run folder was made
    s = prepare(tiny_config(class_folders, tmp_path / "b", "train.compile=auto"), run_name="t")
    assert s.compiled is None and s.net is s.model
    assert "train.compile=auto: torch.compile needs a C++ compiler (g++) on the CPU and none is installed; " \
           "training uncompiled" in s.notes
