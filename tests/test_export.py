"""Exports carry their preprocessing: same answers as the checkpoint, checked on export, int8 optional."""

import csv
import json
import re

import pytest
import torch

from resnetlab.cli import main
from resnetlab.deploy.export import load_export, sidecar
from resnetlab.deploy.predictor import Predictor, expand_inputs
from tests.conftest import tiny_overrides, write_class_folders


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run in fp32 with a val split, so checkpoint and export can be compared exactly."""
    tmp = tmp_path_factory.mktemp("export")
    data = write_class_folders(tmp / "data", per_class=16, size=16)
    args = tiny_overrides(data, tmp, "data.val_fraction=0.25", "train.precision=fp32", "train.epochs=3")
    assert main(["train", *args]) == 0
    return tmp / "run", data


def _predictions(model, folder, tmp_path, name):
    out = tmp_path / f"{name}.csv"
    assert main(["predict", str(model), str(folder), "--format", "csv", "-o", str(out), "--topk", "3",
                 "--no-reject"]) == 0
    return {r["path"]: r for r in csv.DictReader(out.open())}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_agrees_and_predict_takes_it(run, fmt, tmp_path, capsys):
    run_dir, data = run
    assert main(["export", str(run_dir), "--format", fmt]) == 0
    path = run_dir / "export" / ("model" + {"onnx": ".onnx", "torchscript": ".torchscript.pt",
                                           "safetensors": ".safetensors"}[fmt])
    meta = json.loads(sidecar(path).read_text())
    assert meta["classes"] == ["ant", "bee", "cat"] and meta["input"] == {
        "layout": "nhwc", "dtype": "uint8", "size": 16, "channels": 3, "shape": ["N", 16, 16, 3]}
    assert meta["agreement"]["top1_agreement"] == 1.0 and meta["agreement"]["split"] == "val"
    assert meta["agreement"]["max_probability_difference"] < 1e-4
    assert "top-1 100.00%" in capsys.readouterr().out
    ours = _predictions(run_dir, data / "test", tmp_path, "run")
    theirs = _predictions(path, data / "test", tmp_path, fmt)
    assert ours.keys() == theirs.keys()
    for key, row in ours.items():
        assert theirs[key]["class1"] == row["class1"]
        assert abs(float(theirs[key]["prob1"]) - float(row["prob1"])) < 1e-4


def test_nchw_layout_and_onnx_batch_is_dynamic(run, tmp_path):
    run_dir, data = run
    assert main(["export", str(run_dir), "--format", "onnx", "--layout", "nchw", "--out", str(tmp_path / "m")]) == 0
    exported = load_export(tmp_path / "m.onnx")
    predictor = Predictor.load(run_dir)
    images, _, _ = predictor.load_images(expand_inputs([str(data / "test")]))
    for n in (1, 5, len(images)):  # exported with a batch of 2: other sizes must work
        assert exported.probabilities(images[:n]).shape == (n, 3)


def test_int8_agrees_with_fp32_and_is_written_beside_its_target(run, capsys, monkeypatch):
    import os
    from pathlib import Path

    import resnetlab.deploy.quantize as quantize

    real = os.replace

    def same_file_system_only(src, dst):
        # what a /tmp on another file system does: a rename across folders of different devices fails;
        # here every folder outside the target's counts as another device
        if Path(dst).resolve().parent not in Path(src).resolve().parents:
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(quantize.os, "replace", same_file_system_only)
    run_dir, _ = run
    assert main(["export", str(run_dir), "--format", "onnx", "--int8"]) == 0
    meta = json.loads((run_dir / "export" / "model.int8.onnx.json").read_text())
    q = meta["quantization"]
    assert q["n"] == 12 and q["calibration_images"] == 36
    # int8 must name the same class as fp32 on at least 11 of the 12 val images (a stated share)
    assert q["top1_agreement"] >= 11 / 12 and abs(q["int8_top1"] - q["fp32_top1"]) <= 1 / 12
    assert q["fp32_images_per_s"] > 0 and q["int8_images_per_s"] > 0
    assert "img/s" in capsys.readouterr().out
    images = Predictor.load(run_dir).load_images(expand_inputs([str(run_dir.parent / "data" / "test")]))[0]
    probs = load_export(run_dir / "export" / "model.int8.onnx").probabilities(images)
    # the int8 graph's softmax output is quantised too (steps of 1/255): sums are 1 within ~1%
    assert probs.shape == (len(images), 3) and torch.allclose(probs.sum(1), torch.ones(len(images)), atol=0.01)
    assert not [p for p in (run_dir / "export").iterdir() if p.name.startswith(".")]  # no scratch left


def test_a_failed_reexport_keeps_the_previous_export(run, monkeypatch, capsys, tmp_path):
    import resnetlab.cli.export as cli_export

    run_dir, _ = run
    out = tmp_path / "keep" / "model"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    model, meta = out.with_name("model.torchscript.pt"), out.with_name("model.torchscript.pt.json")
    before = (model.read_bytes(), meta.read_text())
    monkeypatch.setattr(cli_export, "MIN_AGREEMENT", 1.01)  # no export can pass: the check fails
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 2
    assert "the previous export was kept" in capsys.readouterr().err
    assert (model.read_bytes(), meta.read_text()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.torchscript.pt", "model.torchscript.pt.json"]
    assert main(["export", str(run_dir), "--check-images", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("resnetlab export: error: --check-images 0: the agreement check needs "
                                               "at least 1 image (1000 is usual)")
    assert (model.read_bytes(), meta.read_text()) == before


def test_a_disagreeing_export_is_removed(run, monkeypatch, capsys):
    import resnetlab.deploy.export as export

    run_dir, _ = run
    real = export.load_export

    def skewed(path, **kw):
        loaded = real(path, **kw)
        inner = loaded.runner
        loaded.runner = lambda x: inner(x)[:, ::-1].copy()  # classes scrambled
        return loaded

    monkeypatch.setattr(export, "load_export", skewed)
    out = run_dir / "bad" / "model"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 2
    assert "disagrees with the checkpoint" in capsys.readouterr().err
    assert not (run_dir / "bad" / "model.onnx").exists() and not (run_dir / "bad" / "model.onnx.json").exists()
    assert list((run_dir / "bad").iterdir()) == []  # no temporary file left behind either


def test_export_bad_input(run, tmp_path, capsys):
    run_dir, data = run
    empty = tmp_path / "empty"
    assert main(["train", *tiny_overrides(data, tmp_path, "train.epochs=1", "train.name=empty")]) == 0
    (empty / "best.pt").unlink(missing_ok=True)  # no val split: there is only last.pt
    (empty / "last.pt").unlink()
    assert main(["export", str(empty)]) == 2
    assert main(["export", str(run_dir), "--format", "tflite"]) == 2
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    sidecar(fake).write_text(json.dumps({"format": "onnx"}))
    assert main(["predict", str(fake), str(data / "test")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].endswith("has no checkpoint yet: train it first (`resnetlab train --resume " + str(empty) + "`)")
    assert err[1] == ("resnetlab export: error: unknown export format 'tflite': "
                      "choose one of onnx, torchscript, safetensors, openvino, hf")
    assert "is not a model onnxruntime can load" in err[2]


def _untrained_classifier(name: str, size: int):
    from resnetlab.evaluate.inference import Classifier
    from resnetlab.models import get_model

    torch.manual_seed(0)
    model = get_model(name, num_classes=3, in_chans=3).eval()
    return Classifier(model=model, classes=["a", "b", "c"], image_size=size, channels=3, resize="squash",
                      mean=torch.full((3,), 0.5), std=torch.full((3,), 0.25), device=torch.device("cpu"),
                      precision="fp32")


def _architectures():
    """One registered model per architecture: of the models with the same family, name (its digits left
    out) and module types, the one with the fewest parameters. ResNet-34/101/152 stack more of ResNet-18's
    or -50's blocks, ops the exporter has already been through; exporting them took ~80 s of the suite."""
    from resnetlab.models import get_model, list_models, model_entry

    chosen = {}
    for name in list_models():
        with torch.device("meta"):  # the module tree, without allocating or initialising weights
            model = get_model(name, num_classes=3, in_chans=3)
        key = (model_entry(name).family, re.sub(r"\d+", "", name), frozenset(type(m) for m in model.modules()))
        params = sum(p.numel() for p in model.parameters())
        if key not in chosen or params < chosen[key][1]:
            chosen[key] = (name, params)
    # each at the smallest size its stem keeps spatial (torchvision's ImageNet stem divides by 32)
    return [(name, 64 if model_entry(name).pretrained else 32) for name, _ in sorted(chosen.values())]


@pytest.mark.parametrize("name,size", _architectures())
def test_every_architecture_exports_to_onnx(name, size, tmp_path):
    """Every architecture in the registry goes through this torch's ONNX exporter and onnxruntime agrees with
    the model on 4 random images (write_export's own check, at 100% top-1)."""
    from resnetlab.deploy.export import write_export

    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    path, result = write_export(_untrained_classifier(name, size), "onnx", tmp_path / name, images=images,
                                min_agreement=1.0)
    assert path.is_file() and result["n"] == 4 and result["max_probability_difference"] < 1e-4


def test_onnx_falls_back_to_the_torchscript_exporter(tmp_path, monkeypatch):
    """Where the dynamo exporter fails (torch 2.11 on an op it has no function for), the TorchScript
    exporter writes the file, and the same agreement check judges it."""
    import functools

    from resnetlab.deploy.export import write_export

    real = torch.onnx.export

    @functools.wraps(real)  # the same signature, which the fallback reads
    def dynamo_fails(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("no ONNX function for aten.adaptive_max_pool2d")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    path, result = write_export(_untrained_classifier("resnet9", 32), "onnx", tmp_path / "m", images=images,
                                min_agreement=1.0)
    assert result["top1_agreement"] == 1.0 and load_export(path).probabilities(images[:1]).shape == (1, 3)
    # a batch size other than the example's 2: the TorchScript export's batch axis is dynamic too
    assert load_export(path).probabilities(images[:3]).shape == (3, 3)
