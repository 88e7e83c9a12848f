"""What the monitor costs, and a budget for it: its own time against the run's, checks spaced to stay within it.

``OverheadBudget`` counts the seconds the training thread spends in the monitor's checks (attribution, every stage,
handing the pictures to their worker) against the run's wall time since ``fit`` started (kept across a resume in
the checkpoint). With ``max_overhead`` set, a check is run only when it keeps the monitor's share within the
budget, estimating its cost by the last check's: ``(spent + last) <= max_overhead * (elapsed + last)``. The first
check is never skipped; the decision is rank zero's, broadcast, so every rank checks on the same epochs.

``CheckProgress`` shows a long check's progress: after a few seconds, in the progress bar of Lightning's
``TQDMProgressBar`` (as its postfix), else on the console (rank zero), at most every few seconds.

Example::

    >>> budget = OverheadBudget(0.1)
    >>> budget.begin(now=0.0); budget.add(2.0, now=10.0)   # a 2 s check after 10 s of the run
    >>> budget.allows(first=False, now=15.0)                 # (2 + 2) / (15 + 2) > 0.1: skip this one
    False
    >>> budget.allows(first=False, now=38.0)                 # (2 + 2) / (38 + 2) <= 0.1
    True
    >>> round(budget.share(now=20.0), 3)
    0.1
"""

from __future__ import annotations

import time
from typing import Any, Callable

from lightning.pytorch.utilities import rank_zero_info

#: A check shows its progress once it has run this many seconds, and then at most this often.
PROGRESS_AFTER, PROGRESS_EVERY = 3.0, 2.0


class OverheadBudget:
    """The monitor's time against the run's, and whether the next check fits ``max_overhead`` (``None``: always).

    Args:
        max_overhead: The most the monitor's share of the run's wall time may be, e.g. ``0.05``; ``None``: no budget.
        clock: The clock (seconds), for tests.
    """

    def __init__(self, max_overhead: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.limit, self.clock = max_overhead, clock
        self.spent = 0.0  # seconds in checks, this run and before a resume
        self.before = 0.0  # the run's seconds before a resume
        self.last: float | None = None  # the last check's seconds
        self.started: float | None = None
        self.skipped = 0

    def begin(self, now: float | None = None) -> None:
        """The run's clock starts (once; ``fit`` or ``validate``)."""
        if self.started is None:
            self.started = self.clock() if now is None else now

    def elapsed(self, now: float | None = None) -> float:
        """The run's wall time so far, in seconds (with what came before a resume)."""
        if self.started is None:
            return self.before
        return self.before + ((self.clock() if now is None else now) - self.started)

    def add(self, seconds: float, now: float | None = None) -> None:
        """A check took ``seconds`` of the training thread."""
        self.spent += seconds
        self.last = seconds

    def share(self, extra: float = 0.0, now: float | None = None) -> float:
        """The monitor's share of the run's wall time, with ``extra`` seconds of a check under way."""
        elapsed = self.elapsed(now)
        return (self.spent + extra) / elapsed if elapsed > 0 else 0.0

    def allows(self, first: bool, now: float | None = None) -> bool:
        """Whether a check now keeps the share within ``max_overhead`` (its cost estimated by the last check's)."""
        if self.limit is None or first or self.last is None:
            return True
        return self.spent + self.last <= self.limit * (self.elapsed(now) + self.last)

    def state_dict(self) -> dict[str, Any]:
        return {"overhead_spent": self.spent, "overhead_elapsed": self.elapsed(), "overhead_last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent = float(state.get("overhead_spent", self.spent))
        self.before = float(state.get("overhead_elapsed", self.before))
        self.last = state.get("overhead_last", self.last)
        self.started = None


class CheckProgress:
    """Tells a user watching a long check where it is: ``progress("rule tests")``.

    Args:
        trainer: The trainer (its progress bar, and whether this is rank zero).
        prefix: The monitor's metric prefix, to name it.
        clock: The clock (seconds), for tests.
    """

    def __init__(self, trainer: Any, prefix: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.trainer, self.prefix, self.clock = trainer, prefix, clock
        self.start = clock()
        self.shown: float | None = None
        self.bar = _tqdm_bar(trainer)

    def __call__(self, what: str) -> None:
        now = self.clock()
        if now - self.start < PROGRESS_AFTER or (self.shown is not None and now - self.shown < PROGRESS_EVERY):
            return
        self.shown = now
        text = f"{self.prefix} check: {what} ({now - self.start:.0f} s)"
        if self.bar is not None:
            try:
                self.bar.set_postfix_str(text, refresh=True)
                return
            except Exception:  # noqa: BLE001  a bar in an unexpected state: the console instead
                self.bar = None
        rank_zero_info(f"IntegratedGradientsMonitor: {text}")

    def done(self) -> None:
        """The check is over: its text leaves the progress bar."""
        if self.bar is not None and self.shown is not None:
            try:
                self.bar.set_postfix_str("", refresh=True)
            except Exception:  # noqa: BLE001, S110
                pass


def _tqdm_bar(trainer: Any) -> Any:
    """The bar a user is looking at: the training bar during ``fit``, the validation bar under ``validate``."""
    callback = getattr(trainer, "progress_bar_callback", None)
    if callback is None or not getattr(trainer, "is_global_zero", True):
        return None
    for name in ("train_progress_bar", "val_progress_bar"):
        try:
            bar = getattr(callback, name)
        except Exception:  # noqa: BLE001  not made yet
            continue
        if bar is not None and hasattr(bar, "set_postfix_str") and not getattr(bar, "disable", False):
            return bar
    return None
