"""Every shipped recipe runs, for a few steps, on the real subsets in ../shared/data."""

import json

import pytest
import torchvision

from resnetlab.cli import main
from resnetlab.config import list_recipes, load_config, recipe_path
from resnetlab.errors import UserError
from resnetlab.io import read_yaml
from resnetlab.run.prepare import prepare
from tests.conftest import place_weights

# Few steps, same recipe: 2 batches of 8 an epoch in every split, one epoch, no time budget (the GTSRB tutorial's stages
# kept, each one epoch long, so head-only training, unfreezing and an SGDR snapshot all run).
# the report is tested in test_evaluation.py
SMOKE = ["train.time_budget=", "train.limit_batches=2", "train.batch_size=8", "train.eval_batch_size=16",
         "train.progress=false", "train.report=false"]
SHORT = {"gtsrb-resnet34-finetune": [
    "stages=[{epochs: 1, train: head, lr: [0.01], weight_decay: 5.0e-4}, {epochs: 1, train: all, lr: [1.0e-4, 0.01]},"
    " {train: all, lr: [1.0e-4, 0.01], schedule: sgdr, cycle_len: 1, cycles: 1, snapshots: true}]"]}
# the CIFAR subset is JPEG class folders, not the python batches; the photos recipe has no data set of its
# own (`resnetlab train FOLDER` gives one): Intel's class folders
LOCAL = {"cifar10": "cifar10-jpeg", "": "intel/seg_train/seg_train"}
EPOCHS = {"photos": ["train.epochs=2"]}  # its head stage, then one epoch of the whole network
# the recipes hold out 2,000 (Intel, of 14,034) and 5,000 (CIFAR, of 50,000) images; the subsets have 480 and 2,000
SUBSET = {"intel-resnet34-onecycle": ["data.val_count=100"], "cifar10-fast": ["data.val_count=200"]}


@pytest.fixture
def pretrained_cache(torch_home):
    """torchvision's ResNet-34 and ResNet-50 files where its cache looks; weights made for the purpose
    (random init)."""
    place_weights(torch_home, "resnet34", "IMAGENET1K_V1", torchvision.models.resnet34().state_dict())
    place_weights(torch_home, "resnet50", "IMAGENET1K_V2", torchvision.models.resnet50().state_dict())
    return torch_home


@pytest.mark.parametrize("recipe", list_recipes())
def test_recipe_runs_on_real_data(recipe, shared_data, pretrained_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_DATA", str(shared_data))
    dataset = (read_yaml(recipe_path(recipe)).get("data") or {}).get("dataset", "")  # photos: none to validate
    extra = [f"data.dataset={shared_data / LOCAL[dataset]}"] if dataset in LOCAL else []
    epochs = [] if recipe in SHORT else EPOCHS.get(recipe, ["train.epochs=1"])
    args = ["train", recipe, *SMOKE, *epochs, *SHORT.get(recipe, []), *SUBSET.get(recipe, []), *extra,
            f"train.out_dir={tmp_path}", "train.name=r"]
    assert main(args) == 0
    run = tmp_path / "r"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history and all(h["train_loss"] == h["train_loss"] for h in history)  # finite, not NaN
    if recipe != "photos":  # a folder of photos has no test split; the others score the smoke's 2 batches of it
        eval_batch = read_yaml(run / "config.yaml")["train"]["eval_batch_size"]
        assert 0 < json.loads((run / "eval_test.json").read_text())["n"] <= 2 * eval_batch
    if recipe in SHORT:
        assert (run / "snapshot-1.pt").is_file() and len(history) == 3


def test_recipe_for_10_classes_on_43(shared_data, tmp_path, monkeypatch):
    cfg = load_config("cifar10-resnet50", [f"data.dataset={shared_data / 'gtsrb'}", "data.image_size=32",
                                           f"train.out_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"model.num_classes=10 but .*gtsrb has 43 classes"):
        prepare(cfg, run_name="t")


def test_retrain_on_all_and_snapshot_ensemble(class_folders, tmp_path, capsys):
    from tests.conftest import tiny_overrides

    stages = ("stages=[{epochs: 1, train: all},"
              " {schedule: sgdr, cycle_len: 1, cycle_mult: 1, cycles: 2, snapshots: true}]")
    args = tiny_overrides(class_folders, tmp_path, "data.val_fraction=0.25", stages)
    assert main(["train", *args, "--retrain-on-all"]) == 0
    first, final = tmp_path / "run", tmp_path / "run-all"
    split = (final / "split.csv").read_text()
    assert ",val" not in split and split.count(",train") == 36  # 27 train + 9 val images, all trained on
    assert json.loads((final / "data.json").read_text())["sizes"] == {"train": 36, "test": 12}
    assert main(["evaluate", str(first), "--snapshots"]) == 0
    ensemble = json.loads((first / "eval_test.json").read_text())["snapshot_ensemble"]
    assert ensemble["members"] == ["snapshot-1.pt", "snapshot-2.pt"] and ensemble["n"] == 12
    assert "snapshot ensemble of" in capsys.readouterr().out
