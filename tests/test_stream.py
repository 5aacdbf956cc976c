"""The streamed path trains as the cached one: the same augmentation, channels, steps and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.checkpoint import load_checkpoint
from resnetlab.data import build_data
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from tests.conftest import tiny_config, write_class_folders


@pytest.mark.parametrize("extra", [(), ("augment.rotation=20", "augment.zoom=1.2", "augment.lighting=0.2",
                                    "augment.policy=trivialaugment", "augment.erasing=0.5", "augment.mixup_alpha=0.4",
                                    "augment.hflip_alternate=true")])
def test_streaming_trains_exactly_as_the_cache_does(class_folders, tmp_path, extra):
    """One augmentation path: streamed batches go through the cached path's BatchAugment with the
    same (seed, epoch, step) draws, so the weights are the same, bit for bit, with 2 workers."""
    common = ("data.image_size=16", "data.val_fraction=0.25", "data.num_workers=2", "train.epochs=2",
              "train.final_test=false", *extra)
    runs = []
    for cache in ("memory", "stream"):
        s = prepare(tiny_config(class_folders, tmp_path / cache, f"data.cache={cache}", *common), run_name="t")
        fit(s)
        runs.append(s)
    memory, stream = runs
    assert (memory.data.mean, memory.data.std) == (stream.data.mean, stream.data.std)
    assert [h["val_top1"] for h in memory.state.history] == [h["val_top1"] for h in stream.state.history]
    a, b = memory.model.state_dict(), stream.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_all_grey_folder_streams_with_one_channel_as_it_caches(tmp_path):
    for label, name in enumerate(("ant", "bee")):
        folder = tmp_path / "grey" / "train" / name
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((12, 12), 40 * label + 5 * i, dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    streamed = build_data(tiny_config(tmp_path / "grey", tmp_path, "data.cache=stream", "data.image_size=12"))
    cached = build_data(tiny_config(tmp_path / "grey", tmp_path, "data.image_size=12"))
    assert streamed.channels == cached.channels == 1
    assert streamed.mean == pytest.approx(cached.mean, abs=1e-6)


def test_streamed_resume_is_exact_with_all_bad_batches(tmp_path):
    """Half the files are corrupt and batches hold 2 images, so some steps have no image to train
    on; they still count as steps. Interrupted mid-epoch and resumed, training ends with the
    weights of an uninterrupted run."""
    root = write_class_folders(tmp_path / "data", per_class=6, splits=("train",))
    for i, good in enumerate(sorted(root.rglob("*.png"))):
        (good.parent / f"bad-{i}.png").write_bytes(b"not a png")
    extra = ("data.cache=stream", "data.image_size=16", "data.num_workers=2", "train.batch_size=2",
             "train.checkpoint_every=3", "train.epochs=2", "train.final_test=false")
    full = prepare(tiny_config(root, tmp_path / "full", *extra), run_name="t")
    empty = sum(len(y) == 0 for _, y in full.loaders["train"].epoch(0))
    assert empty >= 1 and len(full.loaders["train"]) == 18  # 36 files, 2 a step
    fit(full)
    cut = prepare(tiny_config(root, tmp_path / "cut", *extra), run_name="t")

    def stop(session, info):  # empty steps call no callback: stop at the first trained step from 22 on
        if info["step"] >= 22:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cut, callbacks={"on_batch_end": [stop]})
    assert load_checkpoint(cut.run_dir / "last.pt")["step_in_epoch"] > 0  # resumed mid-epoch
    fit(prepare(None, run_name="", resume=cut.run_dir))
    a, b = load_checkpoint(full.run_dir / "last.pt")["model"], load_checkpoint(cut.run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_workers_persist_across_epochs(class_folders, tmp_path):
    s = prepare(tiny_config(class_folders, tmp_path, "data.cache=stream", "data.image_size=16",
                            "data.num_workers=2", "train.epochs=2"), run_name="t")
    fit(s)
    loader = s.loaders["train"].loader
    assert loader.persistent_workers and loader._iterator is not None  # one set of workers served both epochs
