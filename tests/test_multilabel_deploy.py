"""Multi-label runs deployed: predict, export, serve and the page give label sets at the run's thresholds."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.deploy.export import TIE, load_export, sidecar
from resnetlab.deploy.predictor import Predictor
from tests.browser import page_after_upload
from tests.conftest import tiny_overrides, write_mosaic_csv

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real multi-label run on CIFAR mosaics, fp32, with val (thresholds fitted there) and test splits."""
    tmp = tmp_path_factory.mktemp("multilabel_deploy")
    labels = write_mosaic_csv(tmp / "data", train=240, test=60, tile=16)
    args = tiny_overrides(labels, tmp, "data.multi_label=true", "data.val_fraction=0.25", "train.precision=fp32",
                          "train.epochs=3")
    assert main(["train", *args]) == 0
    images = sorted((tmp / "data").glob("test_*.png"))[:16]  # test mosaics: never seen in training or val
    return tmp / "run", images


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    """The run without its exports, to edit thresholds.json without touching the module's run."""
    return Path(shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("export", "tensorboard")))


def _predict_csv(model, images, out: Path, *extra) -> list[dict]:
    assert main(["predict", str(model), *map(str, images), "--format", "csv", "-o", str(out), *extra]) == 0
    return list(csv.DictReader(out.open()))


def _expected(probs: torch.Tensor, thresholds: list[float]) -> list[list[str]]:
    return [[c for c, v, t in zip(CLASSES, p.tolist(), thresholds) if v >= t] for p in probs]


def test_predict_gives_label_sets_at_the_thresholds_fitted_on_val(run, tmp_path):
    run_dir, images = run
    fitted = json.loads((run_dir / "thresholds.json").read_text())
    assert fitted["fitted_on"] == "val" and fitted["classes"] == CLASSES
    predictor = Predictor.load(run_dir)
    assert predictor.multi_label and predictor.thresholds.tolist() == fitted["thresholds"]  # unrounded, exact
    probs = predictor.probabilities(predictor.load_images(list(map(str, images)))[0])
    expected = _expected(probs, fitted["thresholds"])
    rows = _predict_csv(run_dir, images, tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "labels", *[f"prob_{c}" for c in CLASSES], "error"]
    assert [r["labels"].split() for r in rows] == expected
    for r, p in zip(rows, probs):  # the written probabilities re-decide to the written labels
        assert [float(r[f"prob_{c}"]) for c in CLASSES] == p.tolist()
    assert main(["predict", str(run_dir), *map(str, images), "--format", "json", "-o", str(tmp_path / "p.json")]) == 0
    rows_json = json.loads((tmp_path / "p.json").read_text())
    assert [r["labels"] for r in rows_json] == expected and list(rows_json[0]["probabilities"]) == CLASSES
    assert any(expected)  # some labels: the check above is not of empty sets only


def test_a_label_is_present_exactly_when_its_probability_reaches_the_threshold(run, tmp_path):
    run_dir = _copy(run[0], tmp_path)
    images = run[1]
    path = run_dir / "thresholds.json"
    fitted = json.loads(path.read_text())
    for value, labels in ((0.0, " ".join(CLASSES)), (1.0, "")):
        path.write_text(json.dumps({**fitted, "thresholds": [value] * 10}))
        rows = _predict_csv(run_dir, images, tmp_path / f"{value}.csv")
        assert all(float(r[f"prob_{c}"]) < 1 for r in rows for c in CLASSES)
        assert [r["labels"] for r in rows] == [labels] * len(images)
    # one class at a threshold between two images' probabilities: exactly the images above it have it
    probs = [float(r["prob_cat"]) for r in rows]
    cut = sorted(probs)[len(probs) // 2]
    path.write_text(json.dumps({**fitted, "thresholds": [1.0] * 3 + [cut] + [1.0] * 6}))
    rows = _predict_csv(run_dir, images, tmp_path / "cut.csv")
    assert [r["labels"] for r in rows] == ["cat" if p >= cut else "" for p in probs]


def test_damaged_or_missing_thresholds_one_line_or_default(run, tmp_path, capsys):
    run_dir = _copy(run[0], tmp_path)
    images = run[1][:4]
    out = tmp_path / "out.csv"
    for damage in ("{", None):
        if damage is None:
            (run_dir / "thresholds.json").unlink()
        else:
            (run_dir / "thresholds.json").write_text(damage)
        assert main(["predict", str(run_dir), *map(str, images), "--format", "csv", "-o", str(out)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in captured.err and "--default-thresholds" in err[0]
        assert "thresholds.json" in err[0] and not out.exists()
    rows = _predict_csv(run_dir, images, out, "--default-thresholds")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0.5" in err[0] and "--default-thresholds" in err[0]
    assert [r["labels"].split() for r in rows] == [[c for c in CLASSES if float(r[f"prob_{c}"]) >= 0.5] for r in rows]


def test_single_label_options_say_what_to_use_instead(run, capsys):
    run_dir, images = run
    for option in (["--topk", "2"], ["--topk", "1"], ["--no-reject"]):
        assert main(["predict", str(run_dir), str(images[0]), *option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and option[0] in err[0] and "thresholds.json" in err[0] and "label set" in err[0]


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".torchscript.pt"), ("openvino", ".xml")])
def test_export_carries_the_thresholds_and_agrees(run, fmt, suffix, tmp_path, capsys):
    run_dir, images = run
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(tmp_path / "model")]) == 0
    assert "label sets 100.00%" in capsys.readouterr().out
    path = tmp_path / f"model{suffix}"
    meta = json.loads(sidecar(path).read_text())
    fitted = json.loads((run_dir / "thresholds.json").read_text())
    assert meta["task"] == "multi_label" and meta["thresholds"] == fitted["thresholds"]
    assert meta["agreement"]["label_set_agreement"] == 1.0 and meta["agreement"]["max_probability_difference"] < 1e-4
    exported, predictor = load_export(path), Predictor.load(run_dir)
    assert exported.multi_label and exported.thresholds.tolist() == fitted["thresholds"]
    x = predictor.load_images(list(map(str, images)))[0]
    ours, theirs = predictor.probabilities(x), exported.probabilities(x)
    assert (ours - theirs).abs().max() < 1e-4 and (theirs.sum(1) - 1).abs().max() > 0.1  # sigmoids, not a softmax
    rows, ref = _predict_csv(path, images, tmp_path / "e.csv"), _predict_csv(run_dir, images, tmp_path / "r.csv")
    near = ((ours - torch.tensor(fitted["thresholds"])).abs() <= TIE).tolist()  # may fall either side
    for r, s, ties in zip(rows, ref, near):
        differ = set(r["labels"].split()) ^ set(s["labels"].split())
        assert all(ties[CLASSES.index(c)] for c in differ), (r["path"], differ)


def test_hf_folder_carries_the_thresholds_and_gives_the_run_s_label_sets(run, tmp_path, capsys):
    run_dir, images = run
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert "label sets 100.00%" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    fitted = json.loads((run_dir / "thresholds.json").read_text())
    assert config["task"] == "multi_label" and config["thresholds"] == fitted["thresholds"]
    loaded = Predictor.load(out)
    assert loaded.multi_label and loaded.thresholds.tolist() == fitted["thresholds"]
    ours, theirs = _predict_csv(run_dir, images, tmp_path / "r.csv"), _predict_csv(out, images, tmp_path / "h.csv")
    assert [r["labels"] for r in theirs] == [r["labels"] for r in ours]
    card = (out / "README.md").read_text()
    assert "| mAP (macro) |" in card and "its own threshold" in card


def test_an_export_giving_other_label_sets_is_refused(run, monkeypatch, tmp_path, capsys):
    import resnetlab.deploy.export as export

    real = export.load_export

    def flipped(path, **kw):
        loaded = real(path, **kw)
        inner = loaded.runner
        loaded.runner = lambda x: 1 - inner(x)  # same argmin/argmax structure, every decision reversed
        return loaded

    monkeypatch.setattr(export, "load_export", flipped)
    assert main(["export", str(run[0]), "--format", "torchscript", "--out", str(tmp_path / "bad" / "model")]) == 2
    assert "disagrees with the checkpoint" in capsys.readouterr().err
    assert list((tmp_path / "bad").iterdir()) == []


def test_int8_is_measured_by_map_and_label_sets(run, tmp_path, capsys):
    out = tmp_path / "q" / "model"
    assert main(["export", str(run[0]), "--format", "onnx", "--int8", "--out", str(out)]) == 0
    meta = json.loads(out.with_name("model.int8.onnx.json").read_text())
    q = meta["quantization"]
    assert meta["task"] == "multi_label" and meta["int8"] is True
    assert q["task"] == "multi_label" and 0 <= q["int8_map"] <= 1 and q["label_set_agreement"] > 0.5
    assert "top1_agreement" not in q and "mAP" in capsys.readouterr().out
    assert load_export(out.with_name("model.int8.onnx")).multi_label


def test_serve_answers_the_label_set(run, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from resnetlab.deploy.serve import Limits, create_app, load_model

    run_dir, images = run
    model = load_model(run_dir)
    client = TestClient(create_app(model, Limits(batch_size=8), source=str(run_dir)))
    assert client.get("/health").json()["task"] == "multi_label"
    fitted = json.loads((run_dir / "thresholds.json").read_text())
    listed = client.get("/classes").json()
    assert listed["task"] == "multi_label" and listed["thresholds"] == dict(zip(CLASSES, fitted["thresholds"]))
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[:4]]
    answers = client.post("/predict", files=files).json()["predictions"]
    probs = model.probabilities(model.load_images(list(map(str, images[:4])))[0])
    assert [a["labels"] for a in answers] == _expected(probs, fitted["thresholds"])
    assert [a["filename"] for a in answers] == [p.name for p in images[:4]]
    assert all(list(a["probabilities"]) == CLASSES for a in answers) and "top" not in answers[0]
    bad = client.post("/predict?topk=3", files=files[:1])
    assert bad.status_code == 400 and "label set" in bad.json()["error"]


def test_page_shows_label_chips_in_headless_chromium(run, tmp_path):
    """The page's chips are the API's label set; the bars below are the other classes, most probable first."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    from resnetlab.deploy.serve import create_app, load_model

    run_dir, images = run
    model = load_model(run_dir)
    counts = [len(labels) for labels in _expected(model.probabilities(model.load_images(list(map(str, images)))[0]),
                                                  model.thresholds.tolist())]
    image = next((p for p, n in zip(images, counts) if 1 <= n < 10), images[0])  # chips and bars both shown
    page = page_after_upload(browser, create_app(model, source=str(run_dir)), image, tmp_path, read={
        "chips": "[...document.querySelectorAll('#verdict .chip .label')].map(e => e.textContent)",
        "bars": "[...document.querySelectorAll('#bars .name')].map(e => e.textContent)"})
    probs = model.probabilities(model.load_images([str(image)])[0])[0]
    labels = _expected(probs[None], model.thresholds.tolist())[0]
    assert page["chips"] == labels
    others = sorted((c for c in CLASSES if c not in labels), key=lambda c: -float(probs[CLASSES.index(c)]))
    assert page["bars"] == others and page["errors"] == []
