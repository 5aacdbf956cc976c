"""Faults injected into training: a full disk, damaged checkpoints, a vanished run folder, a failed
rename, a data file deleted under the loader. Each says what happened in one line and loses nothing."""

import errno
import os
import subprocess
import sys

import pytest
import torch

from resnetlab.checkpoint import DamagedCheckpoint, load_checkpoint
from resnetlab.cli import main
from resnetlab.data import build_data
from resnetlab.errors import UserError
from resnetlab.io import WriteFailed
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train.loop import StopTraining
from tests.conftest import REPO, tiny_config, tiny_overrides, wait_for_writes


def weights(path):
    return load_checkpoint(path)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def leftovers(run):
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


FULL_DISK = """
import resource, signal, sys
from resnetlab.cli import main
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG (like a full disk)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_stops_with_one_line_and_resume_continues_once_there_is_space(class_folders, tmp_path):
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=1"), run_name="t")
    fit(s)
    before = weights(s.run_dir / "last.pt")
    size = (s.run_dir / "last.pt").stat().st_size
    # files up to half a checkpoint still fit: metrics and status are written, the checkpoint is not
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(size // 2), "train", "--resume", str(s.run_dir),
                           "train.epochs=3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith(f"resnetlab train: error: could not write {s.run_dir}/") and "MiB free on" in err[0]
    assert "is intact" in err[0] and "--resume" in err[0]
    assert same(weights(s.run_dir / "last.pt"), before) and load_checkpoint(s.run_dir / "last.pt")["epoch"] == 1
    assert leftovers(s.run_dir) == []
    assert main(["train", "--resume", str(s.run_dir), "train.epochs=3"]) == 0  # space freed: it goes on
    assert load_checkpoint(s.run_dir / "last.pt")["epoch"] == 3


@pytest.mark.parametrize("damage", ["bit flip", "truncated copy"])
def test_a_damaged_last_checkpoint_is_caught_and_resume_falls_back(class_folders, tmp_path, capsys, damage):
    reference = prepare(tiny_config(class_folders, tmp_path / "ref", "train.epochs=3"), run_name="t")
    fit(reference)
    s = prepare(tiny_config(class_folders, tmp_path / "run", "train.epochs=3"), run_name="t")

    def stop_after_two(session, record):
        if record["epoch"] == 2:
            raise StopTraining("enough")

    with pytest.raises(StopTraining):
        fit(s, callbacks={"on_epoch_end": [stop_after_two]})
    assert load_checkpoint(s.run_dir / "previous.pt")["epoch"] == 1  # last.pt kept its predecessor
    last = s.run_dir / "last.pt"
    data = bytearray(last.read_bytes())
    if damage == "bit flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) * 2 // 3]
    last.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint, match="SHA-256 does not match" if damage == "bit flip" else "cannot load"):
        load_checkpoint(last)
    capsys.readouterr()
    assert main(["train", "--resume", str(s.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "resuming from previous.pt instead (epoch 1, step 0)" in out
    assert same(weights(last), weights(reference.run_dir / "last.pt"))  # epochs 2 and 3 trained again, the same
    (s.run_dir / "previous.pt").write_bytes(b"")
    last.write_bytes(b"\0" * 100)
    assert main(["train", "--resume", str(s.run_dir), "train.epochs=4"]) == 2
    assert "no intact checkpoint in" in capsys.readouterr().err


def test_a_vanished_run_folder_is_one_line(class_folders, tmp_path):
    import shutil

    def vanish(session, record):
        wait_for_writes()  # the epoch's last.pt is written in the background
        shutil.rmtree(session.run_dir)

    for events in ("true", "false"):  # the TensorBoard writer keeps its own files: with and without it
        s = prepare(tiny_config(class_folders, tmp_path / events, "train.epochs=2", f"train.tensorboard={events}"),
                    run_name="t")
        with pytest.raises(WriteFailed,
                           match=r"could not write .*/run/\S+ \(No such file or directory; .* is not reachable\)"):
            fit(s, callbacks={"on_epoch_end": [vanish]})
        assert not s.run_dir.exists()  # not made again, half-filled, by the next write


def test_a_failed_rename_keeps_the_previous_checkpoint(class_folders, tmp_path, monkeypatch):
    import resnetlab.io as io_module

    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=2"), run_name="t")
    real = os.replace

    def flaky(src, dst):  # what an NFS server that went away does to the second epoch's checkpoint
        if str(dst).endswith("last.pt") and load_checkpoint(src)["epoch"] == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(io_module.os, "replace", flaky)
    with pytest.raises(WriteFailed, match=r"could not write .*last.pt \(Input/output error; .* MiB free"):
        fit(s)
    assert load_checkpoint(s.run_dir / "last.pt")["epoch"] == 1 and leftovers(s.run_dir) == []
    assert (s.run_dir / "status.json").read_text().count('"failed"') == 1


def test_a_data_file_deleted_after_listing_is_a_bad_image(class_folders, tmp_path, monkeypatch):
    import resnetlab.data.bundle as bundle

    gone = class_folders / "train" / "bee" / "003.png"
    real = bundle.plan_data

    def plan_then_delete(*args, **kw):
        planned = real(*args, **kw)
        gone.unlink()  # between the listing and the decoding
        return planned

    monkeypatch.setattr(bundle, "plan_data", plan_then_delete)
    data = build_data(tiny_config(class_folders, tmp_path), progress=False)
    assert (str(gone), "the file no longer exists (deleted or moved after the data set was listed)") in data.skipped
    monkeypatch.undo()
    # streamed: listed and split, then deleted before the worker decodes it
    s = prepare(tiny_config(class_folders, tmp_path, "data.cache=stream", "data.image_size=16", "train.epochs=1",
                            "data.num_workers=0"), run_name="t")
    (class_folders / "train" / "cat" / "001.png").unlink()
    fit(s)
    assert "001.png,the file no longer exists" in (s.run_dir / "skipped_images.csv").read_text()


def test_cannot_create_a_run_folder_is_one_line(class_folders, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot create the run folder .*file/run \(.*\): choose a writable"):
        prepare(tiny_config(class_folders, blocker), run_name="t")
    assert main(["train", *tiny_overrides(class_folders, blocker)]) == 2
