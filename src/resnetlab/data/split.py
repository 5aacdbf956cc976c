"""Choosing classes, the "unknown" class, and holding out val/test splits from a Catalog.

All draws are seeded by ``seed`` and stratified by class (multi-label data: by every label at
once, iterative stratification). Where rows carry groups
(GTSRB's tracks of one physical sign), whole groups move together, so no sign
is seen in training and again in validation.
"""

from __future__ import annotations

import difflib

import numpy as np

from resnetlab.config import DataConfig
from resnetlab.data.catalog import Catalog, strata
from resnetlab.errors import UserError

UNKNOWN = "unknown"
_UNKNOWN_DRAW, _TEST_DRAW, _VAL_DRAW = 1, 2, 3  # one random stream per purpose


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5EED, purpose])


def resolve_class(catalog: Catalog, wanted: str, aliases: dict[str, int] | None = None) -> int:
    """A class index from its id ('12', '00012', 'n01443537'), its name ('Stop'), or an alias."""
    text = str(wanted).strip()
    for i, cid in enumerate(catalog.class_ids):
        if cid == text or (cid.isdigit() and text.isdigit() and int(cid) == int(text)):
            return i
    lowered = [c.lower() for c in catalog.classes]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if aliases and text.lower() in aliases:
        return aliases[text.lower()]
    near = difflib.get_close_matches(text, catalog.classes + catalog.class_ids, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    shown = ", ".join(f"{i}={n}" for i, n in zip(catalog.class_ids[:6], catalog.classes[:6]))
    raise UserError(f"data.classes: no class '{text}' in this data set{hint} (classes are {shown}, ...)")


def final_classes(catalog: Catalog, d: DataConfig, aliases: dict[str, int] | None = None) -> tuple[list[int], bool]:
    """Indices of the kept classes in the order given, and whether an unknown class is added."""
    unknown = d.unknown_count > 0 or d.unknown_fraction > 0
    if not d.classes:
        if unknown:
            raise UserError("data.unknown_count/unknown_fraction need data.classes: the classes to keep")
        return list(range(len(catalog.classes))), False
    chosen = [resolve_class(catalog, c, aliases) for c in d.classes]
    if len(set(chosen)) != len(chosen):
        twice = next(catalog.classes[i] for i in chosen if chosen.count(i) > 1)
        raise UserError(f"data.classes names '{twice}' twice")
    if unknown and len(chosen) == len(catalog.classes):
        raise UserError("data.classes keeps every class: no images are left to make the unknown class from")
    return chosen, unknown


def class_lists(catalog: Catalog, chosen: list[int], unknown: bool) -> tuple[list[str], list[str]]:
    """Names and ids of the classes a model trained on this selection has, in label order."""
    extra = [UNKNOWN] if unknown else []
    return [catalog.classes[i] for i in chosen] + extra, [catalog.class_ids[i] for i in chosen] + extra


def select(catalog: Catalog, chosen: list[int], unknown: bool, d: DataConfig, seed: int) -> Catalog:
    """Keep ``chosen`` classes (relabelled 0..k-1), plus a sampled 'unknown' class from the others."""
    if chosen == list(range(len(catalog.classes))) and not unknown:
        return catalog
    new_label = np.full(len(catalog.classes), -1, dtype=np.int64)
    new_label[chosen] = np.arange(len(chosen))
    kept = new_label[catalog.labels] >= 0
    rows = np.flatnonzero(kept)
    if unknown:
        rows = np.sort(np.concatenate([rows, _sample_unknown(catalog, ~kept, d, seed)]))
    out = catalog.take(rows)
    mapped = new_label[out.labels]
    out.labels = np.where(mapped >= 0, mapped, len(chosen))
    out.classes, out.class_ids = class_lists(catalog, chosen, unknown)
    return out


def _sample_unknown(catalog: Catalog, other: np.ndarray, d: DataConfig, seed: int) -> np.ndarray:
    """Rows of the other classes, per split, in equal shares of each class so all are represented."""
    rng = _rng(seed, _UNKNOWN_DRAW)
    total_other = int(other.sum())
    picked = []
    for split in catalog.present_splits():
        pool = np.flatnonzero(other & (catalog.splits == split))
        if d.unknown_fraction > 0:
            target = int(round(d.unknown_fraction * len(pool)))
        else:  # a count over all splits, shared out in proportion to their sizes
            target = int(round(d.unknown_count * len(pool) / max(total_other, 1)))
        target = min(target, len(pool))
        by_class = [rng.permutation(pool[catalog.labels[pool] == c]) for c in np.unique(catalog.labels[pool])]
        rng.shuffle(by_class)
        # round-robin over the classes: the first `target` of the interleaving
        width = max((len(b) for b in by_class), default=0)
        order = [b[j] for j in range(width) for b in by_class if j < len(b)]
        picked.append(np.array(order[:target], dtype=np.int64))
    return np.concatenate(picked) if picked else np.array([], dtype=np.int64)


def _allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """``total`` shared over classes in proportion to ``sizes``, by largest remainder (sums exactly)."""
    exact = sizes * total / max(sizes.sum(), 1)
    out = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out


def _take_units(rows: np.ndarray, groups: np.ndarray | None, target: int, rng) -> np.ndarray:
    """Whole groups from ``rows`` (shuffled) until the count is as close to ``target`` as groups allow."""
    if target <= 0:
        return np.array([], dtype=np.int64)
    if groups is None:
        return rng.permutation(rows)[:target]
    units = np.unique(groups[rows])
    taken, total = [], 0
    for g in rng.permutation(units)[: max(len(units) - 1, 1)]:  # a class keeps one group to train on
        members = rows[groups[rows] == g]
        if total and abs(total + len(members) - target) >= abs(total - target):
            break
        taken.append(members)
        total += len(members)
        if total >= target:
            break
    return np.concatenate(taken)


def _per_class_targets(catalog: Catalog, pool: np.ndarray, fraction: float, count: int) -> dict[int, int]:
    classes, sizes = np.unique(catalog.labels[pool], return_counts=True)
    if count:
        if count >= len(pool):
            raise UserError(f"data.val_count={count} but the training split has only {len(pool)} images")
        return dict(zip(classes.tolist(), _allocate(sizes, count).tolist()))
    # at least one per class (of 2+), so every class is validated
    return {int(c): (max(int(round(fraction * n)), 1) if n > 1 else 0) for c, n in zip(classes, sizes)}


def hold_out(catalog: Catalog, d: DataConfig, seed: int) -> tuple[Catalog, list[str]]:
    """Move test (``test_fraction``) then val (``val_fraction`` or ``val_count``; else ``auto_val_fraction``
    when the layout has no val split) rows out of train."""
    notes = []
    splits = catalog.splits.copy()
    drop = np.zeros(len(catalog), dtype=bool)
    train = catalog.splits == "train"
    val_fraction = d.val_fraction
    if d.auto_val_fraction and not (d.val_fraction or d.val_count) and not (catalog.splits == "val").any():
        val_fraction = d.auto_val_fraction
        notes.append(f"the data has no validation split: {val_fraction:.0%} of train is held out to choose the "
                     f"checkpoint (stratified by class, seed {seed}; data.auto_val_fraction)")
    plan = [("test", d.test_fraction, 0, _TEST_DRAW), ("val", val_fraction, d.val_count, _VAL_DRAW)]
    for name, fraction, count, purpose in plan:
        if not fraction and not count:
            continue
        own = catalog.splits == name
        if own.any():  # the held-out split replaces the layout's own one
            notes.append(f"the data set's own {name} split ({int(own.sum())} images) is left out: "
                         f"{name} is held out of train instead (data.{name}_{'count' if count else 'fraction'})")
            drop |= own
        pool = np.flatnonzero(train & (splits == "train"))
        rng = _rng(seed, purpose)
        if catalog.targets is not None:  # label sets: every label's share at once, not one class's
            take = count or int(round(fraction * train.sum()))
            if take >= len(pool):
                key = f"data.{name}_count={count}" if count else f"data.{name}_fraction={fraction}"
                raise UserError(f"{key} asks for {take} of the {len(pool)} training images: lower it")
            splits[iterative_take(catalog.targets, pool, take, rng)] = name
            continue
        targets = _per_class_targets(catalog, np.flatnonzero(train), fraction, 0) if fraction else \
            _per_class_targets(catalog, pool, 0, count)
        for c, target in sorted(targets.items()):
            rows = pool[catalog.labels[pool] == c]
            splits[_take_units(rows, catalog.groups, target, rng)] = name
    out = catalog.take(np.flatnonzero(~drop))
    out.splits = splits[~drop]
    if not (out.splits == "train").any():
        raise UserError("no training images are left after holding out val/test: lower the fractions")
    return out, notes


def iterative_take(targets: np.ndarray, pool: np.ndarray, take: int, rng: np.random.Generator) -> np.ndarray:
    """About ``take`` rows of ``pool`` for a held-out split of multi-label data, by iterative
    stratification (Sechidis, Tsoumakas and Vlahavas 2011): the label with the fewest rows left goes
    first, each of its rows to the side (held out or kept) that still wants most of that label, ties
    to the side that wants most rows, then at random; rows with no label fill the sides last. Each
    label, rare ones included, then lands in the held-out split in about the share asked for."""
    y = targets[pool] > 0  # (P, K)
    ratio = take / len(pool)
    wants = np.array([take, len(pool) - take], dtype=np.float64)  # rows each side still wants
    label_wants = np.outer([ratio, 1 - ratio], y.sum(0))  # (2, K) rows with each label each side wants
    side = np.full(len(pool), -1)
    while (left := y[side < 0].sum(0)).any():
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for i in rng.permutation(np.flatnonzero((side < 0) & y[:, label])):
            s = _side(label_wants[:, label], wants, rng)
            side[i] = s
            label_wants[s] -= y[i]
            wants[s] -= 1
    for i in rng.permutation(np.flatnonzero(side < 0)):
        side[i] = s = _side(wants, wants, rng)
        wants[s] -= 1
    return pool[side == 0]


def _side(label_wants: np.ndarray, wants: np.ndarray, rng: np.random.Generator) -> int:
    """0 (held out) or 1 (kept): the side that wants the label most, then the one that wants most rows."""
    best = np.flatnonzero(label_wants == label_wants.max())
    if len(best) > 1:
        best = best[wants[best] == wants[best].max()]
    return int(rng.choice(best)) if len(best) > 1 else int(best[0])


def drop_unseen_labels(catalog: Catalog) -> tuple[Catalog, list[str]]:
    """Multi-label: a label no training image carries cannot be learnt; it leaves the classes (with a
    note), so val and test score it as absent rather than as a class the model never saw."""
    seen = catalog.targets[catalog.splits == "train"].any(0)
    if seen.all():
        return catalog, []
    if not seen.any():
        raise UserError("no training image carries a label (every label is in val/test only): nothing to learn; "
                        "put labelled images in train")
    gone = [c for c, s in zip(catalog.classes, seen) if not s]
    shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
    out = catalog.take(np.arange(len(catalog)))
    out.targets = catalog.targets[:, seen]
    out.classes = [c for c, s in zip(catalog.classes, seen) if s]
    out.class_ids = [c for c, s in zip(catalog.class_ids, seen) if s]
    out.labels = strata(out.targets)
    return out, [f"warning: label(s) {shown} appear only in val/test, never in train: left out of the classes "
                 "and scored as absent"]
