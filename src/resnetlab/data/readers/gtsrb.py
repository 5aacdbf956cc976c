"""GTSRB (German Traffic Sign Recognition Benchmark) in the layouts it is published in.

- INI's own archives: ``Final_Training/Images/000NN/*.ppm`` with ``GT-000NN.csv`` and
  ``Final_Test/Images/*.ppm`` with ``GT-final_test.csv`` (``;``-separated, with
  Width, Height and Roi.X1..Roi.Y2 columns);
- what torchvision's ``GTSRB`` downloads: ``gtsrb/GTSRB/Training/000NN/...`` and
  ``gtsrb/GTSRB/Final_Test/Images`` with ``gtsrb/GT-final_test.csv``;
- Kaggle's: ``Train.csv`` / ``Test.csv`` (``,``-separated, a Path column) over
  ``Train/<id>/*.png`` and ``Test/*.png``.

Training images come in tracks: 30 photos of one physical sign as a car drove
past (``<track>_<image>.ppm``). Rows carry their track as a group, so a
validation split taken from training keeps whole tracks on one side; split
photo by photo, a sign's near-identical neighbours land in both and validation
accuracy says nothing.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from resnetlab.data.catalog import Catalog, from_files
from resnetlab.errors import UserError

CLASSES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)", "No passing",
    "No passing for vehicles over 3.5 metric tons", "Right-of-way at the next intersection", "Priority road",
    "Yield", "Stop", "No vehicles", "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution",
    "Dangerous curve to the left", "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road",
    "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians", "Children crossing",
    "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits",
    "Turn right ahead", "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left",
    "Keep right", "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]
# names the tutorials use for the same signs (British English)
ALIASES = {"give way": 13, "no overtaking": 9}

_TRAIN_DIRS = ("Final_Training/Images", "GTSRB/Final_Training/Images", "gtsrb/GTSRB/Training", "GTSRB/Training",
               "Training")
_TEST_DIRS = ("Final_Test/Images", "GTSRB/Final_Test/Images", "gtsrb/GTSRB/Final_Test/Images")
_TEST_GT = ("Final_Test/GT-final_test.csv", "Final_Test/Images/GT-final_test.csv", "GT-final_test.csv",
            "GTSRB/Final_Test/GT-final_test.csv", "GTSRB/Final_Test/Images/GT-final_test.csv",
            "GTSRB/GT-final_test.csv", "gtsrb/GT-final_test.csv")


def find(root: Path) -> Path | None:
    """The folder ``read`` takes (``root`` or one of the layout's sub-folders), or None."""
    if (root / "Train.csv").is_file():
        return root
    for sub in _TRAIN_DIRS:
        if (root / sub / "00000").is_dir():
            return root
    return None


def read(root: Path) -> Catalog:
    if (root / "Train.csv").is_file():
        return _read_kaggle(root)
    return _read_ini(root)


def _rows(path: Path, delimiter: str, needed: tuple[str, ...]):
    """(line number, row dict) of an annotation CSV, after checking it has the columns we use."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} has no {missing[0]} column (columns: {', '.join(reader.fieldnames or [])})")
            yield from ((n + 2, row) for n, row in enumerate(reader))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: GTSRB's annotation file; re-extract the data set") from None


def _box(path: Path, line: int, row: dict) -> tuple[list[int], list[int]]:
    try:
        size = [int(row["Width"]), int(row["Height"])]
        box = [int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]), int(row["Roi.Y2"])]
    except (TypeError, ValueError):
        raise UserError(f"{path} row {line}: Width/Height/Roi columns must be whole numbers") from None
    return size, box


def _class_id(path: Path, line: int, text: str) -> int:
    try:
        cid = int(text)
    except (TypeError, ValueError):
        raise UserError(f"{path} row {line}: ClassId {text!r} is not a number") from None
    if not 0 <= cid < len(CLASSES):
        raise UserError(f"{path} row {line}: ClassId {cid} is out of range; GTSRB has classes 0..{len(CLASSES) - 1}")
    return cid


class _Rows:
    def __init__(self):
        self.paths, self.keys, self.labels, self.splits, self.groups, self.boxes, self.sizes = ([] for _ in range(7))

    def add(self, root: Path, file: Path, label: int, split: str, group: int, size, box):
        self.paths.append(str(file))
        self.keys.append(file.relative_to(root).as_posix())
        self.labels.append(label)
        self.splits.append(split)
        self.groups.append(group)
        self.sizes.append(size)
        self.boxes.append(box)

    def catalog(self, notes: list[str]) -> Catalog:
        return from_files(CLASSES, [str(i) for i in range(len(CLASSES))], self.paths, self.keys, self.labels,
                          self.splits, notes=notes, groups=self.groups, boxes=self.boxes, sizes=self.sizes)


def _track(name: str) -> int:
    """'00012_00029.ppm' (INI) or '00012_00003_00029.png' (Kaggle) -> the track number."""
    parts = Path(name).stem.split("_")
    try:
        return int(parts[-2]) if len(parts) >= 2 else -1
    except ValueError:
        return -1


def _read_ini(root: Path) -> Catalog:
    train_dir = next(root / s for s in _TRAIN_DIRS if (root / s / "00000").is_dir())
    rows, notes = _Rows(), []
    for folder in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        try:
            folder_class = int(folder.name)
        except ValueError:
            continue
        gt = folder / f"GT-{folder.name}.csv"
        present = set(os.listdir(folder))
        for line, row in _rows(gt, ";", ("Filename", "ClassId", "Roi.X1")):
            cid = _class_id(gt, line, row["ClassId"])
            if cid != folder_class:
                raise UserError(f"{gt} row {line}: ClassId {cid} disagrees with its folder {folder.name}")
            if row["Filename"] not in present:
                raise UserError(f"{gt} row {line}: {row['Filename']} is not in {folder}")
            size, box = _box(gt, line, row)
            rows.add(root, folder / row["Filename"], cid, "train", cid * 100_000 + _track(row["Filename"]), size, box)
    test_dir = next((root / s for s in _TEST_DIRS if (root / s).is_dir()), None)
    gt = next((root / s for s in _TEST_GT if (root / s).is_file()), None)
    if test_dir is not None and gt is None:
        notes.append(f"{test_dir} has no labels (GT-final_test.csv from GTSRB_Final_Test_GT.zip): no test split")
    elif test_dir is not None:
        present = set(os.listdir(test_dir))
        for line, row in _rows(gt, ";", ("Filename", "ClassId", "Roi.X1")):
            if row["Filename"] not in present:
                raise UserError(f"{gt} row {line}: {row['Filename']} is not in {test_dir}")
            size, box = _box(gt, line, row)
            # test images are one photo a sign: each its own group
            rows.add(root, test_dir / row["Filename"], _class_id(gt, line, row["ClassId"]), "test", -1 - line,
                     size, box)
    return rows.catalog(notes)


def _read_kaggle(root: Path) -> Catalog:
    rows, notes = _Rows(), []
    for split, name in (("train", "Train.csv"), ("test", "Test.csv")):
        path = root / name
        if split == "test" and not path.is_file():
            notes.append(f"{root} has no Test.csv: no test split")
            continue
        listed: dict[Path, set[str]] = {}
        for line, row in _rows(path, ",", ("Path", "ClassId", "Roi.X1")):
            cid = _class_id(path, line, row["ClassId"])
            file = root / row["Path"]
            if file.parent not in listed:
                listed[file.parent] = set(os.listdir(file.parent)) if file.parent.is_dir() else set()
            if file.name not in listed[file.parent]:
                raise UserError(f"{path} row {line}: {row['Path']} does not exist under {root}")
            size, box = _box(path, line, row)
            group = cid * 100_000 + _track(file.name) if split == "train" else -1 - line
            rows.add(root, file, cid, split, group, size, box)
    return rows.catalog(notes)
