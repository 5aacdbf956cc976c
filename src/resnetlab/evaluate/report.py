"""`resnetlab report RUN`: one self-contained HTML file (images inlined, no CDN, works offline).

Built only from what the run folder holds (config.yaml, data.json, metrics.jsonl, curves.png,
eval_<split>.json and its figures), so it can be rebuilt any time and says plainly what is missing.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.evaluate.runs import read_history
from resnetlab.evaluate.task import SingleLabel, task_named, task_of_config
from resnetlab.io import atomic_write_text, read_json, read_yaml

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 0 16px 48px; color: #222; }
h1 { margin-bottom: 0 } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px }
table { border-collapse: collapse; margin: 8px 0 }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right }
th { background: #f4f4f4 } td:first-child, th:first-child { text-align: left }
img { max-width: 100%; border: 1px solid #eee }
pre { background: #f7f7f7; padding: 8px; overflow: auto; font-size: 12px }
.note { color: #666 } nav a { margin-right: 12px }
"""
SECTIONS = [("config", "Config"), ("data", "Data"), ("training", "Training"), ("metrics", "Metrics"),
            ("tta", "Test-time augmentation"), ("confusion", "Confusion matrix"), ("errors", "Error analysis"),
            ("calibration", "Calibration"), ("rejection", "Rejecting unknown inputs")]
ML_SECTIONS = [("config", "Config"), ("data", "Data"), ("training", "Training"), ("metrics", "Metrics"),
               ("thresholds", "Thresholds"), ("tta", "Test-time augmentation"), ("errors", "Error analysis")]


def inline_png(data: bytes, alt: str) -> str:
    """An <img> carrying the PNG itself, so the page needs no other file and no network."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="note">{html.escape(alt)}: not produced for this run.</p>'
    return inline_png(path.read_bytes(), alt)


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}%"


def _latest_eval(run: Path) -> tuple[str, dict] | tuple[None, None]:
    for name in ("test", "val", "train"):
        if (run / rf.eval_name(name)).is_file():
            return name, read_json(run / rf.eval_name(name))
    return None, None


def _task(run: Path, ev: dict | None) -> SingleLabel:
    """The run's task: its eval JSON's (single-label ones carry none), else its config's."""
    if ev is not None:
        return task_named(ev.get("task"))
    config = read_yaml(run / rf.CONFIG)
    return task_of_config(config if isinstance(config, dict) else {})


def build_report(run: Path) -> Path:
    run = Path(run)
    name, ev = _latest_eval(run)
    sections, evaluation = PAGES[_task(run, ev).kind]
    parts = [f"<h1>resnetlab run {html.escape(run.name)}</h1>",
             f'<p class="note">written {time.strftime("%Y-%m-%d %H:%M:%S")} from {html.escape(str(run))}</p>',
             "<nav>" + "".join(f'<a href="#{k}">{t}</a>' for k, t in sections) + "</nav>"]
    parts.append('<h2 id="config">Config</h2><details><summary>the resolved config (config.yaml)</summary><pre>'
                 + html.escape((run / rf.CONFIG).read_text()) + "</pre></details>")

    data = rf.read_optional_json(run, rf.DATA, {})
    classes = rf.read_optional_json(run, rf.CLASSES, [])
    parts.append('<h2 id="data">Data</h2>')
    if data:
        parts.append(f"<p>{len(classes)} classes, {data.get('image_size')} px, {data.get('channels')} channel(s), "
                     f"from {html.escape(str(data.get('root')))}; images per split: "
                     + ", ".join(f"{k} {v:,}" for k, v in data.get("sizes", {}).items()) + "</p>")
        counts = data.get("counts", {})
        if counts and len(classes) <= 60:
            parts.append(table(["class", *counts],
                               [[c, *(counts[s][i] for s in counts)] for i, c in enumerate(classes)]))
        for note in data.get("notes", []):
            parts.append(f'<p class="note">{html.escape(note)}</p>')

    history = read_history(run)
    parts.append('<h2 id="training">Training</h2>' + _img(run / rf.CURVES, "training curves"))
    if history:
        parts.append(f"<p>{len(history)} epochs; last: {_last_epoch(history[-1])}</p>")

    if ev is None:
        parts.append('<h2 id="metrics">Metrics</h2><p class="note">not evaluated yet: run resnetlab evaluate</p>')
    else:
        parts += evaluation(run, name, ev, classes)
    out = run / rf.REPORT
    atomic_write_text(out, page(f"resnetlab report: {run.name}", parts))
    return out


def _last_epoch(last: dict) -> str:
    """One epoch record in words: top-1 for single-label runs; exact match and mAP for multi-label ones."""
    def loss(v) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

    text = f"train loss {loss(last.get('train_loss'))}"
    if "train_exact" in last or "val_map" in last:  # multi-label epoch records
        text += f", train exact match (at 0.5, augmented) {pct(last.get('train_exact'))}"
        if "val_map" in last:
            text += (f", val loss {loss(last.get('val_loss'))}, val mAP {pct(last.get('val_map'))} (macro), "
                     f"{pct(last.get('val_map_micro'))} (micro)")
        return text
    text += f", train top-1 {pct(last.get('train_top1'))}"
    return text + (f", val top-1 {pct(last.get('val_top1'))}" if "val_top1" in last else "")


def page(title: str, parts: list[str]) -> str:
    """A self-contained HTML page (inline CSS, no network) from its sections."""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>" + html.escape(title)
            + f"</title><style>{CSS}</style></head><body>" + "\n".join(parts)
            # the only script: proves in a browser that the page finished rendering
            + "<script>document.body.dataset.rendered = 'yes';</script></body></html>\n")


def _evaluation(run: Path, name: str, ev: dict, classes: list[str]) -> list[str]:
    figures = rf.eval_figures(run, name)
    parts = [f'<h2 id="metrics">Metrics ({html.escape(name)} split, {html.escape(ev.get("checkpoint", ""))})</h2>',
             table(["n", "top-1", "top-5", "loss", "balanced accuracy", "macro-F1", "images/s"],
                    [[ev["n"], pct(ev["top1"]), pct(ev["top5"]), f"{ev['loss']:.4f}", pct(ev["balanced_accuracy"]),
                      pct(ev["macro_f1"]), ev.get("images_per_s", "")]])]
    rows = [[c, pct(r["precision"]), pct(r["recall"]), pct(r["f1"]), r["n"]]
            for c, r in ev["per_class"].items()]
    parts.append(table(["class", "precision", "recall", "F1", "support (n)"], rows[:200]))
    parts.append('<h2 id="tta">Test-time augmentation</h2>')
    if "tta" in ev:
        t = ev["tta"]
        parts.append(table(["", "views", "top-1", "top-5", "loss", "n"],
                            [["without TTA", 1, pct(ev["top1"]), pct(ev["top5"]), f"{ev['loss']:.4f}", ev["n"]],
                             [f"TTA ({t['reduce']})", t["views"], pct(t["top1"]), pct(t["top5"]), f"{t['loss']:.4f}",
                              t["n"]]]))
    else:
        parts.append('<p class="note">not run: resnetlab evaluate RUN --tta 20</p>')
    parts.append('<h2 id="confusion">Confusion matrix</h2>'
                 + _img(figures / "confusion_normalized.png", "confusion matrix")
                 + _img(figures / "confusion.png", "confusion matrix, counts"))
    parts.append('<h2 id="errors">Error analysis</h2><h3>Most incorrect</h3>'
                 + _img(figures / "top_losses.png", "top losses"))
    pairs = ev.get("confused_pairs", [])
    parts.append("<h3>Most confused pairs</h3>" + (table(["true", "predicted", "count"], pairs[:20]) if pairs
                                                   else '<p class="note">no confusions</p>'))
    parts.append("<h3>Grad-CAM</h3>" + _img(figures / "gradcam.png", "Grad-CAM"))
    parts.append("<h3>Random predictions</h3>" + _img(figures / "random_predictions.png", "random predictions"))
    parts.append("<h3>One image's probabilities</h3>" + _img(figures / "probabilities.png", "class probabilities"))
    cal = ev.get("calibration", {})
    parts.append('<h2 id="calibration">Calibration</h2>' + _img(figures / "reliability.png", "reliability diagram"))
    if cal:
        line = f"ECE {pct(cal['ece'])} (n={cal['n']})"
        if "temperature" in cal:
            line += f"; with temperature {cal['temperature']:.3f} fitted on val: {pct(cal['ece_scaled'])}"
        parts.append(f"<p>{line}</p>" + (f'<p class="note">{html.escape(cal["note"])}</p>' if "note" in cal else ""))
    rej = ev.get("rejection", {})
    parts.append('<h2 id="rejection">Rejecting unknown inputs</h2>')
    if rej.get("methods"):
        parts.append(f"<p>thresholds set on known-class validation images to reject at most {pct(rej['target'])}; "
                     f"known images here n={rej['known_n']}"
                     + (f", unseen-class images n={rej['unseen_n']}" if "unseen_n" in rej else "") + "</p>")
        parts.append(table(["method", "known wrongly rejected", "unseen rejected", "unknown-class recall"],
                            [[m, pct(r.get("known_rejected")), pct(r.get("unseen_rejected")),
                              pct(r.get("unknown_class_recall"))] for m, r in rej["methods"].items()]))
    else:
        parts.append(f'<p class="note">{html.escape(rej.get("note", "not evaluated"))}</p>')
    return parts


def _multilabel_evaluation(run: Path, name: str, ev: dict, classes: list[str]) -> list[str]:
    """A multi-label eval JSON (evaluate/multilabel_split.py): mAP with chance, F1, exact match, per-class table,
    where the thresholds came from, TTA and the highest-loss images with their label sets."""
    figures = rf.eval_figures(run, name)
    n = ev["n"]
    parts = [f'<h2 id="metrics">Metrics ({html.escape(name)} split, {html.escape(ev.get("checkpoint", ""))})</h2>',
             table(["n", "mAP (macro)", "chance mAP", "classes scored", "mAP (micro)", "F1 micro", "F1 macro",
                    "exact match", "Hamming loss", "loss", "labels/image", "images/s"],
                   [[n, pct(ev["map_macro"]), pct(ev["chance_map_macro"]), ev["classes_scored"], pct(ev["map_micro"]),
                     pct(ev["f1_micro"]), pct(ev["f1_macro"]), pct(ev["exact_match"]), pct(ev["hamming_loss"]),
                     f"{ev['loss']:.4f}", f"{ev['labels_per_image']:.2f}", ev.get("images_per_s", "")]]),
             '<p class="note">mAP (macro): the mean over classes with a positive image of each class\'s average '
             "precision; chance: the mAP of scores that know nothing (each class's prevalence). F1, exact match "
             "(every label of an image right) and Hamming loss are at the per-class thresholds below.</p>",
             _img(figures / "per_class_ap.png", "average precision per class")]
    rows = [[c, "-" if r["ap"] is None else pct(r["ap"]), pct(r["n"] / n) if n else "-", pct(r["precision"]),
             pct(r["recall"]), pct(r["f1"]), f"{r['threshold']:.3f}", r["n"], r["predicted"]]
            for c, r in ev["per_class"].items()]
    parts.append(table(["class", "AP", "chance (prevalence)", "precision", "recall", "F1", "threshold",
                        "positives (n)", "predicted"], rows[:200]))
    parts.append('<h2 id="thresholds">Thresholds</h2>'
                 f"<p>{html.escape(ev.get('threshold_source', 'unknown'))}</p>"
                 + "".join(f'<p class="note">{html.escape(note)}</p>' for note in ev.get("threshold_notes", [])))
    parts.append('<h2 id="tta">Test-time augmentation</h2>')
    if "tta" in ev:
        t = ev["tta"]
        parts.append(table(["", "views", "mAP (macro)", "mAP (micro)", "F1 micro", "exact match", "n"],
                           [["without TTA", 1, pct(ev["map_macro"]), pct(ev["map_micro"]), pct(ev["f1_micro"]),
                             pct(ev["exact_match"]), n],
                            [f"TTA ({t['reduce']} of sigmoids)", t["views"], pct(t["map_macro"]), pct(t["map_micro"]),
                             pct(t["f1_micro"]), pct(t["exact_match"]), t["n"]]]))
    else:
        parts.append('<p class="note">not run: resnetlab evaluate RUN --tta 20</p>')
    worst = ev.get("top_losses", [])
    parts.append('<h2 id="errors">Error analysis</h2><h3>Highest loss</h3>'
                 + _img(figures / "top_losses.png", "top losses"))
    if worst:
        parts.append(table(["image", "loss", "true labels", "predicted labels", "probabilities"],
                           [[w["index"], f"{w['loss']:.3f}", ", ".join(w["true"]) or "(none)",
                             ", ".join(w["predicted"]) or "(none)",
                             ", ".join(f"{c} {v:.2f}" for c, v in w["probabilities"].items())] for w in worst]))
    return parts


# each task's sections and its scored split's part of the page, by the task's kind
PAGES = {"single-label": (SECTIONS, _evaluation), "multi-label": (ML_SECTIONS, _multilabel_evaluation)}
