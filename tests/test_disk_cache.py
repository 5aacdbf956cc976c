"""data.cache=disk: built once, reused, rebuilt when stale or damaged, trains as the memory cache does."""

from __future__ import annotations

import json
import os
import resource
import signal

import pytest
import torch

from tests.conftest import tiny_config, write_class_folders
from resnetlab.config import load_config
from resnetlab.data import build_data
from resnetlab.data.disk_cache import DiskImages
from resnetlab.errors import UserError
from resnetlab.train.checkpoint import load_checkpoint
from resnetlab.train.loop import fit
from resnetlab.train.session import prepare


def disk_config(folders, tmp_path, *extra):
    return tiny_config(folders, tmp_path, "data.cache=disk", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.image_size=16", *extra)


def test_disk_cache_holds_the_memory_cache_pixels_and_trains_the_same(class_folders, tmp_path):
    memory = build_data(tiny_config(class_folders, tmp_path, "data.image_size=16", "data.val_fraction=0.25"))
    disk = build_data(disk_config(class_folders, tmp_path, "data.val_fraction=0.25"))
    assert isinstance(disk.splits["train"].images, DiskImages) and "disk cache: built" in disk.notes[-1]
    for name, split in memory.splits.items():
        assert torch.equal(disk.splits[name].images[torch.arange(len(split))], split.images)
        assert torch.equal(disk.splits[name].labels, split.labels)
    assert (disk.mean, disk.std) == (memory.mean, memory.std)
    again = build_data(disk_config(class_folders, tmp_path, "data.val_fraction=0.25"))
    assert again.notes[-1].startswith("disk cache: reading")
    a = prepare(tiny_config(class_folders, tmp_path / "m", "data.image_size=16", "train.epochs=2"), run_name="t")
    b = prepare(disk_config(class_folders, tmp_path / "d", "train.epochs=2"), run_name="t")
    fit(a)
    fit(b)
    wa, wb = load_checkpoint(a.run_dir / "last.pt")["model"], load_checkpoint(b.run_dir / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same batches, same augmentation, same steps


def test_disk_cache_is_rebuilt_when_the_data_changes_or_the_cache_is_truncated(tmp_path):
    folders = write_class_folders(tmp_path / "data", per_class=6)
    first = build_data(disk_config(folders, tmp_path))
    folder = first.splits["train"].images.path.parent
    ants = folders / "train" / "ant"
    (ants / sorted(os.listdir(ants))[0]).rename(ants / "renamed.png")
    second = build_data(disk_config(folders, tmp_path))
    assert any("the data set changed since its disk cache" in n for n in second.notes)
    assert not folder.exists()  # the stale one is removed
    data = second.splits["train"].images.path
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size - 5)
    third = build_data(disk_config(folders, tmp_path))
    assert any("is truncated" in n and "rebuilding it" in n for n in third.notes)
    assert torch.equal(third.splits["train"].images[torch.arange(3)], second.splits["train"].images[torch.arange(3)])


def test_interrupted_build_is_never_trusted_and_resumes(tmp_path, monkeypatch):
    import resnetlab.data.disk_cache as dc

    folders = write_class_folders(tmp_path / "data", per_class=10)
    monkeypatch.setattr(dc, "CHUNK", 7)
    calls = {"n": 0}
    real = dc.decode_files

    def dies_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user's Ctrl+C, or a kill, in the middle of the build
        return real(*args, **kwargs)

    monkeypatch.setattr(dc, "decode_files", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_data(disk_config(folders, tmp_path))
    partial = [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and not (partial[0] / "meta.json").exists()
    assert json.loads((partial[0] / "progress.json").read_text())["train"]["done"] == 14
    monkeypatch.setattr(dc, "decode_files", real)
    resumed = build_data(disk_config(folders, tmp_path))
    fresh = build_data(tiny_config(folders, tmp_path, "data.image_size=16"))
    assert torch.equal(resumed.splits["train"].images[torch.arange(30)], fresh.splits["train"].images)


def test_disk_cache_bad_input_is_one_line(class_folders, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode bits: a file in the way does the same
            locked = tmp_path / "a-file"
            locked.write_text("")
        with pytest.raises(UserError, match=r"the disk cache folder .* is not writable .*data.cache=stream"):
            build_data(tiny_config(class_folders, tmp_path, "data.cache=disk", "data.image_size=16",
                                   f"data.cache_dir={locked}"))
    finally:
        (tmp_path / "locked").chmod(0o700)
    with pytest.raises(UserError, match="data.cache=disk needs one image size"):
        build_data(tiny_config(class_folders, tmp_path, "data.cache=disk", f"data.cache_dir={tmp_path}"))
    with pytest.raises(UserError, match="did you mean 'disk'"):
        load_config(None, ["data.cache=dsk"])


def test_disk_full_during_a_build_is_one_line_and_leaves_nothing_trusted(tmp_path):
    folders = write_class_folders(tmp_path / "data", per_class=12, size=24)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, old[1]))  # bytes: a few 16 px records
    try:
        with pytest.raises(UserError, match=r"could not write .*train.u8 .*the partial cache .* resumes"):
            build_data(disk_config(folders, tmp_path))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    resumed = build_data(disk_config(folders, tmp_path)).splits["train"]  # resumed to the end
    fresh = build_data(tiny_config(folders, tmp_path, "data.image_size=16")).splits["train"]
    assert torch.equal(resumed.images[torch.arange(36)], fresh.images)  # the half-written record was dropped


def test_other_processes_wait_for_the_builder_and_never_read_a_partial_cache(class_folders, tmp_path):
    """Under torchrun only local rank 0 builds; the others poll until the complete cache is there."""
    import threading

    from resnetlab.data.disk_cache import open_or_build

    cfg = disk_config(class_folders, tmp_path)
    files = {"train": (sorted(map(str, (class_folders / "train").rglob("*.png"))), [0] * 36, None)}
    common = dict(root=str(class_folders), cache_dir=str(tmp_path / "cache"), size=16, resize=cfg.data.resize,
                  margin=0.1, on_bad_image="skip", progress=False)
    waited, notes = {}, []
    waiter = threading.Thread(target=lambda: waited.update(open_or_build(files, notes=notes, builder=False, **common)))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and not waited  # nothing built yet: still waiting, nothing created
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    built = open_or_build(files, notes=[], **common)
    waiter.join(10)
    assert not waiter.is_alive() and waited["folder"] == built["folder"]
    assert waited["splits"] == built["splits"] and "built by local rank 0" in notes[0]


def test_auto_chooses_memory_then_disk_then_stream_and_says_why(tmp_path, monkeypatch):
    from collections import namedtuple

    from resnetlab.data import bundle

    d = load_config(None, [f"data.cache_dir={tmp_path}", "data.image_size=32", "data.cache_max_gb=1"]).data
    gib = 2**30
    monkeypatch.setattr(bundle, "available_memory", lambda: 8 * gib)
    notes = []
    assert bundle._cache_mode(d, gib // 2, notes) == "memory" and notes == []
    assert bundle._cache_mode(d, 2 * gib, notes) == "disk"
    assert notes[-1].startswith("2.0 GiB of decoded images is over data.cache_max_gb=1: caching them on disk")
    monkeypatch.setattr(bundle, "available_memory", lambda: gib)  # fits the limit, not half the free memory
    assert bundle._cache_mode(d, gib * 3 // 4, notes) == "disk"
    assert "fits data.cache_max_gb=1 but is over half the 1.0 GiB of memory available" in notes[-1]
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(bundle.shutil, "disk_usage", lambda path: usage(10 * gib, 9 * gib, gib))
    assert bundle._cache_mode(d, 2 * gib, notes) == "stream" and "only 1.0 GiB free in" in notes[-1]
    assert bundle._cache_mode(load_config(None, ["data.cache=disk"]).data, 2 * gib, notes) == "disk"
