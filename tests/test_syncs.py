"""No host sync in the steady-state training step: what a GPU would stall on, counted on the CPU.

A host sync (``.item()``, ``bool(t)``, ``float(t)``, ``t.tolist()``, ``t.numpy()``, ``t.cpu()``, printing a
tensor, a data-dependent shape: ``nonzero``, boolean-mask indexing) makes the host wait for every kernel
queued before it. On the CPU nothing waits, so these calls are counted instead, from step K to step K + N
of an epoch (after its first steps, before its end). Each is allowed only where it is named in SCHEDULED:
a read on a step interval the loop, the progress bar or TensorBoard declares as a module constant. Reads
of the augmentation's own random draws are CPU tensors on any device (HOST_DRAWS), and so is an unfused
optimiser's step count (HOST_STATE): neither is a sync. ``x[mask] = 0`` is a masked_fill_ on any device.
Syncs that only a GPU makes (a pageable copy, a CPU tensor meeting a device one) cannot be seen here.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass

import pytest
import torch
from rich.console import Console
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from resnetlab.run import progress, tensorboard
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train import loop
from tests.conftest import tiny_config, write_class_folders

# aten ops that read a value back (``_local_scalar_dense``: item, bool, float, int, __index__, printing)
# or size their output by the data (the host must learn the size before it can go on)
READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique", "aten._unique2",
         "aten.unique_dim", "aten.unique_consecutive", "aten.equal", "aten.is_nonzero"}
MASKED = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}  # a sync with a bool index
COPIES = {"tolist", "numpy", "cpu"}  # Tensor methods that copy to the host (no aten op of their own on the CPU)

# (function, reason): reads allowed on these steps only, ``i`` the step in the epoch and ``step`` the global one
SCHEDULED = {
    "check_finite": lambda i, step: i % loop.FINITE_CHECK_EVERY == loop.FINITE_CHECK_EVERY - 1,
    "EpochProgress.update": lambda i, step: i % progress.READ_EVERY == progress.READ_EVERY - 1,
    "TensorBoardLogger._read_steps": lambda i, step: (step + 1) % tensorboard.FLUSH_EVERY == 0,
}
# functions that read the augmentation's draws (mix: its lam and box; apply_policy: which images drew
# which op), made on the CPU from a CPU generator on any device
HOST_DRAWS = {"mix", "apply_policy"}
# torch functions that read state torch keeps on the host: an optimiser's step count is a CPU tensor
# unless the optimiser is fused (as on a GPU: train/session.py), whose kernels read it on the device
HOST_STATE = {"optim/optimizer.py:_get_value"}

FIRST, STEPS = 4, 26  # the window: steps FIRST .. FIRST + STEPS - 1 of the first epoch, of 36


@dataclass
class Sync:
    what: str  # the op or method
    where: str  # the innermost resnetlab function, file:line
    function: str  # its qualified name
    via: str  # the torch function between it and the read that HOST_STATE names, or ""
    i: int  # the step in the epoch the loop was at (its loader runs the next step's batch before i moves on)
    step: int

    def allowed(self) -> bool:
        rule = SCHEDULED.get(self.function)
        return (self.function.split(".<locals>")[0] in HOST_DRAWS or bool(self.via)
                or (rule is not None and rule(self.i, self.step)))


def _origin() -> tuple[str, str, str, int, int]:
    """(file:line, function) of the innermost resnetlab frame, the HOST_STATE function on the way to it
    (or ""), and the loop's (i, step)."""
    frame, where, function, via = sys._getframe(2), "?", "?", ""
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if where == "?" and "/resnetlab/" in name and "/tests/" not in name:
            where = f"{name.rsplit('/resnetlab/', 1)[1]}:{frame.f_lineno}"
            function = frame.f_code.co_qualname
        if where == "?" and "/torch/" in name:
            here = f"{name.rsplit('/torch/', 1)[1]}:{frame.f_code.co_name}"
            via = via or (here if here in HOST_STATE else "")
        if frame.f_code.co_name == "train_epoch" and frame.f_code.co_filename == loop.__file__:
            return where, function, via, frame.f_locals.get("i", -1), frame.f_locals.get("step", -1)
        frame = frame.f_back
    return where, function, via, -1, -1


class _Functions(TorchFunctionMode):
    def __init__(self, found: list[Sync]):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in COPIES and isinstance(func, type(torch.Tensor.tolist)):
            self.found.append(Sync(f"Tensor.{func.__name__}", *_origin()))
        return func(*args, **(kwargs or {}))


class _Ops(TorchDispatchMode):
    def __init__(self, found: list[Sync]):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        masked = name in MASKED and _mask_sync(name, args, kwargs or {})
        if name in READS or masked:
            self.found.append(Sync(f"{name}{' (bool index)' if masked else ''}", *_origin()))
        return func(*args, **(kwargs or {}))


def _mask_sync(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether indexing with these indices syncs: a bool index does (its True count sizes the work),
    except ``x[mask] = scalar``, which ATen turns into masked_fill_ (one bool index, a one-element value
    on the host, no accumulate: canDispatchToMaskedFill in TensorAdvancedIndexing)."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    bools = [t for t in indices if isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)]
    if not bools or name == "aten.index":
        return bool(bools)
    value = args[2] if len(args) > 2 else kwargs.get("values")
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    fill = len(bools) == 1 and sum(t is not None for t in indices) == 1 and value.dim() == 0 and not accumulate
    return not fill  # a 0-d value stands for the host scalar it is on a GPU (x[mask] = 0)


class SyncWatch:
    """An on_batch_end callback that counts syncs from after step FIRST - 1 to the end of step FIRST + STEPS - 1."""

    def __init__(self):
        self.found: list[Sync] = []
        self.modes: list = []
        self.steps: list[int] = []

    def __call__(self, s, info: dict) -> None:
        if info["epoch"] != 0:
            return
        i = info["step_in_epoch"]
        if i == FIRST - 1:
            self.modes = [_Functions(self.found), _Ops(self.found)]
            for mode in self.modes:
                mode.__enter__()
        elif FIRST <= i < FIRST + STEPS:
            self.steps.append(i)
            if i == FIRST + STEPS - 1:
                self.close()

    def close(self) -> None:
        while self.modes:
            self.modes.pop().__exit__(None, None, None)


def watched_run(tmp_path, *extra: str, reads=None) -> SyncWatch:
    """A one-epoch run of 36 steps under a SyncWatch; ``reads``: one more on_batch_end callback."""
    data = write_class_folders(tmp_path / "data", per_class=48, size=8, splits=("train",))
    cfg = tiny_config(data, tmp_path / "runs", "train.batch_size=4", "train.epochs=1", "train.progress=true",
                      "data.val_fraction=0", "train.final_test=false", *extra)
    s = prepare(cfg, run_name="t")
    assert s.steps_per_epoch == 36 > FIRST + STEPS  # the window ends before the epoch's end
    watch = SyncWatch()
    try:
        fit(s, callbacks={"on_batch_end": [*([reads] if reads else []), watch]},
            console=Console(file=io.StringIO(), force_terminal=True))
    finally:
        watch.close()
    assert watch.steps == list(range(FIRST, FIRST + STEPS))
    return watch


@pytest.fixture
def short_intervals(monkeypatch):
    """Intervals that fall inside the window, so the test sees each named read where it is expected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # counted, not timed: one thread runs the tiny steps fastest on a shared CPU
    monkeypatch.setattr(loop, "FINITE_CHECK_EVERY", 8)  # steps 7, 15, 23
    monkeypatch.setattr(progress, "READ_EVERY", 5)  # steps 4, 9, ... 29
    monkeypatch.setattr(progress, "REFRESH_S", 0.0)  # every interval step, whatever the clock
    monkeypatch.setattr(tensorboard, "FLUSH_EVERY", 10)  # steps 9, 19, 29
    yield
    torch.set_num_threads(threads)


def unscheduled(watch: SyncWatch) -> list[str]:
    return [f"{x.what} at {x.where} ({x.function}) in step {x.i}" for x in watch.found if not x.allowed()]


@pytest.mark.parametrize("extra", [
    (),  # the defaults: crop and flip, SGD, the progress bar, TensorBoard
    ("train.ema_decay=0.9", "augment.hflip_alternate=true", "augment.erasing=0.5", "augment.lighting=0.2",
     "augment.rotation=10", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0", "optim.grad_clip_norm=5",
     "augment.policy=randaugment", "optim.name=adamw", "train.drop_last=true"),
    ("data.cache=disk", "data.image_size=8"),  # each batch read from the decoded cache's file
    ("data.cache=stream", "data.image_size=8", "data.num_workers=0"),  # decoded in this process: watched too
    # airbench's set: whitening stem, Dirac init, frozen BN weights, BN-bias group, triangle, lookahead
    ("data.image_size=16", "model.stem=whiten", "model.dirac_init=true", "model.freeze_bn_weight=true",
     "model.bn_momentum=0.4", "optim.bn_bias_lr_scale=64", "schedule.name=triangle", "train.ema_decay=0.9",
     "train.lookahead=5"),
], ids=["memory", "memory-more", "disk", "stream", "airbench"])
def test_no_host_sync_in_steady_state_steps(tmp_path, short_intervals, extra):
    watch = watched_run(tmp_path, *extra)
    assert unscheduled(watch) == [], "\n".join(sorted(set(unscheduled(watch))))
    seen = {(x.function, x.i) for x in watch.found}
    # the named reads were seen where their intervals put them: the counter does see syncs
    assert {i for f, i in seen if f == "check_finite"} == {7, 15, 23}
    assert {i for f, i in seen if f == "EpochProgress.update"} == set(range(4, 30, 5))
    assert {i for f, i in seen if f == "TensorBoardLogger._read_steps"} == {9, 19, 29}


def test_an_item_in_the_step_is_caught(tmp_path, short_intervals):
    """The counter's own check: an ``.item()`` of the step's loss after every step (here a user callback's)
    fails the test, once a step of the window, with its place."""
    found = unscheduled(watched_run(tmp_path, reads=lambda s, info: info["loss"].item()))
    assert len(found) == STEPS and all("_local_scalar_dense" in f and "run/fit.py" in f for f in found), found
