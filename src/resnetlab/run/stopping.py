"""How a run stops: signals read at step boundaries, the ranks agreeing on them, and status.json through
the run (running, then finished, stopped or failed with why)."""

from __future__ import annotations

import contextlib
import signal
import threading

from resnetlab.errors import UserError
from resnetlab.run_folder import write_status
from resnetlab.train import distributed
from resnetlab.train.loop import Preempted, StopTraining
from resnetlab.train.session import Session

STOP_CHECK_EVERY = 8  # steps between torchrun ranks agreeing on a signal (one process: every step, free)


@contextlib.contextmanager
def run_status(s: Session):
    """status.json through the run: running, then finished, stopped (a signal, Ctrl+C, a callback)
    or failed with its one-line reason. A run killed outright stays 'running' with a dead pid."""
    if not s.dist.main:
        yield
        return
    write_status(s.run_dir, "running")
    try:
        yield
    except (Preempted, StopTraining, KeyboardInterrupt) as e:
        _try_status(s, "stopped", str(e) or type(e).__name__)
        raise
    except Exception as e:
        _try_status(s, "failed", (str(e).strip().splitlines() or [type(e).__name__])[0][:300])
        raise
    write_status(s.run_dir, "finished")


def _try_status(s: Session, status: str, reason: str) -> None:
    """Best effort: with a full disk or a vanished folder the status cannot be written, and the
    error that stopped the run is the one to show."""
    try:
        write_status(s.run_dir, status, reason=reason)
    except UserError:
        pass


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM/SIGINT only set a flag, read at the next step boundary, so the checkpoint written
    then is consistent. A second Ctrl+C interrupts at once (last.pt: the last finished epoch's end)."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_agreed(s: Session, stop: list[str], i: int | None = None) -> bool:
    """True on every rank when any rank got a signal, so all ranks stop at the same step. Under torchrun
    the ranks agree every STOP_CHECK_EVERY steps (and at epoch ends, i None): each agreement is an
    all_reduce read back on the host, a sync that would otherwise stall every step."""
    if s.dist.enabled and i is not None and i % STOP_CHECK_EVERY != STOP_CHECK_EVERY - 1:
        return False
    return distributed.any_rank(bool(stop), s.dist, s.device)


def signal_name(stop: list[str]) -> str:
    return stop[0] if stop else "another rank's signal"
