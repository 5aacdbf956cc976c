"""Exports carry their preprocessing: same answers as the checkpoint, checked on export, int8 optional."""

import csv
import json

import pytest

from resnetlab.cli import main
from resnetlab.export import load_export, sidecar
from resnetlab.predict import Predictor, expand_inputs
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


def test_int8_reports_accuracy_and_speed(run, capsys):
    run_dir, _ = run
    assert main(["export", str(run_dir), "--format", "onnx", "--int8"]) == 0
    meta = json.loads((run_dir / "export" / "model.int8.onnx.json").read_text())
    q = meta["quantization"]
    assert q["n"] == 12 and q["calibration_images"] == 36 and 0 <= q["int8_top1"] <= 1
    assert q["fp32_images_per_s"] > 0 and q["int8_images_per_s"] > 0
    assert "img/s" in capsys.readouterr().out
    assert load_export(run_dir / "export" / "model.int8.onnx").probabilities  # loads and runs under onnxruntime


def test_a_disagreeing_export_is_removed(run, monkeypatch, capsys):
    import resnetlab.export as export

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


def test_export_bad_input(run, tmp_path, capsys):
    run_dir, data = run
    empty = tmp_path / "empty"
    assert main(["train", *tiny_overrides(data, tmp_path, "train.epochs=1", "train.name=empty")]) == 0
    (empty / "best.pt").unlink()
    (empty / "last.pt").unlink()
    assert main(["export", str(empty)]) == 2
    assert main(["export", str(run_dir), "--format", "tflite"]) == 2
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    sidecar(fake).write_text(json.dumps({"format": "onnx"}))
    assert main(["predict", str(fake), str(data / "test")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].endswith("has no checkpoint yet: train it first (`resnetlab train --resume " + str(empty) + "`)")
    assert err[1] == "resnetlab export: error: unknown export format 'tflite': choose one of onnx, torchscript, safetensors"
    assert "is not a model onnxruntime can load" in err[2]
