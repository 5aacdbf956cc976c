"""Evaluation: metrics, calibration, rejection, TTA, Grad-CAM, figures and the HTML report in a real browser."""

import csv
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.deploy.predictor import Predictor
from resnetlab.evaluate import calibration
from resnetlab.evaluate.analysis import _target_layer, confused_pairs, grad_cam, top_losses
from resnetlab.evaluate.inference import Classifier, infer_tta
from resnetlab.evaluate.metrics import metrics
from resnetlab.models import get_model
from tests.conftest import tiny_overrides

SECTIONS = ["config", "data", "training", "metrics", "tta", "confusion", "errors", "calibration", "rejection"]


def test_metrics_by_hand():
    logits = torch.tensor([[2.0, 0, 0], [0, 2, 0], [2, 0, 0], [0, 0, 2]])
    result = metrics(logits, torch.tensor([0, 1, 1, 2]), ["a", "b", "c"])
    assert result["per_class"]["a"] == {"accuracy": 1.0, "precision": 0.5, "recall": 1.0, "f1": 0.666667, "n": 1,
                                        "predicted": 2}
    assert result["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert result["confusion_normalized"][1] == [0.5, 0.5, 0.0] and result["n"] == 4
    assert confused_pairs(result["confusion"], ["a", "b", "c"]) == [("b", "a", 1)]
    probs = logits.softmax(1)
    assert top_losses(probs, torch.tensor([0, 1, 1, 2]), 1) == [2]


def test_metrics_agree_with_sklearn_when_a_class_is_absent():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    # 4 classes; 'c' is predicted but never true, 'd' neither: sklearn's macro-F1 averages over
    # {a, b, c} (F1 2/3, 1/2, 0), balanced accuracy over the true classes {a, b} (recall 1/2, 1/2)
    labels = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 2])
    logits = torch.nn.functional.one_hot(pred, 4).float() * 3
    result = metrics(logits, labels, ["a", "b", "c", "d"])
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert result["macro_f1"] == pytest.approx(f1_score(labels.numpy(), pred.numpy(), average="macro"))
    assert result["balanced_accuracy"] == pytest.approx(0.5)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels.numpy(), pred.numpy()))
    assert result["per_class"]["c"]["f1"] == 0.0 and result["per_class"]["d"]["f1"] is None
    assert result["per_class"]["d"]["n"] == 0 and result["classes_present"] == 2


def test_ece_temperature_and_thresholds():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    value, bins = calibration.ece(probs, torch.tensor([0, 1, 0, 0]))
    # bin (0.867, 0.933]: confidence 0.9, accuracy 0.5; bin (0.533, 0.6]: confidence 0.6, accuracy 1
    assert value == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)
    assert sum(b["n"] for b in bins) == 4
    torch.manual_seed(0)
    true = torch.randn(4000, 5)
    labels = torch.distributions.Categorical(logits=true).sample()
    t = calibration.fit_temperature(true * 3, labels)  # three times overconfident
    assert t == pytest.approx(3.0, rel=0.1)
    known = torch.arange(100, dtype=torch.float64)
    assert calibration.threshold_for(known, 0.05) == 5.0  # rejects the 5 lowest: exactly 5%
    with pytest.raises(Exception, match=r"must be in \(0, 1\)"):
        calibration.threshold_for(known, 1.5)


def test_tta_views_and_grad_cam():
    torch.manual_seed(0)
    model = get_model("resnet9", num_classes=3, filters=[8, 8, 16, 16]).eval()
    images = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.long)
    from resnetlab.config import AugmentConfig

    aug = AugmentConfig(crop_padding=2, hflip=True)
    model = Classifier(model, ["a", "b", "c"], 16, 3, "squash", torch.zeros(3), torch.ones(3), torch.device("cpu"),
                       "fp32", augment=aug)
    one = infer_tta(model, images, labels, views=1, reduce="mean")
    with torch.no_grad():
        plain = model.model((images.float() / 255)).softmax(1)
    assert torch.allclose(one.logits.exp(), plain, atol=1e-5)
    four = infer_tta(model, images, labels, views=4, reduce="mean")
    again = infer_tta(model, images, labels, views=4, reduce="mean")
    assert torch.equal(four.logits, again.logits) and not torch.allclose(four.logits, one.logits)
    # where training flipped, the second view is the mirror (a linear model: an untrained ResNet barely
    # tells one view from another)
    linear = dataclasses.replace(model, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)))
    mirror = infer_tta(linear, images, labels, views=2, reduce="mean")
    with torch.no_grad():
        both = [linear.model(x.float() / 255).softmax(1) for x in (images, images.flip(-1))]
    assert torch.allclose(mirror.logits.exp(), (both[0] + both[1]) / 2, atol=1e-6)
    unflipped = dataclasses.replace(linear, augment=AugmentConfig(crop_padding=2, hflip=False))
    unflipped_logits = infer_tta(unflipped, images, labels, views=2, reduce="mean").logits
    assert not torch.allclose(unflipped_logits, mirror.logits, atol=1e-3)
    most = infer_tta(model, images, labels, views=4, reduce="max")
    assert torch.allclose(most.logits.exp().sum(1), torch.ones(6), atol=1e-5)
    resnet = get_model("resnet18", num_classes=3).eval()
    assert _target_layer(resnet, torch.zeros(1, 3, 64, 64)) is resnet.layer4
    cams = grad_cam(resnet, torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), torch.tensor([0, 2]),
                    mean=torch.zeros(3), std=torch.ones(3))
    assert cams.shape == (2, 64, 64) and cams.min() >= 0 and cams.max() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny GTSRB run: 2 signs + unknown, val held out, trained with the report on."""
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    out = tmp_path_factory.mktemp("eval")
    args = tiny_overrides(SHARED_DATA / "gtsrb", out, "data.classes=12,14", "data.unknown_fraction=0.02",
                          "data.val_fraction=0.3", "data.image_size=24", "augment.hflip=false",
                          "train.report=true", "train.epochs=3")
    assert main(["train", *args]) == 0
    return out / "run"


def test_train_writes_evaluation_calibration_and_report(evaluated):
    run = evaluated
    result = json.loads((run / "eval_test.json").read_text())
    assert result["n"] == sum(1 for line in (run / "split.csv").read_text().splitlines() if line.endswith(",test"))
    assert {"balanced_accuracy", "macro_f1", "per_class", "confusion_normalized", "calibration",
            "rejection"} <= set(result)
    for name in ("confusion.png", "confusion_normalized.png", "top_losses.png", "random_predictions.png",
                 "probabilities.png", "gradcam.png", "reliability.png", "confused_pairs.csv"):
        assert (run / "eval_test" / name).stat().st_size > 0, name
    fitted = json.loads((run / "calibration.json").read_text())
    assert fitted["temperature"] > 0 and fitted["fitted_on"] == "val" and 0 < fitted["msp_threshold"] < 1
    assert (run / "report.html").is_file()
    rows = list(csv.reader((run / "confusion_test_normalized.csv").open()))
    assert rows[0][0] == "true \\ predicted" and len(rows) == 1 + 3  # 2 signs + unknown


def test_evaluate_tta_and_rejection_side_by_side(evaluated, capsys):
    assert main(["evaluate", str(evaluated), "--tta", "3", "--no-figures"]) == 0
    result = json.loads((evaluated / "eval_test.json").read_text())
    assert result["tta"]["views"] == 3 and result["tta"]["n"] == result["n"]
    methods = result["rejection"]["methods"]
    assert set(methods) == {"msp", "energy", "unknown_class"}
    # unseen: photos of the 40 signs the run never used
    assert result["rejection"]["unseen_n"] == 2000 and "unseen_rejected" in methods["msp"]
    out = capsys.readouterr().out
    assert "TTA x3 (mean)" in out and "rejection by msp" in out and "with temperature" in out


def test_predict_applies_temperature_and_rejection(evaluated, tmp_path):
    predictor = Predictor.load(evaluated)
    assert predictor.temperature == json.loads((evaluated / "calibration.json").read_text())["temperature"]
    from tests.conftest import SHARED_DATA

    out = tmp_path / "p.csv"
    src = SHARED_DATA / "gtsrb/GTSRB/Final_Test/Images"
    assert main(["predict", str(evaluated), str(src / "00000.ppm"), str(src / "00001.ppm"), "--format", "csv",
                 "-o", str(out), "--tta", "2"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and all(r["verdict"] in predictor.classes for r in rows)  # a class, or 'unknown'
    assert main(["predict", str(evaluated), str(src / "00000.ppm"), "--no-reject"]) == 0


def test_a_loaded_model_infers_in_the_layout_it_trained_in(evaluated):
    """channels-last weights (train.channels_last, the default), as the inputs Classifier.logits makes: NCHW weights
    with NHWC inputs infer at about half the speed on a CPU; the logits are those of the NCHW copy."""
    from resnetlab.evaluate.trained import run_model

    loaded = dataclasses.replace(run_model(evaluated, device="cpu", decisions=False), precision="fp32")
    convs = [m.weight for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    images = torch.randint(0, 255, (4, 3, 24, 24), dtype=torch.uint8)
    logits = loaded.logits(images)
    loaded.model.to(memory_format=torch.contiguous_format)
    assert torch.allclose(loaded.logits(images), logits, atol=1e-4)


def _never_unknown(run: Path) -> None:
    """Rewrite the run's best checkpoint so the 'unknown' class can never win the argmax: its fc bias
    is -1e4 (in the raw and the EMA weights). The model then names a sign for every image by
    construction, whatever a barely trained model would say at this CPU's precision."""
    from resnetlab.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run / "best.pt")
    unknown = list(state["classes"]).index("unknown")
    for weights in (state["model"], (state.get("ema") or {}).get("module")):
        if weights is not None:
            weights["fc.bias"][unknown] = -1e4
    save_checkpoint(run / "best.pt", {k: v for k, v in state.items() if k not in ("format", "version")})


def test_rejection_applies_where_the_threshold_says(evaluated, tmp_path):
    """A copy of the run whose MSP threshold is above any probability rejects every image, and one
    at 0 rejects none; --no-reject always names a class."""
    from tests.conftest import SHARED_DATA

    rows = list(csv.reader((evaluated / "split.csv").open()))[1:]
    images = [str(SHARED_DATA / "gtsrb" / key) for key, label, split in rows
              if split == "test" and label != "unknown"][:6]
    assert len(images) == 6
    verdicts = {}
    for threshold in (1.01, 0.0):
        run = tmp_path / f"run-{threshold}"
        shutil.copytree(evaluated, run)
        _never_unknown(run)
        fitted = json.loads((run / "calibration.json").read_text())
        (run / "calibration.json").write_text(json.dumps({**fitted, "msp_threshold": threshold}))
        for flag in ((), ("--no-reject",)):
            out = tmp_path / f"{threshold}{flag}.csv"
            assert main(["predict", str(run), *images, "--format", "csv", "-o", str(out), *flag]) == 0
            verdicts[threshold, bool(flag)] = [r["verdict"] for r in csv.DictReader(out.open())]
    assert verdicts[1.01, False] == ["unknown"] * 6
    assert verdicts[0.0, False] == verdicts[1.01, True] == verdicts[0.0, True]
    # without rejection every image gets a sign's name, so the all-'unknown' row above is rejection's work
    assert "unknown" not in verdicts[0.0, True]


def test_report_renders_in_headless_chromium(evaluated):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    main(["report", str(evaluated)])
    page = evaluated / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no CDN: works offline
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    dom = proc.stdout
    assert 'data-rendered="yes"' in dom  # the page's script ran to the end
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    for alt in ("training curves", "confusion matrix", "top losses", "Grad-CAM", "random predictions",
                "class probabilities", "reliability diagram"):
        assert f'<img alt="{alt}" src="data:image/png;base64,' in dom, alt


def test_evaluate_bad_input(evaluated, tmp_path, capsys):
    assert main(["evaluate", str(evaluated), "--tta", "0"]) == 2
    assert main(["evaluate", str(evaluated), "--reject-target", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["resnetlab evaluate: error: --tta 0: give the number of views, 1 (none) or more, e.g. --tta 20",
                   "resnetlab evaluate: error: --reject-target 1.5 must be in (0, 1), e.g. 0.05 for at most 5%"]


def test_a_streamed_split_evaluates_as_the_cached_one_a_chunk_at_a_time(evaluated, tmp_path, monkeypatch):
    """Metrics, TTA, calibration and figures from files decoded a batch at a time equal those from
    the decoded split; after the one pass that finds the readable files no read exceeds the
    figures' 32 images."""
    from resnetlab.config import evolve
    from resnetlab.data import build_data, decode
    from resnetlab.data.decode import FileImages
    from resnetlab.evaluate.evaluator import Options, evaluate_split, split_images
    from resnetlab.run_folder import read_run_config, saved_split_file

    predictor = Predictor.load(evaluated)
    cfg = read_run_config(evaluated)
    cached = build_data(cfg, split_file=saved_split_file(evaluated), progress=False)
    streamed = build_data(evolve(cfg, {"data.cache": "stream"}), split_file=saved_split_file(evaluated), progress=False)
    reads = []
    real = decode.decode_for_model
    monkeypatch.setattr(decode, "decode_for_model", lambda paths, *a: reads.append(len(paths)) or real(paths, *a))
    opts = Options(tta=3, batch_size=16)
    results = []
    for name, data in (("cached", cached), ("streamed", streamed)):
        images, labels = split_images(data.splits["test"], predictor)
        val = split_images(data.splits["val"], predictor)
        assert isinstance(images, FileImages) == (name == "streamed")
        first = len(reads)
        (tmp_path / name).mkdir()
        results.append(evaluate_split(tmp_path / name, predictor, "test", images, labels, opts, val=val))
        if name == "streamed":
            assert len(labels) > 32 and max(reads[first:]) <= 32, reads[first:]
    a, b = results
    assert a["n"] == b["n"] and a["confusion"] == b["confusion"] and a["top1"] == b["top1"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["tta"]["top1"] == b["tta"]["top1"]
    assert a["calibration"]["ece"] == pytest.approx(b["calibration"]["ece"], abs=1e-6)
    assert (tmp_path / "streamed" / "eval_test" / "top_losses.png").stat().st_size > 0
