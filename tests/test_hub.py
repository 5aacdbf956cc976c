"""The Hugging Face folder and OpenVINO exports: checked like every export, read back by predict, evaluate,
serve and Predictor.load (hf-hub:ORG/NAME from the Hub's cache, offline); push refused in one line offline
or without a token. The Hub itself is never reached: every test stops at the network's edge."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from resnetlab.cli import main
from resnetlab.deploy.export import sidecar
from resnetlab.deploy.predictor import Predictor, expand_inputs
from resnetlab.errors import UserError
from tests.conftest import REPO, tiny_overrides, write_class_folders

pytest.importorskip("huggingface_hub")
from fastapi.testclient import TestClient  # noqa: E402
from huggingface_hub import constants as hub_constants  # noqa: E402 - a submodule, not a package attribute

from resnetlab.deploy.serve import Limits, create_app, load_model  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the revision the fake Hub cache says main points to


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny fp32 run with val and test splits (so eval_test.json is there for the model card)."""
    tmp = tmp_path_factory.mktemp("hub")
    data = write_class_folders(tmp / "data", per_class=16, size=16)
    assert main(["train", *tiny_overrides(data, tmp, "data.val_fraction=0.25", "train.precision=fp32",
                                          "train.epochs=3")]) == 0
    return tmp / "run", data


@pytest.fixture(scope="module")
def hf(run):
    run_dir, _ = run
    assert main(["export", str(run_dir), "--format", "hf", "--license", "apache-2.0"]) == 0
    return run_dir / "export" / "hf"


def _predictions(model, folder, out):
    assert main(["predict", str(model), str(folder), "--format", "csv", "-o", str(out), "--no-reject"]) == 0
    return {r["path"]: (r["class1"], float(r["prob1"])) for r in csv.DictReader(out.open())}


def _same_predictions(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys() and len(ours) == 15
    for key, (cls, prob) in ours.items():
        assert theirs[key][0] == cls and abs(theirs[key][1] - prob) < 1e-5


def _no_pickle(monkeypatch):
    """torch.load and pickle fail from here on: weights must come through safetensors."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load or pickle was used to read a Hugging Face model")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(owner, name, refuse)


def test_hf_folder_agrees_with_the_checkpoint_and_predict_reads_it(run, hf, tmp_path, monkeypatch, capsys):
    run_dir, data = run
    assert sorted(p.name for p in hf.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not [p for p in hf.parent.iterdir() if p.name.startswith(".")]  # no scratch folder left
    config = json.loads((hf / "config.json").read_text())
    assert config["library_name"] == "resnetlab" and config["classes"] == ["ant", "bee", "cat"]
    assert config["id2label"] == {"0": "ant", "1": "bee", "2": "cat"} and config["model"]["name"] == "resnet9"
    assert config["input"]["size"] == 16 and config["preprocess"]["resize"] and len(config["preprocess"]["std"]) == 3
    assert config["task"] == "single_label" and config["source_checkpoint"] == "best.pt"
    assert config["agreement"]["top1_agreement"] == 1.0 and config["agreement"]["split"] == "val"
    from safetensors import safe_open

    with safe_open(str(hf / "model.safetensors"), "pt") as f:  # the weights alone, under the model's own keys
        assert set(f.keys()) == set(Predictor.load(run_dir).model.state_dict())
    ours = _predictions(run_dir, data / "test", tmp_path / "run.csv")
    _no_pickle(monkeypatch)
    _same_predictions(ours, _predictions(hf, data / "test", tmp_path / "hf.csv"))
    loaded = Predictor.load(hf)
    images = loaded.load_images(expand_inputs([str(data / "test")]))[0]
    monkeypatch.undo()  # the run's checkpoint is a torch.load
    reference = Predictor.load(run_dir).probabilities(images)
    assert (reference.argmax(1) == loaded.probabilities(images).argmax(1)).all()
    assert (reference - loaded.probabilities(images)).abs().max() < 1e-5


def test_model_card_front_matter_and_metrics_with_their_n(run, hf):
    run_dir, _ = run
    text = (hf / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta == {"library_name": "resnetlab", "license": "apache-2.0", "tags": ["image-classification", "resnet"],
                    "pipeline_tag": "image-classification"}
    scores = json.loads((run_dir / "eval_test.json").read_text())
    assert f"| top-1 accuracy | {100 * scores['top1']:.2f}% | {scores['n']} |" in body and scores["n"] == 15
    sizes = json.loads((run_dir / "data.json").read_text())["sizes"]
    assert f"train {sizes['train']}" in body and f"test {sizes['test']}" in body and f"val {sizes['val']}" in body
    for section in ("## Data", "## Metrics", "## Training", "## Intended use", "## Limits"):
        assert section in body
    assert "Recipe: `run`" in body and "model:\n  name: resnet9" in body  # env.json's command, config.yaml
    for public in (text, (hf / "config.json").read_text()):  # no path of the training machine in public files
        assert str(run_dir.parent) not in public


def test_model_card_says_not_scored_without_test_scores(run, hf, tmp_path):
    from resnetlab.deploy.card import model_card

    run_dir, _ = run
    bare = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("export", "eval_*", "*.pt"))
    body = model_card(json.loads((hf / "config.json").read_text()), bare)
    assert "Test split: not scored" in body and "| top-1 accuracy" not in body and "license" not in body


def test_hf_reexport_replaces_only_its_own_folder(run, hf, tmp_path, monkeypatch, capsys):
    import resnetlab.cli.export as cli_export

    run_dir, _ = run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a Hugging Face folder resnetlab wrote" in err[0]
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(cli_export, "MIN_AGREEMENT", 1.01)  # no export can pass
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 2
    assert "the previous export was kept" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine"]


def test_evaluate_scores_an_hf_folder_on_class_folders(run, hf, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "scores"
    assert main(["evaluate", str(hf), "--data", str(data / "test"), "--out", str(out), "--no-figures"]) == 0
    result = json.loads((out / "eval_test.json").read_text())
    predictor = Predictor.load(run_dir)
    images, paths, _ = predictor.load_images(expand_inputs([str(data / "test")]))
    labels = torch.tensor([predictor.classes.index(p.split(os.sep)[-2]) for p in paths])
    expected = (predictor.probabilities(images).argmax(1) == labels).double().mean().item()
    assert result["n"] == 15 and abs(result["top1"] - expected) < 1e-6
    capsys.readouterr()
    assert main(["evaluate", str(hf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --data FOLDER" in err[0]


def test_openvino_export_agrees_and_serves(run, tmp_path, capsys):
    run_dir, data = run
    assert main(["export", str(run_dir), "--format", "openvino", "--out", str(tmp_path / "ov" / "model")]) == 0
    assert "top-1 100.00%" in capsys.readouterr().out
    xml = tmp_path / "ov" / "model.xml"
    assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml", "model.xml.json"]
    meta = json.loads(sidecar(xml).read_text())
    assert meta["format"] == "openvino" and meta["converted_from"] == "onnx" and meta["weights"] == "model.bin"
    assert meta["agreement"]["top1_agreement"] == 1.0 and meta["agreement"]["max_probability_difference"] < 1e-4
    ours = _predictions(run_dir, data / "test", tmp_path / "run.csv")
    _same_predictions(ours, _predictions(xml, data / "test", tmp_path / "ov.csv"))
    client = TestClient(create_app(load_model(xml), Limits(), source=str(xml)))
    files = sorted((data / "test" / "bee").iterdir())[:3]
    answer = client.post("/predict?topk=1", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files])
    assert answer.status_code == 200
    assert [a["top"][0]["class"] for a in answer.json()["predictions"]] == [ours[str(f)][0] for f in files]
    assert client.get("/health").json()["model_file"] == str(xml)


def test_serve_answers_from_an_hf_folder(run, hf):
    run_dir, data = run
    client = TestClient(create_app(load_model(hf), Limits(), source=str(hf)))
    health = client.get("/health").json()
    assert health["model_sha256"] == hashlib.sha256((hf / "model.safetensors").read_bytes()).hexdigest()
    f = sorted((data / "test" / "cat").iterdir())[0]
    got = client.post("/predict", content=f.read_bytes(), headers={"Content-Type": "image/png"}).json()
    expected = Predictor.load(run_dir)
    probs = expected.probabilities(expected.load_images([str(f)])[0])
    assert got["predictions"][0]["top"][0]["class"] == expected.classes[int(probs.argmax())]


def _hub_cache(hf, root):
    """The Hub's cache layout, as snapshot_download leaves it: refs/main names a snapshot folder."""
    repo = root / "models--me--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(hf, repo / "snapshots" / COMMIT)
    return root


def _cli(args, env, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    # the parent's own PYTHONPATH too (where the optional packages may be), made absolute for the new cwd
    given = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), *given])
    return subprocess.run([sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_hf_hub_loads_from_the_local_cache_offline(run, hf, tmp_path, monkeypatch):
    run_dir, data = run
    cache = _hub_cache(hf, tmp_path / "hub")
    done = _cli(["predict", "hf-hub:me/tiny", str(data / "test"), "--format", "csv", "-o", str(tmp_path / "p.csv"),
                 "--no-reject"], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path)},
                tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = {r["path"]: (r["class1"], float(r["prob1"])) for r in csv.DictReader((tmp_path / "p.csv").open())}
    _same_predictions(_predictions(run_dir, data / "test", tmp_path / "run.csv"), theirs)
    # in this process too, with the cache alone and no pickle; a model the cache lacks is one line
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    _no_pickle(monkeypatch)
    loaded = Predictor.load("hf-hub:me/tiny")
    assert loaded.classes == ["ant", "bee", "cat"] and loaded.checkpoint.parent.name == COMMIT
    with pytest.raises(UserError) as missing:
        Predictor.load("hf-hub:me/absent")
    assert "\n" not in str(missing.value)
    assert str(missing.value).startswith("cannot fetch hf-hub:me/absent: HF_HUB_OFFLINE is set")


def test_push_offline_is_one_line_and_exports_nothing(run, tmp_path):
    run_dir, _ = run
    done = _cli(["push", str(run_dir), "me/tiny"], {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_real_token",
                                                     "HF_HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 2 and done.stdout == ""  # refused before the export
    assert done.stderr.strip().splitlines() == [
        "resnetlab push: error: cannot push to me/tiny: HF_HUB_OFFLINE is set, so the Hub is not contacted: "
        "unset it to reach the Hub"]


def test_push_without_a_token_is_one_line(hf, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "token"))  # no saved login
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # a slip past the token: no network
    assert main(["push", str(hf), "me/tiny"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "resnetlab push: error: cannot push to me/tiny: no Hugging Face token: set HF_TOKEN or log in with "
        "`hf auth login`"]


def test_a_missing_extra_is_one_line_naming_it(run, hf, tmp_path, monkeypatch, capsys):
    run_dir, _ = run
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["push", str(hf), "me/tiny"]) == 2
    assert main(["predict", "hf-hub:me/tiny", str(run[1] / "test")]) == 2
    assert main(["export", str(run_dir), "--format", "openvino", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert err[0].endswith("needs the huggingface_hub package: pip install 'resnetlab[hub]'")
    assert err[1].endswith("needs the huggingface_hub package: pip install 'resnetlab[hub]'")
    assert err[2].endswith("needs the openvino package: pip install 'resnetlab[openvino]'")
    assert not list(tmp_path.iterdir())
