"""The monitor's configuration: every argument validated once, here, and the table of metric names.

``MonitorConfig`` is frozen: the callback reads its settings from it and never changes them. What needs
the model and the data (shapes, the layer, targets, names against sizes) is validated when ``fit`` starts, by
``ig_lightning.monitor.preflight``.

Example::

    >>> config = MonitorConfig(probe=8, n_steps=16, drift_threshold="auto")
    >>> config.probe_size, config.n_steps, config.drift_threshold
    (8, 16, 'auto')
    >>> MonitorConfig(n_steps="auto", max_steps=2)
    Traceback (most recent call last):
    ...
    ValueError: `max_steps` must be >= 3 for n_steps='auto', got 2
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ig_lightning._validation import (
    validate_bool,
    validate_choice,
    validate_int,
    validate_names,
    validate_optional_threshold,
    validate_positive_float,
)
from ig_lightning.functional.drift import DRIFT_METRICS
from ig_lightning.functional.quadrature import validate_steps
from ig_lightning.monitor.explainer import OUTPUT_TRANSFORMS
from ig_lightning.monitor.probe import PROBE_SELECTIONS, ModelInputs, Name, Probe, default_unpack
from ig_lightning.output.markdown import Names
from ig_lightning.output.views import VIEW_KINDS

TARGETS = ("auto", "label", "prediction", "positive_labels")
REFERENCES = ("previous", "first")
ON_BREACH = ("warn", "stop", "raise")
DRIFT_SCOPES = ("probe", "class")
#: ``baseline=SPECIAL_TOKENS``: the probe's special tokens kept, every other token the pad token.
SPECIAL_TOKENS = "special_tokens"
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
    "drift": "drift from the reference check (drift_metric, over the probe)",
    "drift_cosine": "1 - cosine similarity with the reference check, mean over the probe",
    "drift_spearman": "1 - Spearman rank correlation with the reference check, mean over the probe",
    "drift_topk_jaccard": "1 - overlap of the top_k features with the reference check, mean over the probe",
    "drift_class_max": "drift of the class that moved most (drift_metric, mean over its probe examples)",
    "drift_ratio": "drift over the median of the previous drift_window checks' drift (drift_threshold='auto')",
    "region_mass": "share of |attribution| inside `region`",
    "deletion_drop": "mean drop of the explained output when each example's top_k units are set to the baseline",
    "deletion_random_drop": "the same drop when top_k random units are set to the baseline",
    "deletion_ratio": "deletion_drop over deletion_random_drop (above 1: the attributions point at what matters)",
}

#: Thresholds: the metric each one watches and its argument's name.
THRESHOLDS: dict[str, str] = {
    "drift": "drift_threshold",
    "drift_class_max": "drift_threshold",
    "drift_ratio": "drift_factor",
    "completeness_error_max": "completeness_threshold",
    "attribution_error_max": "attribution_error_threshold",
    "region_mass": "region_threshold",
}


@dataclass(frozen=True)
class MetricNames:
    """The logged name of each metric of ``METRICS``: ``names["drift"] == "ig/drift"``."""

    prefix: str = "ig"

    def __getitem__(self, key: str) -> str:
        if key not in METRICS and not key.startswith("drift_class/"):
            raise KeyError(f"no metric {key!r}; the metrics are {sorted(METRICS)}")
        return f"{self.prefix}/{key}"


@dataclass(frozen=True)
class MonitorConfig:
    """Every setting of ``IntegratedGradientsMonitor``, validated (see its docstring).

    Raises:
        ValueError: an argument with a bad value, or two arguments that do not go together (named).
        TypeError: an argument of the wrong type.
    """

    probe: Any = 16
    target: Any = "auto"
    baseline: Any = None
    n_steps: int | str = "auto"
    method: str = "gausslegendre"
    internal_batch_size: int | None = None
    tolerance: float = 0.01
    max_steps: int = 256
    warm_start: bool = False
    layer: str | None = None
    attribute: Any = None
    output_transform: Any = None
    unpack: Callable[[Any], Any] | None = None
    every_n_epochs: int = 1
    drift_metric: str = "cosine"
    drift_reference: str = "previous"
    drift_threshold: float | str | None = None
    drift_factor: float = 5.0
    drift_window: int = 5
    drift_scope: str | None = None
    completeness_threshold: float | None = None
    attribution_error_threshold: float | None = None
    region: Any = None
    region_threshold: float | None = None
    warmup: int = 0
    patience: int = 1
    patience_window: int | None = None
    on_breach: str = "warn"
    top_k: int = 10
    deletion_check: bool = True
    probe_selection: str = "stratified"
    autocast: bool = False
    kind: str = "auto"
    vocabulary: Names = None
    feature_names: Sequence[str] | None = None
    class_names: Sequence[str] | None = None
    max_images: int = 8
    log_images: bool = True
    color_headroom: float = 4.0
    name: str | None = None
    #: Filled from ``probe``: its size, and the probe itself when one was given (else ``None``).
    probe_size: int = field(init=False)
    given_probe: Probe | None = field(init=False)

    def __post_init__(self) -> None:
        given, size = validate_probe(self.probe)
        self._set("probe_size", size)
        self._set("given_probe", given)
        self._set("probe", size if given is None else "given")
        self.__validate_model_settings()
        self.__validate_drift_and_alarm()
        self.__validate_pictures()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __validate_model_settings(self) -> None:
        target = self.target
        if isinstance(target, str):
            validate_choice(target, "target", TARGETS)
        elif not callable(target):
            validate_int(target, "target", minimum=0)
        if self.baseline == SPECIAL_TOKENS:
            if self.layer is None or getattr(self.vocabulary, "all_special_ids", None) is None:
                raise ValueError(f"`baseline`={SPECIAL_TOKENS!r} needs token ids attributed at an embedding `layer` "
                                 "and a Hugging Face tokenizer as `vocabulary` (its special tokens are kept)")
        else:
            self._set("baseline", validate_baseline(self.baseline))
        n_steps, method, max_steps = validate_steps(self.n_steps, self.method, self.max_steps)
        self._set("n_steps", n_steps)
        self._set("max_steps", max_steps)
        if self.internal_batch_size is not None:
            validate_int(self.internal_batch_size, "internal_batch_size", minimum=1)
        self._set("tolerance", validate_positive_float(self.tolerance, "tolerance"))
        validate_bool(self.warm_start, "warm_start")
        if self.warm_start and self.n_steps != "auto":
            raise ValueError(f"`warm_start=True` needs n_steps='auto' (a fixed rule has no mesh to start from), got "
                             f"n_steps={self.n_steps!r}")
        layer = self.layer
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"`layer` must be a submodule name such as 'embedding', got {type(layer).__name__}")
        if layer is not None and not layer.strip():
            raise ValueError(f"`layer` must name a submodule such as 'embedding', got {layer!r} (the whole model)")
        self._set("attribute", validate_attribute(self.attribute))
        transform = self.output_transform
        if isinstance(transform, str):
            validate_choice(transform, "output_transform", tuple(OUTPUT_TRANSFORMS))
        elif transform is not None and not callable(transform):
            raise TypeError(f"`output_transform` must be a name or a callable, got {type(transform).__name__}")
        if self.unpack is not None and not callable(self.unpack):
            raise TypeError(f"`unpack` must be callable, got {type(self.unpack).__name__}")
        self._set("unpack", self.unpack or default_unpack)
        validate_int(self.every_n_epochs, "every_n_epochs", minimum=1)
        validate_bool(self.autocast, "autocast")
        validate_choice(self.probe_selection, "probe_selection", PROBE_SELECTIONS)

    def __validate_drift_and_alarm(self) -> None:
        validate_choice(self.drift_metric, "drift_metric", DRIFT_METRICS)
        validate_choice(self.drift_reference, "drift_reference", REFERENCES)
        if self.drift_threshold != "auto":
            if isinstance(self.drift_threshold, str):
                raise ValueError(f"`drift_threshold` must be a number, 'auto' or None, got {self.drift_threshold!r}")
            self._set("drift_threshold", validate_optional_threshold(self.drift_threshold, "drift_threshold"))
        self._set("drift_factor", validate_positive_float(self.drift_factor, "drift_factor"))
        if self.drift_factor <= 1:
            raise ValueError(f"`drift_factor` must be > 1 (a breach is drift this many times the usual), got "
                             f"{self.drift_factor!r}")
        validate_int(self.drift_window, "drift_window", minimum=2)
        if self.drift_scope is not None:
            validate_choice(self.drift_scope, "drift_scope", DRIFT_SCOPES)
        for name in ("completeness_threshold", "attribution_error_threshold", "region_threshold"):
            self._set(name, validate_optional_threshold(getattr(self, name), name))
        if self.attribution_error_threshold is not None and self.n_steps != "auto":
            raise ValueError("`attribution_error_threshold` needs n_steps='auto' (fixed rules give no error estimate)")
        region = self.region
        if isinstance(region, list):  # from a config file: nested lists of booleans
            region = torch.tensor(region)
            self._set("region", region)
        if region is not None and (not isinstance(region, torch.Tensor) or region.dtype != torch.bool):
            raise TypeError(f"`region` must be a bool Tensor mask over one example's features, got {region!r}")
        if region is not None and not bool(region.any()):
            raise ValueError("`region` must select at least one feature, got an all-False mask")
        if self.region_threshold is not None and region is None:
            raise ValueError("`region_threshold` needs a `region` mask")
        validate_int(self.warmup, "warmup", minimum=0)
        validate_int(self.patience, "patience", minimum=1)
        if self.patience_window is not None:
            validate_int(self.patience_window, "patience_window", minimum=1)
            if self.patience_window < self.patience:
                raise ValueError(f"`patience_window` must be >= `patience` ({self.patience}), got "
                                 f"{self.patience_window}")
        validate_choice(self.on_breach, "on_breach", ON_BREACH)
        if self.drift_threshold is not None and self.drift_reference == "previous" and self.patience > 1 and \
                self.patience_window is None:
            rank_zero_warn(f"IntegratedGradientsMonitor: patience={self.patience} counts breaches in a row, but drift "
                           "against the previous check shows a sudden change of reasons at one check only: such a "
                           "change is never acted on. Use patience=1, or patience_window (e.g. "
                           f"{2 * self.patience + 1}) to count breaches over a window")
        validate_int(self.top_k, "top_k", minimum=1)
        validate_bool(self.deletion_check, "deletion_check")

    def __validate_pictures(self) -> None:
        validate_choice(self.kind, "kind", VIEW_KINDS)
        self._set("vocabulary", validate_vocabulary(self.vocabulary))
        self._set("feature_names", validate_names(self.feature_names, "feature_names"))
        self._set("class_names", validate_names(self.class_names, "class_names"))
        validate_int(self.max_images, "max_images", minimum=1)
        validate_bool(self.log_images, "log_images")
        self._set("color_headroom", validate_positive_float(self.color_headroom, "color_headroom"))
        if self.name is not None and (not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name)):
            raise ValueError(f"`name` must be letters, digits, '_', '-' or '.' (it goes into metric keys and file "
                             f"names), got {self.name!r}")

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

    @property
    def auto_drift(self) -> bool:
        """Whether the drift alarm is calibrated on the run's own history (``drift_threshold="auto"``)."""
        return self.drift_threshold == "auto"

    @property
    def resolved_drift_scope(self) -> str:
        """``drift_scope``, or by default ``"class"`` for the calibrated alarm and ``"probe"`` for a fixed
        threshold (a number picked for ``ig/drift``, the probe's mean, keeps meaning that)."""
        if self.drift_scope is not None:
            return self.drift_scope
        return "class" if self.auto_drift else "probe"

    def identity(self) -> dict[str, Any]:
        """What makes the probe and its targets what they are: a checkpoint made with other settings is stale."""
        return {"probe": self.probe_size, "layer": self.layer, "attribute": self.attribute,
                "target": self.target if isinstance(self.target, (str, int)) else "callable",
                "baseline": repr(self.baseline)[:200],
                "output_transform": self.output_transform if isinstance(self.output_transform, (str, type(None)))
                else "callable"}


def validate_vocabulary(value: Any) -> Names:
    """``None``, a callable, a tokenizer (``convert_ids_to_tokens``) or a list of token names."""
    if value is None or callable(value) or callable(getattr(value, "convert_ids_to_tokens", None)):
        return value
    return validate_names(value, "vocabulary")


def validate_baseline(value: Any, name: str = "baseline") -> Any:
    """``None``, a finite number, a Tensor, or (several attributed inputs) a tuple/dict of those."""
    if isinstance(value, list):  # from a config file: nested lists of numbers
        try:
            value = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"`{name}` as a list must be nested lists of numbers (a Tensor's values), got "
                            f"{value!r:.80}") from None
    if isinstance(value, Mapping):
        return {k: validate_baseline(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(validate_baseline(v, f"{name}[{i}]") for i, v in enumerate(value))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"`{name}` must be None, a number or a Tensor, got {type(value).__name__}")
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` must be finite, got a Tensor with NaN or infinite values")
    return value


def validate_attribute(value: Any) -> list[Name] | None:
    """``None``, an input name or position, or a list of distinct ones."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, int)) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise TypeError(f"`attribute` must be an input name, a position, or a non-empty list of them, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"`attribute` entries must be input names (str) or positions (int), got {item!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"`attribute` names an input twice: {value!r}")
    return list(items)


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
