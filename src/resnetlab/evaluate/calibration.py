"""Calibrated confidence and rejection of inputs the model does not know.

- Expected calibration error: the gap between confidence and accuracy, averaged
  over 15 equal-width confidence bins weighted by their counts (Guo et al. 2017).
- Temperature scaling: one scalar T dividing the logits, fitted on validation by
  minimising NLL; it changes confidence, never the predicted class.
- Rejection: a threshold on the maximum softmax probability (Hendrycks & Gimpel
  2017) or on the energy -T logsumexp(logits / T) (Liu et al. 2020), set on
  known-class validation images so that at most a stated share is rejected.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from resnetlab.errors import UserError


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> tuple[float, list[dict]]:
    """(ECE, per-bin {lo, hi, n, confidence, accuracy}); probs (N, K), labels (N,)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    total, table = 0.0, []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        inside = (conf.double() > lo) & (conf.double() <= hi) if lo > 0 else conf.double() <= hi
        n = int(inside.sum())
        if n:
            c, a = conf[inside].double().mean().item(), correct[inside].mean().item()
            total += n * abs(c - a)
            table.append({"lo": lo, "hi": hi, "n": n, "confidence": c, "accuracy": a})
        else:
            table.append({"lo": lo, "hi": hi, "n": 0, "confidence": None, "accuracy": None})
    return total / max(len(labels), 1), table


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T > 0 minimising the NLL of softmax(logits / T); optimised over log T so T stays positive."""
    if len(labels) == 0:
        raise UserError("no validation images to fit a temperature on")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    x, y = logits.double(), labels
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def scores(logits: torch.Tensor, temperature: float, kind: str) -> torch.Tensor:
    """Higher = more like the known classes: max softmax probability, or minus the energy."""
    z = logits.double() / temperature
    if kind == "msp":
        return z.softmax(1).max(1).values
    return temperature * torch.logsumexp(z, 1)  # -energy


def threshold_for(known_scores: torch.Tensor, target: float) -> float:
    """The score below which at most ``target`` of known-class validation images fall."""
    if not 0 < target < 1:
        raise UserError(f"the rejection target must be in (0, 1), got {target:g}: e.g. 0.05 rejects at most 5%")
    if len(known_scores) == 0:
        raise UserError("no validation images to set the rejection threshold on")
    ordered = known_scores.double().sort().values
    k = math.floor(target * len(ordered))  # reject the k lowest: k / n <= target
    return float(ordered[k]) if k < len(ordered) else float(ordered[-1])


def rejected(logits: torch.Tensor, temperature: float, kind: str, threshold: float) -> torch.Tensor:
    return scores(logits, temperature, kind) < threshold


def calibrate(val_logits: torch.Tensor, val_labels: torch.Tensor, *, target: float,
              known: torch.Tensor | None = None) -> dict:
    """Temperature and both rejection thresholds from validation; ``known`` masks the rows of
    known classes (all of them, unless the model has an 'unknown' class)."""
    temperature = fit_temperature(val_logits, val_labels)
    rows = known if known is not None else torch.ones(len(val_labels), dtype=torch.bool)
    out = {"temperature": temperature, "target_reject": target, "fitted_on": "val", "n": int(rows.sum())}
    for kind in ("msp", "energy"):
        out[f"{kind}_threshold"] = threshold_for(scores(val_logits[rows], temperature, kind), target)
    before, _ = ece(val_logits.softmax(1), val_labels)
    after, _ = ece((val_logits / temperature).softmax(1), val_labels)
    out.update(val_ece_before=before, val_ece_after=after)
    return out
