"""`resnetlab train path/to/photos`: a pretrained ResNet-50 fine-tuned on a folder from that one argument,
offline with torchvision's weights file in its cache; and a key set on the command line is never replaced
by what a recipe plans."""

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from resnetlab.cli import main
from resnetlab.config import load_config
from resnetlab.errors import UserError
from tests.conftest import in_process, pattern, place_weights, tiny_overrides
from tests.test_cli import assert_one_line_error

# the photos recipe at a size and length a test affords; every other key is the recipe's
FAST = ["data.image_size=32", "train.limit_batches=1", "train.batch_size=4", "train.eval_batch_size=8",
        "train.progress=false", "train.report=false", "train.tensorboard=false", "train.device=cpu"]


def write_photos(root, per_class=10):
    """root/<class>/: photos as users have them: sizes that differ, RGB JPEGs, grey and RGBA PNGs."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("daisy", "rose", "tulip")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = Image.fromarray(pattern(label, 24, rng)).resize((24 + 4 * (i % 3), 20 + 6 * (i % 2)))
            if i % 5 == 3:
                img.convert("L").save(root / name / f"{i}.png")
            elif i % 5 == 4:
                img.convert("RGBA").save(root / name / f"{i}.png")
            else:
                img.save(root / name / f"{i}.jpg", quality=90)
    return root


@pytest.fixture
def photos(tmp_path):
    return write_photos(tmp_path / "my photos")


def test_a_folder_of_photos_fine_tunes_the_pretrained_resnet50_with_a_validation_split(photos, tmp_path, torch_home,
                                                                                        capsys):
    state = torchvision.models.resnet50().state_dict()
    state["conv1.weight"].fill_(0.01)  # a mark: the run starts from this file, not from a fresh init
    place_weights(torch_home, "resnet50", "IMAGENET1K_V2", state)
    assert main(["train", str(photos), f"train.out_dir={tmp_path / 'runs'}", *FAST]) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("my photos-")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "resnet50" and cfg["model"]["weights"] == "IMAGENET1K_V2"
    assert cfg["data"]["dataset"] == str(photos) and cfg["data"]["normalize"] == "auto"
    assert [(st["train"], st["epochs"]) for st in cfg["stages"]] == [("head", 1), ("all", 4)]
    # no val split in the folder: 20% of each class held out, and the run says so
    assert "the data has no validation split: 20% of train is held out" in out
    rows = [line.split(",") for line in (run / "split.csv").read_text().splitlines()[1:]]
    val = [r for r in rows if "val" in r]
    assert len(rows) == 30 and len(val) == 6
    assert sorted(r[0].split("/")[0] for r in val) == ["daisy"] * 2 + ["rose"] * 2 + ["tulip"] * 2
    data = json.loads((run / "data.json").read_text())
    assert data["mean"] == pytest.approx([0.485, 0.456, 0.406]) and data["channels"] == 3  # ImageNet's, RGB
    assert "stage 1/2" in out and "training head" in out and "stage 2/2" in out
    conv1 = torch.load(run / "last.pt", weights_only=True)["model"]["conv1.weight"]
    assert (conv1 - 0.01).abs().max() < 1e-3  # the stem moved only by stage 2's lowest rate
    # then the run is a run like any other
    proc = in_process(capsys, "predict", run, photos / "rose" / "0.jpg", photos / "rose" / "4.png", "--format",
                      "json", "--plot", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    assert len(answers) == 2 and all(a["top"][0]["class"] in ("daisy", "rose", "tulip") for a in answers)
    # --plot: each photo beside the bar chart of its class probabilities (the torchvision tutorial's figure)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["1-0.png", "2-4.png"]
    assert Image.open(tmp_path / "plots" / "1-0.png").size[0] > 300


def test_offline_without_the_weights_file_is_one_line_naming_where_it_goes(photos, tmp_path, torch_home,
                                                                           monkeypatch, capsys):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert_one_line_error(in_process(capsys, "train", photos, f"train.out_dir={tmp_path / 'runs'}", *FAST),
                          r"put resnet50-11ad3fa6.pth .* at .*hub/checkpoints.*or pass model.weights=none")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert load_config("photos", [f"data.dataset={photos}", "model.weights=none"]).model.weights is None


def test_what_the_first_argument_is(tmp_path, capsys):
    for args, error in [([str(tmp_path / "nowhere")], "nowhere: no such folder or CSV file"),
                        ([], "data.dataset is empty: give a folder or CSV of photos")]:
        assert_one_line_error(in_process(capsys, "train", *(args or ["photos"]), "train.device=cpu"), error)
    write_photos(tmp_path / "p", per_class=2)
    assert_one_line_error(in_process(capsys, "train", tmp_path / "p", f"data.dataset={tmp_path}"),
                          "is the data set already: leave out data.dataset")


def test_the_validation_split_is_drawn_only_where_the_data_has_none(tmp_path, single_folder):
    from resnetlab.data.bundle import plan_data
    from tests.conftest import write_class_folders

    layout = write_class_folders(tmp_path / "own", splits=("train", "val", "test"))
    catalog, _, notes = plan_data(load_config(None, [f"data.dataset={layout}", "data.auto_val_fraction=0.25"]))
    assert catalog.counts()["val"] == [4, 4, 4] and not any("no validation split" in n for n in notes)  # its own
    catalog, _, notes = plan_data(load_config(None, [f"data.dataset={single_folder}", "data.auto_val_fraction=0.25"]))
    assert catalog.counts()["val"] == [5, 5, 5] and any("25% of train is held out" in n for n in notes)
    catalog, _, notes = plan_data(load_config(None, [f"data.dataset={single_folder}", "data.auto_val_fraction=0.25",
                                                     "data.val_fraction=0.1"]))
    assert catalog.counts()["val"] == [2, 2, 2] and not any("no validation split" in n for n in notes)


def test_a_length_on_the_command_line_turns_the_recipes_time_budget_off_and_says_so():
    notes = []
    cfg = load_config("fashion-mnist-fast", ["train.epochs=1"], notes=notes)
    assert cfg.train.epochs == 1 and cfg.train.time_budget == ""
    assert notes == ["train.epochs=1 from the command line: the recipe's time budget (9m) is off for this run"]
    planned = load_config("fashion-mnist-fast", notes=notes)  # no key given: the recipe plans as it says
    assert planned.train.time_budget == "9m" and len(planned.train.ladder) == 2 and len(notes) == 1
    with pytest.raises(UserError, match=r"^train.steps_per_epoch=5 and train.time_budget are both set: the budget "
                                        r"plans the run's length, so give one or the other$"):
        load_config("fashion-mnist-fast", ["train.steps_per_epoch=5", "train.time_budget=5m"])


def test_a_key_a_ladder_rung_sets_turns_the_recipes_ladder_off_and_says_so():
    notes = []
    cfg = load_config("fashion-mnist-fast", ["model.filters=[16,32,64,128]"], notes=notes)
    assert cfg.model.filters == [16, 32, 64, 128] and cfg.train.ladder == [] and cfg.train.time_budget == "9m"
    assert notes == ["model.filters from the command line: the recipe's ladder, whose rungs set it, is off; the "
                     "time budget plans the length of this config as it is"]
    mine = load_config("fashion-mnist-fast", ["model.filters=[16,32,64,128]", "train.ladder=[{}, {optim.lr: 0.1}]"])
    assert len(mine.train.ladder) == 2  # a ladder given on the command line is the user's own


def test_train_epochs_on_a_staged_recipe_is_the_last_stages_length():
    notes = []
    cfg = load_config("photos", ["data.dataset=x", "train.epochs=7"], notes=notes)
    assert [st.epochs for st in cfg.stages] == [1, 6] and cfg.train.epochs == 7
    assert notes == ["train.epochs=7: the last stage trains 6 epochs after the earlier stages' 1"]
    with pytest.raises(UserError, match="train.epochs=1 leaves nothing for the last stage"):
        load_config("photos", ["data.dataset=x", "train.epochs=1"])
    with pytest.raises(UserError, match="cannot be set on a recipe whose stages count SGDR cycles"):
        load_config("gtsrb-resnet34-finetune", ["train.epochs=5"])


def test_the_command_line_says_what_stepped_aside_and_trains_the_length_given(class_folders, tmp_path, capsys):
    recipe = tmp_path / "budgeted.yaml"
    recipe.write_text("train:\n  time_budget: 1m\n  epochs: 5\n")
    assert main(["train", str(recipe), *tiny_overrides(class_folders, tmp_path / "runs"),
                 "train.tensorboard=false"]) == 0
    out = capsys.readouterr().out
    assert "note: train.epochs=2 from the command line: the recipe's time budget (1m) is off for this run" in out
    run = tmp_path / "runs" / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and not (run / "budget.json").exists()


def test_a_time_budget_plans_the_last_stage_and_equals_the_fixed_staged_run(class_folders, tmp_path):
    """Fine-tuning in a budget: the earlier stages keep their epochs, the last takes the rest of the plan,
    and the run is the fixed run with that last stage, bit for bit."""
    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.run.fit import fit
    from resnetlab.run.prepare import prepare
    from tests.conftest import tiny_config

    stages = "stages=[{epochs: 1, lr: [0.02], schedule: constant}, {epochs: 1, schedule: cosine}]"
    s = prepare(tiny_config(class_folders, tmp_path / "budget", "data.val_fraction=0.25", "train.time_budget=4s",
                            stages), run_name="t")
    planned = s.plan.epochs
    assert planned >= 2 and [st.epochs for st in s.cfg.stages] == [1, planned - 1] and s.cfg.train.epochs == planned
    assert s.plan.correct_at == 0  # stages have their own schedules: the planned length stands
    fit(s)
    saved = yaml.safe_load((s.run_dir / "config.yaml").read_text())
    fixed = prepare(tiny_config(class_folders, tmp_path / "fixed", "data.val_fraction=0.25",
                                f"stages=[{{epochs: 1, lr: [0.02], schedule: constant}}, "
                                f"{{epochs: {planned - 1}, schedule: cosine}}]",
                                f"train.steps_per_epoch={saved['train']['steps_per_epoch']}"), run_name="t")
    fit(fixed)
    a, b = load_checkpoint(s.run_dir / "last.pt")["model"], load_checkpoint(fixed.run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match=r"and the stages before the last take 500; give more time"):
        prepare(tiny_config(class_folders, tmp_path / "short", "train.time_budget=4s",
                            "stages=[{epochs: 500}, {epochs: 1}]"), run_name="t")
    with pytest.raises(UserError, match="this one counts SGDR cycles: with stages, give each stage its epochs"):
        load_config("gtsrb-resnet34-finetune", ["train.time_budget=10m"])
    ladder = load_config("photos", ["data.dataset=x", "train.time_budget=10m"]).train.ladder
    assert ladder[-1] == {"model.name": "resnet18", "model.weights": "IMAGENET1K_V1", "data.image_size": 160}
