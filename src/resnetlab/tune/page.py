"""study.html: the best parameters, Optuna's optimisation-history and importance plots, every trial.

Self-contained like report.html (figures inlined, no CDN); the plots are Optuna's own
matplotlib ones, so they read as its users know them.
"""

from __future__ import annotations

import html
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from resnetlab.evaluate.report import inline_png, page, pct, table
from resnetlab.io import atomic_write_text


def _figure(plot, study: optuna.Study, alt: str) -> str:
    from resnetlab.plotting import png_bytes

    try:
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore")
            ax = plot(study)
    except (ValueError, RuntimeError) as e:  # e.g. importances need two completed trials
        return f'<p class="note">{html.escape(alt)}: not drawn ({html.escape(str(e).splitlines()[0][:160])})</p>'
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    return inline_png(png_bytes(fig, dpi=100), alt)


def write_study_page(study: optuna.Study, study_dir: Path, compare: Path | None, metric: str = "val top-1") -> Path:
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    best = study.best_trial
    rows = [[t.number, t.state.name.lower(), pct(t.value) if t.value is not None else "-",
             t.last_step if t.last_step is not None else "-",
             " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()),
             "retry of %s" % t.user_attrs["retry_of"] if "retry_of" in t.user_attrs else
             ("killed" if t.user_attrs.get("killed") else "")]
            for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    parts = [f"<h1>resnetlab study {html.escape(study_dir.name)}</h1>",
             f'<p class="note">written {time.strftime("%Y-%m-%d %H:%M:%S")}; objective: the best epoch\'s '
             f"{metric} (the test split is never looked at); "
             + ", ".join(f"{n} {k}" for k, n in counts.items()) + "</p>",
             '<h2 id="best">Best trial</h2>',
             f"<p>trial {best.number}: {metric} {pct(best.value)}; recipe <code>best.yaml</code> "
             f"(<code>resnetlab train {html.escape(str(study_dir / 'best.yaml'))}</code>)</p>",
             table(["parameter", "value"], [[k, v] for k, v in best.params.items()]),
             '<h2 id="history">Optimisation history</h2>' + _figure(plot_optimization_history, study,
                                                                     "optimisation history"),
             '<h2 id="importance">Parameter importances</h2>'
             + f'<p class="note">Optuna\'s fANOVA over the {counts["complete"]} completed trials: with few trials '
             "these are rough</p>" + _figure(plot_param_importances, study, "parameter importances"),
             '<h2 id="trials">Trials</h2>' + table(["trial", "state", metric, "epochs", "parameters", ""], rows)]
    if compare is not None:
        parts.append(f'<h2 id="compare">Top trials side by side</h2><p><a href="{compare.name}">{compare.name}</a></p>')
    out = study_dir / "study.html"
    atomic_write_text(out, page(f"resnetlab study {study_dir.name}", parts))
    return out
