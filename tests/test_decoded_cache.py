"""The decoded cache: decoded once per file, reused whatever the split or seed, safe when stale,
damaged, interrupted, full or built by two runs at once; data.cache=disk trains as memory does."""

from __future__ import annotations

import json
import os
import resource
import signal
import threading

import numpy as np
import pytest
import torch

from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import load_config
from resnetlab.data import build_data
from resnetlab.data.decode import decode_files, stack_arrays
from resnetlab.data.decoded_cache import DiskImages, cached_images
from resnetlab.errors import UserError
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from tests.conftest import tiny_config, write_class_folders


def cache_config(folders, tmp_path, *extra, mode="disk"):
    return tiny_config(folders, tmp_path, f"data.cache={mode}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.image_size=16", *extra)


def decoded(paths: list[str]) -> torch.Tensor:
    """The same files decoded directly, without any cache."""
    arrays, _, kept, _ = decode_files(paths, size=16, resize="squash", on_bad_image="skip", progress=False)
    return stack_arrays(arrays, paths, kept)


def store(tmp_path):
    folders = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def test_disk_and_memory_read_the_decoded_pixels_and_train_the_same(class_folders, tmp_path):
    memory = build_data(cache_config(class_folders, tmp_path, "data.val_fraction=0.25", mode="memory"))
    assert "decoded cache: 0 images read from" in memory.notes[-1] and "48 decoded into it" in memory.notes[-1]
    disk = build_data(cache_config(class_folders, tmp_path, "data.val_fraction=0.25"))
    assert isinstance(disk.splits["train"].images, DiskImages) and memory.splits["train"].images.is_contiguous()
    assert disk.notes[-1].startswith("decoded cache: 48 images read from") and "decoded into" not in disk.notes[-1]
    for name, split in memory.splits.items():
        assert torch.equal(split.images, decoded(split.paths))
        assert torch.equal(disk.splits[name].images[torch.arange(len(split))], split.images)
        assert torch.equal(disk.splits[name].labels, split.labels)
    assert (disk.mean, disk.std) == (memory.mean, memory.std)
    a = prepare(cache_config(class_folders, tmp_path / "m", "train.epochs=2", mode="memory"), run_name="t")
    b = prepare(cache_config(class_folders, tmp_path / "d", "train.epochs=2"), run_name="t")
    fit(a)
    fit(b)
    wa, wb = load_checkpoint(a.run_dir / "last.pt")["model"], load_checkpoint(b.run_dir / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same batches, same augmentation, same steps


def test_another_seed_split_or_class_choice_decodes_nothing(class_folders, tmp_path):
    first = build_data(cache_config(class_folders, tmp_path, "data.val_fraction=0.25", mode="memory"))
    size = (store(tmp_path) / "images.u8").stat().st_size
    for extra in (("seed=7", "data.val_count=5"), ("data.classes=bee,cat",), ("data.test_fraction=0.2", "seed=3")):
        again = build_data(cache_config(class_folders, tmp_path, *extra, mode="memory"))
        assert "decoded into" not in again.notes[-1], extra
        for name, split in again.splits.items():
            assert torch.equal(split.images, decoded(split.paths)), (extra, name)
    assert (store(tmp_path) / "images.u8").stat().st_size == size == 48 * 3 * 16 * 16
    assert first.classes == ["ant", "bee", "cat"]


def test_changed_files_are_decoded_again_and_a_truncated_cache_is_rebuilt(tmp_path):
    folders = write_class_folders(tmp_path / "data", per_class=6)
    build_data(cache_config(folders, tmp_path))
    ants = folders / "train" / "ant"
    first, second = sorted(ants.iterdir())[:2]
    first.rename(ants / "renamed.png")
    np.random.seed(0)
    from PIL import Image

    Image.fromarray(np.random.randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(second)  # new pixels, same name
    os.utime(second, ns=(second.stat().st_atime_ns, second.stat().st_mtime_ns + 10**9))
    changed = build_data(cache_config(folders, tmp_path))
    assert "2 decoded into it" in changed.notes[-1], changed.notes
    train = changed.splits["train"]
    assert torch.equal(train.images[torch.arange(len(train))], decoded(train.paths))
    data = store(tmp_path) / "images.u8"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size - 5)
    rebuilt = build_data(cache_config(folders, tmp_path))
    assert any("is truncated" in n and "rebuilding it" in n for n in rebuilt.notes)
    train = rebuilt.splits["train"]
    assert torch.equal(train.images[torch.arange(len(train))], decoded(train.paths))


def test_an_interrupted_build_keeps_what_its_index_names_and_resumes(tmp_path, monkeypatch):
    import resnetlab.data.decode as cache
    import resnetlab.data.decoded_cache as dc

    folders = write_class_folders(tmp_path / "data", per_class=10)
    monkeypatch.setattr(cache, "DECODE", 7)
    monkeypatch.setattr(dc, "DECODE", 7)
    monkeypatch.setattr(dc, "SAVE_EVERY_S", 0.0)
    real = dc.decode_batches

    def dies_after_two_batches(*args, **kwargs):
        for n, batch in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt  # the user's Ctrl+C, or a kill, in the middle of the build
            yield batch

    monkeypatch.setattr(dc, "decode_batches", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        build_data(cache_config(folders, tmp_path))
    folder = store(tmp_path)
    assert json.loads((folder / "index.json").read_text())["records"] == 14
    with open(folder / "images.u8", "ab") as f:
        f.write(b"\xff" * 1000)  # half a record that a killed writer left past the index
    monkeypatch.setattr(dc, "decode_batches", real)
    resumed = build_data(cache_config(folders, tmp_path))
    assert "14 images read from" in resumed.notes[-1] and "25 decoded into it" in resumed.notes[-1]  # 30 train + 9 test
    train = resumed.splits["train"]
    assert torch.equal(train.images[torch.arange(30)], decoded(train.paths))
    assert (folder / "images.u8").stat().st_size == 39 * 3 * 16 * 16


def test_unwritable_cache_is_one_line_for_disk_and_a_note_for_auto(class_folders, tmp_path):
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
        auto = build_data(tiny_config(class_folders, tmp_path, "data.image_size=16", f"data.cache_dir={locked}"))
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert any("is not writable" in n and n.endswith("decoding into memory instead") for n in auto.notes)
    assert torch.equal(auto.splits["train"].images, decoded(auto.splits["train"].paths))
    with pytest.raises(UserError, match="data.cache=disk needs one image size"):
        build_data(tiny_config(class_folders, tmp_path, "data.cache=disk", f"data.cache_dir={tmp_path}"))
    with pytest.raises(UserError, match="did you mean 'disk'"):
        load_config(None, ["data.cache=dsk"])


def test_a_full_disk_is_one_line_keeps_what_was_written_and_the_next_run_goes_on(tmp_path, monkeypatch):
    import resnetlab.data.decode as cache
    import resnetlab.data.decoded_cache as dc

    monkeypatch.setattr(cache, "DECODE", 4)
    monkeypatch.setattr(dc, "DECODE", 4)
    monkeypatch.setattr(dc, "SAVE_EVERY_S", 0.0)
    folders = write_class_folders(tmp_path / "data", per_class=12, size=24)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000 * 3, old[1]))  # bytes: a few 16 px records
    try:
        with pytest.raises(UserError, match=r"could not write .*images.u8 .*the cache keeps every image written"):
            build_data(cache_config(folders, tmp_path))
        fallback = build_data(cache_config(folders, tmp_path, mode="auto"))  # not asked for: goes on in memory
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert fallback.notes[-1].endswith("decoding into memory instead")
    kept = json.loads((store(tmp_path) / "index.json").read_text())["records"]
    assert 0 < kept < 36
    resumed = build_data(cache_config(folders, tmp_path))
    assert f"{kept} images read from" in resumed.notes[-1]
    train = resumed.splits["train"]
    assert torch.equal(train.images[torch.arange(36)], decoded(train.paths))  # the half-written record was dropped
    assert torch.equal(fallback.splits["train"].images, decoded(fallback.splits["train"].paths))


def test_two_builders_at_once_decode_each_file_once_and_agree(class_folders, tmp_path, monkeypatch):
    """A second run that starts while the first builds waits on the lock, then reads the records."""
    import resnetlab.data.decoded_cache as dc

    paths = sorted(map(str, (class_folders / "train").rglob("*.png")))
    common = dict(root=str(class_folders), cache_dir=str(tmp_path / "cache"), size=16, resize="squash", margin=0.1,
                  on_bad_image="skip", progress=False)
    real, count, started = dc.decode_batches, {"files": 0}, threading.Event()

    def slow(paths, **kwargs):
        started.set()
        count["files"] += len(paths)
        threading.Event().wait(0.5)  # the second builder arrives while this one holds the lock
        yield from real(paths, **kwargs)

    monkeypatch.setattr(dc, "decode_batches", slow)
    results, notes = {}, {0: [], 1: []}

    def build(k: int) -> None:
        results[k] = cached_images(paths, None, notes=notes[k], **common)

    first = threading.Thread(target=build, args=(0,))
    first.start()
    started.wait(10)
    build(1)
    first.join(10)
    assert count["files"] == 36 and np.array_equal(results[0].rows, results[1].rows)
    assert "36 decoded into it" in notes[0][-1] and notes[1][-1].startswith("decoded cache: 36 images read")


def test_other_processes_wait_for_the_builder_and_never_read_a_partial_cache(class_folders, tmp_path):
    """Under torchrun only local rank 0 builds; the others poll until the index names every file."""
    paths = sorted(map(str, (class_folders / "train").rglob("*.png")))
    common = dict(root=str(class_folders), cache_dir=str(tmp_path / "cache"), size=16, resize="squash", margin=0.1,
                  on_bad_image="skip", progress=False)
    waited, notes = {}, []
    waiter = threading.Thread(target=lambda: waited.update(
        result=cached_images(paths, None, notes=notes, builder=False, **common)))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and not waited  # nothing built yet: still waiting, nothing created
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    built = cached_images(paths, None, notes=[], **common)
    waiter.join(10)
    assert not waiter.is_alive() and np.array_equal(waited["result"].rows, built.rows)
    assert "built by local rank 0" in notes[0]


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


def test_decoding_in_processes_gives_the_pixels_threads_give(class_folders, monkeypatch):
    import resnetlab.data.decode as cache

    paths = sorted(map(str, (class_folders / "train").rglob("*.png"))) + [str(class_folders / "missing.png")]
    monkeypatch.setattr(cache, "DECODE", 10)
    monkeypatch.setattr(cache, "PROCESSES_FROM", 0)  # processes even for 37 files
    monkeypatch.setattr(cache, "usable_cpus", lambda: 2)
    batches = list(cache.decode_batches(paths, size=12, resize="crop", margin=0.1))
    assert [b[0] for b in batches] == [0, 10, 20, 30]
    arrays = [a for b in batches for a in b[1]]
    kept = [b[0] + k for b in batches for k in b[3]]
    skipped = [s for b in batches for s in b[4]]
    threads, _, kept_t, skipped_t = decode_files(paths, size=12, resize="crop", on_bad_image="skip", progress=False)
    assert kept == kept_t == list(range(36)) and [s[0] for s in skipped] == [s[0] for s in skipped_t] == paths[-1:]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, threads))


def test_native_size_images_are_cached_at_their_size_and_mixed_sizes_are_one_line(tmp_path):
    same = write_class_folders(tmp_path / "same", per_class=4, size=20)
    bundle = build_data(tiny_config(same, tmp_path, f"data.cache_dir={tmp_path / 'cache'}"))
    assert bundle.image_size == 20 and "decoded cache" in bundle.notes[-1]
    assert torch.equal(bundle.splits["train"].images, decoded_at(bundle.splits["train"].paths, 0))
    mixed = write_class_folders(tmp_path / "mixed", per_class=4, size=20)
    write_class_folders(tmp_path / "mixed", classes=("cat",), per_class=2, size=24, seed=1, splits=("train",),
                        fmt="jpg")
    with pytest.raises(UserError, match=r"images differ in size \(20x20 and 24x24 .*\.jpg\); set data.image_size=N"):
        build_data(tiny_config(mixed, tmp_path, f"data.cache_dir={tmp_path / 'cache'}"))


def decoded_at(paths: list[str], size: int) -> torch.Tensor:
    arrays, _, kept, _ = decode_files(paths, size=size, resize="squash", on_bad_image="skip", progress=False)
    return stack_arrays(arrays, paths, kept)


def test_another_crop_box_is_decoded_again(class_folders, tmp_path):
    """A record holds a file cropped to one box: the same box reads it back, another box (new ROI
    annotations) decodes the file again and its record replaces the old one in the index."""
    paths = sorted(map(str, (class_folders / "train").rglob("*.png")))[:4]
    common = dict(root=str(class_folders), cache_dir=str(tmp_path / "cache"), size=8, resize="squash", margin=0.0,
                  on_bad_image="skip", progress=False)
    whole, corner = np.array([[0, 0, 16, 16]] * 4), np.array([[0, 0, 8, 8]] * 4)
    notes: list[str] = []
    first = cached_images(paths, whole, notes=notes, **common)
    again = cached_images(paths, whole, notes=notes, **common)
    other = cached_images(paths, corner, notes=notes, **common)
    assert "4 decoded into it" in notes[0] and "decoded into" not in notes[1] and "4 decoded into it" in notes[2]
    assert np.array_equal(first.rows, again.rows) and not np.array_equal(first.rows, other.rows)


def test_a_waiting_process_does_not_wait_on_a_folder_the_builder_cannot_write(class_folders, tmp_path):
    """Under torchrun the builder goes on without an unwritable cache; the other ranks must too, at once,
    rather than poll for an index that will never come."""
    from resnetlab.data.decoded_cache import CacheUnavailable

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    paths = sorted(map(str, (class_folders / "train").rglob("*.png")))
    with pytest.raises(CacheUnavailable, match="is not writable"):
        cached_images(paths, None, root=str(class_folders), cache_dir=str(blocked), size=16, resize="squash",
                      margin=0.1, on_bad_image="skip", progress=False, notes=[], builder=False)
