"""The tutorials' data sets in their own layouts, class subsets, the unknown class, splits, inspection."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.checkpoint import load_checkpoint
from resnetlab.cli import main
from resnetlab.data import build_data, plan_data, read_catalog
from resnetlab.data.images import load_array
from resnetlab.errors import UserError
from tests.conftest import tiny_config, write_class_folders

GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


@pytest.fixture
def gtsrb(shared_data) -> Path:
    return shared_data / "gtsrb"


def _ini_rows(gtsrb: Path, cls: int) -> list[list[str]]:
    gt = gtsrb / "GTSRB/Final_Training/Images" / f"{cls:05d}" / f"GT-{cls:05d}.csv"
    return [line.split(";") for line in gt.read_text().splitlines()[1:]]


def _small_ini_copy(gtsrb: Path, root: Path, train_dir: str, classes=(0, 1, 2)) -> Path:
    """Classes 0-2 of the real subset, copied into another GTSRB layout's folders."""
    for cls in classes:
        src = gtsrb / "GTSRB/Final_Training/Images" / f"{cls:05d}"
        dst = root / train_dir / f"{cls:05d}"
        dst.mkdir(parents=True)
        for f in src.iterdir():
            shutil.copy(f, dst / f.name)
    return root


@pytest.fixture
def gtsrb_kaggle(gtsrb, tmp_path) -> Path:
    """Kaggle's layout: Train/<id>/<cls>_<track>_<img>.png + Train.csv, Test/*.png + Test.csv, Meta/."""
    root = tmp_path / "kaggle"
    header = ["Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId", "Path"]
    train, test = [header], [header]
    for cls in (0, 1, 2):
        (root / "Train" / str(cls)).mkdir(parents=True)
        for name, w, h, x1, y1, x2, y2, _ in _ini_rows(gtsrb, cls)[:40]:
            rel = f"Train/{cls}/{cls:05d}_{name[:-4]}.png"
            Image.open(gtsrb / "GTSRB/Final_Training/Images" / f"{cls:05d}" / name).save(root / rel)
            train.append([w, h, x1, y1, x2, y2, cls, rel])
    (root / "Test").mkdir()
    (root / "Meta").mkdir()
    test_gt = (gtsrb / "GTSRB/Final_Test/GT-final_test.csv").read_text().splitlines()[1:]
    for line in test_gt[:12]:
        name, w, h, x1, y1, x2, y2, cid = line.split(";")
        rel = f"Test/{name[:-4]}.png"
        Image.open(gtsrb / "GTSRB/Final_Test/Images" / name).save(root / rel)
        test.append([w, h, x1, y1, x2, y2, cid, rel])
    for name, rows in (("Train.csv", train), ("Test.csv", test)):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def test_gtsrb_official_layout_real_subset(gtsrb):
    catalog, root, aliases = read_catalog(str(gtsrb))
    assert len(catalog.classes) == 43
    assert catalog.classes[0] == "Speed limit (20km/h)"
    assert catalog.classes[42] == "End of no passing by vehicles over 3.5 metric tons"
    assert catalog.classes[12:15] == ["Priority road", "Yield", "Stop"] and aliases["give way"] == 13
    assert catalog.counts() == {"train": [90] * 43, "test": catalog.counts()["test"]}
    assert sum(catalog.counts()["test"]) == 1000
    first = catalog.keys.index("GTSRB/Final_Training/Images/00012/00000_00001.ppm")
    assert catalog.labels[first] == 12
    assert catalog.boxes[first].tolist() == [6, 6, 22, 24] and catalog.sizes[first].tolist() == [27, 29]
    # tracks: 3 of 30 photos a class in this subset
    train = catalog.rows("train")
    assert len(np.unique(catalog.groups[train])) == 43 * 3


def test_gtsrb_validation_keeps_whole_tracks(gtsrb, tmp_path):
    cfg = tiny_config(gtsrb, tmp_path, "data.val_fraction=0.2", "data.image_size=16")
    catalog, _, _ = plan_data(cfg)
    for g in np.unique(catalog.groups):
        assert len(set(catalog.splits[catalog.groups == g])) == 1, f"track {g} is split"
    val = catalog.rows("val")
    assert np.bincount(catalog.labels[val], minlength=43).tolist() == [30] * 43  # one whole track a class
    again, _, _ = plan_data(cfg)
    assert np.array_equal(again.splits, catalog.splits)
    other, _, _ = plan_data(tiny_config(gtsrb, tmp_path, "data.val_fraction=0.2", "seed=3"))
    assert not np.array_equal(other.splits, catalog.splits)


def test_gtsrb_kaggle_layout(gtsrb_kaggle, gtsrb):
    catalog, root, _ = read_catalog(str(gtsrb_kaggle))
    assert root == gtsrb_kaggle and len(catalog.classes) == 43
    assert catalog.counts()["train"][:4] == [40, 40, 40, 0] and sum(catalog.counts()["test"]) == 12
    i = catalog.keys.index("Train/1/00001_00000_00003.png")
    name, w, h, x1, y1, x2, y2, _ = _ini_rows(gtsrb, 1)[3]
    assert catalog.boxes[i].tolist() == [int(x1), int(y1), int(x2), int(y2)]
    assert catalog.groups[i] == catalog.groups[catalog.keys.index("Train/1/00001_00000_00000.png")]
    assert catalog.groups[i] != catalog.groups[catalog.keys.index("Train/1/00001_00001_00000.png")]


def test_gtsrb_torchvision_layout(gtsrb, tmp_path):
    root = _small_ini_copy(gtsrb, tmp_path / "tv", "gtsrb/GTSRB/Training")
    images = root / "gtsrb/GTSRB/Final_Test/Images"
    images.mkdir(parents=True)
    lines = (gtsrb / "GTSRB/Final_Test/GT-final_test.csv").read_text().splitlines()
    for line in lines[1:6]:
        shutil.copy(gtsrb / "GTSRB/Final_Test/Images" / line.split(";")[0], images)
    (root / "gtsrb/GT-final_test.csv").write_text("\n".join(lines[:6]) + "\n")
    catalog, _, _ = read_catalog(str(root))
    assert catalog.counts()["train"][:4] == [90, 90, 90, 0] and sum(catalog.counts()["test"]) == 5


def test_gtsrb_roi_crop_with_margin(gtsrb, tmp_path):
    data = build_data(tiny_config(gtsrb, tmp_path, "data.classes=12", "data.image_size=24", "data.roi_crop=true",
                                  "data.roi_margin=0"))
    path = str(gtsrb / "GTSRB/Final_Training/Images/00012/00000_00001.ppm")
    i = data.splits["train"].paths.index(path)
    # ROI 6,6..22,24 inclusive: a 17 x 19 px crop, then squashed to 24 px
    expected = Image.open(path).convert("RGB").crop((6, 6, 23, 25)).resize((24, 24), Image.Resampling.BILINEAR,
                                                                            reducing_gap=3.0)
    assert torch.equal(data.splits["train"].images[i], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    wide, _ = load_array(path, 0, "squash", box=[6, 6, 22, 24], margin=0.5)
    assert wide.shape[:2] == (29, 27)  # widened by half the box each side, kept inside the 27 x 29 photo


def test_gtsrb_bad_annotations(gtsrb, tmp_path):
    root = _small_ini_copy(gtsrb, tmp_path / "ini", "Final_Training/Images", classes=(0, 1))
    gt = root / "Final_Training/Images/00001/GT-00001.csv"
    good = gt.read_text()
    gt.write_text(good.replace("00000_00002.ppm", "00000_99999.ppm", 1))
    with pytest.raises(UserError, match=r"GT-00001.csv row 4: 00000_99999.ppm is not in .*00001"):
        read_catalog(str(root))
    gt.write_text(good.replace(";1\n", ";57\n", 1))
    with pytest.raises(UserError, match=r"GT-00001.csv row 2: ClassId 57 is out of range; GTSRB has classes 0..42"):
        read_catalog(str(root))
    gt.write_text(good.replace(";1\n", ";2\n", 1))
    with pytest.raises(UserError, match=r"row 2: ClassId 2 disagrees with its folder 00001"):
        read_catalog(str(root))
    gt.unlink()
    with pytest.raises(UserError, match=r"GT-00001.csv is missing"):
        read_catalog(str(root))


def test_class_subset_with_unknown_class(gtsrb, tmp_path):
    cfg = tiny_config(gtsrb, tmp_path, "data.classes=12,give way,Stop,no entry", "data.unknown_count=390",
                      "data.image_size=16")
    catalog, _, _ = plan_data(cfg)
    assert catalog.classes == ["Priority road", "Yield", "Stop", "No entry", "unknown"]
    assert catalog.class_ids == ["12", "13", "14", "17", "unknown"]
    counts = catalog.counts()
    assert counts["train"][:4] == [90, 90, 90, 90]
    assert counts["train"][4] + counts["test"][4] == 390  # shared over splits by their sizes
    unknown = catalog.rows("train")[catalog.labels[catalog.rows("train")] == 4]
    origins = {k.split("/")[3] for k in (catalog.keys[i] for i in unknown)}
    assert len(origins) == 39 and not origins & {"00012", "00013", "00014", "00017"}  # every other class, equally
    fraction, _, _ = plan_data(tiny_config(gtsrb, tmp_path, "data.classes=[14]", "data.unknown_fraction=0.1"))
    assert fraction.counts()["train"] == [90, 378]  # 10% of the other 42 classes' 3,780


def test_class_selection_errors(gtsrb, tmp_path):
    with pytest.raises(UserError, match=r"no class 'Stp' in this data set; did you mean 'Stop'\?"):
        plan_data(tiny_config(gtsrb, tmp_path, "data.classes=Stp"))
    with pytest.raises(UserError, match=r"no class '99'"):
        plan_data(tiny_config(gtsrb, tmp_path, "data.classes=99"))
    with pytest.raises(UserError, match=r"names 'Stop' twice"):
        plan_data(tiny_config(gtsrb, tmp_path, "data.classes=14,stop"))
    with pytest.raises(UserError, match="need data.classes"):
        plan_data(tiny_config(gtsrb, tmp_path, "data.unknown_count=5"))


def test_intel_layout_fractions_and_fixed_val_count(shared_data, tmp_path):
    intel = shared_data / "intel"
    catalog, _, _ = plan_data(tiny_config(intel, tmp_path, "data.test_fraction=0.1", "data.val_fraction=0.1"))
    assert catalog.classes == ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    assert catalog.counts() == {"train": [64] * 6, "val": [8] * 6, "test": [8] * 6}  # 80/10/10 of 80 a class
    assert catalog.keys[0] == "seg_train/seg_train/buildings/0.jpg"
    counted, _, notes = plan_data(tiny_config(intel, tmp_path, "data.val_count=100"))
    assert sum(counted.counts()["val"]) == 100 and counted.counts()["test"] == [20] * 6
    assert notes == []
    _, _, replaced = plan_data(tiny_config(intel, tmp_path, "data.test_fraction=0.1"))
    assert "own test split (120 images) is left out" in replaced[0]


def test_split_file_is_written_and_reused(shared_data, tmp_path):
    from resnetlab.run.fit import fit
    from resnetlab.run.prepare import prepare

    intel = shared_data / "intel"
    extra = ("data.image_size=16", "data.val_count=30", "data.classes=forest,sea", "data.unknown_fraction=0.05")
    session = prepare(tiny_config(intel, tmp_path / "runs", *extra, "train.epochs=1"), run_name="t")
    fit(session)
    run = session.run_dir
    rows = list(csv.reader((run / "split.csv").open()))
    assert rows[0] == ["key", "label", "split"] and len(rows) - 1 == len(session.data.catalog)
    assert {r[1] for r in rows[1:]} == {"forest", "sea", "unknown"}
    info = json.loads((run / "data.json").read_text())
    assert info["counts"]["val"] == session.data.counts()["val"] and info["class_ids"][-1] == "unknown"
    # a later run with another seed and fractions, given the split file, uses exactly the same images
    other = build_data(tiny_config(intel, tmp_path, *extra, "seed=5", f"data.split_file={run / 'split.csv'}"))
    for name, split in session.data.splits.items():
        assert other.splits[name].paths == split.paths and torch.equal(other.splits[name].labels, split.labels)
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert json.loads((run / "eval_val.json").read_text())["n"] == 30
    # Intel's unlabelled seg_pred folder, whole, into one CSV
    out = tmp_path / "seg_pred.csv"
    assert main(["predict", str(run), str(intel / "seg_pred"), "--format", "csv", "-o", str(out), "--topk", "2"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "verdict", "class1", "prob1", "class2", "prob2", "error"] and len(rows) == 61
    assert {r[2] for r in rows[1:]} <= {"forest", "sea", "unknown"}


def test_tiny_imagenet_layout_real_subset(shared_data):
    catalog, root, _ = read_catalog(str(shared_data / "tiny-imagenet"))
    assert root.name == "tiny-imagenet-200"
    assert len(catalog.classes) == 200 and catalog.class_ids == sorted(catalog.class_ids)
    assert catalog.classes[catalog.class_ids.index("n01443537")] == "goldfish"
    assert catalog.counts()["train"] == [10] * 200 and catalog.counts()["val"] == [2] * 200
    i = catalog.keys.index("val/images/val_0.JPEG")
    assert catalog.class_ids[catalog.labels[i]] == "n03444034"


def _tiny_copy(shared_data: Path, dst: Path, wnids: int = 3) -> Path:
    src = shared_data / "tiny-imagenet/tiny-imagenet-200"
    keep = sorted((src / "wnids.txt").read_text().split())[:wnids]
    (dst / "val/images").mkdir(parents=True)
    (dst / "wnids.txt").write_text("\n".join(keep) + "\n")
    shutil.copy(src / "words.txt", dst)
    for w in keep:
        shutil.copytree(src / "train" / w, dst / "train" / w)
    lines = [line for line in (src / "val/val_annotations.txt").read_text().splitlines()
             if line.split("\t")[1] in keep]
    for line in lines:
        shutil.copy(src / "val/images" / line.split("\t")[0], dst / "val/images")
    (dst / "val/val_annotations.txt").write_text("\n".join(lines) + "\n")
    return dst


def test_tiny_imagenet_errors(shared_data, tmp_path):
    root = _tiny_copy(shared_data, tmp_path / "tiny")
    catalog, _, _ = read_catalog(str(root))
    assert sum(catalog.counts()["val"]) == 6
    wnids = (root / "wnids.txt").read_text().split()
    ann = root / "val/val_annotations.txt"
    good = ann.read_text()
    ann.write_text(good.replace(wnids[1], "n99999999", 1))
    with pytest.raises(UserError, match=r"val_annotations.txt line \d+: n99999999 is not in .*wnids.txt"):
        read_catalog(str(root))
    ann.write_text(good)
    for f in (root / "train" / wnids[2] / "images").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=rf"wnids.txt line 3: {wnids[2]} has no images in"):
        read_catalog(str(root))
    (root / "wnids.txt").write_text("\n".join(wnids[:2]) + "\n")
    with pytest.raises(UserError, match=rf"has folder {wnids[2]} that .*wnids.txt does not list"):
        read_catalog(str(root))


def test_csv_manifest(tmp_path):
    folders = write_class_folders(tmp_path / "imgs", classes=("3", "10", "2"), per_class=4, splits=("",))
    lines = ["path,label,split"]
    for cls in ("3", "10", "2"):
        for i, f in enumerate(sorted((folders / cls).iterdir())):
            lines.append(f"imgs/{cls}/{f.name},{cls},{'test' if i == 0 else ''}")
    manifest = tmp_path / "data.csv"
    manifest.write_text("\n".join(lines) + "\n")
    data = build_data(tiny_config(manifest, tmp_path))
    assert data.classes == ["2", "3", "10"]  # integer labels sort as numbers
    assert len(data.splits["train"]) == 9 and len(data.splits["test"]) == 3
    manifest.write_text("\n".join(lines[1:3] + ["imgs/3/nope.png,3"]) + "\n")  # no header
    with pytest.raises(UserError, match=r"data.csv row 3: imgs/3/nope.png does not exist \(paths are relative to"):
        build_data(tiny_config(manifest, tmp_path))
    manifest.write_text("path,label,split\nimgs/3/000.png,3,holdout\n")
    with pytest.raises(UserError, match=r"row 2: split 'holdout' should be train, val or test"):
        build_data(tiny_config(manifest, tmp_path))
    with pytest.raises(UserError, match=r"CSV file .*missing.csv does not exist"):
        build_data(tiny_config(tmp_path / "missing.csv", tmp_path))


def test_builtin_names_resolve_locally_or_say_where(shared_data, tmp_path, monkeypatch):
    from torchvision.datasets import utils

    monkeypatch.setenv("RESNETLAB_DATA", str(shared_data))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert len(read_catalog("gtsrb")[0].classes) == 43
    assert len(read_catalog("intel-scenes")[0].classes) == 6
    assert len(read_catalog("tiny-imagenet")[0].classes) == 200
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"intel-scenes is not on disk: download it from https://www.kaggle.com/\S+ "
                                        r"and unpack it into .*cache/resnetlab/datasets/intel-scenes"):
        read_catalog("intel-scenes")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"cannot download tiny-imagenet \(OSError: no network\); offline, put its "
                                        r"files in .*datasets/tiny-imagenet"):
        read_catalog("tiny-imagenet")


def test_balanced_sampler_and_class_weights():
    from resnetlab.data.loader import epoch_order
    from resnetlab.evaluate.task import balanced_weights

    labels = torch.tensor([0] * 90 + [1] * 10)
    w = balanced_weights(labels, 3)
    assert torch.allclose(w, torch.tensor([100 / 270, 100 / 30, 0.0]))
    order = epoch_order(100, seed=0, epoch=0, shuffle=True, weights=w[labels])
    picked = torch.bincount(labels[order], minlength=2)
    assert len(order) == 100 and 35 <= picked[1] <= 65  # about half from the 10% class
    assert torch.equal(order, epoch_order(100, seed=0, epoch=0, shuffle=True, weights=w[labels]))


def test_class_weights_change_training_on_imbalanced_data(tmp_path):
    from resnetlab.run.fit import fit
    from resnetlab.run.prepare import prepare

    root = write_class_folders(tmp_path / "d", per_class=24, size=16, splits=("train",))
    for name in ("bee", "cat"):  # 24 ants, 4 bees, 4 cats
        for f in sorted((root / "train" / name).iterdir())[4:]:
            f.unlink()
    runs = {}
    for weights in ("none", "balanced"):
        s = prepare(tiny_config(root, tmp_path / weights, f"optim.class_weights={weights}", "train.epochs=1"),
                    run_name="t")
        fit(s)
        runs[weights] = s
    expected = torch.tensor([32 / (3 * 24), 32 / (3 * 4), 32 / (3 * 4)])
    assert torch.allclose(runs["balanced"].class_weights.cpu(), expected)
    assert runs["none"].class_weights is None
    a, b = (load_checkpoint(s.run_dir / "last.pt")["model"]["fc.weight"] for s in runs.values())
    assert not torch.allclose(a, b)  # same seed and images: only the loss weights differ


def test_data_inspect_finds_bad_files_duplicates_and_leaks(tmp_path, capsys):
    root = write_class_folders(tmp_path / "d", per_class=6, size=20)
    ant = root / "train" / "ant"
    shutil.copy(ant / "000.png", ant / "copy.png")  # within train
    Image.open(ant / "001.png").save(root / "test" / "ant" / "leak.bmp")  # same pixels, other format, in test
    (root / "train" / "bee" / "broken.jpg").write_text("not an image")
    out = tmp_path / "report"
    assert main(["data", "inspect", str(root), "--out", str(out), "augment.hflip=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 18 + 6 + 3
    assert summary["counts"] == {"train": [7, 7, 6], "test": [3, 2, 2]}
    assert summary["bad_files"] == 1 and summary["leaks"] == {"test-train": 1}
    assert summary["duplicates_within_split"] == 1 and summary["label_conflicts"] == 0
    for name in ("counts.png", "sizes.png", "samples.png", "augment.png", "counts.csv", "duplicates.csv"):
        assert (out / name).stat().st_size > 0
    bad = list(csv.reader((out / "bad_files.csv").open()))
    assert bad[1][0].endswith("broken.jpg") and bad[1][3] == "not an image Pillow can read"
    printed = capsys.readouterr().out
    assert "unreadable files: 1" in printed and "test-train: 1" in printed
    counts = list(csv.reader((out / "counts.csv").open()))
    assert counts[0] == ["class_id", "class", "train", "test", "total"] and counts[1][2:] == ["7", "3", "10"]


def test_data_inspect_bad_input(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "neither a folder or CSV that exists" in capsys.readouterr().err
