"""A check as a pipeline: the attribution is computed once (``Check``), then each concern is one ``Stage``.

A stage reads the check and what earlier stages added to it, and adds its own part:

- ``check.metrics``: scalars, logged through ``pl_module.log`` (so ``EarlyStopping`` sees them);
- ``check.record``: fields of the ``CheckRecord`` the pictures and files are drawn from;
- ``check.limits``: the thresholds that apply to its metrics (with what they measure, for messages);
- ``check.faults``: breaches that need no threshold (NaN attributions).

A stage keeps its own state between checks (``state_dict()`` / ``load_state_dict()``, flat keys merged into
the monitor's checkpoint state), in torchmetrics' style. The monitor runs ``make_stages(config)`` in order; a
new feature is a new stage (or a field of one's settings), not lines in the callback.

Example::

    >>> from ig_lightning.monitor.config import MonitorConfig
    >>> stages = make_stages(MonitorConfig(alarm={"region": [[True, False]]}))
    >>> print(" ".join(type(s).__name__ for s in stages))
    Completeness BaselineWatch Drift Region Rules RuleTests Deletion Curves Sanity Pictures
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ig_lightning.functional.integrated_gradients import IGResult
from ig_lightning.monitor.config import DELTA_FLOOR, MetricNames, MonitorConfig
from ig_lightning.monitor.explainer import Explainer
from ig_lightning.monitor.faithfulness import deletion_check
from ig_lightning.monitor.policy import find_faults
from ig_lightning.monitor.probe import Probe
from ig_lightning.monitor.tracking import (
    MAX_LOGGED_CLASSES,
    ColorScales,
    DriftHistory,
    DriftReferences,
    RuleTracker,
    class_drift,
)
from ig_lightning.output.record import CheckRecord


@dataclass
class Check:
    """One check: the attribution, computed once, and what the stages add to it.

    Attributes:
        trainer: The Lightning trainer.
        model: The LightningModule (in its own mode; a stage that runs it uses ``eval_mode``).
        probe: The probe (inputs and labels, CPU).
        explainer: How the model is run and read (``ig_lightning.monitor.explainer``).
        result: The engine's result.
        targets: The explained output per probe row, or ``None`` for one output per example.
        batch: Points per forward.
        index: How many checks came before this one in the run (a seed for random draws).
        kind: ``"image"``, ``"text"`` or ``"tabular"``.
        scores: Attribution per feature of the first attributed input (per token at an embedding layer).
        vector: Every example's scores of every attributed input, flattened ``(B, D)``: what drift compares.
        finite: ``(B,)``: the example's attributions and its ``F(x) - F(baseline)`` are finite.
        relative: ``(B,)`` relative completeness error.
        keys: ``(B, D)`` the rule key of every score (token id, or flat feature index).
        mask: ``(B, D)`` True for the scores that may enter a rule (real tokens), or ``None``.
    """

    trainer: Any
    model: Any
    probe: Probe
    explainer: Explainer
    result: IGResult
    targets: torch.Tensor | None
    batch: int
    index: int
    kind: str
    scores: torch.Tensor = field(init=False)
    vector: torch.Tensor = field(init=False)
    finite: torch.Tensor = field(init=False)
    relative: torch.Tensor = field(init=False)
    keys: torch.Tensor = field(init=False)
    mask: torch.Tensor | None = field(init=False)
    metrics: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        all_scores = self.explainer.scores(self.result, self.probe.inputs)
        self.scores = all_scores[0]
        flat = [s.reshape(len(s), -1) for s in all_scores]
        self.vector = flat[0] if len(flat) == 1 else torch.cat(flat, 1)  # one view per example for drift
        self.finite = torch.isfinite(self.vector).all(1) & torch.isfinite(self.result.delta)
        self.relative = self.result.relative_error(DELTA_FLOOR)
        self.keys, self.mask = self.explainer.rule_keys(self.probe.inputs, self.scores, self.kind)

    @property
    def ok(self) -> torch.Tensor:
        """The examples scalars are computed over: the finite ones (all, when none is)."""
        return self.finite if bool(self.finite.any()) else torch.ones_like(self.finite)

    @property
    def epoch(self) -> int:
        return self.trainer.current_epoch

    def to_record(self, step: int, prefix: str) -> CheckRecord:
        """What the pictures and files are drawn from: the attributions and the stages' ``record`` fields."""
        shown, labels = self.probe.inputs[self.explainer.names[0]], self.probe.labels
        return CheckRecord(step, self.epoch, shown, self.targets, self.scores, relative_error=self.relative,
                           mask=None if self.mask is None else self.mask.reshape(shown.shape), prefix=prefix,
                           labels=labels if labels is not None and labels.ndim == 1 else None, **self.record)

    def add_limit(self, metric: str, limit: float | None, description: str | None = None) -> None:
        """A threshold on a logged metric (``None``: none)."""
        if limit is not None:
            self.limits[metric] = limit
            if description is not None:
                self.descriptions[metric] = description


class Stage:
    """One concern of a check: ``update`` adds its metrics, record fields, limits and faults to the check."""

    def prepare(self, trainer: Any, model: Any, probe: Probe, explainer: Explainer, kind: str, batch: int,
                layer: Any) -> None:
        """Called once before the first check, after the probe was validated against the model (no gradients)."""

    def update(self, check: Check) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Progress kept between checks (flat keys, merged into the monitor's checkpoint state)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Read what ``state_dict`` wrote; a missing key (an older checkpoint) keeps the default."""


class Completeness(Stage):
    """Completeness, the engine's error estimate and its effort; NaN or infinite attributions are faults."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.config, self.names = config, names

    def update(self, check: Check) -> None:
        names, result, ok = self.names, check.result, check.ok
        check.metrics.update({
            names["completeness_error"]: float(check.relative[ok].mean()),
            names["completeness_error_max"]: float(check.relative[ok].max()),
            names["delta_mean"]: float(result.delta[ok].mean()),
            names["nonfinite_examples"]: float((~check.finite).sum()),
        })
        if self.config.n_steps == "auto":
            check.metrics[names["n_steps_mean"]] = float(result.n_steps.double().mean())
            check.metrics[names["rounds"]] = float(result.rounds)
            estimate = result.attribution_error.double()[ok]
            if bool(torch.isfinite(estimate).any()):
                check.metrics[names["attribution_error"]] = float(estimate.nanmean())
                check.metrics[names["attribution_error_max"]] = float(estimate[torch.isfinite(estimate)].max())
        alarm = self.config.alarm
        check.add_limit(names["completeness_error_max"], alarm.completeness_threshold)
        check.add_limit(names["attribution_error_max"], alarm.attribution_error_threshold)
        check.faults.extend(find_faults(check.probe.inputs, result.delta, check.finite, check.epoch))


class Drift(Stage):
    """How far the attributions moved from the reference check: over the probe, per class, and the ratio to the
    run's usual drift that calibrates ``alarm.threshold="auto"``."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.alarm, self.names, self.class_names = config.alarm, names, config.display.class_names
        self.references = DriftReferences()
        self.history = DriftHistory(self.alarm.window)
        what = f"{self.alarm.metric} vs {self.alarm.reference} check"
        self.describe = {names["drift"]: what, names["drift_class_max"]: f"worst class, {what}",
                         names["drift_ratio"]: f"{what}, over the median of the last {self.alarm.window} checks"}

    def update(self, check: Check) -> None:
        check.metrics.update(self._measure(check))
        self.references.update(check.vector, check.finite)
        if self.alarm.auto:
            metric, limit = self.names["drift_ratio"], self.alarm.factor
        else:
            metric, limit = self.names[self.watched(check.targets is not None)], self.alarm.threshold
        check.add_limit(metric, limit, self.describe[metric])

    def watched(self, has_classes: bool) -> str:
        """Which drift the alarm watches: the worst class's (scope ``"class"`` and targets) or the probe's."""
        return "drift_class_max" if self.alarm.resolved_scope == "class" and has_classes else "drift"

    def _measure(self, check: Check) -> dict[str, float]:
        names, alarm = self.names, self.alarm
        found = self.references.distances(check.vector, check.finite, alarm.reference, alarm.top_k)
        if found is None:
            return {}
        distances, comparable = found
        metrics = {names[f"drift_{metric}"]: float(d.mean()) for metric, d in distances.items()}
        drift = metrics[names[f"drift_{alarm.metric}"]]
        metrics[names["drift"]] = drift
        series = {"drift": drift}
        targets = check.targets
        per_class = class_drift(distances[alarm.metric], None if targets is None else targets[comparable])
        if per_class:
            worst = max(per_class.values())
            metrics[names["drift_class_max"]] = series["drift_class_max"] = worst
            for c in sorted(per_class)[:MAX_LOGGED_CLASSES]:
                known = self.class_names is not None and c < len(self.class_names)
                metrics[names[f"drift_class/{key_part(self.class_names[c]) if known else c}"]] = per_class[c]
        watched = self.watched(bool(per_class))
        ratio = self.history.ratio(watched, series[watched])
        if ratio is not None:
            metrics[names["drift_ratio"]] = ratio
        self.history.update(series)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {**self.references.state_dict(), **self.history.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.references.load_state_dict(state)
        self.history.load_state_dict(state)


class Region(Stage):
    """The share of ``|attribution|`` inside ``alarm.region`` (e.g. a watermark), and its threshold."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.alarm, self.names = config.alarm, names

    def update(self, check: Check) -> None:
        check.metrics[self.names["region_mass"]] = region_mass(check.scores[check.ok], self.alarm.region)
        check.add_limit(self.names["region_mass"], self.alarm.region_threshold)


class Rules(Stage):
    """Each class's rules: its top features over the probe's finite examples, and what entered or left them."""

    def __init__(self, config: MonitorConfig) -> None:
        self.tracker = RuleTracker(config.rule_extraction.top_k)

    def update(self, check: Check) -> None:
        finite, targets = check.finite, check.targets
        kept_targets = None if targets is None or not bool(finite.any()) else targets[finite]
        keys = check.keys
        kept = keys[:int(finite.sum())] if keys.stride(0) == 0 else keys[finite]  # one row expanded: no (B, D) copy
        changes = self.tracker.update(kept, check.scores.reshape(len(check.scores), -1)[finite], kept_targets,
                                      None if check.mask is None else check.mask[finite], check.epoch,
                                      check.trainer.global_step)
        check.record.update(rules=self.tracker.rules, changes=changes)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)


class Deletion(Stage):
    """The deletion check: each example's top units, and each class's rule, set to the baseline (forward passes)."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.top_k, self.names = config.faithfulness.top_k, names

    def update(self, check: Check) -> None:
        found, rule_drops = deletion_check(check.explainer, check.model, check.probe.inputs, check.scores,
                                           check.targets, check.keys, check.mask, check.record.get("rules", {}),
                                           self.top_k, check.batch, seed=check.index)
        check.metrics.update({self.names[k]: v for k, v in found.items()})
        check.record["rule_drops"] = rule_drops


class Pictures(Stage):
    """What the pictures need beyond the attributions: fixed colour scales and the model's predictions."""

    def __init__(self, config: MonitorConfig) -> None:
        self.scales = ColorScales(config.display.color_headroom)

    def update(self, check: Check) -> None:
        self.scales.update(check.scores, check.finite)
        predictions = None
        if check.targets is not None:
            predictions = check.explainer.outputs(check.model, check.probe.inputs, check.batch)[0].argmax(-1)
        check.record.update(scales=self.scales.scales, predictions=predictions)

    def state_dict(self) -> dict[str, Any]:
        return self.scales.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scales.load_state_dict(state)


def make_stages(config: MonitorConfig) -> list[Stage]:
    """The stages a monitor with ``config`` runs, in order (rules before the deletion check, which removes them)."""
    from ig_lightning.monitor import trust  # the trust stages build on this module's Stage

    names = MetricNames(config.prefix)
    stages: list[Stage] = [Completeness(config, names), trust.BaselineWatch(config, names), Drift(config, names)]
    if config.alarm.region is not None:
        stages.append(Region(config, names))
    stages.append(Rules(config))
    if config.rule_extraction.test:
        from ig_lightning.monitor.rule_stage import RuleTests  # it builds on this module's Stage

        stages.append(RuleTests(config, names))
    if config.faithfulness.deletion:
        stages.append(Deletion(config, names))
    if config.faithfulness.curves:
        stages.append(trust.Curves(config, names))
    if config.faithfulness.sanity_every_n_checks:
        stages.append(trust.Sanity(config, names))
    stages.append(Pictures(config))
    return stages


def key_part(name: str) -> str:
    """A class name as a safe part of a metric key, the same in every logger: characters other than letters, digits,
    ``_``, ``.`` and ``-`` become ``_`` (a class named ``<script>`` is logged as ``_script_``).

    Example::

        >>> key_part("New York <b>")
        'New_York__b_'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def region_mass(scores: torch.Tensor, region: torch.Tensor) -> float:
    """Share of ``|attribution|`` inside ``region``, over input features (tokens, with a layer)."""
    mass = scores.abs().reshape(len(scores), -1)
    inside = region.expand(scores.shape[1:]).reshape(-1)
    return float((mass[:, inside].sum(1) / mass.sum(1).clamp_min(1e-30)).mean())


def log_scalars(trainer: Any, pl_module: Any, metrics: dict[str, float]) -> None:
    """Every scalar through ``pl_module.log`` (so ``EarlyStopping`` and every logger see it), per epoch."""
    for name, value in metrics.items():
        # Same value on every rank (the attributions are gathered): syncing only keeps Lightning quiet.
        pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1, batch_size=1)
