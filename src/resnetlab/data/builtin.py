"""Data sets by name: a local copy first, torchvision's download otherwise.

Local copies are looked for in ``$RESNETLAB_DATA/<name>``, the places Debian
installs them, and resnetlab's own download folder
(``$XDG_CACHE_HOME/resnetlab/datasets``, by default ``~/.cache/...``).
"""

from __future__ import annotations

import os
from pathlib import Path

from resnetlab.errors import UserError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]

# name -> (local folder names to try, torchvision class, sub-folder torchvision writes, Debian folder)
BUILTIN = {
    "fashion-mnist": ("fashion-mnist", "FashionMNIST", "FashionMNIST/raw", "/usr/share/datasets/fashion-mnist"),
    "mnist": ("mnist", "MNIST", "MNIST/raw", "/usr/share/datasets/mnist"),
    "cifar10": ("cifar10", "CIFAR10", "cifar-10-batches-py", None),
    "cifar100": ("cifar100", "CIFAR100", "cifar-100-python", None),
}
CLASS_NAMES = {"fashion-mnist": FASHION_CLASSES, "mnist": MNIST_CLASSES}


def download_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "resnetlab" / "datasets"


def candidates(name: str) -> list[Path]:
    folder, _, sub, debian = BUILTIN[name]
    roots = []
    if os.environ.get("RESNETLAB_DATA"):
        base = Path(os.environ["RESNETLAB_DATA"])
        roots += [base / folder, base / folder / sub, base / sub]
    if debian:
        roots.append(Path(debian))
    roots += [download_root() / folder / sub]
    return roots


def resolve_builtin(name: str, *, download: bool = True) -> Path:
    """A folder holding the data set's files; downloads through torchvision if none is found."""
    from resnetlab.data.cifar import is_cifar_folder
    from resnetlab.data.idx import is_idx_folder

    check = is_cifar_folder if name.startswith("cifar") else is_idx_folder
    for root in candidates(name):
        if root.is_dir() and check(root):
            return root
    if not download:
        raise UserError(f"{name} is not on disk; looked in {', '.join(map(str, candidates(name)))}")
    return _download(name, check)


def _download(name: str, check) -> Path:
    import torchvision.datasets

    folder, cls_name, sub, _ = BUILTIN[name]
    target = download_root() / folder
    print(f"{name} not found locally; downloading with torchvision.datasets.{cls_name} to {target}")
    cls = getattr(torchvision.datasets, cls_name)
    try:
        for train in (True, False):
            cls(str(target), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        where = " or ".join(str(p) for p in candidates(name)[:-1] + [target / sub])
        raise UserError(
            f"cannot download {name} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"offline, put its files in {where}"
        ) from None
    if not check(target / sub):
        raise UserError(f"torchvision's download of {name} left no usable files in {target / sub}")
    return target / sub
