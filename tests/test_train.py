"""End to end on tiny data: run folder, determinism, resume after SIGKILL, non-finite loss."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from resnetlab.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.errors import UserError
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from tests.conftest import REPO, in_process, tiny_config, tiny_overrides, write_class_folders

RUN_FILES = {"config.yaml", "env.json", "classes.json", "data.json", "metrics.jsonl", "curves.png", "last.pt",
             "best.pt"}


def weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / name)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_folder_contents(class_folders, tmp_path):
    session = prepare(tiny_config(class_folders, tmp_path / "runs", "data.val_fraction=0.25"), run_name="t")
    result = fit(session)
    run = session.run_dir
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert {"split.csv", "eval_test.json", "confusion_test.csv"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in lines] == [1, 2]
    assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_s",
            "seconds"} <= set(lines[0])
    assert all(row["val_images_per_s"] > 0 for row in lines)  # what a time budget's late moves read
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert json.loads((run / "classes.json").read_text()) == ["ant", "bee", "cat"]
    assert result["test"]["n"] == 12 and 0 <= result["test"]["top1"] <= 1
    ckpt = load_checkpoint(run / "last.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 2 and ckpt["step_in_epoch"] == 0 and ckpt["model_name"] == "resnet9"


def test_same_seed_same_weights(class_folders, tmp_path):
    a = prepare(tiny_config(class_folders, tmp_path / "a"), run_name="t")
    b = prepare(tiny_config(class_folders, tmp_path / "b"), run_name="t")
    fit(a), fit(b)
    assert_same_weights(weights(a.run_dir), weights(b.run_dir))
    c = prepare(tiny_config(class_folders, tmp_path / "c", "seed=1"), run_name="t")
    fit(c)
    assert not torch.equal(weights(a.run_dir)["fc.weight"], weights(c.run_dir)["fc.weight"])


KILLER = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from resnetlab.config import load_config
    from resnetlab.run.prepare import prepare
    from resnetlab.run.fit import fit
    from resnetlab.run.saving import WRITER_THREAD

    kill_at = int(sys.argv[1])
    def on_batch_end(session, info):
        if info["step"] == kill_at:
            while any(t.name == WRITER_THREAD for t in threading.enumerate()):  # epoch 1's last.pt, written
                time.sleep(0.01)  # in the background, on disk first (conftest's wait_for_writes)
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like the OOM killer

    cfg = load_config(None, sys.argv[2:])
    fit(prepare(cfg, run_name="k"), callbacks={"on_batch_end": [on_batch_end]})
    """
)


def run_killed(kill_at, overrides, cwd):
    proc = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), *overrides], cwd=cwd, capture_output=True,
                          text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 3-epoch run that every interrupted-and-resumed run must equal bit for bit
    (checkpoint_every only adds saves, so it is the same run for every setting)."""
    tmp = tmp_path_factory.mktemp("reference")
    data = write_class_folders(tmp / "folders")
    full = prepare(tiny_config(data, tmp / "full", "train.epochs=3"), run_name="f")
    fit(full)
    return data, weights(full.run_dir)


@pytest.mark.parametrize("checkpoint_every", [0, 2])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(reference, tmp_path, capsys, checkpoint_every):
    # 36 images / batch 8 = 4 steps an epoch; killed at global step 6, in the middle of epoch 2
    class_folders, full_weights = reference
    extra = ("train.epochs=3", f"train.checkpoint_every={checkpoint_every}")
    run_killed(6, tiny_overrides(class_folders, tmp_path / "killed", *extra), cwd=REPO)
    run = tmp_path / "killed" / "run"
    state = load_checkpoint(run / "last.pt")
    if checkpoint_every:
        assert (state["epoch"], state["step_in_epoch"]) == (1, 2)  # saved after global step 5 (6 steps done)
    else:
        assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    proc = in_process(capsys, "train", "--resume", run)
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(full_weights, weights(run))
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_resume_override_is_recorded(class_folders, tmp_path, capsys):
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=1"), run_name="t")
    fit(s)
    proc = in_process(capsys, "train", "--resume", s.run_dir, "train.epochs=2", "optim.lr=0.01")
    assert proc.returncode == 0, proc.stderr
    env = json.loads((s.run_dir / "env.json").read_text())
    assert env["resumes"][0]["overrides"] == ["train.epochs=2", "optim.lr=0.01"]
    assert "lr: 0.01" in (s.run_dir / "config.yaml").read_text()
    assert load_checkpoint(s.run_dir / "last.pt")["epoch"] == 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(class_folders, tmp_path):
    def poison(session, info):
        if info["epoch"] == 1 and info["step_in_epoch"] == 1:
            with torch.no_grad():
                session.model.fc.weight.fill_(float("nan"))

    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=3"), run_name="t")
    with pytest.raises(UserError, match=r"loss became NaN or infinite in epoch 2 .* last good checkpoint is .*last.pt"):
        fit(s, callbacks={"on_batch_end": [poison]})
    state = load_checkpoint(s.run_dir / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from resnetlab.checkpoint import save_checkpoint
    path = Path(sys.argv[1])
    i = 0
    while True:
        i += 1
        save_checkpoint(path, {"model": {"w": torch.full((4_000_000,), float(i))}, "i": i})
        print(i, flush=True)
    """
)


def test_sigkill_during_checkpoint_write_leaves_previous_loadable(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "i": 0})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it finish a few writes, then kill it in the middle of one
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)
    assert state["i"] >= 3 and torch.equal(state["model"]["w"], torch.full((4_000_000,), float(state["i"])))


TERMINATED = textwrap.dedent(
    """
    import os, signal, sys
    from resnetlab.config import load_config
    from resnetlab.run.prepare import prepare
    from resnetlab.run.fit import fit
    from resnetlab.train.loop import Preempted

    stop_at = int(sys.argv[1])
    def on_batch_end(session, info):
        if info["step"] == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler preempting the job

    try:
        fit(prepare(load_config(None, sys.argv[2:]), run_name="k"), callbacks={"on_batch_end": [on_batch_end]})
    except Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(Preempted.exit_code)
    """
)


@pytest.mark.parametrize("stop_at", [5, 7])  # mid-epoch 2, and the last step of epoch 2
def test_sigterm_saves_the_step_and_resume_equals_uninterrupted(reference, tmp_path, capsys, stop_at):
    class_folders, full_weights = reference
    extra = ("train.epochs=3",)
    args = tiny_overrides(class_folders, tmp_path / "stopped", *extra)
    proc = subprocess.run([sys.executable, "-c", TERMINATED, str(stop_at), *args], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 75, proc.stderr
    run = tmp_path / "stopped" / "run"
    state = load_checkpoint(run / "last.pt")
    done = stop_at + 1  # steps finished when the signal was acted on
    assert (state["epoch"], state["step_in_epoch"]) == divmod(done, 4)
    assert f"stopped by SIGTERM at epoch {done // 4 + 1}, step {done % 4}" in proc.stderr
    resumed = in_process(capsys, "train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(full_weights, weights(run))


def test_cli_exits_75_on_sigterm(class_folders, tmp_path):
    args = tiny_overrides(class_folders, tmp_path, "train.epochs=500")
    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", "train", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while "epoch   1/500" not in (line := proc.stdout.readline()):
        assert line and time.monotonic() < deadline, "training never finished its first epoch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75
    assert err.strip().startswith("resnetlab train: stopped by SIGTERM at epoch") and "--resume" in err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] >= 1
