"""Data sets by name: a local copy first, a download otherwise.

Local copies are looked for in ``$RESNETLAB_DATA/<folder>``, where Debian installs
them, and resnetlab's own download folder (``$XDG_CACHE_HOME/resnetlab/datasets``,
by default ``~/.cache/...``). Downloads go through torchvision, as its users expect:
its data set classes where it has one, its ``download_and_extract_archive`` for
Tiny ImageNet. Intel scenes sit behind a Kaggle login, so the error says where
to put them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from resnetlab.errors import UserError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
CLASS_NAMES = {"fashion-mnist": FASHION_CLASSES, "mnist": MNIST_CLASSES}

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
INTEL_URL = "https://www.kaggle.com/datasets/puneet6060/intel-image-classification"


@dataclass(frozen=True)
class Builtin:
    folders: tuple[str, ...]  # names tried under $RESNETLAB_DATA and the download folder
    subfolders: tuple[str, ...]  # where the layout's files sit inside such a folder
    system: str | None = None  # where a distribution package installs it
    torchvision: str | None = None  # torchvision.datasets class that downloads it
    url: str | None = None  # an archive torchvision's utils can fetch and unpack
    md5: str | None = None
    manual: str | None = None  # where a user gets it by hand when nothing can fetch it


BUILTIN = {
    "fashion-mnist": Builtin(("fashion-mnist",), ("", "FashionMNIST/raw"), "/usr/share/datasets/fashion-mnist",
                             torchvision="FashionMNIST"),
    "mnist": Builtin(("mnist",), ("", "MNIST/raw"), "/usr/share/datasets/mnist", torchvision="MNIST"),
    "cifar10": Builtin(("cifar10",), ("", "cifar-10-batches-py"), torchvision="CIFAR10"),
    "cifar100": Builtin(("cifar100",), ("", "cifar-100-python"), torchvision="CIFAR100"),
    "gtsrb": Builtin(("gtsrb", "GTSRB"), ("",), torchvision="GTSRB"),
    "tiny-imagenet": Builtin(("tiny-imagenet", "tiny-imagenet-200"), ("", "tiny-imagenet-200"), url=TINY_URL,
                             md5=TINY_MD5),
    "intel-scenes": Builtin(("intel-scenes", "intel"), ("",), manual=INTEL_URL),
}


def download_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "resnetlab" / "datasets"


def candidates(name: str) -> list[Path]:
    spec = BUILTIN[name]
    bases = []
    if os.environ.get("RESNETLAB_DATA"):
        bases += [Path(os.environ["RESNETLAB_DATA"]) / f for f in spec.folders]
    if spec.system:
        bases.append(Path(spec.system))
    bases.append(download_root() / spec.folders[0])
    return [base / sub if sub else base for base in bases for sub in spec.subfolders]


def resolve_builtin(name: str, is_layout: Callable[[Path], bool], *, download: bool = True) -> Path:
    """A folder holding the data set's files; downloads it if none is found and it can be."""
    for root in candidates(name):
        if root.is_dir() and is_layout(root):
            return root
    spec = BUILTIN[name]
    target = download_root() / spec.folders[0]
    places = ", ".join(dict.fromkeys(str(p) for p in candidates(name)))
    if spec.manual or not download:
        how = f"download it from {spec.manual} and unpack it into " if spec.manual else "put its files in "
        raise UserError(f"{name} is not on disk: {how}{target} (or $RESNETLAB_DATA/{spec.folders[0]}); "
                        f"looked in {places}")
    print(f"{name} not found locally; downloading to {target}")
    try:
        _download(spec, target)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise UserError(
            f"cannot download {name} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
            f"offline, put its files in {target} (or $RESNETLAB_DATA/{spec.folders[0]})"
        ) from None
    for root in candidates(name):
        if root.is_dir() and is_layout(root):
            return root
    raise UserError(f"the download of {name} left no usable files in {target}")


def _download(spec: Builtin, target: Path) -> None:
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    if spec.url:
        download_and_extract_archive(spec.url, str(target), md5=spec.md5, remove_finished=True)
        return
    cls = getattr(torchvision.datasets, spec.torchvision)
    if spec.torchvision == "GTSRB":
        for split in ("train", "test"):
            cls(str(target), split=split, download=True)
        return
    for train in (True, False):
        cls(str(target), train=train, download=True)
