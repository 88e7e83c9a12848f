"""When a check breaches a threshold, and what to do then: warn, stop the run, or fail it, on every rank alike.

Example::

    >>> policy = BreachPolicy({"ig/drift": 0.3}, warmup=0, patience=1, on_breach="warn")
    >>> policy.find({"ig/drift": 0.5}, checks=1, epoch=3)
    ['ig/drift (drift from the reference check) = 0.5 > drift_threshold=0.3 at epoch 3']
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

ON_BREACH = ("warn", "stop", "raise")

#: The metric each threshold watches: (argument name, what it measures).
THRESHOLDS = {
    "ig/drift": ("drift_threshold", "drift from the reference check"),
    "ig/completeness_error_max": ("completeness_threshold", "worst relative completeness error"),
    "ig/attribution_error_max": ("attribution_error_threshold", "worst estimated relative L2 error of attributions"),
    "ig/region_mass": ("region_threshold", "share of |attribution| inside `region`"),
}


class AttributionDriftError(RuntimeError):
    """Attributions breached a threshold of :class:`IntegratedGradientsMonitor` with ``on_breach="raise"``."""


class BreachPolicy:
    """Finds breaches in a check's metrics and acts on them after ``patience`` checks in a row.

    Args:
        limits: Metric name (a key of :data:`THRESHOLDS`) to its threshold; ``None`` thresholds are left out.
        describe: Metric name to a description for messages, in place of :data:`THRESHOLDS`'.
        warmup: Number of first checks whose threshold breaches are ignored. Faults (NaN/inf) always count.
        patience: Consecutive breaching checks before acting.
        on_breach: ``"warn"``, ``"stop"`` or ``"raise"``.
    """

    def __init__(self, limits: dict[str, float | None], warmup: int, patience: int, on_breach: str,
                 describe: dict[str, str] | None = None) -> None:
        self.limits = {k: v for k, v in limits.items() if v is not None}
        self.describe = {k: what for k, (_, what) in THRESHOLDS.items()} | (describe or {})
        self.warmup, self.patience, self.on_breach = warmup, patience, on_breach
        self.streak = 0

    def find(self, metrics: dict[str, float], checks: int, epoch: int, faults: list[str] | None = None) -> list[str]:
        """What this check breaches; ``checks`` counts this check."""
        found = list(faults or [])
        if checks <= self.warmup:
            return found
        for key, limit in self.limits.items():
            value = metrics.get(key)
            if value is not None and value > limit:
                name = THRESHOLDS[key][0]
                found.append(f"{key} ({self.describe[key]}) = {value:.4g} > {name}={limit:g} at epoch {epoch}")
        return found

    def act(self, trainer: Any, breaches: list[str]) -> None:
        """Count the streak, decide on every rank together, then warn, stop or raise everywhere."""
        self.streak = self.streak + 1 if breaches else 0
        should_act = self.streak >= self.patience
        # Every rank sees the same gathered attributions, but decide globally anyway: nobody acts alone.
        should_act = trainer.strategy.reduce_boolean_decision(should_act, all=False)
        if not should_act:
            return
        message = "IntegratedGradientsMonitor: " + "; ".join(breaches or ["a threshold was breached on another rank"])
        if self.patience > 1:
            message += f" ({self.streak} checks in a row)"
        if self.on_breach == "raise":
            raise AttributionDriftError(message)
        if self.on_breach == "stop":
            trainer.should_stop = True
            message += ": stopping the run"
        rank_zero_warn(message)
