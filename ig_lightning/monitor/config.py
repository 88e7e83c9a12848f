"""The monitor's configuration: every argument validated once, and the table of metric names.

``MonitorConfig`` is frozen: the callback reads its settings from it and never changes them. It holds the
top-level arguments and one settings object per concern (``ig_lightning.monitor.settings``), and checks what
spans them. What needs the model and the data (shapes, the layer, targets, names against sizes) is validated
when ``fit`` starts, by ``ig_lightning.monitor.preflight``.

Example::

    >>> config = MonitorConfig(probe=8, n_steps=16, alarm={"threshold": "auto"})
    >>> config.probe_size, config.n_steps, config.alarm.threshold
    (8, 16, 'auto')
    >>> MonitorConfig(n_steps="auto", integration={"max_steps": 2})
    Traceback (most recent call last):
    ...
    ValueError: `integration.max_steps` must be >= 3 for n_steps='auto', got 2
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ig_lightning._validation import validate_choice, validate_int, validate_positive_float
from ig_lightning.functional.quadrature import AUTO_MIN_STEPS, validate_n_steps_or_auto
from ig_lightning.monitor.explainer import OUTPUT_TRANSFORMS
from ig_lightning.monitor.probe import ModelInputs, Probe, default_unpack
from ig_lightning.monitor.settings import (
    GROUPS,
    Alarm,
    Display,
    Faithfulness,
    Inputs,
    Integration,
    RuleExtraction,
    as_settings,
)

TARGETS = ("auto", "label", "prediction", "positive_labels")
#: ``baseline=SPECIAL_TOKENS``: the probe's special tokens kept, every other token the pad token.
SPECIAL_TOKENS = "special_tokens"
#: ``baseline=<kind>``: a baseline made from each probe example or drawn (``ig_lightning.monitor.baselines``).
BASELINE_KINDS = ("auto", "blur", "uniform", "gaussian", "data")
#: What a monitor's ``name`` may hold.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
#: Floor of ``|F(x) - F(baseline)|`` in relative completeness errors.
DELTA_FLOOR = 1e-3

#: Every scalar the monitor logs (``ig/<key>``), with what it measures.
METRICS: dict[str, str] = {
    "completeness_error": "mean relative completeness error |sum(attributions) - delta| / |delta|",
    "completeness_error_max": "worst relative completeness error",
    "delta_mean": "mean F(x) - F(baseline)",
    "nonfinite_examples": "probe examples whose attributions are NaN or infinite",
    "n_steps_mean": "mean gradient evaluations per example (n_steps='auto')",
    "rounds": "batched rounds of gradient evaluations in the check, over its groups (n_steps='auto')",
    "attribution_error": "mean estimated relative L2 error of the attributions (n_steps='auto')",
    "attribution_error_max": "worst estimated relative L2 error of the attributions",
    "drift": "drift from the reference check (alarm.metric, over the probe)",
    "drift_cosine": "1 - cosine similarity with the reference check, mean over the probe",
    "drift_spearman": "1 - Spearman rank correlation with the reference check, mean over the probe",
    "drift_topk_jaccard": "1 - overlap of the alarm.top_k features with the reference check, mean over the probe",
    "drift_class_max": "drift of the class that moved most (alarm.metric, mean over its probe examples)",
    "drift_ratio": "drift over the median of the previous alarm.window checks' drift (alarm.threshold='auto')",
    "region_mass": "share of |attribution| inside `alarm.region`",
    "deletion_drop": "mean drop of the explained output when each example's faithfulness.top_k units are set to the "
                     "baseline",
    "deletion_random_drop": "the same drop when faithfulness.top_k random units are set to the baseline",
    "deletion_ratio": "deletion_drop over deletion_random_drop (above 1: the attributions point at what matters)",
    "deletion_auc": "area under the deletion curve, most relevant units removed first (normalised output; lower: "
                    "more faithful)",
    "insertion_auc": "area under the insertion curve, most relevant units inserted first (higher: more faithful)",
    "srg": "Symmetric Relevance Gain: area of least-relevant-first deletion (= insertion_auc) - deletion_auc "
           "(higher: more faithful; much of the fill's effect cancels)",
    "baseline_confidence": "mean top-class probability the model gives the baseline (1 / classes: neutral)",
    "sanity_spearman": "rank correlation of |attribution| between the trained model and the fully randomised one, "
                       "over units that differ from the baseline (low: the maps depend on the weights)",
    "sanity_spearman_signed": "the same, signed attributions",
    "overhead": "the monitor's share of the run's wall time so far: its checks on the training thread (max_overhead)",
    "rule_events": "rules that entered a class's first three with high sufficiency, or whose sufficiency rose",
    "guard_breaches": "guarded features (rule_extraction.guards) that became a rule or decide a class",
}

#: Thresholds: the metric each one watches and the setting that holds its limit.
THRESHOLDS: dict[str, str] = {
    "drift": "alarm.threshold",
    "drift_class_max": "alarm.threshold",
    "drift_ratio": "alarm.factor",
    "completeness_error_max": "alarm.completeness_threshold",
    "attribution_error_max": "alarm.attribution_error_threshold",
    "region_mass": "alarm.region_threshold",
    "rule_events": "rule_extraction.events_breach",
    "guard_breaches": "rule_extraction.guards",
}


@dataclass(frozen=True)
class MetricNames:
    """The logged name of each metric of ``METRICS``: ``names["drift"] == "ig/drift"``."""

    prefix: str = "ig"

    def __getitem__(self, key: str) -> str:
        if key not in METRICS and not key.startswith(("drift_class/", "sanity_cascade/")):
            raise KeyError(f"no metric {key!r}; the metrics are {sorted(METRICS)}")
        return f"{self.prefix}/{key}"


@dataclass(frozen=True)
class MonitorConfig:
    """Every setting of ``IntegratedGradientsMonitor``, validated (see its docstring): the top-level arguments,
    and one settings object per concern (``ig_lightning.monitor.settings``; a dict is turned into one).

    Raises:
        ValueError: an argument with a bad value, or two arguments that do not go together (named).
        TypeError: an argument of the wrong type.
    """

    probe: Any = 16
    target: Any = "auto"
    baseline: Any = "auto"
    layer: str | None = None
    n_steps: int | str = "auto"
    output_transform: Any = None
    every_n_epochs: int = 1
    max_overhead: float | None = 0.05
    name: str | None = None
    inputs: Inputs = field(default_factory=Inputs)
    integration: Integration = field(default_factory=Integration)
    alarm: Alarm = field(default_factory=Alarm)
    rule_extraction: RuleExtraction = field(default_factory=RuleExtraction)
    faithfulness: Faithfulness = field(default_factory=Faithfulness)
    display: Display = field(default_factory=Display)
    #: Filled from ``probe``: its size, and the probe itself when one was given (else ``None``).
    probe_size: int = field(init=False)
    given_probe: Probe | None = field(init=False)

    def __post_init__(self) -> None:
        for group, cls in GROUPS.items():
            self._set(group, as_settings(getattr(self, group), cls, group))
        given, size = validate_probe(self.probe)
        self._set("probe_size", size)
        self._set("given_probe", given)
        self._set("probe", size if given is None else "given")
        self.__validate_top_level()
        self.__validate_across_groups()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __validate_top_level(self) -> None:
        target = self.target
        if isinstance(target, str):
            validate_choice(target, "target", TARGETS)
        elif not callable(target):
            validate_int(target, "target", minimum=0)
        if isinstance(self.baseline, str) and self.baseline in BASELINE_KINDS:
            pass
        elif self.baseline == SPECIAL_TOKENS:
            if self.layer is None or getattr(self.display.vocabulary, "all_special_ids", None) is None:
                raise ValueError(f"`baseline`={SPECIAL_TOKENS!r} needs token ids attributed at an embedding `layer` "
                                 "and a Hugging Face tokenizer as `display.vocabulary` (its special tokens are kept)")
        else:
            self._set("baseline", validate_baseline(self.baseline))
        layer = self.layer
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"`layer` must be a submodule name such as 'embedding', got {type(layer).__name__}")
        if layer is not None and not layer.strip():
            raise ValueError(f"`layer` must name a submodule such as 'embedding', got {layer!r} (the whole model)")
        self._set("n_steps", validate_n_steps_or_auto(self.n_steps, self.integration.method))
        transform = self.output_transform
        if isinstance(transform, str):
            validate_choice(transform, "output_transform", tuple(OUTPUT_TRANSFORMS))
        elif transform is not None and not callable(transform):
            raise TypeError(f"`output_transform` must be a name or a callable, got {type(transform).__name__}")
        validate_int(self.every_n_epochs, "every_n_epochs", minimum=1)
        if self.max_overhead is not None:
            value = validate_positive_float(self.max_overhead, "max_overhead")
            if value >= 1:
                raise ValueError(f"`max_overhead` is the monitor's largest share of the run's time, in (0, 1), got "
                                 f"{self.max_overhead!r}")
            self._set("max_overhead", value)
        if self.name is not None and (not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name)):
            raise ValueError(f"`name` must be letters, digits, '_', '-' or '.' (it goes into metric keys and file "
                             f"names), got {self.name!r}")

    def __validate_across_groups(self) -> None:
        integration, auto = self.integration, self.n_steps == "auto"
        if auto and integration.max_steps < AUTO_MIN_STEPS:
            raise ValueError(f"`integration.max_steps` must be >= {AUTO_MIN_STEPS} for n_steps='auto', got "
                             f"{integration.max_steps}")
        if integration.warm_start and not auto:
            raise ValueError(f"`integration.warm_start=True` needs n_steps='auto' (a fixed rule has no mesh to start "
                             f"from), got n_steps={self.n_steps!r}")
        if integration.warm_start and self.averaged:
            raise ValueError("`integration.warm_start=True` starts each example's one path from the last check's "
                             "mesh, but this monitor averages several paths per example (several baselines, "
                             "`integration.baseline_samples` draws or `integration.noise_samples` copies): turn one "
                             "off")
        if integration.noise_samples and self.baseline == SPECIAL_TOKENS:
            raise ValueError("`integration.noise_samples` adds noise to floating inputs, but `baseline`="
                             f"{SPECIAL_TOKENS!r} attributes token ids: set noise_samples=0")
        if self.alarm.attribution_error_threshold is not None and not auto:
            raise ValueError("`alarm.attribution_error_threshold` needs n_steps='auto' (fixed rules give no error "
                             "estimate)")

    @property
    def averaged(self) -> bool:
        """Whether each example's attribution averages several paths (several baselines, draws or noisy copies)."""
        drawn = isinstance(self.baseline, str) and self.baseline in ("uniform", "gaussian", "data")
        return isinstance(self.baseline, list) or (drawn and self.integration.baseline_samples > 1) \
            or self.integration.noise_samples > 0

    def draws_identity(self) -> dict[str, Any] | None:
        """The settings the baseline and noise draws are made from (``None`` when there are none)."""
        integration = self.integration
        if not self.averaged and not isinstance(self.baseline, str):
            return None
        return {"baseline_samples": integration.baseline_samples, "baseline_sigma": integration.baseline_sigma,
                "noise_samples": integration.noise_samples, "noise_sigma": integration.noise_sigma,
                "noise_type": integration.noise_type, "seed": integration.seed}

    @property
    def prefix(self) -> str:
        """What every metric key and picture tag starts with: ``ig``, or ``ig/<name>`` for a named monitor."""
        return "ig" if self.name is None else f"ig/{self.name}"

    @property
    def rules_file(self) -> str:
        """The rules file's name: ``ig_rules.jsonl``, or ``ig_rules_<name>.jsonl`` for a named monitor."""
        return "ig_rules.jsonl" if self.name is None else f"ig_rules_{self.name}.jsonl"

    @property
    def argument_names(self) -> list[str]:
        """The arguments, in the callback's order (``probe_size``/``given_probe`` are derived)."""
        return [f.name for f in fields(self) if f.init]

    def state_key_parts(self) -> dict[str, Any]:
        """What the monitor's ``state_key`` is made of (the keys of 0.1, so its checkpoints resume)."""
        key = {"method": self.integration.method, "n_steps": self.n_steps, "layer": self.layer,
               "drift_metric": self.alarm.metric, "target": self.target if isinstance(self.target, (str, int))
               else "callable"}
        return key if self.name is None else {**key, "name": self.name}

    def identity(self) -> dict[str, Any]:
        """What makes the probe and its targets what they are: a checkpoint made with other settings is stale."""
        return {"probe": self.probe_size, "layer": self.layer, "attribute": self.inputs.attribute,
                "target": self.target if isinstance(self.target, (str, int)) else "callable",
                "baseline": repr(self.baseline)[:200], "draws": self.draws_identity(),
                "output_transform": self.output_transform if isinstance(self.output_transform, (str, type(None)))
                else "callable"}


def validate_baseline(value: Any, name: str = "baseline") -> Any:
    """``None``, a finite number, a Tensor, or (several attributed inputs) a tuple/dict of those; one of
    ``BASELINE_KINDS``; or a list of several such baselines, averaged over (from a config file, a list's entry
    may be nested lists of numbers: a Tensor's values)."""
    if isinstance(value, str):
        if value in BASELINE_KINDS:
            return value
        raise ValueError(f"`{name}` as a name must be one of {[*BASELINE_KINDS, SPECIAL_TOKENS]}, got {value!r}")
    if isinstance(value, list):
        if not value:
            raise ValueError(f"`{name}` as a list holds several baselines to average over; got an empty list")
        if len(value) == 1:
            return validate_baseline(_tensor_of(value[0], f"{name}[0]"), name)
        return [_validate_one_baseline(_tensor_of(v, f"{name}[{i}]"), f"{name}[{i}]") for i, v in enumerate(value)]
    return _validate_one_baseline(value, name)


def _tensor_of(value: Any, name: str) -> Any:
    """A config file's nested list of numbers as a Tensor; anything else as it is."""
    if isinstance(value, list):
        try:
            value = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"`{name}` as a list must be nested lists of numbers (a Tensor's values), got "
                            f"{value!r:.80}") from None
    return value


def _validate_one_baseline(value: Any, name: str) -> Any:
    if isinstance(value, str):
        raise TypeError(f"`{name}` must be None, a number or a Tensor, got the name {value!r} (names such as "
                        f"{BASELINE_KINDS[0]!r} are whole baselines, never an entry)")
    if isinstance(value, Mapping):
        return {k: _validate_one_baseline(_tensor_of(v, f"{name}[{k!r}]"), f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_validate_one_baseline(_tensor_of(v, f"{name}[{i}]"), f"{name}[{i}]") for i, v in enumerate(value))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"`{name}` must be None, a number or a Tensor, got {type(value).__name__}")
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` must be finite, got a Tensor with NaN or infinite values")
    return value


def validate_probe(probe: Any) -> tuple[Probe | None, int]:
    """``(probe, size)`` of a given probe, or ``(None, n)`` for an int ``n``."""
    if isinstance(probe, bool):
        raise TypeError(
            f"`probe` must be an int, a Tensor, a dict of Tensors or an (inputs, labels) pair, got {probe!r}")
    if isinstance(probe, numbers.Integral):
        return None, validate_int(probe, "probe", minimum=1)
    labels = None
    try:
        if isinstance(probe, (tuple, list)) and len(probe) == 2:  # (inputs, labels); inputs may be a structure
            inputs, labels = ModelInputs.of(probe[0], "`probe`"), probe[1]
        elif isinstance(probe, Mapping):
            inputs, labels = default_unpack(probe)
        elif isinstance(probe, torch.Tensor):
            inputs = ModelInputs.of(probe, "`probe`")
        else:
            raise TypeError
    except TypeError:
        raise TypeError(f"`probe` must be an int, a Tensor, a dict of Tensors or an (inputs, labels) pair, got "
                        f"{type(probe).__name__}") from None
    if len(inputs) == 0:
        raise ValueError("`probe` must hold at least one example")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.ndim == 0 or len(labels) != len(inputs)):
        raise ValueError(f"`probe` labels must be a Tensor with one label per input ({len(inputs)})")
    for name, t in inputs.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"`probe` input {name!r} holds NaN or infinite values")
    inputs = inputs.map(lambda t: t.detach().cpu().clone())
    return Probe(inputs, None if labels is None else labels.detach().cpu().clone()), len(inputs)
