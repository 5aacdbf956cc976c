"""The tuner: a 4-trial Optuna study on a real GTSRB subset, with a pruned trial and a killed one
that is re-run, ending with a best recipe that trains; and its bad input."""

import json
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.tune.space import parse_space
from resnetlab.tune.study import run_study
from tests.conftest import REPO, SHARED_DATA, tiny_overrides

SPACE = "optim.lr: log [1e-7, 0.2]\ntrain.epochs: 2\n"


def base_overrides(out):
    # 4 signs, whole tracks held out for val; tiny ResNet-9 at 24 px: a trial takes a few seconds
    # (the recipe's own 5,000 val images, 9-minute time budget and flips are turned off)
    return [o for o in tiny_overrides(SHARED_DATA / "gtsrb", out, "data.classes=12,13,14,17", "data.val_count=0",
                                      "data.val_fraction=0.3", "train.time_budget=", "data.image_size=24",
                                      "augment.hflip=false", "augment.hflip_alternate=false", "train.final_tta=1")
            if not o.startswith(("train.name=", "train.out_dir="))]


KILL_IN_TRIAL = """
import os, signal, sys
from pathlib import Path
import resnetlab.tune.study as study

real = study.fit
def fit_then_die(s, callbacks=None, console=None):  # the process dies in the middle of this trial
    callbacks["on_epoch_end"].insert(0, lambda session, record: os.kill(os.getpid(), signal.SIGKILL))
    return real(s, callbacks=callbacks, console=console)
study.fit = fit_then_die
study.run_study("fashion-mnist-fast", sys.argv[3:], trials=3, study_dir=Path(sys.argv[1]), space=Path(sys.argv[2]),
                enqueue=[{"optim.lr": 0.02}])
"""


def test_study_prunes_survives_a_kill_and_writes_a_recipe_that_trains(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    study_dir, overrides = tmp_path / "study", base_overrides(tmp_path)
    run_study("fashion-mnist-fast", overrides, trials=2, study_dir=study_dir, space=space,
              enqueue=[{"optim.lr": 0.05}, {"optim.lr": 0.03}])
    killed = subprocess.run([sys.executable, "-c", KILL_IN_TRIAL, str(study_dir), str(space), *overrides], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # resumed: trial 2 (killed) is marked failed and re-run as trial 3; trial 4 at a rate of 1e-7
    # learns nothing in its first epoch and is pruned by the median of the earlier trials
    result = run_study("fashion-mnist-fast", overrides, trials=4, study_dir=study_dir, space=space,
                       enqueue=[{"optim.lr": 1e-7}])
    study = optuna.load_study(study_name="resnetlab", storage=f"sqlite:///{study_dir / 'study.db'}")
    trials = study.get_trials()
    # the retry (trial 3) may finish or be pruned, as any trial may; the 1e-7 one must be pruned
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED) and trials[4].state == TrialState.PRUNED
    assert trials[2].user_attrs["killed"] and trials[3].user_attrs["retry_of"] == 2
    assert trials[3].params == trials[2].params == {"optim.lr": 0.02}
    assert result["best_value"] == max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert json.loads((study_dir / "trials" / "trial-004" / "status.json").read_text())["status"] == "stopped"
    for trial in trials:  # the test split was never looked at
        assert not (study_dir / "trials" / f"trial-{trial.number:03d}" / "eval_test.json").exists()
    page = (study_dir / "study.html").read_text()
    assert 'alt="optimisation history"' in page and "retry of 2" in page and (study_dir / "compare.html").is_file()
    # the best trial's config is a recipe that trains
    assert main(["train", str(study_dir / "best.yaml"), "train.epochs=1", f"train.out_dir={tmp_path / 'final'}",
                 "train.report=false"]) == 0
    (final,) = (tmp_path / "final").iterdir()
    assert final.name.startswith("best-") and json.loads((final / "eval_test.json").read_text())["n"] > 0


def test_study_bad_input_is_one_line(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: 2\n")
    fixed_only = ["tune", "fashion-mnist-fast", "--space", str(space),
                  "--study", str(tmp_path / "s")]
    assert main(fixed_only) == 2
    assert main(["tune", "fashion-mnist-fast", "data.val_count=0", "--study", str(tmp_path / "s")]) == 2  # no val
    (tmp_path / "s2").mkdir()
    (tmp_path / "s2" / "study.json").write_text(json.dumps({"recipe": "cifar10-fast", "overrides": [], "space": {}}))
    assert main(["tune", "fashion-mnist-fast", "--study", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"resnetlab tune: error: {space} has no free parameter: give a range or a choice, "
                      "e.g. 'optim.lr: log [1e-3, 1]'")
    assert err[1].startswith("resnetlab tune: error: tuning needs a validation split")
    assert err[2].startswith(f"resnetlab tune: error: study folder {tmp_path / 's2'} was made for another recipe "
                             "('cifar10-fast', not 'fashion-mnist-fast')")
    assert len(err) == 3


def test_space_forms_and_nearest_key():
    params, fixed = parse_space({"optim.lr": "log [1e-3, 1]", "augment.rotation": [0, 20],
                                 "train.batch_size": [64, 256], "model.name": ["resnet9", "cifar_resnet18"],
                                 "epochs": 3}, "space")
    kinds = {p.key: p.kind for p in params}
    assert kinds == {"optim.lr": "log", "augment.rotation": "float", "train.batch_size": "int", "model.name": "choice"}
    assert fixed == ["train.epochs=3"]
    with pytest.raises(UserError, match="unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        parse_space({"optim.lrr": [0.1, 1.0]}, "space")
    with pytest.raises(UserError, match=r"needs \[low, high\] with low < high"):
        parse_space({"optim.lr": [1.0, 0.1]}, "space")
