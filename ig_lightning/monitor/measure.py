"""The scalars of one check, from its attributions and the state kept between checks, and how they reach Lightning.

Every scalar is computed over the probe examples whose attributions are finite; drift only over the examples
that are finite now and at the reference check. Names come from ``MetricNames``.
"""

from __future__ import annotations

from typing import Any

import torch

from ig_lightning.functional.integrated_gradients import IGResult
from ig_lightning.monitor.config import MetricNames, MonitorConfig
from ig_lightning.monitor.tracking import MAX_LOGGED_CLASSES, DriftHistory, DriftReferences, class_drift


def measure(config: MonitorConfig, names: MetricNames, result: IGResult, relative: torch.Tensor,
            scores: torch.Tensor, vector: torch.Tensor, finite: torch.Tensor, targets: torch.Tensor | None,
            references: DriftReferences, history: DriftHistory,
            class_names: list[str] | None = None) -> dict[str, float]:
    """The check's scalars: completeness, the error estimate, drift (probe, per class, ratio) and region mass.

    ``history`` is read (for the drift ratio) and then updated with this check's drift.
    """
    ok = finite if bool(finite.any()) else torch.ones_like(finite)
    metrics = {
        names["completeness_error"]: float(relative[ok].mean()),
        names["completeness_error_max"]: float(relative[ok].max()),
        names["delta_mean"]: float(result.delta[ok].mean()),
        names["nonfinite_examples"]: float((~finite).sum()),
    }
    if config.n_steps == "auto":
        metrics[names["n_steps_mean"]] = float(result.n_steps.double().mean())
        metrics[names["rounds"]] = float(result.rounds)
        estimate = result.attribution_error.double()[ok]
        if bool(torch.isfinite(estimate).any()):
            metrics[names["attribution_error"]] = float(estimate.nanmean())
            metrics[names["attribution_error_max"]] = float(estimate[torch.isfinite(estimate)].max())
    metrics.update(_drift(config, names, vector, finite, targets, references, history, class_names))
    if config.region is not None:
        metrics[names["region_mass"]] = region_mass(scores[ok], config.region)
    return metrics


def _drift(config: MonitorConfig, names: MetricNames, vector: torch.Tensor, finite: torch.Tensor,
           targets: torch.Tensor | None, references: DriftReferences, history: DriftHistory,
           class_names: list[str] | None) -> dict[str, float]:
    found = references.distances(vector, finite, config.drift_reference, config.top_k)
    if found is None:
        return {}
    distances, comparable = found
    metrics = {names[f"drift_{metric}"]: float(d.mean()) for metric, d in distances.items()}
    drift = metrics[names[f"drift_{config.drift_metric}"]]
    metrics[names["drift"]] = drift
    series = {"drift": drift}
    per_class = class_drift(distances[config.drift_metric], None if targets is None else targets[comparable])
    if per_class:
        worst = max(per_class.values())
        metrics[names["drift_class_max"]] = worst
        series["drift_class_max"] = worst
        for c in sorted(per_class)[:MAX_LOGGED_CLASSES]:
            label = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            metrics[names[f"drift_class/{label}"]] = per_class[c]
    watched = alarm_series(config, bool(per_class))
    ratio = history.ratio(watched, series[watched])
    if ratio is not None:
        metrics[names["drift_ratio"]] = ratio
    history.update(series)
    return metrics


def alarm_series(config: MonitorConfig, has_classes: bool) -> str:
    """Which drift the alarm watches: the worst class's (``drift_scope="class"`` and targets) or the probe's."""
    return "drift_class_max" if config.resolved_drift_scope == "class" and has_classes else "drift"


def alarm_limits(config: MonitorConfig, names: MetricNames, has_classes: bool) -> dict[str, float | None]:
    """The logged metric each threshold watches, and its limit."""
    if config.auto_drift:
        drift = (names["drift_ratio"], config.drift_factor)
    else:
        drift = (names[alarm_series(config, has_classes)], config.drift_threshold)
    return {drift[0]: drift[1],
            names["completeness_error_max"]: config.completeness_threshold,
            names["attribution_error_max"]: config.attribution_error_threshold,
            names["region_mass"]: config.region_threshold}


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
