"""The streamed path behaves as the cached one: augmentation, channels, steps and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import AugmentConfig
from resnetlab.data import build_data
from resnetlab.data.augment import BatchAugment, make_generator, stream_transforms
from resnetlab.train.checkpoint import load_checkpoint
from resnetlab.train.loop import fit
from resnetlab.train.session import prepare
from tests.conftest import tiny_config, write_class_folders


def test_one_image_through_both_paths_gives_views_with_the_same_statistics():
    """2,000 views of one 32 px image (no dark pixels) under rotation 30, zoom 1.2, crop, flip and
    lighting: batched on the cached path, per image with transforms v2 on the streamed one."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(60, 230, (3, 32, 32), dtype=np.uint8))
    image[:, 8:20, 4:28] = 220  # some structure for the crop and rotation to move around
    cfg = AugmentConfig(rotation=30, zoom=1.2, crop_padding=4, hflip=True, lighting=0.2)
    n = 2000
    cached, _ = BatchAugment(cfg, num_classes=1)(image.expand(n, -1, -1, -1).contiguous(),
                                                 torch.zeros(n, dtype=torch.long), make_generator(1))
    tf = stream_transforms(cfg, 32)
    torch.manual_seed(1)
    streamed = torch.stack([tf(image) for _ in range(n)])
    for stat in (lambda v: v.float().mean(), lambda v: v.float().std()):
        assert stat(streamed).item() == pytest.approx(stat(cached).item(), rel=0.04)
    # a constant fill (black) where a rotation uncovers corners would show as dark pixels: ~4% of them
    dark = [(v < 30).float().mean().item() for v in (cached, streamed)]
    assert dark[0] < 0.002 and dark[1] < 0.002, dark


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
