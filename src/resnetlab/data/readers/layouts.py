"""``data.dataset`` (a name, a folder or a CSV) -> the Catalog of its labelled images.

Layouts are recognised from their own marker files, most specific first:
WebDataset tar shards (a folder of them, or a brace pattern), a CSV manifest,
MNIST IDX files, CIFAR python batches, GTSRB (INI, torchvision or Kaggle), Tiny
ImageNet, then plain class folders (Intel scenes included).
"""

from __future__ import annotations

from pathlib import Path

from resnetlab.data.catalog import Catalog, check_labels, from_arrays
from resnetlab.data.readers import builtin, folder, gtsrb, tinyimagenet
from resnetlab.data.readers.cifar import is_cifar_folder, load_cifar_folder
from resnetlab.data.readers.idx import is_idx_folder, load_idx_folder
from resnetlab.data.readers.manifest import is_manifest, read_manifest
from resnetlab.data.readers.webdataset import is_shards, read_shards
from resnetlab.errors import UserError

_READERS = (
    ("idx", is_idx_folder, lambda root: root),
    ("cifar", is_cifar_folder, lambda root: root),
    ("gtsrb", lambda root: gtsrb.find(root) is not None, gtsrb.find),
    ("tiny-imagenet", lambda root: tinyimagenet.find(root) is not None, tinyimagenet.find),
    ("folder", folder.is_class_folder, lambda root: root),
)
_EXPECTED = {"gtsrb": "gtsrb", "tiny-imagenet": "tiny-imagenet", "intel-scenes": "folder",
             "fashion-mnist": "idx", "mnist": "idx", "cifar10": "cifar", "cifar100": "cifar"}


def detect(root: Path) -> str | None:
    for kind, test, _ in _READERS:
        if test(root):
            return kind
    return None


def resolve_root(dataset: str) -> Path:
    """The folder (or CSV file) ``dataset`` names, downloading a built-in data set if needed."""
    if dataset in builtin.BUILTIN:
        wanted = _EXPECTED[dataset]
        return builtin.resolve_builtin(dataset, lambda root: detect(root) == wanted)
    root = Path(dataset).expanduser()
    if not root.exists() and root.suffix.lower() in (".csv", ".tsv"):
        raise UserError(f"CSV file {root} does not exist: give a CSV of path,label[,split] rows")
    if not root.exists():
        names = ", ".join(builtin.BUILTIN)
        raise UserError(f"data set '{dataset}' is neither a folder or CSV that exists nor a known name ({names})")
    if root.is_file() and not is_manifest(root):
        raise UserError(f"data set path {root} is a file; give the folder that holds the data, or a .csv manifest")
    return root


def read_catalog(dataset: str) -> tuple[Catalog, Path, dict[str, int]]:
    """The catalog of one class an image, the root its keys are relative to, and class-name aliases
    (GTSRB's). Label sets come only from a CSV manifest (bundle.py reads them)."""
    if dataset not in builtin.BUILTIN and is_shards(dataset):
        catalog, root, aliases = read_shards(dataset)
        check_labels(catalog, dataset)
        return catalog, root, aliases
    root = resolve_root(dataset)
    if root.is_file():
        catalog = read_manifest(root)
        return catalog, root.parent, {}
    kind = detect(root)
    if kind == "idx":
        parts = load_idx_folder(root)
        classes = builtin.CLASS_NAMES.get(dataset) or [str(i) for i in range(int(parts["train"][1].max()) + 1)]
        catalog = from_arrays(classes, parts)
    elif kind == "cifar":
        classes, parts = load_cifar_folder(root)
        catalog = from_arrays(classes, parts)
    elif kind == "gtsrb":
        root = gtsrb.find(root)
        catalog = gtsrb.read(root)
    elif kind == "tiny-imagenet":
        root = tinyimagenet.find(root)
        catalog = tinyimagenet.read(root)
    elif kind == "folder":
        catalog = folder.read(root)
    else:
        raise UserError(
            f"{root} is not a data set resnetlab can read: expected class folders, a CSV of path,label, "
            "GTSRB, Tiny ImageNet, cifar-10-batches-py, or MNIST IDX files"
        )
    check_labels(catalog, str(root))
    return catalog, root, gtsrb.ALIASES if kind == "gtsrb" else {}
