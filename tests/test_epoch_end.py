"""Epoch ends that cost milliseconds: checkpoints from a snapshot, written in the background every
train.checkpoint_interval_s and at the end or a stop (best.pt held in memory until then), validation
summed on the device, and no plotting, TensorBoard or scikit-learn imported while training."""

import json
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from resnetlab.checkpoint import load_checkpoint, save_checkpoint, snapshot
from resnetlab.evaluate.metrics import metrics
from resnetlab.evaluate.task import SingleLabel
from resnetlab.io import WriteFailed
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.run.saving import WRITER_THREAD, BackgroundWriter
from tests.conftest import REPO, tiny_config, tiny_overrides, wait_for_writes, write_class_folders

WITH_VAL = ("data.val_fraction=0.25", "train.epochs=3")


def epoch_of(path):
    return load_checkpoint(path)["epoch"]


def writer_alive():
    return any(t.name == WRITER_THREAD for t in threading.enumerate())


def best_epoch(history):
    """The epoch best.pt holds: the first with the highest val top-1."""
    return max(history, key=lambda h: (h["val_top1"], -h["epoch"]))["epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run with a val split: a stopped and resumed run must equal it bit for bit."""
    tmp = tmp_path_factory.mktemp("reference")
    data = write_class_folders(tmp / "folders")
    full = prepare(tiny_config(data, tmp / "full", *WITH_VAL), run_name="f")
    fit(full)
    return data, load_checkpoint(full.run_dir / "last.pt")["model"]


@pytest.mark.parametrize("interval, previous", [(3600, 1), (0, 2)])
def test_last_pt_is_written_at_the_first_epoch_end_then_every_interval_and_at_the_end(reference, tmp_path, interval,
                                                                                      previous):
    data, _ = reference
    s = prepare(tiny_config(data, tmp_path, *WITH_VAL, f"train.checkpoint_interval_s={interval}"), run_name="t")
    on_disk = []

    def look(session, record):
        wait_for_writes()
        on_disk.append(epoch_of(session.run_dir / "last.pt"))

    fit(s, callbacks={"on_epoch_end": [look]})
    assert on_disk == ([1, 1, 1] if interval else [1, 2, 3])  # 3600 s: only the first epoch end wrote
    assert epoch_of(s.run_dir / "last.pt") == 3 and epoch_of(s.run_dir / "previous.pt") == previous
    assert epoch_of(s.run_dir / "best.pt") == best_epoch(s.state.history)
    assert not writer_alive()


def test_best_pt_is_held_in_memory_until_last_pt_is_written(reference, tmp_path):
    data, _ = reference
    s = prepare(tiny_config(data, tmp_path, *WITH_VAL), run_name="t")  # the default interval: 60 s
    best_on_disk = []

    def look(session, record):
        wait_for_writes()
        best_on_disk.append(epoch_of(session.run_dir / "best.pt"))

    fit(s, callbacks={"on_epoch_end": [look]})
    assert best_on_disk == [1, 1, 1]  # the first epoch improves on nothing: written with the first last.pt
    assert epoch_of(s.run_dir / "best.pt") == best_epoch(s.state.history)  # written at the end


def test_ctrl_c_writes_the_last_epoch_end_and_resume_equals_uninterrupted(reference, tmp_path):
    data, full_weights = reference
    s = prepare(tiny_config(data, tmp_path, *WITH_VAL), run_name="t")

    def interrupt(session, info):
        if info["epoch"] == 2:  # a step of epoch 3 has changed the weights since epoch 2's snapshot
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(s, callbacks={"on_batch_end": [interrupt]})
    assert not writer_alive()
    last = load_checkpoint(s.run_dir / "last.pt")
    assert (last["epoch"], last["step_in_epoch"]) == (2, 0)  # epoch 2's end, not the state at the stop
    assert epoch_of(s.run_dir / "best.pt") == best_epoch(last["history"])
    fit(prepare(None, run_name="", resume=s.run_dir))
    resumed = load_checkpoint(s.run_dir / "last.pt")["model"]
    assert resumed.keys() == full_weights.keys()
    assert all(torch.equal(resumed[k], full_weights[k]) for k in resumed)


def test_a_failed_background_write_stops_the_run_with_its_error(class_folders, tmp_path):
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=3", "train.checkpoint_interval_s=0"),
                run_name="t")
    (s.run_dir / "last.pt").mkdir()  # no file can be renamed over a folder
    with pytest.raises(WriteFailed, match=r"could not write .*last\.pt \("):
        fit(s)
    assert not writer_alive()
    assert json.loads((s.run_dir / "status.json").read_text())["status"] == "failed"


def test_the_writer_raises_its_thread_s_error_in_the_caller(tmp_path):
    writer = BackgroundWriter()
    writer.submit([([tmp_path / "gone" / "last.pt"], {"w": torch.zeros(2)}, None)])
    with pytest.raises(WriteFailed, match="gone"):
        writer.join()
    writer.join()  # raised once
    writer.submit([([tmp_path / "last.pt"], {"w": torch.ones(2)}, None)])
    writer.join()
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["w"], torch.ones(2))


def test_a_snapshot_is_a_copy_training_cannot_change(tmp_path):
    live = {"model": {"w": torch.arange(6.0).reshape(2, 3).t()}, "history": [{"epoch": 1}], "betas": (0.9, 0.99)}
    taken = snapshot(live)
    save_checkpoint(tmp_path / "before.pt", live)
    live["model"]["w"].add_(1)
    live["history"].append({"epoch": 2})
    save_checkpoint(tmp_path / "snapshot.pt", taken)
    before, after = load_checkpoint(tmp_path / "before.pt"), load_checkpoint(tmp_path / "snapshot.pt")
    assert torch.equal(after["model"]["w"], before["model"]["w"]) and after["model"]["w"].stride() == (1, 3)
    assert after["history"] == [{"epoch": 1}] and after["betas"] == (0.9, 0.99)


def test_a_snapshot_copies_into_an_older_one_where_the_tensors_fit():
    threads = torch.get_num_threads()
    old = snapshot({"w": torch.zeros(2, 3).t(), "b": torch.zeros(4), "steps": [torch.zeros(())]})
    live = {"w": torch.ones(2, 3).t(), "b": torch.ones(5), "steps": [torch.tensor(7.0)]}
    taken = snapshot(live, old)
    assert taken["w"].data_ptr() == old["w"].data_ptr() and taken["steps"][0].data_ptr() == old["steps"][0].data_ptr()
    assert taken["b"].data_ptr() != old["b"].data_ptr()  # another shape: a copy of its own
    for key in ("w", "b"):
        assert torch.equal(taken[key], live[key]) and taken[key].stride() == live[key].stride()
    assert taken["steps"][0].item() == 7.0 and torch.get_num_threads() == threads  # one thread while copying


def test_validation_summed_on_the_device_matches_the_full_metrics():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 7, generator=gen), torch.randint(0, 7, (50,), generator=gen)
    task = SingleLabel()
    sums = sum(task.batch_scores(logits[i:i + 16], labels[i:i + 16]) for i in range(0, 50, 16))
    got, want = task.scores(sums.tolist(), 50), metrics(logits, labels, [str(k) for k in range(7)])
    assert got["n"] == 50 and got["top1"] == 8 / 50  # counts summed exactly (metrics' mean is float32)
    for key in ("top1", "top5", "loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key


LIGHT = textwrap.dedent(
    """
    import json, sys
    from resnetlab.config import load_config
    from resnetlab.run.fit import fit
    from resnetlab.run.prepare import prepare

    # torchvision: start-up that a ResNet-9 without an augmentation policy never needs
    HEAVY = ("matplotlib", "tensorboard", "torch.utils.tensorboard", "sklearn", "torchvision")
    seen = []
    def heavy(session, info):
        seen.append(sorted(m for m in HEAVY if m in sys.modules))

    fit(prepare(load_config(None, sys.argv[1:]), run_name="light"),
        callbacks={"on_batch_end": [heavy], "on_epoch_end": [heavy]})
    print(json.dumps({"training": seen, "after": sorted(m for m in HEAVY if m in sys.modules)}))
    """
)


def test_training_imports_no_plotting_tensorboard_scikit_learn_or_torchvision(class_folders, tmp_path):
    args = tiny_overrides(class_folders, tmp_path, "data.val_fraction=0.25", "train.tensorboard=true")
    proc = subprocess.run([sys.executable, "-c", LIGHT, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["training"]) > 2 and all(loaded == [] for loaded in out["training"])
    assert "matplotlib" in out["after"]  # the curves drawn at the end: the check sees a real import
    assert (tmp_path / "run" / "curves.png").is_file() and any((tmp_path / "run" / "tensorboard").iterdir())
