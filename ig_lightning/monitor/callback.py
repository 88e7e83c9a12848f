"""The Lightning callback: Integrated Gradients on a fixed probe batch, every validation epoch.

Data flows one way: the probe (``probe``) -> the checks before training
(``preflight``) -> a check (``explainer``, the engine) -> its
scalars (``measure``, logged with ``pl_module.log``), the state kept between checks
(``tracking``), the breach policy (``policy``) and rank-zero
pictures (``report``). This module holds the hooks, the skip predicate and the checkpoint
state; the arguments are validated by ``MonitorConfig``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ig_lightning.functional.integrated_gradients import IGResult
from ig_lightning.monitor import preflight
from ig_lightning.monitor._isolation import eval_mode, preserved_rng
from ig_lightning.monitor.config import DELTA_FLOOR, MetricNames, MonitorConfig
from ig_lightning.monitor.explainer import Explainer
from ig_lightning.monitor.faithfulness import deletion_check
from ig_lightning.monitor.policy import AttributionDriftError, BreachPolicy, find_faults
from ig_lightning.monitor.targets import resolve_targets
from ig_lightning.monitor.measure import alarm_limits, log_scalars, measure
from ig_lightning.monitor.meshes import PathMeshes
from ig_lightning.monitor.probe import ModelInputs, Probe, Unpack
from ig_lightning.monitor.tracking import ColorScales, DriftHistory, DriftReferences, RuleTracker
from ig_lightning.output.markdown import Names
from ig_lightning.output.report import Reporter, logger_step
from ig_lightning.output.views import CheckRecord, make_view

__all__ = ["AttributionDriftError", "IntegratedGradientsMonitor"]


class IntegratedGradientsMonitor(Callback):
    r"""Integrated Gradients on a fixed probe batch at every validation epoch, logged and watched.

    Each check attributes the model's output on the probe (taken once, kept fixed) and logs scalars through
    ``pl_module.log`` (completeness, drift from a reference check, the deletion check; ``EarlyStopping`` can
    watch them, with ``strict=False`` for those absent at the first checks), draws pictures and per-class rules
    to the loggers, and can warn, stop or fail the run on a breach. Training is untouched: no parameter
    ``.grad``, buffer, module mode or global random stream changes. Arguments are validated here
    (``MonitorConfig``); what needs the model and the data is validated when
    ``fit`` starts, before the first training step, by running the probe through the model once.

    Args:
        probe: An int ``N`` (examples of the first validation dataset, see ``probe_selection``), the model's
            inputs (a Tensor, a tuple of positional Tensors, a dict of keyword Tensors such as a Hugging Face
            batch), or an ``(inputs, labels)`` pair (two positional inputs: ``((x1, x2), labels or None)``).
        target: ``"auto"`` (the label if the probe has class labels, else the prediction), ``"label"``,
            ``"prediction"`` (at the first check, then fixed), an int, a callable ``(outputs, labels) ->
            LongTensor (B,)`` of class indices (called at the first check), or ``"positive_labels"``: with
            multi-hot labels ``(B, C)``, one probe row per (example, positive label), explaining that label.
            One-hot labels are read through their argmax. Ignored with one output per example.
        baseline: ``None`` (zeros; token id 0 with ``layer``), a number, a Tensor broadcastable to the attributed
            input (a tuple/dict of those for several), or ``"special_tokens"`` (token ids at a ``layer``, a
            tokenizer as ``vocabulary``): the probe's special tokens kept, every other token the pad token.
        n_steps: ``"auto"`` (refine each example until its estimated relative L2 error, logged as
            ``ig/attribution_error``, and its completeness error are within ``tolerance``) or a fixed number.
        method: The quadrature rule of a fixed ``n_steps`` (captum's names).
        internal_batch_size: Most path points per forward/backward; ``None``: half the training batch (the
            validation one under ``trainer.validate``), so a check needs no more memory than a training step.
        tolerance: The accuracy target of ``n_steps="auto"``.
        max_steps: The most points per example with ``n_steps="auto"``.
        warm_start: With ``"auto"``, start each example's path from the last check's mesh (fewer rounds, the same
            error target; ``ig_lightning.functional.warm``).
        layer: A submodule's name (``named_modules()``, e.g. ``"model.bert.embeddings.word_embeddings"``) to
            attribute at its output; a convolution's or patch embedding's output is drawn as a map over the image.
        attribute: The input(s) to attribute (names of a dict batch, or positions). ``None``: every floating
            input, or with ``layer`` ``input_ids``/``pixel_values`` (else the first); the rest pass unchanged.
        output_transform: ``"softmax"``, ``"log_softmax"``, ``"sigmoid"``, or a callable of the raw output.
        unpack: A callable mapping a batch to ``(inputs, labels or None)``; the default understands ``x``,
            ``(x, y)``, Hugging Face dict batches and dicts with ``"x"``/``"y"``-like keys.
        every_n_epochs: Check every ``n`` epochs.
        drift_metric: ``"cosine"``, ``"spearman"`` (rank) or ``"topk_jaccard"``, each as a distance.
        drift_reference: Compare with the ``"previous"`` check or the ``"first"`` one.
        drift_threshold: ``"auto"``: breach when the drift is more than ``drift_factor`` times the median of the
            previous ``drift_window`` checks' (``ig/drift_ratio``; it needs 3 earlier values). A number: breach
            above it. ``None``: never.
        drift_factor: With ``"auto"``: how many times its usual drift a check must move to breach.
        drift_window: With ``"auto"``: how many previous checks the median spans.
        drift_scope: ``"class"``: the drift of the class that moved most (``ig/drift_class_max``), or
            ``"probe"``: the mean (``ig/drift``). ``None``: ``"class"`` with ``"auto"``, else ``"probe"``.
        completeness_threshold: Breach when the worst relative completeness error exceeds it.
        attribution_error_threshold: Breach when ``ig/attribution_error_max`` exceeds it.
        region: A bool mask over one example's scores: logs ``ig/region_mass``, the share of ``|attribution|`` in it.
        region_threshold: Breach when ``ig/region_mass`` exceeds it (e.g. a model reading a watermark).
        warmup: First checks whose threshold breaches are ignored; NaN/inf always breach.
        patience: Breaching checks before acting, among the last ``patience_window`` checks.
        patience_window: ``None``: ``patience`` (in a row). Against the ``"previous"`` check a sudden change is
            one check of high drift: with ``patience > 1`` give a window, or keep ``patience=1``.
        on_breach: ``"warn"``, ``"stop"`` (end ``fit``) or ``"raise"`` (``AttributionDriftError``).
        top_k: Features per class in the rules, ``k`` of ``topk_jaccard``, and units the deletion check removes.
        deletion_check: Set each example's ``top_k`` most attributed units to the baseline, against ``top_k``
            random ones, and log the output's drop (``ig/deletion_*``); also per class rule. Forward passes only.
        probe_selection: ``"stratified"``: an int ``probe`` spread over the classes by dataset index (the same on
            every rank; a warning names missing classes); ``"first"``: the first ``N``.
        autocast: Run IG under the trainer's mixed-precision autocast (faster, less exact). Default: float32.
        kind: Pictures for ``"image"``, ``"text"`` or ``"tabular"`` inputs; ``"auto"`` guesses.
        vocabulary: Token names: a list by id, a callable ``id -> str``, or a tokenizer.
        feature_names: Feature names for tabular inputs.
        class_names: Class names, for rules, captions and per-class drift.
        max_images: Probe examples drawn per check.
        log_images: Draw pictures (scalars are always logged).
        color_headroom: Each example's colour scale: this many times its largest ``|attribution|`` at the
            first check (attributions grow as a model learns).
        name: Several monitors in one trainer need distinct names: keys become ``ig/<name>/...``, the rules file
            ``ig_rules_<name>.jsonl``.

    Raises:
        ValueError: an argument with a bad value (named in the message).
        TypeError: an argument of the wrong type.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = IntegratedGradientsMonitor(probe=16, drift_threshold="auto", on_breach="stop")
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
    """

    def __init__(
        self,
        probe: int | torch.Tensor | tuple | dict = 16,
        *,
        target: Literal["auto", "label", "prediction"] | int | Callable[[torch.Tensor, Any], torch.Tensor] = "auto",
        baseline: float | torch.Tensor | list | tuple | dict | None = None,
        n_steps: int | Literal["auto"] = "auto",
        method: Literal[
            "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
        ] = "gausslegendre",
        internal_batch_size: int | None = None,
        tolerance: float = 0.01,
        max_steps: int = 256,
        warm_start: bool = False,
        layer: str | None = None,
        attribute: str | int | list[str | int] | None = None,
        output_transform: Literal["softmax", "log_softmax", "sigmoid"] | Callable[[Any], torch.Tensor]
        | None = None,
        unpack: Unpack | None = None,
        every_n_epochs: int = 1,
        drift_metric: Literal["cosine", "spearman", "topk_jaccard"] = "cosine",
        drift_reference: Literal["previous", "first"] = "previous",
        drift_threshold: float | Literal["auto"] | None = None,
        drift_factor: float = 5.0,
        drift_window: int = 5,
        drift_scope: Literal["class", "probe"] | None = None,
        completeness_threshold: float | None = None,
        attribution_error_threshold: float | None = None,
        region: torch.Tensor | list | None = None,
        region_threshold: float | None = None,
        warmup: int = 0,
        patience: int = 1,
        patience_window: int | None = None,
        on_breach: Literal["warn", "stop", "raise"] = "warn",
        top_k: int = 10,
        deletion_check: bool = True,
        probe_selection: Literal["stratified", "first"] = "stratified",
        autocast: bool = False,
        kind: Literal["auto", "image", "text", "tabular"] = "auto",
        vocabulary: Names = None,
        feature_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        max_images: int = 8,
        log_images: bool = True,
        color_headroom: float = 4.0,
        name: str | None = None,
    ) -> None:
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config = MonitorConfig(**arguments)
        self.names = MetricNames(self.config.prefix)
        # Progress (in the checkpoint).
        self.probe: Probe | None = self.config.given_probe
        self.targets: torch.Tensor | None = None
        self.references = DriftReferences()
        self.color_scales = ColorScales(self.config.color_headroom)
        self.rule_tracker = RuleTracker(self.config.top_k)
        self.drift_history, self.meshes = DriftHistory(self.config.drift_window), PathMeshes()
        what = f"{drift_metric} vs {drift_reference} check"
        describe = {self.names["drift"]: what, self.names["drift_class_max"]: f"worst class, {what}",
                    self.names["drift_ratio"]: f"{what}, over the median of the last {drift_window} checks"}
        self.policy = BreachPolicy(alarm_limits(self.config, self.names, has_classes=True), self.config.warmup,
                                   self.config.patience, self.config.on_breach, describe, patience_window)
        self.checks = 0
        self._single_output = False
        self._model_fingerprint: str | None = None
        # Per run, not saved.
        self.last_result: IGResult | None = None
        self.last_metrics: dict[str, float] = {}
        self._layer_module: nn.Module | None = None
        self._explainer: Explainer | None = None
        self._reporter: Reporter | None = None
        self._loggers: list[Any] = []
        self._batch, self._kind = None, None
        self._model_ref: Callable[[], Any] | None = None

    def __getattr__(self, name: str) -> Any:
        """The arguments, read as plain attributes (``monitor.n_steps``), as Lightning's callbacks have them."""
        config = self.__dict__.get("config")
        if config is not None and name in config.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def state_key(self) -> str:
        c = self.config
        key = {"method": c.method, "n_steps": c.n_steps, "layer": c.layer, "drift_metric": c.drift_metric,
               "target": c.target if isinstance(c.target, (str, int)) else "callable"}
        return self._generate_state_key(**key, **({} if c.name is None else {"name": c.name}))

    @property
    def probe_inputs(self) -> torch.Tensor | ModelInputs | None:
        """The probe's inputs: a Tensor for a model with one positional input, else the ``ModelInputs``."""
        if self.probe is None:
            return None
        inputs = self.probe.inputs
        return inputs.args[0] if len(inputs.args) == 1 and not inputs.kwargs else inputs

    @property
    def rules(self) -> dict[int, list[tuple[int, float]]]:
        """Each class's top ``(feature or token id, score)`` at the last check."""
        return self.rule_tracker.rules

    @property
    def rules_history(self) -> list[dict[str, Any]]:
        """The rules and their changes at every check of this run."""
        return self.rule_tracker.history

    @property
    def breach_streak(self) -> int:
        return self.policy.streak

    # --- setup: everything that can be validated before training --------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._layer_module = preflight.find_layer(pl_module, self.config.layer)
        fingerprint = preflight.model_fingerprint(pl_module)
        previous = self._model_ref() if self._model_ref is not None else None
        if (previous is not None and previous is not pl_module) or \
                (self._model_fingerprint is not None and self._model_fingerprint != fingerprint):
            rank_zero_warn("IntegratedGradientsMonitor: this monitor was used with another model; its probe targets, "
                           "references and rules are dropped and taken anew (use one monitor per model)")
            self._reset_progress()
        self._model_fingerprint, self._model_ref = fingerprint, weakref.ref(pl_module)
        preflight.validate_names_unique(self, [cb for cb in trainer.callbacks if isinstance(cb, type(self))])
        self._loggers = list(trainer.loggers)

    def _reset_progress(self) -> None:
        self.probe, self.targets, self.checks, self._single_output = self.config.given_probe, None, 0, False
        self.references, self.color_scales = DriftReferences(), ColorScales(self.config.color_headroom)
        self.rule_tracker, self.drift_history = RuleTracker(self.config.top_k), DriftHistory(self.config.drift_window)
        self.policy.recent, self._explainer, self.meshes = [], None, PathMeshes()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if preflight.will_check(trainer, pl_module, self.config.every_n_epochs):
            self._prepare(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit" and not trainer.sanity_checking:
            self._prepare(trainer, pl_module)

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take the probe and validate it against the model once, before any training step (no gradients)."""
        if self._explainer is not None:
            return
        config = self.config
        with preserved_rng(pl_module.device):
            self.probe = self.probe or preflight.take_probe_from(trainer, self.config)
            if config.target == "positive_labels" and not self.probe.pairs:
                self.probe = self.probe.positive_pairs()  # one row per (example, positive label)
            self._batch = preflight.points_per_forward(trainer, config.internal_batch_size, len(self.probe))
            self._explainer = Explainer(self.probe.inputs, config.attribute, self._layer_module, config.layer,
                                        config.output_transform, preflight.resolve_baseline(config, self.probe))
            self._kind = preflight.validate(config, self.probe, self._explainer, pl_module, self._batch)
        self._reporter = Reporter(self._loggers, config.log_images, make_view(self._kind, config), config.prefix,
                                  config.rules_file)

    # --- when to check -----------------------------------------------------------------------------

    def _should_skip_check(self, trainer: Trainer) -> bool:
        # The sanity check runs on an untrained model and on a few batches: not a real check.
        if trainer.sanity_checking:
            return True
        # trainer.validate: always check.
        if trainer.state.fn != "fit":
            return False
        # Inside fit: every n-th epoch, counted like Lightning's check_val_every_n_epoch.
        return (trainer.current_epoch + 1) % self.config.every_n_epochs != 0

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip_check(trainer):
            return
        self._prepare(trainer, pl_module)
        with preserved_rng(pl_module.device):
            record, breaches = self._run_check(trainer, pl_module)
        self._explainer.pass_on_notes()
        if trainer.is_global_zero:  # pictures and files: rank zero only, and never fatal
            self._reporter.write(record)
        self.policy.act(trainer, breaches)

    # --- the check ---------------------------------------------------------------------------------

    def _run_check(self, trainer: Trainer, pl_module: LightningModule) -> tuple[CheckRecord, list[str]]:
        config, explainer, inputs = self.config, self._explainer, self.probe.inputs
        self._ensure_targets(trainer, pl_module)
        result = self._attribute(trainer, pl_module)
        all_scores = explainer.scores(result, inputs)
        scores = all_scores[0]
        flat = [s.reshape(len(s), -1) for s in all_scores]
        vector = flat[0] if len(flat) == 1 else torch.cat(flat, 1)  # one view per example for drift
        finite = torch.isfinite(vector).all(1) & torch.isfinite(result.delta)
        relative = result.relative_error(DELTA_FLOOR)
        metrics = measure(config, self.names, result, relative, scores, vector, finite, self.targets,
                          self.references, self.drift_history, config.class_names)
        self.references.update(vector, finite)
        self.color_scales.update(scores, finite)
        keys, mask = explainer.rule_keys(inputs, scores, self._kind)
        targets = None if self.targets is None or not bool(finite.any()) else self.targets[finite]
        kept = keys[:int(finite.sum())] if keys.stride(0) == 0 else keys[finite]  # one row expanded: no (B, D) copy
        changes = self.rule_tracker.update(kept, scores.reshape(len(scores), -1)[finite], targets,
                                           None if mask is None else mask[finite], trainer.current_epoch,
                                           trainer.global_step)
        rule_drops: dict[int, float] = {}
        if config.deletion_check:
            found, rule_drops = deletion_check(explainer, pl_module, inputs, scores, self.targets, keys, mask,
                                               self.rules, config.top_k, self._batch, seed=self.checks)
            metrics.update({self.names[k]: v for k, v in found.items()})
        log_scalars(trainer, pl_module, metrics)
        self.checks += 1
        self.last_result, self.last_metrics = result, metrics
        predictions = None if self.targets is None else explainer.outputs(pl_module, inputs, self._batch)[0].argmax(-1)
        labels = self.probe.labels
        record = CheckRecord(logger_step(trainer), trainer.current_epoch, inputs[explainer.names[0]], self.targets,
                             scores, self.color_scales.scales, relative, self.rules, changes,
                             None if mask is None else mask.reshape(inputs[explainer.names[0]].shape), rule_drops,
                             config.prefix, labels if labels is not None and labels.ndim == 1 else None, predictions)
        faults = find_faults(inputs, result.delta, finite, trainer.current_epoch)
        self.policy.limits = {k: v for k, v in alarm_limits(config, self.names, self.targets is not None).items()
                              if v is not None}
        return record, self.policy.find(metrics, self.checks, trainer.current_epoch, faults)

    def _ensure_targets(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the explained output per probe example (once), identically on every process."""
        if self.targets is not None or self._single_output:
            return
        outputs, _ = self._explainer.outputs(pl_module, self.probe.inputs, self._batch)
        targets = resolve_targets(self.config.target, outputs, self.probe.labels)
        self.targets = trainer.strategy.broadcast(targets, src=0)
        self._single_output = self.targets is None

    def _attribute(self, trainer: Trainer, pl_module: LightningModule) -> IGResult:
        config = self.config
        precision = trainer.precision_plugin.forward_context() if config.autocast else \
            torch.autocast(pl_module.device.type, enabled=False)
        with eval_mode(pl_module), precision:
            return self._explainer.attribute(
                trainer, pl_module, self.probe.inputs, self.targets, self.meshes if config.warm_start else None,
                n_steps=config.n_steps, method=config.method,
                internal_batch_size=self._batch, tolerance=config.tolerance, max_steps=config.max_steps,
                delta_floor=DELTA_FLOOR)

    # --- checkpoint ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self.config.identity(), "model": self._model_fingerprint,
                "probe": None if self.probe is None else self.probe.state(), "targets": self.targets,
                "single_output": self._single_output, "checks": self.checks,
                **self.references.state_dict(), **self.color_scales.state_dict(), **self.rule_tracker.state_dict(),
                **self.drift_history.state_dict(), **self.policy.state_dict(), **self.meshes.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, current = state_dict.get("settings"), self.config.identity()
        changed = sorted(k for k in (saved or {}) if saved[k] != current.get(k))  # keys new since: no change
        if changed:
            rank_zero_warn(f"IntegratedGradientsMonitor: the checkpoint's monitor had other settings ({changed}); "
                           "its probe, targets and references are not used and are taken anew")
            return
        probe = state_dict.get("probe", state_dict.get("probe_inputs"))
        if probe is not None:
            self.probe = Probe.from_state(probe, state_dict.get("probe_labels"))
        if state_dict.get("targets") is not None:
            self.targets = state_dict["targets"]
        for part in (self.references, self.color_scales, self.rule_tracker, self.drift_history, self.policy,
                     self.meshes):
            part.load_state_dict(state_dict)
        self._single_output = bool(state_dict.get("single_output", False))
        self._model_fingerprint = state_dict.get("model", self._model_fingerprint)
        self.checks = state_dict.get("checks", self.checks)
        self._explainer = None  # validated again against the model before the next check
