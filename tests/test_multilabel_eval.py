"""Multi-label evaluation: mAP and thresholded scores against scikit-learn, thresholds fitted on val and
read back, one split evaluated end to end on a tiny model, and the report, compare and runs pages."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
)
from torch import nn

from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.evaluate.evaluator import Options, evaluate_split, snapshot_ensemble
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.multilabel import (
    default_thresholds,
    fit_thresholds,
    multilabel_metrics,
    read_thresholds,
    write_thresholds,
)
from resnetlab.evaluate.task import MultiLabel

CLASSES = ["cat", "dog", "car", "tree", "boat"]


def seeded_example(n=200, k=5, seed=0):
    """(N, K) logits that carry some signal and multi-hot targets; the last class has no positive."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, k, generator=g) < torch.tensor([0.3, 0.5, 0.1, 0.7, 0.0])).float()
    logits = 1.5 * (2 * targets - 1) + 1.5 * torch.randn(n, k, generator=g)
    return logits, targets


def test_metrics_agree_with_sklearn_and_skip_a_class_without_positives():
    logits, targets = seeded_example()
    thr = torch.tensor([0.3, 0.5, 0.7, 0.5, 0.5])
    m = multilabel_metrics(logits, targets, CLASSES, thr)
    y, p = targets.numpy().astype(int), torch.sigmoid(logits).numpy()
    pred = (p >= thr.numpy()).astype(int)
    aps = [average_precision_score(y[:, j], p[:, j]) for j in range(4)]
    assert m["task"] == "multi_label" and m["n"] == 200 and m["classes_scored"] == 4
    assert m["map_macro"] == pytest.approx(np.mean(aps))
    assert m["map_micro"] == pytest.approx(average_precision_score(y.ravel(), p.ravel()))
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert pred[:, 4].sum() > 0  # boat is predicted though absent: its F1 is 0 and counts in the macro
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["exact_match"] == pytest.approx(accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum() / 200
    assert m["loss"] == pytest.approx(bce, rel=1e-4)
    assert m["labels_per_image"] == pytest.approx(y.sum(1).mean())
    assert m["chance_map_macro"] == pytest.approx(y[:, :4].mean(0).mean())
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, zero_division=0)
    for j, name in enumerate(CLASSES[:4]):
        row = m["per_class"][name]
        assert row["ap"] == pytest.approx(aps[j], abs=1e-6) and row["recall"] == pytest.approx(recall[j], abs=1e-6)
        assert row["precision"] == pytest.approx(precision[j], abs=1e-6) and row["f1"] == pytest.approx(f1[j], abs=1e-6)
        assert row["n"] == y[:, j].sum() and row["predicted"] == pred[:, j].sum() and row["threshold"] == float(thr[j])
    boat = m["per_class"]["boat"]
    assert boat["ap"] is None and boat["recall"] is None and boat["n"] == 0 and boat["f1"] == 0.0
    empty = multilabel_metrics(torch.empty(0, 5), torch.empty(0, 5), CLASSES)
    assert empty["n"] == 0 and np.isnan(empty["map_macro"]) and np.isnan(empty["loss"])
    assert empty["thresholds"] == [0.5] * 5 and empty["per_class"]["cat"]["ap"] is None


def brute_force(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(best F1, highest threshold reaching it) over every observed score, deciding s >= t."""
    best, at = -1.0, None
    for t in sorted(set(s.tolist())):
        f1 = f1_score(y, (s >= t).astype(int), zero_division=0)
        if f1 >= best - 1e-12:
            best, at = max(best, f1), t
    return best, at


def test_fitted_thresholds_maximise_f1_and_a_class_without_positives_keeps_half():
    logits, targets = seeded_example(120, seed=1)
    probs = torch.sigmoid(logits)
    fitted = fit_thresholds(probs, targets, CLASSES)
    assert fitted["classes"] == CLASSES and fitted["fitted_on"] == "val" and fitted["n"] == 120
    for j in range(4):
        y, s = targets[:, j].numpy().astype(int), probs[:, j].numpy().astype(np.float64)
        best, at = brute_force(y, s)
        assert fitted["f1_at_fit"][j] == pytest.approx(best, abs=1e-6)
        assert fitted["thresholds"][j] == at  # the highest of the best: the tie rule
        assert f1_score(y, (s >= fitted["thresholds"][j]).astype(int)) == pytest.approx(best)
    assert fitted["thresholds"][4] == 0.5 and fitted["f1_at_fit"][4] is None
    # applied to the same images, the thresholds give the F1 they were fitted for: the same rule, prob >= t
    applied = multilabel_metrics(logits, targets, CLASSES, torch.tensor(fitted["thresholds"]))
    assert [applied["per_class"][c]["f1"] for c in CLASSES[:4]] == pytest.approx(fitted["f1_at_fit"][:4], abs=1e-6)
    assert any(note.startswith("boat: no positive image") for note in fitted["notes"])
    # a tie: 0.9 alone and 0.6 and over both give F1 2/3; the higher threshold wins
    tie = fit_thresholds(torch.tensor([[0.9], [0.8], [0.7], [0.6]]), torch.tensor([[1.0], [0], [0], [1]]), ["a"])
    assert tie["thresholds"] == [pytest.approx(0.9)] and tie["f1_at_fit"] == [pytest.approx(2 / 3, abs=1e-6)]
    assert json.loads(json.dumps(fitted)) == fitted  # JSON-able as it is


def test_thresholds_round_trip_and_damaged_files_are_one_line(tmp_path):
    path = tmp_path / "thresholds.json"
    logits, targets = seeded_example(80, seed=2)
    fitted = fit_thresholds(torch.sigmoid(logits), targets, CLASSES)
    write_thresholds(path, fitted)
    values, note = read_thresholds(path, CLASSES)
    assert values.dtype == torch.float32 and values.tolist() == pytest.approx(fitted["thresholds"])
    assert "fitted on val (n=80)" in note
    with pytest.raises(UserError, match="is missing"):
        read_thresholds(tmp_path / "none.json", CLASSES)
    damaged = {"bad JSON": "{not json", "wrong classes": json.dumps({**fitted, "classes": CLASSES[::-1]}),
               "1.5": json.dumps({**fitted, "thresholds": [1.5] + fitted["thresholds"][1:]}),
               "NaN": json.dumps({**fitted, "thresholds": [float("nan")] + fitted["thresholds"][1:]}),
               "short": json.dumps({**fitted, "thresholds": fitted["thresholds"][:3]})}
    for why, text in damaged.items():
        path.write_text(text)
        with pytest.raises(UserError) as e:
            read_thresholds(path, CLASSES)
        message = str(e.value)
        assert "\n" not in message and str(path) in message and "--default-thresholds" in message, why
        assert "resnetlab evaluate" in message, why
        values, note = read_thresholds(path, CLASSES, allow_default=True)
        assert values.tolist() == [0.5] * 5 and "every threshold is 0.5" in note, why
    write_thresholds(path, default_thresholds(CLASSES, "no validation split: every threshold is 0.5"))
    assert read_thresholds(path, CLASSES)[0].tolist() == [0.5] * 5


def tiny_classifier(k=4, size=8, seed=0) -> Classifier:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, k))
    return Classifier(model, CLASSES[:k], size, 3, "squash", torch.zeros(3), torch.ones(3), torch.device("cpu"),
                      "fp32", task=MultiLabel(), source="best.pt")


def tiny_split(n, k=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    targets = (torch.rand(n, k, generator=g) < 0.4).float()
    targets[:, 3] = 0  # 'tree' never present: no AP, and no threshold to fit
    return images, targets


def test_a_split_is_evaluated_with_thresholds_fitted_on_val(tmp_path):
    p = tiny_classifier()
    images, targets = tiny_split(40)
    opts = Options(tta=2, reduce="max", batch_size=16)
    result = evaluate_split(tmp_path, p, "test", images, targets, opts, val=tiny_split(30, seed=1))  # the dispatch
    saved = json.loads((tmp_path / "eval_test.json").read_text())
    assert {"task", "n", "map_macro", "map_micro", "f1_macro", "f1_micro", "exact_match", "hamming_loss", "loss",
            "labels_per_image", "chance_map_macro", "classes_scored", "per_class", "thresholds", "threshold_source",
            "top_losses", "tta", "split", "checkpoint", "images_per_s"} <= set(saved)
    assert saved["n"] == 40 and saved["classes_scored"] == 3 and saved["checkpoint"] == "best.pt"
    fitted = json.loads((tmp_path / "thresholds.json").read_text())
    assert fitted["fitted_on"] == "val" and fitted["n"] == 30 and fitted["thresholds"][3] == 0.5
    assert [saved["per_class"][c]["threshold"] for c in CLASSES[:4]] == fitted["thresholds"] == saved["thresholds"]
    assert p.thresholds.tolist() == pytest.approx(fitted["thresholds"])
    logits = p.logits(images)
    again = multilabel_metrics(logits, targets, CLASSES[:4], torch.tensor(fitted["thresholds"]))
    assert again["f1_micro"] == pytest.approx(result["f1_micro"])
    assert again["map_macro"] == pytest.approx(result["map_macro"])
    losses = [w["loss"] for w in saved["top_losses"]]
    assert len(losses) == 16 and losses == sorted(losses, reverse=True)
    first = saved["top_losses"][0]
    assert set(first["probabilities"]) == set(first["true"]) | set(first["predicted"])
    assert saved["tta"]["views"] == 2 and saved["tta"]["n"] == 40 and 0 <= saved["tta"]["map_macro"] <= 1
    for name in ("per_class_ap.png", "top_losses.png"):
        assert (tmp_path / "eval_test" / name).stat().st_size > 0, name
    rows = (tmp_path / "per_class_test.csv").read_text().splitlines()
    assert rows[0].startswith("class,ap,") and len(rows) == 5
    ens = snapshot_ensemble([p, p], images, targets, batch_size=16)  # two equal members: the model itself
    assert ens["map_macro"] == pytest.approx(result["map_macro"])
    assert ens["f1_micro"] == pytest.approx(result["f1_micro"])
    empty = evaluate_split(tmp_path, p, "empty", images[:0], targets[:0], opts)
    assert empty["n"] == 0 and empty["top_losses"] == [] and (tmp_path / "eval_empty.json").is_file()


def test_without_val_thresholds_come_from_the_run_or_are_half(tmp_path):
    p = tiny_classifier()
    images, targets = tiny_split(20)
    opts = Options(figures=False, batch_size=8)
    result = evaluate_split(tmp_path, p, "test", images, targets, opts)
    assert result["threshold_source"] == "no validation split: every threshold is 0.5; saved to thresholds.json"
    assert result["thresholds"] == [0.5] * 4
    assert json.loads((tmp_path / "thresholds.json").read_text())["fitted_on"] is None
    write_thresholds(tmp_path / "thresholds.json", {**default_thresholds(CLASSES[:4], "test"), "fitted_on": "val",
                                                    "thresholds": [0.1, 0.2, 0.3, 0.4]})
    result = evaluate_split(tmp_path, p, "test", images, targets, opts)
    assert result["thresholds"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert "thresholds.json" in result["threshold_source"]
    (tmp_path / "thresholds.json").write_text("{")
    with pytest.raises(UserError, match="--default-thresholds"):
        evaluate_split(tmp_path, p, "test", images, targets, opts)
    opts.default_thresholds = True
    assert evaluate_split(tmp_path, p, "test", images, targets, opts)["thresholds"] == [0.5] * 4


def fake_run(folder, history, ev):
    """A run folder with just what report, compare and runs read."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("data:\n  multi_label: true\nmodel:\n  name: resnet9\ntrain:\n  epochs: 2\n")
    (folder / "env.json").write_text(json.dumps({"command": "train"}))
    (folder / "classes.json").write_text(json.dumps(CLASSES[:4]))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (folder / "eval_test.json").write_text(json.dumps(ev))
    (folder / "status.json").write_text(json.dumps({"status": "finished"}))
    return folder


def test_report_compare_and_runs_read_multi_label_runs(tmp_path, capsys):
    from resnetlab.evaluate.compare import build_compare
    from resnetlab.evaluate.report import build_report
    from resnetlab.evaluate.runs import list_runs

    p = tiny_classifier()
    images, targets = tiny_split(24)
    (tmp_path / "scratch").mkdir()
    ev = evaluate_split(tmp_path / "scratch", p, "test", images, targets, Options(figures=False, tta=2))
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_exact": 0.1 * e, "val_loss": 1.9 / e, "val_map": 0.3 * e,
                "val_map_micro": 0.25 * e, "seconds": 1.0} for e in (1, 2)]
    a = fake_run(tmp_path / "runs" / "a", history, ev)
    b = fake_run(tmp_path / "runs" / "b", history[:1], {**ev, "map_macro": 0.5})
    page = build_report(a).read_text()
    assert "mAP (macro)" in page and "val mAP 60.00% (macro)" in page and "train exact match" in page
    assert "no validation split: every threshold is 0.5" in page and "TTA (mean of sigmoids)" in page
    assert "top-1" not in page and 'id="thresholds"' in page
    out, _ = build_compare([a, b], tmp_path / "compare.html")
    text = out.read_text()
    assert "test mAP (macro)" in text and "best val mAP (macro)" in text and "Per-class AP" in text
    assert "test top-1" not in text and "no noise estimate" in text
    rows = {r.name: r for r in list_runs(tmp_path / "runs", sort="best_val_map", descending=True)}
    assert rows["a"].best_val_map == pytest.approx(0.6) and rows["b"].test_map == 0.5 and rows["a"].multi_label
    assert main(["runs", str(tmp_path / "runs")]) == 0
    assert "best val mAP" in capsys.readouterr().out


def test_evaluate_refuses_single_label_options_for_a_multi_label_run(tmp_path, capsys):
    run = fake_run(tmp_path / "run", [], {})
    assert main(["evaluate", str(run), "--reject-target", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reject-target is for single-label runs" in err[0] and "thresholds.json" in err[0]
