"""Tiny data sets in each real layout, made fresh per test, plus the real subsets in ../shared/data."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from resnetlab.config import load_config
from resnetlab.run.saving import WRITER_THREAD

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)
# every cached run reads and fills the decoded cache (~/.cache/resnetlab by default): the suite gets its
# own, shared by its tests (and their subprocesses), so real-data tests decode each file once
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="resnetlab-test-cache-")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (the only kind of test CI may skip)")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped test fails, unless it is marked gpu: CI has chromium, Debian's
    Fashion-MNIST and ../shared, so a skip there means a test silently did not run."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("gpu") is None:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (only GPU tests may skip): {reason}"


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A class-specific, easy-to-learn RGB image: a bright band whose position encodes the class."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    band = size // 4
    start = (label * band) % (size - band + 1)
    img[start : start + band, :, label % 3] = 230
    return img


def write_class_folders(root: Path, *, classes=("ant", "bee", "cat"), per_class=12, size=16, seed=0,
                        splits=("train", "test"), fmt="png") -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        base = root / split if split else root
        for label, name in enumerate(classes):
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            n = per_class if split in ("train", "") else max(2, per_class // 3)
            for i in range(n):
                Image.fromarray(pattern(label, size, rng)).save(folder / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def class_folders(tmp_path) -> Path:
    return write_class_folders(tmp_path / "folders")


@pytest.fixture
def single_folder(tmp_path) -> Path:
    return write_class_folders(tmp_path / "single", splits=("",), per_class=20)


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    root = tmp_path / "idx"
    root.mkdir()
    rng = np.random.default_rng(1)
    for prefix, n, gz in (("train", 60, True), ("t10k", 20, False)):
        labels = np.arange(n) % 4
        images = np.stack([pattern(int(label), 12, rng)[:, :, 0] for label in labels])
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return root


@pytest.fixture
def cifar_folder(tmp_path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    for name, n in [(f"data_batch_{i}", 10) for i in range(1, 6)] + [("test_batch", 10)]:
        labels = list(rng.integers(0, 10, n))
        data = np.stack([pattern(int(label), 32, rng).transpose(2, 0, 1).reshape(-1) for label in labels])
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(label) for label in labels], b"batch_label": name.encode()}, f)
    return root


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA


def write_mosaic_csv(root: Path, *, train: int = 240, test: int = 60, tile: int = 16, empty: float = 0.05,
                     seed: int = 0) -> Path:
    """Multi-label data from real photos: 2x2 mosaics of ../shared/data's CIFAR-10 JPEGs, each labelled
    with the 1-3 classes its tiles show (5% plain grey, labelled with none); test tiles are photos no
    train mosaic uses. Returns labels.csv (image_name,tags,split)."""
    from resnetlab.data.mosaic import write_mosaics

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return write_mosaics(SHARED_DATA / "cifar10-jpeg" / "train", root, train=train, test=test, tile=tile,
                         empty=empty, seed=seed)


def tiny_overrides(dataset: Path | str, out_dir: Path, *extra: str) -> list[str]:
    """Overrides that train in about a second: a narrow ResNet-9 on tiny images (2 epochs, unless a time
    budget or stages in ``extra`` give the length: train.epochs beside either is refused)."""
    planned = any(e.startswith(("train.time_budget=", "stages=")) and not e.endswith("=") for e in extra)
    return [
        f"data.dataset={dataset}",
        f"train.out_dir={out_dir}",
        "model.name=resnet9",
        "model.filters=[8,8,16,16]",
        *([] if planned else ["train.epochs=2"]),
        "train.batch_size=8",
        "train.eval_batch_size=16",
        "train.progress=false",
        "optim.lr=0.05",
        "augment.crop_padding=2",
        "schedule.name=cosine",
        "train.name=run",
        "train.report=false",  # the report tests turn it on
        "train.device=cpu",  # the tests' figures are for the CPU, also on a machine with a GPU
        *extra,
    ]


def wait_for_writes(timeout: float = 60.0) -> None:
    """Until no checkpoint is being written in the background (run/saving.py's writer thread), so a
    callback that kills the process or deletes the run folder acts after the epoch's write, as it did
    when epoch ends wrote synchronously."""
    deadline = time.monotonic() + timeout
    while any(t.name == WRITER_THREAD for t in threading.enumerate()):
        assert time.monotonic() < deadline, f"a checkpoint write still going after {timeout} s"
        time.sleep(0.01)


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """`resnetlab ARGS` as main() in this process, as the console script calls it: its exit code and
    what it printed, warnings included, as a real process would print them (Python's default filters).
    A real process costs ~3-4 s of imports; tests/test_cli.py checks that path."""
    from resnetlab.cli import main

    capsys.readouterr()  # what came before is not this command's
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # pytest's filters show every warning; a process shows Python's defaults
        warnings.simplefilter("default")
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", hidden)
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's errors and --help end the console script this way
            code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return subprocess.CompletedProcess(args, code, out, err)


def tiny_config(dataset: Path | str, out_dir: Path, *extra: str):
    return load_config(None, tiny_overrides(dataset, out_dir, *extra))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private torchvision cache: $TORCH_HOME/hub/checkpoints, where torchvision looks first."""
    old = torch.hub.get_dir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    yield tmp_path / "torch" / "hub" / "checkpoints"
    torch.hub.set_dir(old)


def place_weights(cache, arch, weights_name, state):
    enum = torchvision.models.get_model_weights(arch)[weights_name]
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache / enum.url.rsplit("/", 1)[-1])
