import pytest

from resnetlab.config import Config, all_keys, list_recipes, load_config
from resnetlab.errors import UserError


def test_defaults_and_recipe_and_overrides():
    cfg = load_config("fashion-mnist-fast", ["optim.lr=0.05", "epochs=3", "model.filters=[8, 8, 16, 16]"])
    assert cfg.model.name == "airnet94"
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.model.filters == [8, 8, 16, 16]
    assert "fashion-mnist-fast" in list_recipes()


def test_yaml_scientific_without_dot_is_a_float():
    assert load_config(None, ["optim.weight_decay=5e-4"]).optim.weight_decay == 5e-4


def test_unknown_key_suggests_nearest():
    with pytest.raises(UserError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(UserError, match=r"did you mean 'train.epochs'"):
        load_config(None, ["epoch=3"])


def test_unknown_key_in_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  momentun: 0.8\n")
    with pytest.raises(UserError, match=r"unknown config key 'optim.momentun'; did you mean 'optim.momentum'"):
        load_config(str(path))


def test_wrong_type_and_choice_and_range():
    with pytest.raises(UserError, match=r"train.epochs='ten' \(command line\) should be an integer"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(UserError, match="is not one of: sgd, adam, adamw"):
        load_config(None, ["optim.name=rmsprop"])
    with pytest.raises(UserError, match=r"data.val_fraction must be in \[0, 1\)"):
        load_config(None, ["data.val_fraction=1.5"])
    with pytest.raises(UserError, match="must look like key=value"):
        load_config(None, ["optim.lr"])


def test_unknown_recipe_suggests():
    with pytest.raises(UserError, match="did you mean 'fashion-mnist-fast'"):
        load_config("fashion-mnist-fas")


def test_every_key_listed_and_round_trips():
    keys = all_keys()
    assert "optim.lr" in keys and "seed" in keys and "schedule.cycle_mult" in keys
    from resnetlab.config import config_from_dict

    cfg = load_config("fashion-mnist-fast")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert Config() == config_from_dict({})


@pytest.mark.parametrize("override,line", [
    ("train.epochs=0", "train.epochs must be at least 1"),
    ("data.channels=2", "data.channels must be 0 (auto), 1 or 3"),
    ("augment.resized_crop=[0.5]",
     "augment.resized_crop must be [] or [min, max] area shares with 0 < min <= max <= 1"),
    ("optim.betas=[0.9]", "optim.betas must be two numbers, e.g. [0.9, 0.999]"),
    ("schedule.pct_start=1", "schedule.pct_start must be in (0, 1)"),
    ("train.size_ramp=[0.9,0.1]", "train.size_ramp must be [from, to], shares of the run with 0 <= from <= to <= 1"),
    ("augment.cutmix_alpha=-1", "augment.cutmix_alpha must be 0 (off) or positive"),
    ("data.val_fraction=0.6 data.test_fraction=0.5", "data.val_fraction + data.test_fraction must be below 1"),
])
def test_a_value_out_of_range_is_one_line_naming_its_key(override, line):
    """Each field's range rule sits beside it in schema.py; rules across fields stay in checks.py."""
    with pytest.raises(UserError) as e:
        load_config(None, override.split())
    assert str(e.value) == line


def test_a_validated_config_is_frozen_and_evolve_makes_a_changed_copy():
    from resnetlab.config import evolve
    from resnetlab.config.schema import FrozenConfigError

    cfg = load_config("fashion-mnist-fast")
    for section, key, value in (("train", "epochs", 3), ("optim", "lr", 0.5), ("data", "dataset", "x")):
        with pytest.raises(FrozenConfigError, match=f"validated and frozen: .*{key} cannot be set"):
            setattr(getattr(cfg, section), key, value)
    with pytest.raises(FrozenConfigError):
        cfg.seed = 1
    changed = evolve(cfg, {"train.epochs": 3, "optim.lr": 0.5})
    assert (changed.train.epochs, changed.optim.lr, changed.frozen) == (3, 0.5, True)
    assert (cfg.train.epochs, cfg.optim.lr) == (10, load_config("fashion-mnist-fast").optim.lr)  # left as it was
    with pytest.raises(UserError, match="train.epochs must be at least 1"):
        evolve(cfg, {"train.epochs": 0})  # a changed copy is validated like any other
    staged = load_config("photos", ["data.dataset=x"])
    assert evolve(staged, {}, last_stage_epochs=5).train.epochs == sum(st.epochs for st in staged.stages[:-1]) + 5
