"""The monitor's settings, one small frozen object per concern, each validated on its own.

``IntegratedGradientsMonitor`` keeps at its top level what most users set (the probe, the target, the baseline,
the layer, the steps, how often, the name); every other concern has one settings object here (``GROUPS``: inputs,
integration, alarm, rule extraction, faithfulness, display), passed as an instance or as a plain dict (a
LightningCLI YAML mapping). A bad field is refused when the object is built, naming its full path (``alarm.factor``).

Example::

    >>> Alarm(threshold="auto", on_breach="stop").factor
    5.0
    >>> Alarm(factor=1.0)
    Traceback (most recent call last):
    ...
    ValueError: `alarm.factor` must be > 1 (a breach is drift this many times the usual), got 1.0
    >>> as_settings({"top_k": 5}, RuleExtraction, "rule_extraction").top_k
    5

The flat arguments of 0.1 are mapped onto these objects by ``ig_lightning.monitor.moved``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

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
from ig_lightning.functional.quadrature import validate_method, validate_n_steps
from ig_lightning.monitor._validators import (
    validate_attribute,
    validate_guards,
    validate_region,
    validate_share,
    validate_vocabulary,
)
from ig_lightning.monitor.probe import PROBE_SELECTIONS, default_unpack
from ig_lightning.output.markdown import Names
from ig_lightning.output.views import VIEW_KINDS

REFERENCES = ("previous", "first")
ON_BREACH = ("warn", "stop", "raise")
DRIFT_SCOPES = ("probe", "class")
NOISE_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
FILLS = ("baseline", "blur", "neighbours")


class _Settings:
    """What every settings object shares: its path in the monitor's arguments, and a setter for validation."""

    #: The monitor argument that holds these settings (the first part of every error's path).
    path: str = ""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _name(self, field: str) -> str:
        return f"{self.path}.{field}"


@dataclass(frozen=True)
class Inputs(_Settings):
    """Which of the model's inputs are attributed, how a batch is read, and how an int probe is taken.

    Args:
        attribute: The input(s) to attribute (names of a dict batch, or positions). ``None``: every floating
            input, or with ``layer`` ``input_ids``/``pixel_values`` (else the first); the rest pass unchanged.
        unpack: A callable mapping a batch to ``(inputs, labels or None)``; the default understands ``x``,
            ``(x, y)``, Hugging Face dict batches and dicts with ``"x"``/``"y"``-like keys.
        probe_selection: ``"stratified"``: an int ``probe`` spread over the classes by dataset index (the same on
            every rank; a warning names missing classes); ``"first"``: the first ``N``.

    Example::

        >>> Inputs(attribute="pixel_values").attribute
        ['pixel_values']
    """

    path = "inputs"
    attribute: str | int | list[str | int] | None = None
    unpack: Callable[[Any], Any] | None = None
    probe_selection: Literal["stratified", "first"] = "stratified"

    def __post_init__(self) -> None:
        self._set("attribute", validate_attribute(self.attribute, self._name("attribute")))
        if self.unpack is not None and not callable(self.unpack):
            raise TypeError(f"`{self._name('unpack')}` must be callable, got {type(self.unpack).__name__}")
        validate_choice(self.probe_selection, self._name("probe_selection"), PROBE_SELECTIONS)

    @property
    def unpack_batch(self) -> Callable[[Any], Any]:
        """``unpack``, or the default reader."""
        return self.unpack or default_unpack


@dataclass(frozen=True)
class Integration(_Settings):
    """How each example's path integral is computed.

    Args:
        method: The quadrature rule of a fixed ``n_steps`` (captum's names).
        tolerance: The accuracy target of ``n_steps="auto"``: each example is refined until its estimated relative
            L2 error (``ig/attribution_error``) and its completeness error are within it.
        max_steps: The most points per example with ``n_steps="auto"``.
        internal_batch_size: Most path points per forward/backward; ``None``: half the training batch (the
            validation one under ``trainer.validate``), so a check needs no more memory than a training step.
        warm_start: With ``n_steps="auto"``, start each example's path from the last check's mesh (fewer rounds,
            the same error target; ``ig_lightning.functional.warm``).
        autocast: Run IG under the trainer's mixed-precision autocast (faster, less exact). Default: float32.
        baseline_samples: Draws per probe example of a random ``baseline`` (``"uniform"``, ``"gaussian"``,
            ``"data"``); IG is averaged over them (each draw is one path, so a check costs this many times more).
        baseline_sigma: How wide ``baseline="gaussian"`` and ``"blur"`` are: the noise's standard deviation as a
            share of the probe's input range, the blur's in pixels as a share of the image's longer side.
        noise_samples: Noise averaging (SmoothGrad over IG): this many noisy copies ``x + N(0, sigma)`` of every
            probe example are attributed and averaged (``0``: off). Completeness is then against the mean over the
            copies of ``F(x + noise) - F(baseline)``.
        noise_sigma: The noise's standard deviation as a share of each example's range (max - min).
        noise_type: ``"smoothgrad"`` (the mean), ``"smoothgrad_sq"`` (the mean of squares) or ``"vargrad"`` (the
            variance) over the copies, as captum's ``NoiseTunnel`` names them; the last two are never negative.
        seed: Seed of the baseline and noise draws: drawn once, the same at every check, on every rank and after
            a resume (the global random stream is never used).

    Example::

        >>> Integration(tolerance=0.05, max_steps=64).max_steps
        64
        >>> Integration(noise_samples=4, noise_sigma=0.1).noise_type
        'smoothgrad'
    """

    path = "integration"
    method: Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
                    "gausslegendre"] = "gausslegendre"
    tolerance: float = 0.01
    max_steps: int = 256
    internal_batch_size: int | None = None
    warm_start: bool = False
    autocast: bool = False
    baseline_samples: int = 8
    baseline_sigma: float = 0.1
    noise_samples: int = 0
    noise_sigma: float = 0.15
    noise_type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = "smoothgrad"
    seed: int = 0

    def __post_init__(self) -> None:
        validate_method(self.method, self._name("method"))
        self._set("max_steps", validate_n_steps(self.max_steps, self.method, name=self._name("max_steps")))
        self._set("tolerance", validate_positive_float(self.tolerance, self._name("tolerance")))
        if self.internal_batch_size is not None:
            validate_int(self.internal_batch_size, self._name("internal_batch_size"), minimum=1)
        validate_bool(self.warm_start, self._name("warm_start"))
        validate_bool(self.autocast, self._name("autocast"))
        validate_int(self.baseline_samples, self._name("baseline_samples"), minimum=1)
        self._set("baseline_sigma", validate_positive_float(self.baseline_sigma, self._name("baseline_sigma")))
        validate_int(self.noise_samples, self._name("noise_samples"), minimum=0)
        self._set("noise_sigma", validate_positive_float(self.noise_sigma, self._name("noise_sigma")))
        validate_choice(self.noise_type, self._name("noise_type"), NOISE_TYPES)
        validate_int(self.seed, self._name("seed"), minimum=0)


@dataclass(frozen=True)
class Alarm(_Settings):
    """How far the attributions move between checks, the thresholds, and what a breach does.

    Args:
        threshold: The drift alarm. ``"auto"``: breach when the drift is more than ``factor`` times the median of
            the previous ``window`` checks' (``ig/drift_ratio``; it needs 3 earlier values). A number: breach
            above it. ``None``: never.
        factor: With ``"auto"``: how many times its usual drift a check must move to breach.
        window: With ``"auto"``: how many previous checks the median spans.
        scope: ``"class"``: the drift of the class that moved most (``ig/drift_class_max``), or ``"probe"``: the
            mean (``ig/drift``). ``None``: ``"class"`` with ``"auto"``, else ``"probe"``.
        metric: ``"cosine"``, ``"spearman"`` (rank) or ``"topk_jaccard"``, each as a distance.
        reference: Compare with the ``"previous"`` check or the ``"first"`` one.
        top_k: The ``k`` of ``metric="topk_jaccard"``.
        completeness_threshold: Breach when the worst relative completeness error exceeds it.
        attribution_error_threshold: Breach when ``ig/attribution_error_max`` exceeds it (``n_steps="auto"``).
        region: A bool mask over one example's scores: logs ``ig/region_mass``, the share of ``|attribution|`` in it.
        region_threshold: Breach when ``ig/region_mass`` exceeds it (e.g. a model reading a watermark).
        warmup: First checks whose threshold breaches are ignored; NaN/inf always breach.
        patience: Breaching checks before acting, among the last ``patience_window`` checks.
        patience_window: ``None``: ``patience`` (in a row). Against the ``"previous"`` check a sudden change is
            one check of high drift: with ``patience > 1`` give a window, or keep ``patience=1``.
        on_breach: ``"warn"``, ``"stop"`` (end ``fit``) or ``"raise"`` (``AttributionDriftError``).

    Example::

        >>> alarm = Alarm(threshold="auto", on_breach="stop")
        >>> alarm.auto, alarm.resolved_scope
        (True, 'class')
    """

    path = "alarm"
    threshold: float | Literal["auto"] | None = None
    factor: float = 5.0
    window: int = 5
    scope: Literal["class", "probe"] | None = None
    metric: Literal["cosine", "spearman", "topk_jaccard"] = "cosine"
    reference: Literal["previous", "first"] = "previous"
    top_k: int = 10
    completeness_threshold: float | None = None
    attribution_error_threshold: float | None = None
    region: Any = None
    region_threshold: float | None = None
    warmup: int = 0
    patience: int = 1
    patience_window: int | None = None
    on_breach: Literal["warn", "stop", "raise"] = "warn"

    def __post_init__(self) -> None:
        name = self._name
        if self.threshold != "auto":
            if isinstance(self.threshold, str):
                raise ValueError(f"`{name('threshold')}` must be a number, 'auto' or None, got {self.threshold!r}")
            self._set("threshold", validate_optional_threshold(self.threshold, name("threshold")))
        self._set("factor", validate_positive_float(self.factor, name("factor")))
        if self.factor <= 1:
            raise ValueError(f"`{name('factor')}` must be > 1 (a breach is drift this many times the usual), got "
                             f"{self.factor!r}")
        validate_int(self.window, name("window"), minimum=2)
        if self.scope is not None:
            validate_choice(self.scope, name("scope"), DRIFT_SCOPES)
        validate_choice(self.metric, name("metric"), DRIFT_METRICS)
        validate_choice(self.reference, name("reference"), REFERENCES)
        validate_int(self.top_k, name("top_k"), minimum=1)
        for field in ("completeness_threshold", "attribution_error_threshold", "region_threshold"):
            self._set(field, validate_optional_threshold(getattr(self, field), name(field)))
        self._set("region", validate_region(self.region, self.region_threshold, self.path))
        validate_int(self.warmup, name("warmup"), minimum=0)
        validate_int(self.patience, name("patience"), minimum=1)
        if self.patience_window is not None:
            validate_int(self.patience_window, name("patience_window"), minimum=1)
            if self.patience_window < self.patience:
                raise ValueError(f"`{name('patience_window')}` must be >= `{name('patience')}` ({self.patience}), "
                                 f"got {self.patience_window}")
        validate_choice(self.on_breach, name("on_breach"), ON_BREACH)
        if self.threshold is not None and self.reference == "previous" and self.patience > 1 and \
                self.patience_window is None:
            rank_zero_warn(f"IntegratedGradientsMonitor: {name('patience')}={self.patience} counts breaches in a "
                           "row, but drift against the previous check shows a sudden change of reasons at one check "
                           f"only: such a change is never acted on. Use patience=1, or {name('patience_window')} "
                           f"(e.g. {2 * self.patience + 1}) to count breaches over a window")

    @property
    def auto(self) -> bool:
        """Whether the drift alarm is calibrated on the run's own history (``threshold="auto"``)."""
        return self.threshold == "auto"

    @property
    def resolved_scope(self) -> str:
        """``scope``, or by default ``"class"`` for the calibrated alarm and ``"probe"`` for a fixed threshold
        (a number picked for ``ig/drift``, the probe's mean, keeps meaning that)."""
        if self.scope is not None:
            return self.scope
        return "class" if self.auto else "probe"


@dataclass(frozen=True)
class RuleExtraction(_Settings):
    """Each class's rules: statements read off the attributions and tested on data at every check
    (``ig_lightning.functional.rule_tests``; how to read them: docs/rules.md).

    Candidates are n-grams of real tokens, features with a threshold, or image regions, taken from the probe's
    attributions and from a one-point attribution of the rule set; each is tested with forward passes on the
    rule set (coverage, precision, necessity, sufficiency) and ranked by what it does there.

    Args:
        top_k: Rules kept per class (and the attribution's top features per class).
        test: Test candidate rules on data. ``False``: a class's rules are its top features by summed
            attribution over the probe, untested.
        rule_set: Validation examples the rules are tested on, spread over the classes, taken once and kept.
        candidates: Candidate rules per class at every check (their coverage and precision need no forward pass).
        decisive: Of those, the rules per class that hold best (precision, then class coverage) whose necessity
            and sufficiency are tested with forward passes.
        attribution_sample: Rule-set examples attributed (one point each) per check for candidates, a different
            window at each check, pooled with the last checks' (the whole rule set after ``rule_set /
            attribution_sample`` checks).
        max_ngram: Longest token n-gram of a text rule.
        region_size: Side of an image rule's square region, in pixels; ``None``: a quarter of the image's
            shorter side (at least 2).
        max_tests: Most examples a rule's necessity and sufficiency each rest on.
        event_sufficiency: A rule of new evidence (no token, feature or pixel listed for its class before) that
            enters the class's first three with at least this sufficiency is an event (``ig/rule_events``); ``None``:
            never.
        event_rise: A rule whose sufficiency rose by at least this much since the first check after
            ``event_warmup`` is an event.
        event_warmup: First checks whose rules raise no event (the model is still finding its rules); rises are
            measured from the check after them.
        events_breach: Make a check with a rule event a breach for ``alarm.on_breach``.
        guards: Features the model must never rely on: token texts, feature names, feature indices, or a bool
            mask over an image's pixels. Each is tested as a rule of every class at every check.
        guard_necessity: A guard breaches when its necessity for any class exceeds this.
        guard_sufficiency: A guard breaches when its sufficiency for any class exceeds this (it also breaches when
            it is among a class's ``top_k`` rules).

    Example::

        >>> RuleExtraction(guards=["worst radius"], guard_sufficiency=0.3).rule_set
        256
    """

    path = "rule_extraction"
    top_k: int = 10
    test: bool = True
    rule_set: int = 256
    candidates: int = 6
    decisive: int = 2
    attribution_sample: int = 32
    max_ngram: int = 3
    region_size: int | None = None
    max_tests: int = 32
    event_sufficiency: float | None = 0.5
    event_rise: float = 0.3
    event_warmup: int = 2
    events_breach: bool = False
    guards: list[Any] | None = None
    guard_necessity: float = 0.2
    guard_sufficiency: float = 0.2

    def __post_init__(self) -> None:
        name = self._name
        validate_int(self.top_k, name("top_k"), minimum=1)
        validate_bool(self.test, name("test"))
        validate_int(self.rule_set, name("rule_set"), minimum=1)
        validate_int(self.candidates, name("candidates"), minimum=1)
        validate_int(self.decisive, name("decisive"), minimum=1)
        validate_int(self.attribution_sample, name("attribution_sample"), minimum=1)
        validate_int(self.max_ngram, name("max_ngram"), minimum=1)
        if self.region_size is not None:
            validate_int(self.region_size, name("region_size"), minimum=1)
        validate_int(self.max_tests, name("max_tests"), minimum=1)
        if self.event_sufficiency is not None:
            self._set("event_sufficiency", validate_share(self.event_sufficiency, name("event_sufficiency")))
        self._set("event_rise", validate_share(self.event_rise, name("event_rise")))
        validate_int(self.event_warmup, name("event_warmup"), minimum=0)
        validate_bool(self.events_breach, name("events_breach"))
        self._set("guards", validate_guards(self.guards, name("guards")))
        self._set("guard_necessity", validate_share(self.guard_necessity, name("guard_necessity")))
        self._set("guard_sufficiency", validate_share(self.guard_sufficiency, name("guard_sufficiency")))


@dataclass(frozen=True)
class Faithfulness(_Settings):
    """Can the maps be trusted? Do they point at what the model uses (forward passes only), and do they depend on
    the model at all (the randomisation sanity check)? See ``docs/trust.md``.

    Args:
        deletion: Set each example's ``top_k`` most attributed units to the baseline, against ``top_k`` random
            ones, and log the output's drop (``ig/deletion_*``); also each class's rule. ``False``: off.
        top_k: Units the deletion check removes.
        curves: Deletion and insertion curves over the probe (``ig/deletion_auc``, ``ig/insertion_auc``, ``ig/srg``):
            units removed (or inserted) most relevant first and least relevant first, in ``curve_points`` steps:
            ``3 * curve_points - 1`` forward passes of the probe (no gradients). ``False``: off.
        curve_points: Steps of each curve.
        fill: What a removed unit becomes in the curves: ``"baseline"`` (the first baseline), ``"blur"`` (a blurred
            copy of the image) or ``"neighbours"`` (images: imputed from the unremoved neighbours, as ROAD does).
        sanity_every_n_checks: The randomisation sanity check: at the first check and then every ``n`` checks, the
            probe is attributed on the model with its layers re-initialised from the top down (in place, restored
            bit-exactly) and compared with the trained model's maps (``ig/sanity_*``). ``0``: off.
        sanity_steps: Points of the cascade attributed (the top layer, ..., every layer); each costs one IG.
        sanity_tolerance: With ``n_steps="auto"``, the accuracy target of the randomised models' maps (the trained
            model's keep ``integration.tolerance``), with at most 64 points per path. A rank correlation needs no 1%
            accuracy: against 0.01, 0.1 cut the sanity stage's time 1.5-3x and moved ``ig/sanity_spearman`` by at
            most 0.007 (digits CNN, tiny BERT, small ResNet; ``docs/trust.md``).
        sanity_warn_above: Warn when the maps of the fully randomised model keep a rank correlation of
            ``|attribution|`` above this with the trained model's (over the units that differ from the baseline).
            Measured (``benchmarks/bench_trust.py``): 0.13-0.52 for the default baselines of the examples, 0.65 for
            noise-averaged digits, above 0.8 for a linear model whose inputs span four orders of magnitude.
    """

    path = "faithfulness"
    deletion: bool = True
    top_k: int = 10
    curves: bool = True
    curve_points: int = 8
    fill: Literal["baseline", "blur", "neighbours"] = "baseline"
    sanity_every_n_checks: int = 10
    sanity_steps: int = 2
    sanity_tolerance: float = 0.1
    sanity_warn_above: float = 0.6

    def __post_init__(self) -> None:
        validate_bool(self.deletion, self._name("deletion"))
        validate_int(self.top_k, self._name("top_k"), minimum=1)
        validate_bool(self.curves, self._name("curves"))
        validate_int(self.curve_points, self._name("curve_points"), minimum=1)
        validate_choice(self.fill, self._name("fill"), FILLS)
        validate_int(self.sanity_every_n_checks, self._name("sanity_every_n_checks"), minimum=0)
        validate_int(self.sanity_steps, self._name("sanity_steps"), minimum=1)
        self._set("sanity_tolerance", validate_positive_float(self.sanity_tolerance, self._name("sanity_tolerance")))
        self._set("sanity_warn_above", validate_share(self.sanity_warn_above, self._name("sanity_warn_above")))


@dataclass(frozen=True)
class Display(_Settings):
    """Pictures, and the names of what they show (also used by the rules and per-class metric keys).

    Args:
        log_images: Draw pictures (scalars are always logged).
        kind: Pictures for ``"image"``, ``"text"`` or ``"tabular"`` inputs; ``"auto"`` guesses.
        vocabulary: Token names: a list by id, a callable ``id -> str``, or a tokenizer.
        feature_names: Feature names for tabular inputs.
        class_names: Class names, for rules, captions and per-class drift.
        max_images: Probe examples drawn per check.
        color_headroom: Each example's colour scale: this many times its largest ``|attribution|`` at the
            first check (attributions grow as a model learns).
        background: Draw and write the pictures and files on a worker thread (rank zero), so that training waits
            only for the scalars; they are all written by the end of ``fit``/``validate``, also on an exception.
            ``False``: draw in line, as 0.1 did.
    """

    path = "display"
    log_images: bool = True
    kind: Literal["auto", "image", "text", "tabular"] = "auto"
    vocabulary: Names = None
    feature_names: Sequence[str] | None = None
    class_names: Sequence[str] | None = None
    max_images: int = 8
    color_headroom: float = 4.0
    background: bool = True

    def __post_init__(self) -> None:
        validate_bool(self.log_images, self._name("log_images"))
        validate_choice(self.kind, self._name("kind"), VIEW_KINDS)
        self._set("vocabulary", validate_vocabulary(self.vocabulary, self._name("vocabulary")))
        self._set("feature_names", validate_names(self.feature_names, self._name("feature_names")))
        self._set("class_names", validate_names(self.class_names, self._name("class_names")))
        validate_int(self.max_images, self._name("max_images"), minimum=1)
        self._set("color_headroom", validate_positive_float(self.color_headroom, self._name("color_headroom")))
        validate_bool(self.background, self._name("background"))


#: The monitor's settings arguments and their classes, in the signature's order.
GROUPS: dict[str, type] = {"inputs": Inputs, "integration": Integration, "alarm": Alarm,
                           "rule_extraction": RuleExtraction, "faithfulness": Faithfulness, "display": Display}

S = TypeVar("S")


def as_settings(value: Any, cls: type[S], name: str) -> S:
    """``value`` as a ``cls``: ``None`` gives the defaults, a dict its fields (unknown keys refused by name)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise TypeError(f"`{name}` has no setting {', '.join(repr(k) for k in unknown)}; its settings are "
                            f"{known}")
        return cls(**value)
    raise TypeError(f"`{name}` must be {cls.__name__}(...) or a dict of its settings, got {type(value).__name__}")
