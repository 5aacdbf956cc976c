"""WebDataset shards: written by `resnetlab data shards`, read as a data set, split across ranks."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import build_data
from resnetlab.data.archive import shard_of
from resnetlab.data.images import load_array
from resnetlab.data.loader import FileDataset, StreamLoader
from resnetlab.data.readers.layouts import read_catalog
from resnetlab.data.shards import parse_shard_size, write_shards
from resnetlab.errors import UserError
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from tests.conftest import in_process, tiny_config, write_class_folders
from tests.test_cli import assert_one_line_error, cli


@pytest.fixture
def folders_and_shards(tmp_path):
    root = write_class_folders(tmp_path / "data", per_class=10)  # 30 train + 9 test images
    write_shards(str(root), tmp_path / "shards", shard_size="4", progress=False)
    return root, tmp_path / "shards"


def test_shards_hold_the_catalog_the_folder_gives(folders_and_shards):
    root, shards = folders_and_shards
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert names == [f"test-{i:06d}.tar" for i in range(3)] + [f"train-{i:06d}.tar" for i in range(8)]
    a, _, _ = read_catalog(str(root))
    b, b_root, _ = read_catalog(str(shards))
    assert b_root == shards
    assert (a.keys, a.classes, a.class_ids) == (b.keys, b.classes, b.class_ids)
    assert (a.labels == b.labels).all() and (a.splits == b.splits).all()
    assert b.paths[0] == f"{shards}/train-000000.tar/00000000.png"
    for i in (0, 17, 35):
        assert (load_array(a.paths[i], 0, "squash")[0] == load_array(b.paths[i], 0, "squash")[0]).all()
    manifest = json.loads((shards / "dataset.json").read_text())
    assert manifest["images"] == 39 and manifest["shards"]["train-000007.tar"] == {"split": "train", "images": 2}


@pytest.mark.parametrize("cache", ["memory", "stream", "disk"])
def test_training_from_shards_equals_training_from_the_folder(folders_and_shards, tmp_path, cache):
    """Same rows, same seeded val split, same pixels: the same weights, bit for bit, on each data path."""
    root, shards = folders_and_shards
    extra = (f"data.cache={cache}", "data.image_size=16", "data.val_fraction=0.2", "data.num_workers=0",
             f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "train.final_test=false")
    weights = []
    for name, dataset in (("folder", root), ("shards", shards)):
        s = prepare(tiny_config(dataset, tmp_path / name, *extra), run_name="t")
        fit(s)
        weights.append(s.model.state_dict())
        assert len(s.data.splits["val"]) == 6
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_webdataset_reads_our_shards_and_we_read_its(folders_and_shards, tmp_path):
    webdataset = pytest.importorskip("webdataset")
    root, shards = folders_and_shards
    ours, _, _ = read_catalog(str(shards))
    theirs = list(webdataset.WebDataset(f"{shards}/train-{{000000..000007}}.tar", shardshuffle=False))
    assert [s["__key__"] for s in theirs] == [f"{i:08d}" for i in range(30)]
    assert [int(s["cls"]) for s in theirs] == ours.labels[:30].tolist()
    assert [json.loads(s["json"])["key"] for s in theirs] == ours.keys[:30]

    # shards written by webdataset's own TarWriter: .jpg/.png and .cls only, split from the name
    rng = np.random.default_rng(0)
    (tmp_path / "wds").mkdir()
    images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(6)]
    for split in ("train", "test"):
        with webdataset.TarWriter(str(tmp_path / "wds" / f"{split}-0.tar")) as sink:
            for i, arr in enumerate(images):
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, "PNG")
                sink.write({"__key__": f"s{i}", "png": buf.getvalue(), "cls": i % 3})
    catalog, _, _ = read_catalog(str(tmp_path / "wds"))
    assert catalog.classes == ["0", "1", "2"] and catalog.splits.tolist() == ["test"] * 6 + ["train"] * 6
    assert catalog.labels.tolist() == [0, 1, 2] * 4
    assert (load_array(catalog.paths[4], 0, "squash")[0] == images[4]).all()


def test_array_data_sets_shard_as_png_with_the_same_pixels(idx_folder, tmp_path):
    write_shards(str(idx_folder), tmp_path / "shards", progress=False)
    a = build_data(tiny_config(idx_folder, tmp_path))
    b = build_data(tiny_config(tmp_path / "shards", tmp_path))
    assert a.channels == b.channels == 1
    for split in a.splits:
        assert torch.equal(a.splits[split].images, b.splits[split].images)
        assert torch.equal(a.splits[split].labels, b.splits[split].labels)


def _rank_loader(data, rank: int, world: int, steps: int = 0) -> StreamLoader:
    split = data.splits["train"]
    dataset = FileDataset(split.paths, split.labels.tolist(), size=16, resize="squash", channels=3)
    return StreamLoader(dataset, batch_size=8, device=torch.device("cpu"), seed=0, num_workers=0, on_bad_image="skip",
                        shuffle=True, tail="merge", rank=rank, world=world,
                        groups=torch.from_numpy(shard_of(split.paths)), limit=steps)


def test_ranks_read_disjoint_shards_and_every_image_once_an_epoch(folders_and_shards, tmp_path):
    _, shards = folders_and_shards
    data = build_data(tiny_config(shards, tmp_path, "data.cache=stream", "data.image_size=16"))
    paths = data.splits["train"].paths
    assert len(paths) == 30
    for epoch in (0, 1):
        loaders = [_rank_loader(data, r, 2) for r in (0, 1)]
        seen = [[], []]
        for r, loader in enumerate(loaders):
            for step, (_x, y) in enumerate(loader.epoch(epoch)):
                seen[r] += loader.plan.batches[step]
                assert len(y) > 0
            assert step + 1 == 3  # 30 images at a global batch of 8: 3 steps, the short tail merged
        assert sorted(seen[0] + seen[1]) == list(range(30))
        shard_sets = [{paths[i].rsplit(".tar/", 1)[0] for i in s} for s in seen]
        assert not shard_sets[0] & shard_sets[1] and len(shard_sets[0] | shard_sets[1]) == 8
        assert abs(len(seen[0]) - len(seen[1])) <= 4  # at most one shard's worth apart
        for step in range(3):
            both = len(loaders[0].plan.batches[step]) + len(loaders[1].plan.batches[step])
            assert loaders[0].global_batch(step) == both
    # a resumed epoch (from step 2) reads exactly the batches the whole epoch read there
    whole = _rank_loader(data, 1, 2)
    list(whole.epoch(1))
    resumed = _rank_loader(data, 1, 2)
    list(resumed.epoch(1, start=2))
    assert resumed.plan.batches == whole.plan.batches[2:]


def test_more_ranks_than_shards_is_one_clear_error(folders_and_shards, tmp_path):
    _, shards = folders_and_shards
    data = build_data(tiny_config(shards, tmp_path, "data.cache=stream", "data.image_size=16"))
    with pytest.raises(UserError, match="in 8 shards but 9 processes"):
        list(_rank_loader(data, 0, 9).epoch(0))


def test_shard_size_takes_images_or_bytes():
    assert parse_shard_size("5000") == (5000, 0)
    assert parse_shard_size("256MB") == (0, 256_000_000)
    assert parse_shard_size("1.5gb") == (0, 1_500_000_000)
    for bad in ("0", "1.5", "lots", "-3"):
        with pytest.raises(UserError, match="give a number of images"):
            parse_shard_size(bad)


def test_a_byte_limit_closes_each_shard_before_it_passes_the_limit(class_folders, tmp_path):
    write_shards(str(class_folders), tmp_path / "s", shard_size="4KB", progress=False)
    tars = list((tmp_path / "s").glob("*.tar"))
    assert len(tars) > 3
    for t in tars:  # a tar ends with two 512 B zero blocks and pads to 10 KiB records
        with tarfile.open(t) as tar:
            assert sum(512 + -(-m.size // 512) * 512 for m in tar) <= 4000 or len(tar.getmembers()) == 3


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def one_line_error(capsys, args: list, pattern: str) -> None:
    """In-process: the command fails with status 2 and one stderr line matching ``pattern``."""
    import re

    from resnetlab.cli import main

    assert main([str(a) for a in args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(pattern, lines[0]), lines


def test_bad_shards_are_one_line_each(folders_and_shards, tmp_path, capsys):
    root, shards = folders_and_shards
    png = (root / "train" / "ant" / "000.png").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    _tar(bad / "train-0.tar", {"a.png": png, "a.cls": b"0", "b.png": png})
    one_line_error(capsys, ["data", "inspect", bad], r"train-0.tar: sample b has no label \(no b.cls")
    _tar(bad / "train-0.tar", {"a.png": png, "a.cls": b"0", "b.txt": b"hi", "b.cls": b"1"})
    one_line_error(capsys, ["data", "inspect", bad], "sample b has no image")
    (bad / "train-0.tar").write_bytes(b"not a tar at all" * 100)
    one_line_error(capsys, ["data", "inspect", bad], "train-0.tar is not a readable tar file")
    one_line_error(capsys, ["data", "inspect", f"{shards}/train-{{000010..000012}}.tar"], r"matches no file \(3 names")
    one_line_error(capsys, ["data", "inspect", f"{shards}/train-{{000006..000009}}.tar"],
                   r"2 of the 4 shards .* are missing \(the first: .*train-000008.tar\)")
    one_line_error(capsys, ["data", "inspect", f"{shards}/train-{{000006..000009.tar"], "unbalanced braces")
    one_line_error(capsys, ["data", "shards", root, "--out", shards], "already holds .tar shards")
    one_line_error(capsys, ["data", "shards", root, "--out", tmp_path / "x", "--shard-size", "many"],
                   "give a number of images")
    # and through the real command line: no traceback, one line, status 2
    assert_one_line_error(cli("data", "inspect", bad), "is not a readable tar file")


def test_a_partial_shard_is_never_read(folders_and_shards, tmp_path):
    """An interrupted write leaves a hidden .partial file; readers see only the complete shards."""
    _, shards = folders_and_shards
    (shards / ".train-000008.tar.partial").write_bytes(b"half a shard")
    catalog, _, _ = read_catalog(str(shards))
    assert len(catalog) == 39


def test_data_shards_command(class_folders, tmp_path, capsys):
    proc = in_process(capsys, "data", "shards", class_folders, "--out", tmp_path / "s", "--shard-size", "20")
    assert proc.returncode == 0, proc.stderr
    assert "train 36 images in 2 shards, test 12 images in 1 shards (3 classes)" in proc.stdout


def test_a_streamed_run_from_shards_scores_its_test_split_and_evaluates_again(folders_and_shards, tmp_path):
    from resnetlab.cli import main

    _, shards = folders_and_shards
    cfg = tiny_config(shards, tmp_path, "data.cache=stream", "data.image_size=16", "data.num_workers=0",
                      "train.epochs=1")
    s = prepare(cfg, run_name="t")
    fit(s)
    first = json.loads((s.run_dir / "eval_test.json").read_text())
    assert first["n"] == 9
    assert main(["evaluate", str(s.run_dir), "--no-figures"]) == 0
    again = json.loads((s.run_dir / "eval_test.json").read_text())
    assert (again["n"], again["top1"], again["confusion"]) == (first["n"], first["top1"], first["confusion"])


def test_shards_are_byte_for_byte_what_tarfile_writes(folders_and_shards):
    """The writer emits headers and padding itself (no TarFile holding every member): the result
    must equal tarfile's own archive of the same members, end blocks and record padding included."""
    _, shards = folders_and_shards
    for path in sorted(shards.glob("*.tar"))[:3]:
        reference = io.BytesIO()
        with tarfile.open(path) as ours, tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as ref:
            for member in ours:
                ref.addfile(member, ours.extractfile(member))
        assert path.read_bytes() == reference.getvalue(), path.name


def test_the_index_beside_a_shard_gives_the_catalog_its_headers_give(folders_and_shards):
    """resnetlab's writer leaves <shard>.idx.json so a reader need not parse every tar header; it
    must say what the headers say, and one written for another version of the shard is ignored."""
    _, shards = folders_and_shards
    indexed, _, _ = read_catalog(str(shards))
    for idx in shards.glob("*.idx.json"):
        idx.rename(idx.with_suffix(".off"))
    scanned, _, _ = read_catalog(str(shards))
    assert (indexed.keys, indexed.paths) == (scanned.keys, scanned.paths)
    assert (indexed.labels == scanned.labels).all() and (indexed.splits == scanned.splits).all()
    stale = json.loads((shards / "train-000000.idx.off").read_text())
    stale["samples"][0]["label"] = 2  # a lie, and for a shard of another size
    stale["tar_bytes"] += 512
    (shards / "train-000000.idx.json").write_text(json.dumps(stale))
    again, _, _ = read_catalog(str(shards))
    assert again.labels[0] == scanned.labels[0] == 0
