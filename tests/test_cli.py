"""The command line: user errors are one line on stderr with a non-zero status, and leave no run folder."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import REPO, in_process, tiny_overrides


def cli(*args, cwd=REPO):
    """`python -m resnetlab ARGS` in a real process: the console script's own path (the trained fixture,
    test_empty_class_folder, test_unknown_recipe and test_shards' `data inspect`; the other tests call
    main() in this process)."""
    return subprocess.run([sys.executable, "-m", "resnetlab", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def assert_one_line_error(proc, pattern):
    import re

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import write_class_folders

    root = tmp_path_factory.mktemp("cli")
    data = write_class_folders(root / "data")
    proc = cli("train", *tiny_overrides(data, root / "runs"))
    assert proc.returncode == 0, proc.stderr
    assert "test top-1" in proc.stdout and "run folder:" in proc.stdout
    return root / "runs" / "run", data


def test_models_recipes_env(capsys):
    out = in_process(capsys, "models").stdout
    assert "resnet50" in out and "cifar_resnet18" in out and "preact_resnet56" in out
    assert "fashion-mnist-fast" in in_process(capsys, "recipes").stdout
    env = json.loads(in_process(capsys, "env", "--json").stdout)
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["torch_threads"] >= 1
    assert env["torchvision"] == torchvision.__version__  # with its build tag, as torch's has


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["data.dataset=/no/such/folder"], "neither a folder or CSV that exists"),
        (["optim.lrr=0.1"], "did you mean 'optim.lr'"),
        (["model.num_classes=7"], "model.num_classes=7 but .* has 3 classes"),
        (["model.name=resnet19"], "unknown model 'resnet19'"),
        (["train.device=cuda"], "no CUDA GPU is visible"),
        (["train.epochs=0"], "train.epochs must be at least 1"),
    ],
)
def test_train_user_errors_leave_no_run_folder(class_folders, tmp_path, capsys, args, pattern):
    # test_empty_class_folder and test_unknown_recipe check the same through a real process
    assert_one_line_error(in_process(capsys, "train", *tiny_overrides(class_folders, tmp_path / "runs"), *args),
                          pattern)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_empty_class_folder(class_folders, tmp_path):
    (class_folders / "train" / "dog").mkdir()
    assert_one_line_error(cli("train", *tiny_overrides(class_folders, tmp_path / "runs")), "has no images")


def test_unknown_recipe():
    assert_one_line_error(cli("train", "fashion-mnist-fats"), "did you mean 'fashion-mnist-fast'")


def test_evaluate_writes_json_and_table(trained, capsys):
    run, _ = trained
    proc = in_process(capsys, "evaluate", run, "--split", "test")
    assert proc.returncode == 0, proc.stderr
    assert "top-1" in proc.stdout and "bee" in proc.stdout
    result = json.loads((run / "eval_test.json").read_text())
    assert result["n"] == 12 and len(result["confusion"]) == 3 and result["per_class"]["ant"]["n"] == 4
    assert (run / "confusion_test.csv").read_text().startswith("true \\ predicted,ant,bee,cat")


def test_evaluate_on_folder_and_bad_folder(trained, tmp_path, capsys):
    run, data = trained
    holdout = tmp_path / "holdout"  # 2 of the 3 classes' test images: not the run's test split
    for name in ("bee", "cat"):
        shutil.copytree(data / "test" / name, holdout / name)
    proc = in_process(capsys, "evaluate", run, "--data", holdout)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "eval_holdout.json").read_text())
    assert result["n"] == 8 and result["per_class"]["ant"]["n"] == 0 and result["per_class"]["bee"]["n"] == 4
    (tmp_path / "emu").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "emu" / "a.png")
    assert_one_line_error(in_process(capsys, "evaluate", run, "--data", tmp_path), "classes the model never saw: emu")
    assert_one_line_error(in_process(capsys, "evaluate", run, "--split", "val"), "has no 'val' split")


def test_evaluate_run_without_checkpoint(trained, tmp_path, capsys):
    run, _ = trained
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    assert_one_line_error(in_process(capsys, "evaluate", empty), "has no checkpoint yet")
    assert_one_line_error(in_process(capsys, "evaluate", tmp_path / "nope"), "does not exist")


def test_predict_formats(trained, capsys):
    run, data = trained
    folder = data / "test" / "bee"
    table = in_process(capsys, "predict", run, folder, "--topk", "2")
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) == 4 and "%" in table.stdout
    rows = json.loads(in_process(capsys, "predict", run, str(folder / "*.png"), "--format", "json").stdout)
    assert len(rows) == 4 and len(rows[0]["top"]) == 3
    assert abs(sum(t["probability"] for t in rows[0]["top"]) - 1) < 1e-3
    csv_text = in_process(capsys, "predict", run, folder / "000.png", "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("path,verdict,class1,prob1")


def test_predict_reports_bad_image_and_missing(trained, tmp_path, capsys):
    run, data = trained
    (tmp_path / "bad.jpg").write_text("not an image")
    proc = in_process(capsys, "predict", run, tmp_path / "bad.jpg", data / "test" / "ant" / "000.png",
                      "--format", "json")
    rows = json.loads(proc.stdout)
    assert rows[-1]["path"].endswith("bad.jpg") and "not an image" in rows[-1]["error"]
    assert_one_line_error(in_process(capsys, "predict", run, tmp_path / "missing*.png"), "matches no file")


def test_checkpoint_from_another_model(trained, tmp_path, capsys):
    run, _ = trained
    proc = in_process(capsys, "train", "--resume", run, "model.filters=[8,8,16,32]", "train.epochs=3")
    assert_one_line_error(proc, r"last.pt is for resnet9 \(filters \[8, 8, 16, 16\]\) with 3 classes, "
                                r"not resnet9 \(filters \[8, 8, 16, 32\]\)")
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["filters"] == [8, 8, 16, 16]  # unchanged
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(in_process(capsys, "predict", tmp_path / "junk.pt", run), "cannot load checkpoint")
