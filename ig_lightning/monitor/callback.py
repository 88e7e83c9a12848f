"""The Lightning callback: Integrated Gradients on a fixed probe batch, every validation epoch.

Data flows one way: the probe (:mod:`ig_lightning.monitor.probe`) -> a check (:mod:`ig_lightning.monitor.explainer`, the
engine) -> a :class:`~ig_lightning.output.views.CheckRecord` -> scalars (``pl_module.log``), the breach policy
(:mod:`ig_lightning.monitor.policy`) and rank-zero pictures (:mod:`ig_lightning.output.report`). This module only
holds the configuration, the hooks and the state kept across checks.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from ig_lightning.monitor import preflight
from ig_lightning.monitor.config import (
    check_attribute,
    check_baseline,
    check_choice,
    check_names,
    check_optional_threshold,
    check_probe,
    check_vocabulary,
    model_fingerprint,
)
from ig_lightning._validation import check_int, check_positive_float
from ig_lightning.monitor.explainer import OUTPUT_TRANSFORMS, Explainer, find_faults, resolve_targets
from ig_lightning.functional.drift import DRIFT_METRICS, drift_distances
from ig_lightning.functional.integrated_gradients import IGResult
from ig_lightning.monitor.policy import ON_BREACH, AttributionDriftError, BreachPolicy
from ig_lightning.monitor.probe import ModelInputs, Unpack, default_unpack, first_val_dataloader, take_probe
from ig_lightning.functional.quadrature import check_method, check_n_steps, check_n_steps_or_auto
from ig_lightning.output.report import Reporter, logger_step
from ig_lightning.functional.rules import class_top_features, rule_changes
from ig_lightning.monitor._isolation import eval_mode, preserved_rng
from ig_lightning.output.views import VIEW_KINDS, CheckRecord, ImageView, Names, TabularView, TextView, View

__all__ = ["AttributionDriftError", "IntegratedGradientsMonitor"]

TARGETS = ("auto", "label", "prediction")
REFERENCES = ("previous", "first")
DELTA_FLOOR = 1e-3


def _rank_sync(trainer: Trainer, device: torch.device) -> Callable[[int], int]:
    """``sync(k)``: the largest ``k`` over the ranks, so that every rank runs as many forward passes as the busiest."""
    def sync(k: int) -> int:
        return int(trainer.strategy.reduce(torch.tensor(k, device=device), reduce_op="max"))
    return sync


class IntegratedGradientsMonitor(Callback):
    r"""Integrated Gradients on a fixed probe batch at every validation epoch, logged and watched.

    Each check attributes the model's output on the probe (taken once and kept fixed), logs the
    completeness error and the drift of attributions from a reference check as scalars (usable by
    ``EarlyStopping``/``ModelCheckpoint``: ``ig/drift`` exists from the second check on, so watch it with
    ``EarlyStopping(..., strict=False)``; ``ig/completeness_error`` exists at every check), draws
    attribution pictures and per-class rules to TensorBoard, and can warn, stop or fail the run when a
    threshold is breached. Training itself is untouched: no parameter ``.grad``, buffer, module mode or
    global random stream is changed.

    Every argument is checked here; what needs the model and the data (the probe's shapes, the layer,
    targets, baseline, region and names) is checked when ``fit`` starts, before the first training step,
    by taking the probe and running it through the model once.

    Args:
        probe: An int ``N`` (the first ``N`` examples of the first validation dataset), the model's
            inputs (a Tensor, a tuple of positional Tensors, or a dict of keyword Tensors such as a Hugging
            Face batch), or an ``(inputs, labels)`` pair.
        target: Which output to explain: ``"auto"`` (the label when the probe has labels, else the
            prediction), ``"label"``, ``"prediction"`` (the predicted class at the first check, then
            fixed), an int, or a callable ``(outputs, labels) -> LongTensor (B,)`` evaluated at the first
            check. Ignored for models with one output per example.
        baseline: ``None`` (zeros; token id 0 with ``layer``), a number, or a Tensor broadcastable to the
            attributed input; with several attributed inputs a tuple or a dict (by input name) of those.
        n_steps: ``"auto"`` (refine each example until the estimated relative L2 error of its attributions,
            and its completeness error, are within ``tolerance``; the estimate is logged as
            ``ig/attribution_error``), or a fixed number of quadrature points.
        method: The quadrature rule of a fixed ``n_steps`` (captum's names; see
            :func:`ig_lightning.integrated_gradients`).
        internal_batch_size: Most path points per forward/backward. ``None``: the training batch size (the
            validation batch size under ``trainer.validate``), so a check needs no more memory than a
            training step.
        tolerance: The accuracy target of ``n_steps="auto"``.
        max_steps: The most points per example with ``n_steps="auto"``.
        layer: Name of a submodule (as in ``named_modules()``, e.g. ``"embedding"`` or
            ``"model.bert.embeddings.word_embeddings"``) to attribute at its output.
        attribute: Which of the model's inputs to attribute: an input name (a key of a dict batch), a
            position, or a list of them. ``None``: every floating-point input, or with ``layer`` the input
            the baseline replaces (``input_ids``/``pixel_values`` in a dict batch, else the first). The others
            (masks, type ids) are passed unchanged at every path point.
        output_transform: Explain ``"softmax"``, ``"log_softmax"`` or ``"sigmoid"`` of the outputs, or a
            callable's result (it receives the model's raw output, e.g. a ``ModelOutput``).
        unpack: A callable mapping a batch to ``(inputs, labels or None)``, ``inputs`` being a Tensor, a
            tuple (positional) or a dict (keyword) of Tensors; the default understands ``x``, ``(x, y)``,
            Hugging Face dict batches and dicts with ``"x"``/``"y"``-like keys.
        every_n_epochs: Check every ``n`` epochs.
        drift_metric: ``"cosine"`` (1 - cosine similarity), ``"spearman"`` (1 - rank correlation) or
            ``"topk_jaccard"`` (1 - overlap of the ``top_k`` largest ``|attributions|``), averaged over the probe.
        drift_reference: Compare with the ``"previous"`` check or the ``"first"`` one.
        drift_threshold: Breach when the drift exceeds it (``None`` = never).
        completeness_threshold: Breach when the worst relative completeness error exceeds it.
        attribution_error_threshold: Breach when the worst estimated relative L2 error of the attributions
            (``ig/attribution_error_max``, logged with ``n_steps="auto"``) exceeds it.
        region: A boolean mask over one example's features (broadcastable to its scores: pixels, or tokens
            with a layer): logs ``ig/region_mass``, the share of absolute attribution inside it.
        region_threshold: Breach when ``ig/region_mass`` exceeds it (e.g. a model reading a watermark).
        warmup: Number of first checks whose breaches are ignored (early churn); NaN/inf always breach.
        patience: Consecutive breaching checks before acting.
        on_breach: ``"warn"``, ``"stop"`` (end ``fit`` gracefully) or ``"raise"`` (:class:`AttributionDriftError`).
        top_k: Features per class in the extracted rules, and ``k`` of ``topk_jaccard``.
        autocast: Run IG under the trainer's mixed-precision autocast (faster, less exact: the
            completeness error shows the price). Default: float32.
        kind: Pictures for ``"image"``, ``"text"`` or ``"tabular"`` inputs; ``"auto"`` guesses from shapes.
        vocabulary: Token names for text: a list indexed by id, a callable ``id -> str``, or a tokenizer
            with ``convert_ids_to_tokens``.
        feature_names: Feature names for tabular inputs.
        class_names: Names of the classes, for the rules tables.
        max_images: Probe examples drawn per check.
        log_images: Draw pictures to TensorBoard (scalars are always logged).
        color_headroom: Each example's colour scale is fixed at the first check, at this many times its
            largest ``|attribution|`` then (attributions grow as a model learns); larger values saturate.

    Raises:
        ValueError: an argument with a bad value (named in the message).
        TypeError: an argument of the wrong type.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = IntegratedGradientsMonitor(probe=16, n_steps=32, drift_threshold=0.3, on_breach="stop")
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
        layer: str | None = None,
        attribute: str | int | list[str | int] | None = None,
        output_transform: Literal["softmax", "log_softmax", "sigmoid"] | Callable[[Any], torch.Tensor]
        | None = None,
        unpack: Unpack | None = None,
        every_n_epochs: int = 1,
        drift_metric: Literal["cosine", "spearman", "topk_jaccard"] = "cosine",
        drift_reference: Literal["previous", "first"] = "previous",
        drift_threshold: float | None = None,
        completeness_threshold: float | None = None,
        attribution_error_threshold: float | None = None,
        region: torch.Tensor | list | None = None,
        region_threshold: float | None = None,
        warmup: int = 0,
        patience: int = 1,
        on_breach: Literal["warn", "stop", "raise"] = "warn",
        top_k: int = 10,
        autocast: bool = False,
        kind: Literal["auto", "image", "text", "tabular"] = "auto",
        vocabulary: Names = None,
        feature_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        max_images: int = 8,
        log_images: bool = True,
        color_headroom: float = 4.0,
    ) -> None:
        self.given_inputs, self.given_labels, self.probe_size = check_probe(probe)
        if isinstance(target, str):
            check_choice(target, "target", TARGETS)
        elif not callable(target):
            check_int(target, "target", minimum=0)
        self.target = target
        self.baseline = check_baseline(baseline)
        self.method = check_method(method)
        self.n_steps = check_n_steps_or_auto(n_steps, self.method)
        self.internal_batch_size = (
            None if internal_batch_size is None else check_int(internal_batch_size, "internal_batch_size", minimum=1)
        )
        self.tolerance = check_positive_float(tolerance, "tolerance")
        self.max_steps = check_n_steps(max_steps, self.method, name="max_steps")
        if self.n_steps == "auto" and self.method == "riemann_trapezoid" and self.max_steps < 3:
            raise ValueError(f"`max_steps` must be >= 3 for n_steps='auto' with riemann_trapezoid, got {max_steps}")
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"`layer` must be a submodule name such as 'embedding', got {type(layer).__name__}")
        if layer is not None and not layer.strip():
            raise ValueError(f"`layer` must name a submodule such as 'embedding', got {layer!r} (the whole model)")
        self.layer = layer
        self.attribute = check_attribute(attribute)
        if isinstance(output_transform, str):
            check_choice(output_transform, "output_transform", tuple(OUTPUT_TRANSFORMS))
        elif output_transform is not None and not callable(output_transform):
            raise TypeError(f"`output_transform` must be a name or a callable, got {type(output_transform).__name__}")
        self.output_transform = output_transform
        if unpack is not None and not callable(unpack):
            raise TypeError(f"`unpack` must be callable, got {type(unpack).__name__}")
        self.unpack = unpack or default_unpack
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.drift_metric = check_choice(drift_metric, "drift_metric", DRIFT_METRICS)
        self.drift_reference = check_choice(drift_reference, "drift_reference", REFERENCES)
        self.drift_threshold = check_optional_threshold(drift_threshold, "drift_threshold")
        self.completeness_threshold = check_optional_threshold(completeness_threshold, "completeness_threshold")
        self.attribution_error_threshold = check_optional_threshold(attribution_error_threshold,
                                                                     "attribution_error_threshold")
        if self.attribution_error_threshold is not None and self.n_steps != "auto":
            raise ValueError("`attribution_error_threshold` needs n_steps='auto' (fixed rules give no error estimate)")
        if isinstance(region, list):  # from a config file: nested lists of booleans
            region = torch.tensor(region)
        if region is not None and (not isinstance(region, torch.Tensor) or region.dtype != torch.bool):
            raise TypeError(f"`region` must be a bool Tensor mask over one example's features, got {region!r}")
        if region is not None and not bool(region.any()):
            raise ValueError("`region` must select at least one feature, got an all-False mask")
        self.region = region
        self.region_threshold = check_optional_threshold(region_threshold, "region_threshold")
        if self.region_threshold is not None and region is None:
            raise ValueError("`region_threshold` needs a `region` mask")
        self.warmup = check_int(warmup, "warmup", minimum=0)
        self.patience = check_int(patience, "patience", minimum=1)
        self.on_breach = check_choice(on_breach, "on_breach", ON_BREACH)
        self.top_k = check_int(top_k, "top_k", minimum=1)
        if not isinstance(autocast, bool):
            raise TypeError(f"`autocast` must be a bool, got {autocast!r}")
        self.autocast = autocast
        self.kind = check_choice(kind, "kind", VIEW_KINDS)
        self.vocabulary = check_vocabulary(vocabulary)
        self.feature_names = check_names(feature_names, "feature_names")
        self.class_names = check_names(class_names, "class_names")
        self.max_images = check_int(max_images, "max_images", minimum=1)
        if not isinstance(log_images, bool):
            raise TypeError(f"`log_images` must be a bool, got {log_images!r}")
        self.log_images = log_images
        self.color_headroom = check_positive_float(color_headroom, "color_headroom")

        # Progress (in the checkpoint): the probe, its targets, references and counters.
        self.probe, self.probe_labels = self.given_inputs, self.given_labels
        self.targets: torch.Tensor | None = None
        self.first_scores: torch.Tensor | None = None
        self.previous_scores: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None
        self.rules: dict[int, list[tuple[int, float]]] = {}
        self.checks = 0
        self.policy = BreachPolicy({"ig/drift": self.drift_threshold,
                                    "ig/completeness_error_max": self.completeness_threshold,
                                    "ig/attribution_error_max": self.attribution_error_threshold,
                                    "ig/region_mass": self.region_threshold},
                                   self.warmup, self.patience, self.on_breach,
                                   {"ig/drift": f"{self.drift_metric} vs {self.drift_reference} check"})
        self._single_output = False
        self._model_fingerprint: str | None = None
        # Per run, not saved.
        self.last_result: IGResult | None = None
        self.last_metrics: dict[str, float] = {}
        self.rules_history: list[dict[str, Any]] = []
        self._tensorboard: TensorBoardLogger | None = None
        self._layer_module: nn.Module | None = None
        self._explainer: Explainer | None = None
        self._reporter: Reporter | None = None
        self._batch: int | None = None
        self._model_ref: Callable[[], Any] | None = None
        self._kind: str | None = None
        self._noted: set[str] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            method=self.method, n_steps=self.n_steps, layer=self.layer, drift_metric=self.drift_metric,
            target=self.target if isinstance(self.target, (str, int)) else "callable",
        )

    @property
    def probe_inputs(self) -> torch.Tensor | ModelInputs | None:
        """The probe's inputs: a Tensor for a model with one positional input, else the :class:`ModelInputs`."""
        if self.probe is not None and len(self.probe.args) == 1 and not self.probe.kwargs:
            return self.probe.args[0]
        return self.probe

    @property
    def breach_streak(self) -> int:
        return self.policy.streak

    def _settings(self) -> dict[str, Any]:
        """What makes the probe and its targets what they are: a checkpoint made with other settings is stale."""
        return {"probe": self.probe_size, "layer": self.layer, "attribute": self.attribute,
                "target": self.target if isinstance(self.target, (str, int)) else "callable",
                "baseline": repr(self.baseline)[:200], "output_transform": self.output_transform
                if isinstance(self.output_transform, (str, type(None))) else "callable"}

    # --- setup: everything that can be checked before training -----------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.layer is not None:
            try:
                self._layer_module = pl_module.get_submodule(self.layer)
            except AttributeError:
                names = [n for n, _ in pl_module.named_modules() if n][:20]
                raise ValueError(f"`layer` {self.layer!r} is not a submodule of the model; some names: {names}") \
                    from None
        fingerprint = model_fingerprint(pl_module)
        previous = self._model_ref() if self._model_ref is not None else None
        if (previous is not None and previous is not pl_module) or \
                (self._model_fingerprint is not None and self._model_fingerprint != fingerprint):
            rank_zero_warn("IntegratedGradientsMonitor: this monitor was used with another model; its probe targets, "
                           "references and rules are dropped and taken anew (use one monitor per model)")
            self._reset_progress()
        self._model_fingerprint, self._model_ref = fingerprint, weakref.ref(pl_module)
        self._tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if self._tensorboard is None and self.log_images:
            rank_zero_info(
                "IntegratedGradientsMonitor: no TensorBoardLogger in the trainer, so only scalars are logged "
                "(add `logger=TensorBoardLogger(...)` for attribution pictures)"
            )
        self._reporter = Reporter(self._tensorboard, self.log_images, self._make_view)

    def _reset_progress(self) -> None:
        self.probe, self.probe_labels = self.given_inputs, self.given_labels
        self.targets = self.first_scores = self.previous_scores = self.scales = None
        self.rules, self.checks, self._single_output, self._explainer = {}, 0, False, None
        self.policy.streak = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if preflight.will_check(trainer, pl_module, self.every_n_epochs):
            self._prepare(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit" and not trainer.sanity_checking:
            self._prepare(trainer, pl_module)

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take the probe and check it against the model once, before any training step (cheap: no gradients)."""
        if self._explainer is not None:
            return
        with preserved_rng(pl_module.device):
            self._take_probe(trainer)
            self._batch = preflight.points_per_forward(trainer, self.internal_batch_size, len(self.probe))
            self._explainer = Explainer(self.probe, self.attribute, self._layer_module, self.layer,
                                        self.output_transform, self.baseline)
            self._explainer.check_baseline(self.probe)
            outputs, layer_values = self._explainer.outputs(pl_module, self.probe, self._batch)
            self._explainer.check_path(pl_module, self.probe, self._batch, layer_values)
            self._kind = preflight.check_outputs(self, outputs, layer_values)

    def _take_probe(self, trainer: Trainer) -> None:
        if self.probe is not None:
            return
        loader = first_val_dataloader(trainer.val_dataloaders)
        if loader is None and trainer.state.fn == "fit":
            loader = preflight.request_val_dataloader(trainer)
        if loader is None:
            raise ValueError("`probe` is an int but the trainer has no validation dataloader to take it from: pass "
                             "`val_dataloaders` (or a datamodule with `val_dataloader`), or a Tensor probe")
        inputs, labels = take_probe(loader, self.probe_size, self.unpack)
        if len(inputs) < self.probe_size:
            rank_zero_warn(f"IntegratedGradientsMonitor: `probe`={self.probe_size} but the validation data has "
                           f"{len(inputs)} examples; the probe holds those {len(inputs)}")
        # Map-style datasets give every rank the same probe; broadcasting also covers iterable ones.
        inputs_state, labels = trainer.strategy.broadcast((inputs.state(), labels), src=0)
        self.probe, self.probe_labels = ModelInputs.from_state(inputs_state), labels

    # --- when to check -----------------------------------------------------------------------------

    def _should_skip_check(self, trainer: Trainer) -> bool:
        # The sanity check runs on an untrained model and on a few batches: not a real check.
        if trainer.sanity_checking:
            return True
        # trainer.validate: always check.
        if trainer.state.fn != "fit":
            return False
        # Inside fit: every n-th epoch, counted like Lightning's check_val_every_n_epoch.
        return (trainer.current_epoch + 1) % self.every_n_epochs != 0

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip_check(trainer):
            return
        self._prepare(trainer, pl_module)
        with preserved_rng(pl_module.device):
            record, breaches = self._run_check(trainer, pl_module)
        self._pass_on_notes()
        if trainer.is_global_zero:  # pictures and files: rank zero only, and never fatal
            self._reporter.write(record)
        self.policy.act(trainer, breaches)

    def _pass_on_notes(self) -> None:
        """The engine's warnings (examples that did not converge, degenerate deltas), once per kind and run:
        they would repeat at every check and for every group of examples."""
        for note in self._explainer.notes:
            kind = re.sub(r"[\d.e+-]+", "#", note)
            if kind not in self._noted:
                self._noted.add(kind)
                rank_zero_warn(f"IntegratedGradientsMonitor: {note} (said once; `ig/attribution_error_max` and "
                               "`ig/completeness_error_max` show it at every check)")
        self._explainer.notes.clear()

    # --- the check ---------------------------------------------------------------------------------

    def _run_check(self, trainer: Trainer, pl_module: LightningModule) -> tuple[CheckRecord, list[str]]:
        self._ensure_targets(trainer, pl_module)
        result = self._attribute(trainer, pl_module)
        explainer = self._explainer
        all_scores = explainer.scores(result, self.probe)
        scores = all_scores[0]
        flat = [s.reshape(len(s), -1) for s in all_scores]
        vector = flat[0] if len(flat) == 1 else torch.cat(flat, 1)  # one view per example for drift
        finite = torch.isfinite(vector).all(1) & torch.isfinite(result.delta)
        relative = result.relative_error(DELTA_FLOOR)
        metrics = self._measure(result, relative, scores, vector, finite)
        self._log_scalars(trainer, pl_module, metrics)
        self._update_references(scores, vector, finite)
        changes = self._update_rules(trainer, scores, finite)
        self.checks += 1
        self.last_result, self.last_metrics = result, metrics
        display = self.probe[explainer.names[0]]
        record = CheckRecord(logger_step(trainer), trainer.current_epoch, display, self.targets, scores,
                             self.scales, relative, self.rules, changes, self._token_mask(display))
        faults = find_faults(self.probe, result.delta, finite, trainer.current_epoch)
        return record, self.policy.find(metrics, self.checks, trainer.current_epoch, faults)

    def _ensure_targets(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the explained output per probe example (once), identically on every process."""
        if self.targets is not None or self._single_output:
            return
        outputs, _ = self._explainer.outputs(pl_module, self.probe, self._batch)
        targets = resolve_targets(self.target, outputs, self.probe_labels)
        self.targets = trainer.strategy.broadcast(targets, src=0)
        self._single_output = self.targets is None

    def _attribute(self, trainer: Trainer, pl_module: LightningModule) -> IGResult:
        device = pl_module.device
        precision = trainer.precision_plugin.forward_context() if self.autocast else \
            torch.autocast(device.type, enabled=False)
        sync = _rank_sync(trainer, device) if trainer.world_size > 1 and self.n_steps == "auto" else None
        with eval_mode(pl_module), precision:
            return self._explainer.attribute(
                trainer, pl_module, self.probe, self.targets, n_steps=self.n_steps, method=self.method,
                internal_batch_size=self._batch, tolerance=self.tolerance, max_steps=self.max_steps,
                delta_floor=DELTA_FLOOR, sync=sync,
            )

    def _measure(self, result: IGResult, relative: torch.Tensor, scores: torch.Tensor, vector: torch.Tensor,
                 finite: torch.Tensor) -> dict[str, float]:
        """The check's scalars, over the examples whose attributions are finite (NaN when none is)."""
        ok = finite if bool(finite.any()) else torch.ones_like(finite)
        metrics = {
            "ig/completeness_error": float(relative[ok].mean()),
            "ig/completeness_error_max": float(relative[ok].max()),
            "ig/delta_mean": float(result.delta[ok].mean()),
            "ig/nonfinite_examples": float((~finite).sum()),
        }
        if self.n_steps == "auto":
            metrics["ig/n_steps_mean"] = float(result.n_steps.double().mean())
            estimate = result.attribution_error.double()[ok]
            if bool(torch.isfinite(estimate).any()):
                metrics["ig/attribution_error"] = float(estimate.nanmean())
                metrics["ig/attribution_error_max"] = float(estimate[torch.isfinite(estimate)].max())
        reference = self.previous_scores if self.drift_reference == "previous" else self.first_scores
        if reference is not None:
            comparable = finite & torch.isfinite(reference).all(1)
            if bool(comparable.any()):
                distances = drift_distances(vector[comparable], reference[comparable], k=self.top_k)
                metrics.update({f"ig/drift_{name}": float(d.mean()) for name, d in distances.items()})
                metrics["ig/drift"] = metrics[f"ig/drift_{self.drift_metric}"]
        if self.region is not None:
            metrics["ig/region_mass"] = self._region_mass(scores[ok])
        return metrics

    def _update_references(self, scores: torch.Tensor, vector: torch.Tensor, finite: torch.Tensor) -> None:
        """Finite examples become references and get their colour scale; a non-finite one never does."""
        rows = finite.view(-1, 1)
        nan = torch.full_like(vector, float("nan"))
        self.first_scores = torch.where(rows & ~torch.isfinite(self.first_scores).all(1, keepdim=True), vector,
                                        self.first_scores) if self.first_scores is not None \
            else torch.where(rows, vector, nan)
        self.previous_scores = torch.where(rows, vector, nan if self.previous_scores is None else self.previous_scores)
        scale = self.color_headroom * scores.reshape(len(scores), -1).abs().amax(1).clamp_min(1e-12)
        if self.scales is None:
            self.scales = torch.full_like(scale, float("nan"))
        self.scales = torch.where(finite & torch.isnan(self.scales), scale, self.scales)

    def _update_rules(self, trainer: Trainer, scores: torch.Tensor,
                      finite: torch.Tensor) -> dict[int, dict[str, list[int]]] | None:
        """Extract this check's rules (finite examples only) and what entered/left each class's top-k."""
        previous = self.rules or None
        if self.targets is not None and bool(finite.any()):
            self.rules = self._extract_rules(scores[finite], self.targets[finite], finite)
        changes = rule_changes(previous, self.rules) if self.rules else None
        self.rules_history.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                   "rules": self.rules, "changes": changes})
        return changes

    def _token_mask(self, display: torch.Tensor) -> torch.Tensor | None:
        """For token ids attributed at a layer: the positions that are real tokens (not padding nor baseline)."""
        if self._resolved_kind() != "text":
            return None
        mask = torch.ones_like(display, dtype=torch.bool)
        attention = self.probe.kwargs.get("attention_mask")
        if attention is not None and attention.shape == display.shape:
            mask &= attention.bool()
        baseline = self._explainer.baselines_for(torch.device("cpu"))
        if isinstance(baseline, tuple):
            baseline = baseline[0]
        base = torch.as_tensor(0 if baseline is None else baseline)
        return mask & (display != base.expand_as(display))

    def _extract_rules(self, scores: torch.Tensor, targets: torch.Tensor,
                       finite: torch.Tensor) -> dict[int, list[tuple[int, float]]]:
        flat = scores.reshape(len(scores), -1)
        mask = self._token_mask(self.probe[self._explainer.names[0]])
        if mask is not None:  # pool positions by token id, leaving out padding and baseline tokens
            keys = self.probe[self._explainer.names[0]][finite].reshape(len(scores), -1).long()
            mask = mask[finite].reshape(keys.shape)
        else:
            keys = torch.arange(flat.shape[1]).expand_as(flat)
        return class_top_features(keys, flat, targets, k=self.top_k, mask=mask)

    def _region_mass(self, scores: torch.Tensor) -> float:
        """Share of ``|attribution|`` inside ``region``, over input features (tokens, with a layer)."""
        mass = scores.abs().reshape(len(scores), -1)
        region = self.region.expand(scores.shape[1:]).reshape(-1)
        return float((mass[:, region].sum(1) / mass.sum(1).clamp_min(1e-30)).mean())

    def _resolved_kind(self) -> str:
        return self._kind or self.kind

    # --- logging ------------------------------------------------------------------------------------

    def _log_scalars(self, trainer: Trainer, pl_module: LightningModule, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            # Same value on every rank (the attributions are gathered): syncing only keeps Lightning quiet.
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1,
                          batch_size=1)

    def _make_view(self, record: CheckRecord) -> View:
        kind = self._resolved_kind()
        if kind == "text":
            return TextView(self.vocabulary, self.class_names, self.max_images)
        if kind == "tabular":
            return TabularView(self.feature_names, self.class_names, max_examples=min(4, self.max_images))
        return ImageView(self.class_names, self.max_images)

    # --- checkpoint ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": self._settings(),
            "model": self._model_fingerprint,
            "probe": None if self.probe is None else self.probe.state(),
            "probe_labels": self.probe_labels,
            "targets": self.targets,
            "first_scores": self.first_scores,
            "previous_scores": self.previous_scores,
            "scales": self.scales,
            "rules": {int(c): [[int(k), float(v)] for k, v in r] for c, r in self.rules.items()},
            "single_output": self._single_output,
            "checks": self.checks,
            "breach_streak": self.policy.streak,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("settings")
        if saved is not None and saved != self._settings():
            changed = sorted(k for k in set(saved) | set(self._settings()) if saved.get(k) != self._settings().get(k))
            rank_zero_warn(f"IntegratedGradientsMonitor: the checkpoint's monitor had other settings ({changed}); "
                           "its probe, targets and references are not used and are taken anew")
            return
        probe = state_dict.get("probe", state_dict.get("probe_inputs"))
        if probe is not None:
            self.probe = ModelInputs.from_state(probe)
            self.probe_labels = state_dict.get("probe_labels")
        for key in ("targets", "first_scores", "previous_scores", "scales"):
            if state_dict.get(key) is not None:
                setattr(self, key, state_dict[key])
        for key in ("first_scores", "previous_scores"):  # older checkpoints kept scores in the input's shape
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, value.reshape(len(value), -1).float())
        self._single_output = bool(state_dict.get("single_output", False))
        self._model_fingerprint = state_dict.get("model", self._model_fingerprint)
        self.rules = {int(c): [(int(k), float(v)) for k, v in r] for c, r in state_dict.get("rules", {}).items()}
        self.checks = state_dict.get("checks", self.checks)
        self.policy.streak = state_dict.get("breach_streak", self.policy.streak)
        self._explainer = None  # checked again against the model before the next check
