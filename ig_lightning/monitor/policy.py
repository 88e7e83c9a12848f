"""When a check breaches a threshold, and what to do then: warn, stop the run, or fail it, on every rank alike.

Example::

    >>> policy = BreachPolicy({"ig/drift": 0.3}, warmup=0, patience=1, on_breach="warn")
    >>> policy.find({"ig/drift": 0.5}, checks=1, epoch=3)
    ['ig/drift (drift from the reference check (alarm.metric, over the probe)) = 0.5 > alarm.threshold=0.3 at epoch 3']
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ig_lightning.monitor.config import METRICS, THRESHOLDS
from ig_lightning.monitor.probe import ModelInputs
from ig_lightning.monitor.settings import ON_BREACH

__all__ = ["ON_BREACH", "AttributionDriftError", "BreachPolicy", "find_faults"]


class AttributionDriftError(RuntimeError):
    """Attributions breached a threshold of ``IntegratedGradientsMonitor`` with ``on_breach="raise"``."""


class BreachPolicy:
    """Finds breaches in a check's metrics and acts when ``patience`` of the last ``patience_window`` checks breached.

    Args:
        limits: Logged metric name (``prefix/key``, ``key`` in ``THRESHOLDS``)
            to its threshold; ``None`` thresholds are left out.
        warmup: Number of first checks whose threshold breaches are ignored. Faults (NaN/inf) always count.
        patience: Breaching checks needed before acting.
        on_breach: ``"warn"``, ``"stop"`` or ``"raise"``.
        describe: Metric name to a description for messages, in place of ``METRICS``'.
        patience_window: The breaching checks are counted over this many last checks; ``None``: ``patience``
            (the breaches must come in a row).
    """

    def __init__(self, limits: dict[str, float | None], warmup: int, patience: int, on_breach: str,
                 describe: dict[str, str] | None = None, patience_window: int | None = None) -> None:
        self.limits = {k: v for k, v in limits.items() if v is not None}
        self.describe = describe or {}
        self.warmup, self.patience, self.on_breach = warmup, patience, on_breach
        self.window = patience_window or patience
        self.recent: list[bool] = []  # whether each of the last `window` checks breached

    @property
    def streak(self) -> int:
        """Breaching checks among the last ``patience_window`` (in a row, by default)."""
        return sum(self.recent)

    @streak.setter
    def streak(self, value: int) -> None:  # checkpoints of earlier versions kept a streak of checks in a row
        self.recent = [True] * min(int(value), self.window)

    def find(self, metrics: dict[str, float], checks: int, epoch: int, faults: list[str] | None = None,
             limits: dict[str, float] | None = None, describe: dict[str, str] | None = None) -> list[str]:
        """What this check breaches; ``checks`` counts this check. ``limits`` and ``describe``, when given (by the
        check's stages), replace the policy's own for this check and the next ones."""
        if limits is not None:
            self.limits = dict(limits)
        if describe is not None:
            self.describe = dict(describe)
        found = list(faults or [])
        if checks <= self.warmup:
            return found
        for name, limit in self.limits.items():
            value = metrics.get(name)
            if value is not None and value > limit:
                key = name.rsplit("/", 1)[1]  # ig/<key> or ig/<monitor name>/<key>
                what = self.describe.get(name, METRICS.get(key, key))
                found.append(f"{name} ({what}) = {value:.4g} > {THRESHOLDS[key]}={limit:g} at epoch {epoch}")
        return found

    def act(self, trainer: Any, breaches: list[str]) -> None:
        """Count the breaches in the window, decide on every rank together, then warn, stop or raise everywhere."""
        self.recent = (self.recent + [bool(breaches)])[-self.window:]
        should_act = bool(breaches) and self.streak >= self.patience
        # Every rank sees the same gathered attributions, but decide globally anyway: nobody acts alone.
        should_act = trainer.strategy.reduce_boolean_decision(should_act, all=False)
        if not should_act:
            return
        message = "IntegratedGradientsMonitor: " + "; ".join(breaches or ["a threshold was breached on another rank"])
        if self.patience > 1:
            span = "in a row" if self.window == self.patience else f"of the last {self.window}"
            message += f" ({self.streak} checks {span})"
        if self.on_breach == "raise":
            raise AttributionDriftError(message)
        if self.on_breach == "stop":
            trainer.should_stop = True
            message += ": stopping the run"
        rank_zero_warn(message)

    def state_dict(self) -> dict[str, Any]:
        return {"breach_streak": self.streak, "recent_breaches": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "recent_breaches" in state:
            self.recent = [bool(b) for b in state["recent_breaches"]][-self.window:]
        else:
            self.streak = state.get("breach_streak", 0)


def find_faults(inputs: ModelInputs, delta: torch.Tensor, finite: torch.Tensor, epoch: int) -> list[str]:
    """Which probe examples have non-finite attributions, and where that comes from: the probe's inputs, the
    model's outputs (``delta``), or its gradients. One message per source; none when ``finite`` is all True."""
    if bool(finite.all()):
        return []
    bad_input = torch.zeros_like(finite)
    for _, t in inputs.items():
        if t.is_floating_point():
            bad_input |= ~torch.isfinite(t.reshape(len(t), -1)).all(1)
    bad_output = ~torch.isfinite(delta) & ~bad_input
    bad_gradient = ~finite & ~bad_input & ~bad_output
    found = []
    for mask, where in ((bad_input, "the probe inputs"), (bad_output, "the model's outputs F(x) or F(baseline)"),
                        (bad_gradient, "the model's gradients")):
        idx = mask.nonzero().flatten().tolist()
        if idx:
            found.append(f"attributions are NaN or infinite at epoch {epoch} for {len(idx)} of {len(finite)} "
                         f"probe examples {idx[:10]}: the values come from {where}")
    return found
