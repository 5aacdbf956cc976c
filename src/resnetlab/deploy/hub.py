"""Hugging Face Hub folders: a run's model as the Hub takes it, loaded back as a Classifier, fetched by
``hf-hub:ORG/NAME[@REVISION]`` and pushed with huggingface_hub.

The folder holds the weights alone (model.safetensors), what rebuilds and feeds the model (config.json:
the export sidecar's keys, deploy/export.py, plus the Hub's library_name and id2label) and a model card
(README.md, deploy/card.py). Weights are read with safetensors only, never torch.load: a downloaded
file cannot run code. Like every export it is checked before it is kept: written to a temporary folder
beside the target, loaded back and compared with the checkpoint on real images, and put in place only
when it agrees. huggingface_hub is imported only here and only when used (the `hub` extra); every Hub
failure (offline, no token, refused, unreachable) is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import torch

from resnetlab._version import __version__
from resnetlab.config import AugmentConfig
from resnetlab.deploy.card import model_card
from resnetlab.deploy.export import agreement, export_meta, model_from_meta, require_agreement
from resnetlab.device import inference_precision, select_device
from resnetlab.errors import UserError, need_extra
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.task import task_named
from resnetlab.io import atomic_write_bytes, atomic_write_text, make_folder, write_json

HUB_PREFIX = "hf-hub:"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
LIBRARY = "resnetlab"
DEFAULT_THRESHOLD = 0.5  # a multi-label class's decision where config.json has none (--default-thresholds)


def is_hub_spec(path: str | Path) -> bool:
    return str(path).startswith(HUB_PREFIX)


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def is_hub_model(path: str | Path) -> bool:
    """``hf-hub:ORG/NAME`` or a local folder holding config.json and model.safetensors."""
    return is_hub_spec(path) or is_hf_folder(path)


def load_hf(path: str | Path, *, device: str | torch.device = "auto", decisions: bool = True,
            default_thresholds: bool = False, cls: type[Classifier] = Classifier) -> Classifier:
    """The model of a Hugging Face folder (or ``hf-hub:ORG/NAME``, downloaded or from the cache) as a
    ``cls``, in fp32. ``decisions``: with the temperature, rejection threshold or multi-label thresholds
    of config.json (``default_thresholds``: 0.5 where a multi-label config.json has none)."""
    folder = resolve(path)
    meta = read_hf_config(folder)
    dev = select_device(device) if isinstance(device, str) else device
    task = task_named(meta.get("task"))
    pre, shape = meta["preprocess"], meta["input"]
    known = {f.name for f in fields(AugmentConfig)}
    decided = _decisions(meta, task, folder, default_thresholds) if decisions else {}
    return cls(
        model=model_from_meta(meta, folder / WEIGHTS).to(dev), classes=list(meta["classes"]),
        image_size=shape["size"], channels=shape["channels"], resize=pre["resize"],
        mean=torch.tensor(pre["mean"], device=dev), std=torch.tensor(pre["std"], device=dev), device=dev,
        precision=inference_precision("fp32", dev),
        augment=AugmentConfig(**{k: v for k, v in meta.get("augment", {}).items() if k in known}), task=task,
        source=f"{WEIGHTS} ({path})", checkpoint=folder / WEIGHTS, model_name=meta["model"]["name"],
        model_options=dict(meta["model"]["options"]), **decided,
    )


def read_hf_config(folder: Path) -> dict:
    """config.json of a resnetlab Hugging Face folder, or one line saying what it is not."""
    path = folder / CONFIG
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is not readable JSON: export the run again with `resnetlab export RUN --format hf`"
                        ) from None
    library = meta.get("library_name") if isinstance(meta, dict) else None
    if library != LIBRARY:
        raise UserError(f"{folder} holds a {library or 'non-resnetlab'} model (config.json library_name "
                        f"{library!r}): resnetlab loads only the folders `resnetlab export --format hf` writes")
    missing = [key for key in ("model", "classes", "input", "preprocess") if key not in meta]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}: export the run again with "
                        "`resnetlab export RUN --format hf`")
    return meta


def _decisions(meta: dict, task, folder: Path, default_thresholds: bool) -> dict:
    """Classifier fields for what decides: the temperature and calibration, or multi-label thresholds."""
    if task.one_class:
        return {"temperature": float(meta.get("temperature", 1.0)), "calibration": meta.get("calibration")}
    thresholds = meta.get("thresholds")
    if isinstance(thresholds, list) and len(thresholds) == len(meta["classes"]):
        return {"thresholds": torch.tensor(thresholds, dtype=torch.float32),
                "threshold_source": f"thresholds from {folder / CONFIG} ({meta.get('threshold_source', '')})"}
    if not default_thresholds:
        raise UserError(f"{folder / CONFIG} has no threshold for each of its {len(meta['classes'])} classes: "
                        "export the run again, or pass --default-thresholds to decide at 0.5")
    return {"thresholds": torch.full((len(meta["classes"]),), DEFAULT_THRESHOLD),
            "threshold_source": f"{folder / CONFIG} has no thresholds: every threshold is {DEFAULT_THRESHOLD} "
                                "(--default-thresholds)"}


def write_hf(predictor: Classifier, out: Path, *, images: torch.Tensor, min_agreement: float, split: str = "",
             run_dir: Path | None = None, license: str | None = None, repo_id: str | None = None
             ) -> tuple[Path, dict]:
    """The folder ``out`` (model.safetensors, config.json, README.md) for ``predictor``, checked on
    ``images`` first as write_export checks; a previous folder is replaced only by one that agrees.
    Returns the folder and the agreement figures."""
    if len(images) == 0:
        raise UserError("no images to check the export on: the check needs at least one")
    if not _replaceable(out):
        raise UserError(f"{out} exists and is not a Hugging Face folder resnetlab wrote: choose another --out")
    reference = predictor.probabilities(images)  # before the model is moved to fp32 on the CPU
    model = predictor.model.float().eval().to("cpu").to(memory_format=torch.contiguous_format)
    make_folder(out.parent)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        from safetensors.torch import save

        atomic_write_bytes(tmp / WEIGHTS, save({k: v.contiguous() for k, v in model.state_dict().items()}))
        meta = hub_config(predictor, run_dir)
        write_json(tmp / CONFIG, meta)
        loaded = load_hf(tmp, device="cpu")
        result = {**agreement(reference, loaded.probabilities(images), predictor.task.thresholds_of(predictor)),
                  "split": split}
        require_agreement(result, "hf", min_agreement, kept=out.exists())
        meta["agreement"] = result
        write_json(tmp / CONFIG, meta)
        atomic_write_text(tmp / CARD, model_card(meta, run_dir, license=license, repo_id=repo_id))
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, result


def hub_config(predictor: Classifier, run_dir: Path | None) -> dict:
    """config.json: the export sidecar's keys (classes, input, preprocessing, task and what decides),
    with the Hub's library_name and label maps; no local paths, since the file may be made public."""
    meta = export_meta(predictor, "hf", WEIGHTS, "nchw")
    meta["source_checkpoint"] = Path(predictor.checkpoint).name if predictor.checkpoint else predictor.source
    classes = list(predictor.classes)
    return {"library_name": LIBRARY, "resnetlab_version": __version__, **meta, "num_classes": len(classes),
            "id2label": {str(i): c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)},
            "run": run_dir.name if run_dir else None}


def _replaceable(out: Path) -> bool:
    """Whether ``out`` may be replaced: missing, an empty folder, or a folder resnetlab's hf export wrote."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return True
    try:
        return is_hf_folder(out) and bool(read_hf_config(out))
    except UserError:
        return False


def _replace_folder(new: Path, out: Path) -> None:
    """``new`` renamed to ``out``; a previous ``out`` is moved aside first and removed after."""
    old = out.with_name(f".{out.name}.old-{time.time_ns()}") if out.exists() else None
    if old is not None:
        os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A local folder as it is; ``hf-hub:ORG/NAME[@REVISION]`` downloaded into (or read from) the Hub's
    cache, which HF_HUB_OFFLINE=1 keeps to the cache alone."""
    if not is_hub_spec(path):
        return Path(path)
    spec = str(path)
    repo_id, _, revision = spec[len(HUB_PREFIX):].partition("@")
    hub = need_extra("huggingface_hub", "hub", f"loading {spec}")
    with hub_errors(f"cannot fetch {spec}"):
        folder = hub.snapshot_download(repo_id, revision=revision or None, allow_patterns=[WEIGHTS, CONFIG, CARD],
                                       library_name=LIBRARY, library_version=__version__)
    if not is_hf_folder(folder):
        raise UserError(f"{spec} has no {CONFIG} and {WEIGHTS}: it is not a model `resnetlab export --format hf` "
                        "wrote")
    return Path(folder)


def push(repo_id: str, folder, *, private: bool = False, message: str | None = None) -> str:
    """Upload the Hugging Face folder ``folder()`` returns to the model repository ``repo_id`` (made
    where missing) and return its URL. The repository is made first, so a missing token or an
    unreachable Hub stops the push before ``folder()`` (an export, say) runs."""
    hub = need_extra("huggingface_hub", "hub", "resnetlab push")
    api = hub.HfApi(library_name=LIBRARY, library_version=__version__)
    with hub_errors(f"cannot push to {repo_id}"):
        # token=True: the client itself refuses to go on without HF_TOKEN or a saved login
        url = api.create_repo(repo_id, exist_ok=True, private=private, token=True)
    path = folder()
    with hub_errors(f"cannot push to {repo_id}"):
        api.upload_folder(repo_id=repo_id, folder_path=str(path), token=True,
                          commit_message=message or f"resnetlab {__version__}: {path.name}")
    return str(url)


@contextmanager
def hub_errors(doing: str):
    """The Hub client's failures as one line: ``doing``, then why and what to do."""
    from huggingface_hub import errors as e  # a submodule: the package's lazy attributes leave it out
    kinds = [e.HfHubHTTPError, e.LocalTokenNotFoundError, e.LocalEntryNotFoundError, e.HFValidationError,
             ConnectionError, TimeoutError]
    # the HTTP library of this huggingface_hub (httpx2 from 1.x on, requests before): its transport errors
    kinds += [getattr(sys.modules[m], a) for m, a in (("httpx2", "HTTPError"), ("httpx", "HTTPError"),
                                                      ("requests", "RequestException")) if m in sys.modules]
    try:
        yield
    except tuple(kinds) as error:
        raise UserError(f"{doing}: {_why(error)}") from None


def _why(error: BaseException) -> str:
    from huggingface_hub import constants
    from huggingface_hub import errors as e

    first = " ".join(str(error).split())[:200] or type(error).__name__
    offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
    if isinstance(error, e.LocalTokenNotFoundError):
        return "no Hugging Face token: set HF_TOKEN or log in with `hf auth login`"
    if isinstance(error, e.LocalEntryNotFoundError):  # a download, from neither the Hub nor the cache
        return ("HF_HUB_OFFLINE is set and it is not in the local cache: unset HF_HUB_OFFLINE or give a local folder"
                if offline else "the Hub cannot be reached and it is not in the local cache: check the network")
    if offline and isinstance(error, ConnectionError):
        return "HF_HUB_OFFLINE is set, so the Hub is not contacted: unset it to reach the Hub"
    if isinstance(error, (e.RepositoryNotFoundError, e.GatedRepoError)):
        return "no such model on the Hub, or it is private or gated and the token (HF_TOKEN) does not give access"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the Hub refused the token (HTTP {status}): check that HF_TOKEN may write to this repository"
    if isinstance(error, e.HFValidationError):
        return f"not a repository id ({first}): give ORG/NAME"
    return f"the Hub cannot be reached ({type(error).__name__}: {first})"
