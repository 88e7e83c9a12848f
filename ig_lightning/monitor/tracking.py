"""The state a monitor keeps between checks: small objects with ``update()``, ``state_dict()`` and
``load_state_dict()``, in torchmetrics' style.

- ``DriftReferences``: every probe example's attributions at the first and at the previous check.
- ``ColorScales``: every example's colour scale, fixed at its first finite check.
- ``RuleTracker``: the rules (each class's top features), what changed, and their history.
- ``DriftHistory``: the run's own drift so far, which calibrates ``drift_threshold="auto"``.

Non-finite examples (a diverged model) never become a reference, never fix a scale and never enter a rule.

Example::

    >>> import torch
    >>> history = DriftHistory(window=3)
    >>> for drift in (0.02, 0.03, 0.025):
    ...     history.update({"drift": drift})
    >>> history.ratio("drift", 0.25)
    10.0
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from ig_lightning.functional.drift import drift_distances
from ig_lightning.functional.rules import class_top_features, rule_changes

#: ``drift_threshold="auto"`` needs this many earlier drift values before it can breach.
MIN_HISTORY = 3
#: Floor of the median in the drift ratio: a run whose attributions stand (nearly) still must move by at
#: least this much (in drift units) times the factor to breach.
RATIO_FLOOR = 1e-3
#: Per-class drift is logged for at most this many classes (the worst class always).
MAX_LOGGED_CLASSES = 32


class DriftReferences:
    """The first and the previous finite attributions of every probe example, ``(B, D)`` float32 on CPU.

    Example::

        >>> refs = DriftReferences()
        >>> refs.update(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), torch.tensor([True, False]))
        >>> refs.first.tolist()[0], bool(torch.isnan(refs.first[1]).all())
        ([1.0, 0.0], True)
    """

    def __init__(self) -> None:
        self.first: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None

    def reference(self, which: str) -> torch.Tensor | None:
        """The ``"previous"`` or ``"first"`` attributions (NaN rows: no finite check yet)."""
        return self.previous if which == "previous" else self.first

    def distances(self, vector: torch.Tensor, finite: torch.Tensor, which: str,
                  k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """Per-example distances of every drift metric to the reference, over the examples comparable with it
        (finite now and then), and that mask; ``None`` before the first reference or with nothing comparable."""
        reference = self.reference(which)
        if reference is None:
            return None
        comparable = finite & torch.isfinite(reference).all(1)
        if not bool(comparable.any()):
            return None
        return drift_distances(vector[comparable], reference[comparable], k=k), comparable

    def update(self, vector: torch.Tensor, finite: torch.Tensor) -> None:
        rows = finite.view(-1, 1)
        vector = vector.float()
        nan = torch.full_like(vector, float("nan"))
        if self.first is None:
            self.first = torch.where(rows, vector, nan)
        else:
            unset = ~torch.isfinite(self.first).all(1, keepdim=True)
            self.first = torch.where(rows & unset, vector, self.first)
        self.previous = torch.where(rows, vector, nan if self.previous is None else self.previous)

    def state_dict(self) -> dict[str, Any]:
        return {"first_scores": self.first, "previous_scores": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, attr in (("first_scores", "first"), ("previous_scores", "previous")):
            value = state.get(key)
            if value is not None:  # older checkpoints kept scores in the input's shape
                setattr(self, attr, value.reshape(len(value), -1).float())


class ColorScales:
    """Each example's colour scale: ``headroom`` times its largest ``|attribution|`` at its first finite check.

    Attributions grow as a model learns; a scale fixed early shows that growth instead of hiding it.
    """

    def __init__(self, headroom: float) -> None:
        self.headroom = headroom
        self.scales: torch.Tensor | None = None

    def update(self, scores: torch.Tensor, finite: torch.Tensor) -> None:
        scale = self.headroom * scores.reshape(len(scores), -1).abs().amax(1).clamp_min(1e-12)
        if self.scales is None:
            self.scales = torch.full_like(scale, float("nan"))
        self.scales = torch.where(finite & torch.isnan(self.scales), scale, self.scales)

    def state_dict(self) -> dict[str, Any]:
        return {"scales": self.scales}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scales") is not None:
            self.scales = state["scales"]


class RuleTracker:
    """Each class's top ``k`` features (token ids or flat feature indices) and what entered or left them."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.rules: dict[int, list[tuple[int, float]]] = {}
        self.history: list[dict[str, Any]] = []  # per run, not saved

    def update(self, keys: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor | None,
               mask: torch.Tensor | None, epoch: int, step: int) -> dict[int, dict[str, list[int]]] | None:
        """Extract this check's rules from the finite examples' ``(n, D)`` keys and scores; return the changes."""
        previous = self.rules or None
        if targets is not None and len(scores):
            self.rules = class_top_features(keys, scores, targets, k=self.k, mask=mask)
        changes = rule_changes(previous, self.rules) if self.rules else None
        self.history.append({"epoch": epoch, "step": step, "rules": self.rules, "changes": changes})
        return changes

    def state_dict(self) -> dict[str, Any]:
        return {"rules": {int(c): [[int(k), float(v)] for k, v in r] for c, r in self.rules.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rules = {int(c): [(int(k), float(v)) for k, v in r] for c, r in state.get("rules", {}).items()}


class DriftHistory:
    """The drift of the run's checks so far, per series (``"drift"``, ``"drift_class_max"``), to calibrate the alarm.

    The calibrated quantity is the *drift ratio*: a check's drift over the median drift of the previous
    ``window`` checks (floored at ``RATIO_FLOOR``). A healthy run keeps it near 1 whatever its learning
    rate or data; a change of the model's reasons makes it jump.

    Args:
        window: How many earlier checks the median spans.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.values: dict[str, list[float]] = {}

    def ratio(self, series: str, drift: float) -> float | None:
        """``drift`` over the median of the last ``window`` values of ``series``; ``None`` while fewer than
        ``MIN_HISTORY`` values are known (or ``drift`` is not finite)."""
        past = self.values.get(series, [])[-self.window:]
        if len(past) < MIN_HISTORY or not math.isfinite(drift):
            return None
        return drift / max(statistics.median(past), RATIO_FLOOR)

    def update(self, drifts: dict[str, float]) -> None:
        """Add this check's finite drift values (after ``ratio()`` was taken)."""
        for series, value in drifts.items():
            if math.isfinite(value):
                kept = self.values.setdefault(series, [])
                kept.append(float(value))
                del kept[:-max(self.window, MIN_HISTORY)]

    def state_dict(self) -> dict[str, Any]:
        return {"drift_history": {k: list(v) for k, v in self.values.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = {str(k): [float(x) for x in v] for k, v in state.get("drift_history", {}).items()}


def class_drift(distances: torch.Tensor, targets: torch.Tensor | None) -> dict[int, float]:
    """Mean distance per explained class (examples already restricted to the comparable ones)."""
    if targets is None or not len(distances):
        return {}
    out = {}
    for c in torch.unique(targets).tolist():
        values = distances[targets == c]
        values = values[torch.isfinite(values)]
        if values.numel():
            out[int(c)] = float(values.mean())
    return out
