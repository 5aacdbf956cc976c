"""The model card (README.md) of a Hugging Face folder: YAML front matter the Hub reads, then what a
reader needs before using the model: its data and splits, its test scores with their n (or "not
scored"), how it was trained, what it is for and where it falls short.

Every figure comes from the run folder (eval_<split>.json, env.json, data.json, config.yaml) or the
exported config.json; nothing is typed in by hand, so the card cannot drift from the run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from resnetlab import run_folder as rf
from resnetlab.deploy.export import describe_agreement
from resnetlab.io import read_yaml

TAGS = ["image-classification", "resnet"]
# (key of eval_test.json, name, a share shown as a percentage)
SINGLE_LABEL_METRICS = [("top1", "top-1 accuracy", True), ("top5", "top-5 accuracy", True),
                        ("balanced_accuracy", "balanced accuracy", True), ("macro_f1", "macro F1", True),
                        ("loss", "cross-entropy loss", False)]
MULTI_LABEL_METRICS = [("map_macro", "mAP (macro)", True), ("chance_map_macro", "mAP of chance (macro)", True),
                       ("map_micro", "mAP (micro)", True), ("f1_micro", "F1 (micro)", True),
                       ("exact_match", "exact match", True)]
RESIZE = {"squash": "stretched to", "crop": "short side resized, then centre-cropped to"}


def model_card(meta: dict, run_dir: Path | None, *, license: str | None = None, repo_id: str | None = None) -> str:
    """README.md for the folder whose config.json is ``meta``, from the run in ``run_dir`` (None: the
    sections that need the run say they were not recorded); ``repo_id``: the Hub repository it goes to
    (else its examples say ORG/NAME)."""
    run = _RunFiles(run_dir)
    front = {"library_name": "resnetlab", **({"license": license} if license else {}), "tags": TAGS,
             "pipeline_tag": "image-classification"}
    title = repo_id or meta.get("run") or meta["model"]["name"]
    sections = [_summary(meta), _data(meta, run), _metrics(meta, run), _training(run), _use(run, repo_id or "ORG/NAME"),
                _limits(meta, run)]
    return ("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + f"# {title}\n\n"
            + "\n\n".join(s.strip() for s in sections) + "\n")


class _RunFiles:
    """The run folder's files the card reads, each None where absent (or no run)."""

    def __init__(self, run_dir: Path | None):
        self.dir = run_dir
        self.test = self._json(rf.eval_name("test"))
        self.env = self._json(rf.ENV) or {}
        self.data = self._json(rf.DATA) or {}
        found = run_dir is not None and (run_dir / rf.CONFIG).is_file()
        self.config = (read_yaml(run_dir / rf.CONFIG) or {}) if found else {}
        # the card may be public: where files lay on the training machine is not the recipe
        self.config_text = yaml.safe_dump(_shorten_paths(self.config), sort_keys=False) if found else ""

    def _json(self, name: str):
        return rf.read_optional_json(self.dir, name) if self.dir else None

    @property
    def dataset(self) -> str:
        name = str((self.config.get("data") or {}).get("dataset") or "")
        # a local folder's name, not where it lay on the training machine
        return (Path(name).name if "/" in name else name) or "not recorded"


def _shorten_paths(value):
    """The config with every absolute path cut to its last part (/home/me/data/flowers -> .../flowers)."""
    if isinstance(value, dict):
        return {k: _shorten_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten_paths(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or value[1:3] in (":\\", ":/")):
        return ".../" + Path(value).name
    return value


def _summary(meta: dict) -> str:
    classes, task = meta["classes"], meta.get("task", "single_label")
    shape, pre = meta["input"], meta["preprocess"]
    kind = ("multi-label: one sigmoid a class, each class decided at its own threshold"
            if task == "multi_label" else "single-label: a softmax over the classes")
    shown = ", ".join(f"`{c}`" for c in classes[:40]) + (f" and {len(classes) - 40} more" if len(classes) > 40 else "")
    return f"""
A `{meta['model']['name']}` image classifier ({kind}) trained with
[resnetlab](https://pypi.org/project/resnetlab/): {len(classes)} classes, {shape['size']}x{shape['size']} px,
{shape['channels']} channel{'s' if shape['channels'] != 1 else ''}.

Classes: {shown}.

Preprocessing (resnetlab applies it): decode to {'grey' if shape['channels'] == 1 else 'RGB'},
{RESIZE.get(pre['resize'], pre['resize'])} {shape['size']}x{shape['size']} (`{pre['resize']}`), as uint8;
then x / 255, minus mean {_numbers(pre['mean'])}, divided by std {_numbers(pre['std'])}.
"""


def _numbers(values) -> str:
    flat = values if not values or not isinstance(values[0], list) else ["(a mean image)"]
    return "[" + ", ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in flat) + "]"


def _data(meta: dict, run: _RunFiles) -> str:
    sizes = run.data.get("sizes") or {}
    splits = ", ".join(f"{split} {n:,}" for split, n in sizes.items()) or "not recorded"
    return f"""
## Data

Data set: `{run.dataset}`. Splits (images): {splits}. The validation split chose the checkpoint and
fitted what decides (temperature, rejection or per-class thresholds); the test split was scored once, at
the end.
"""


def _metrics(meta: dict, run: _RunFiles) -> str:
    check = meta.get("agreement")
    checked = (f"\nThese weights were checked against the training checkpoint ({meta.get('source_checkpoint')}) "
               f"on {check['n']} {check.get('split') or ''} images when exported: {describe_agreement(check)}, "
               f"largest probability difference {check['max_probability_difference']:.1e}.\n") if check else ""
    result = run.test
    if not result:
        return ("## Metrics\n\nTest split: not scored (the run has no test score; `resnetlab evaluate RUN` "
                "scores it).\n" + checked)
    rows = MULTI_LABEL_METRICS if meta.get("task") == "multi_label" else SINGLE_LABEL_METRICS
    lines = ["| metric | value | n |", "|---|---|---|"]
    lines += [f"| {name} | {100 * result[key]:.2f}% | {result['n']} |" if pct else
              f"| {name} | {result[key]:.4f} | {result['n']} |" for key, name, pct in rows if key in result]
    cal = result.get("calibration") or {}
    if "ece" in cal:
        lines.append(f"| expected calibration error | {100 * cal['ece']:.2f}% | {cal['n']} |")
    if "ece_scaled" in cal:
        lines.append(f"| ECE with the temperature | {100 * cal['ece_scaled']:.2f}% | {cal['n']} |")
    return (f"## Metrics\n\nOn the test split ({result.get('checkpoint', 'the checkpoint')}), n = images scored:\n\n"
            + "\n".join(lines) + "\n" + checked)


def _training(run: _RunFiles) -> str:
    env = run.env
    if not run.config_text:
        return "## Training\n\nThe training run was not recorded with this model.\n"
    how = ", ".join(f"{k} {env[k]}" for k in ("device", "precision", "seed", "resnetlab", "torch") if k in env)
    return f"""
## Training

Recipe: `{env.get('command', '?')}` ({how}). The resolved config below trains it again: save it as
`config.yaml`, point `data.dataset` at the data (local paths are cut to their last part here) and run
`resnetlab train config.yaml`.

<details><summary>config.yaml</summary>

```yaml
{run.config_text.rstrip()}
```

</details>
"""


def _use(run: _RunFiles, repo: str) -> str:
    return f"""
## Intended use

Classifying images like those of `{run.dataset}` into the classes above, for research, prototyping and
as a baseline. Check it on labelled images of your own before relying on it:

```sh
pip install 'resnetlab[hub]'
resnetlab predict hf-hub:{repo} photo.jpg
resnetlab evaluate hf-hub:{repo} --data labelled_class_folders/
resnetlab serve hf-hub:{repo}
```

```python
from resnetlab import Predictor

predictor = Predictor.load("hf-hub:{repo}")  # weights read with safetensors, no pickle
images, paths, bad = predictor.load_images(["photo.jpg"])
probabilities = predictor.probabilities(images)
```
"""


def _limits(meta: dict, run: _RunFiles) -> str:
    scored = (f"scored only on the test split of its own data set (n={run.test['n']})" if run.test
              else "not scored on a test split")
    lines = [f"- It was {scored}; images from other sources, cameras or conditions may score far lower.",
             f"- Inputs are reduced to {meta['input']['size']} px: smaller details are lost."]
    if meta.get("task") == "multi_label":
        lines.append(f"- Each class is decided at its own threshold ({meta.get('threshold_source') or 'config.json'});"
                     " rare classes' thresholds rest on few validation images.")
    elif meta.get("calibration"):
        cal = meta["calibration"]
        lines.append(f"- An image whose top probability is under {cal['msp_threshold']:.3f} (fitted on "
                     f"{cal.get('fitted_on', 'val')}, n={cal.get('n', '?')}) is answered `unknown`; an image of a "
                     "class it never saw may still get a confident wrong answer.")
    else:
        lines.append(f"- It always names one of its {len(meta['classes'])} classes, even for an image of none of "
                     "them (no rejection threshold was fitted).")
    lines.append("- It was not evaluated for fairness, robustness to adversarial input, or safety-critical use.")
    return "## Limits\n\n" + "\n".join(lines) + "\n"
