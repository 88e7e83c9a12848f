"""The Lightning callback: Integrated Gradients on a fixed probe batch, every validation epoch."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from ig_lightning._checks import check_int, check_positive_float, check_target
from ig_lightning.drift import DRIFT_METRICS, drift_distances
from ig_lightning.engine import IGResult, integrated_gradients
from ig_lightning.probe import Unpack, default_unpack, first_val_dataloader, take_probe
from ig_lightning.quadrature import check_method, check_n_steps, check_n_steps_or_auto
from ig_lightning.rules import class_top_features, rule_changes
from ig_lightning.safety import eval_mode, preserved_rng
from ig_lightning.views import (
    VIEW_KINDS,
    CheckRecord,
    ImageView,
    Names,
    TabularView,
    TextView,
    View,
    infer_kind,
    log_common,
)

__all__ = ["AttributionDriftError", "IntegratedGradientsMonitor"]

TARGETS = ("auto", "label", "prediction")
OUTPUT_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda out: out.softmax(-1),
    "log_softmax": lambda out: out.log_softmax(-1),
    "sigmoid": torch.sigmoid,
}
REFERENCES = ("previous", "first")
ON_BREACH = ("warn", "stop", "raise")
DELTA_FLOOR = 1e-3


class AttributionDriftError(RuntimeError):
    """Attributions breached a threshold of :class:`IntegratedGradientsMonitor` with ``on_breach="raise"``."""


class _Transformed(nn.Module):
    """``transform(module(x))`` as a module, so the engine still sees (and freezes) the parameters."""

    def __init__(self, module: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.module, self.transform = module, transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.module(x))


def _check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` can be {set(choices)}, got {value!r}")
    return value


def _check_optional_threshold(value: Any, name: str) -> float | None:
    return None if value is None else check_positive_float(value, name, allow_zero=True)


class IntegratedGradientsMonitor(Callback):
    r"""Integrated Gradients on a fixed probe batch at every validation epoch, logged and watched.

    Each check attributes the model's output on the probe (taken once and kept fixed), logs the
    completeness error and the drift of attributions from a reference check as scalars (usable by
    ``EarlyStopping``/``ModelCheckpoint``: ``ig/drift`` exists from the second check on, so watch it with
    ``EarlyStopping(..., strict=False)``; ``ig/completeness_error`` exists at every check), draws
    attribution pictures and per-class rules to
    TensorBoard, and can warn, stop or fail the run when a threshold is breached. Training itself is
    untouched: no parameter ``.grad``, buffer, module mode or global random stream is changed.

    Args:
        probe: An int ``N`` (the first ``N`` examples of the first validation dataset), a Tensor of
            inputs, or an ``(inputs, labels)`` pair.
        target: Which output to explain: ``"auto"`` (the label when the probe has labels, else the
            prediction), ``"label"``, ``"prediction"`` (the predicted class at the first check, then
            fixed), an int, or a callable ``(outputs, labels) -> LongTensor (B,)`` evaluated at the first
            check. Ignored for models with one output per example.
        baseline: ``None`` (zeros; token id 0 with ``layer``), a number, or a Tensor broadcastable to the inputs.
        n_steps: Quadrature points, or ``"auto"`` (refine until the completeness error is within ``tolerance``).
        method: The quadrature rule (captum's names; see :func:`ig_lightning.integrated_gradients`).
        internal_batch_size: Most points per forward/backward (memory cap); ``None`` = all at once.
        tolerance: Relative completeness target with ``n_steps="auto"``.
        max_steps: The most points per example with ``n_steps="auto"``.
        layer: Name of a submodule (as in ``named_modules()``, e.g. ``"embedding"``) to attribute at its output.
        output_transform: Explain ``"softmax"``, ``"log_softmax"`` or ``"sigmoid"`` of the outputs, or a
            callable's result, instead of the raw outputs.
        unpack: A callable mapping a batch to ``(inputs, labels or None)``, for batches that are not
            ``x``, ``(x, y)`` or dicts with ``"x"``/``"y"``-like keys.
        every_n_epochs: Check every ``n`` epochs.
        drift_metric: ``"cosine"`` (1 - cosine similarity), ``"spearman"`` (1 - rank correlation) or
            ``"topk_jaccard"`` (1 - overlap of the ``top_k`` largest ``|attributions|``), averaged over the probe.
        drift_reference: Compare with the ``"previous"`` check or the ``"first"`` one.
        drift_threshold: Breach when the drift exceeds it (``None`` = never).
        completeness_threshold: Breach when the worst relative completeness error exceeds it.
        region: A boolean mask over one example's features (broadcastable to ``inputs.shape[1:]``):
            logs ``ig/region_mass``, the share of absolute attribution that falls inside it.
        region_threshold: Breach when ``ig/region_mass`` exceeds it (e.g. a model reading a watermark).
        warmup: Number of first checks whose breaches are ignored (early churn); NaN/inf always breach.
        patience: Consecutive breaching checks before acting.
        on_breach: ``"warn"``, ``"stop"`` (end ``fit`` gracefully) or ``"raise"`` (:class:`AttributionDriftError`).
        top_k: Features per class in the extracted rules, and ``k`` of ``topk_jaccard``.
        autocast: Run IG under the trainer's mixed-precision autocast (faster, less exact: the
            completeness error shows the price). Default: float32.
        kind: Pictures for ``"image"``, ``"text"`` or ``"tabular"`` inputs; ``"auto"`` guesses from shapes.
        vocabulary: Token names for text: a list indexed by id, or a callable ``id -> str``.
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
        probe: int | torch.Tensor | tuple[torch.Tensor, torch.Tensor] = 16,
        *,
        target: Literal["auto", "label", "prediction"] | int | Callable[[torch.Tensor, Any], torch.Tensor] = "auto",
        baseline: float | torch.Tensor | list | None = None,
        n_steps: int | Literal["auto"] = 32,
        method: Literal[
            "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
        ] = "gausslegendre",
        internal_batch_size: int | None = None,
        tolerance: float = 0.01,
        max_steps: int = 256,
        layer: str | None = None,
        output_transform: Literal["softmax", "log_softmax", "sigmoid"] | Callable[[torch.Tensor], torch.Tensor]
        | None = None,
        unpack: Unpack | None = None,
        every_n_epochs: int = 1,
        drift_metric: Literal["cosine", "spearman", "topk_jaccard"] = "cosine",
        drift_reference: Literal["previous", "first"] = "previous",
        drift_threshold: float | None = None,
        completeness_threshold: float | None = None,
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
        self.probe_inputs, self.probe_labels = self._check_probe(probe)
        self.probe_size = probe if isinstance(probe, int) else self.probe_inputs.shape[0]
        if isinstance(target, str):
            _check_choice(target, "target", TARGETS)
        elif not callable(target):
            check_int(target, "target", minimum=0)
        self.target = target
        if isinstance(baseline, list):  # from a config file
            baseline = torch.tensor(baseline)
        if baseline is not None and not isinstance(baseline, (int, float, torch.Tensor)) or isinstance(baseline, bool):
            raise TypeError(f"`baseline` must be None, a number or a Tensor, got {type(baseline).__name__}")
        self.baseline = baseline
        self.method = check_method(method)
        self.n_steps = check_n_steps_or_auto(n_steps, self.method)
        self.internal_batch_size = (
            None if internal_batch_size is None else check_int(internal_batch_size, "internal_batch_size", minimum=1)
        )
        self.tolerance = check_positive_float(tolerance, "tolerance")
        self.max_steps = check_n_steps(max_steps, self.method, name="max_steps")
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"`layer` must be a submodule name such as 'embedding', got {type(layer).__name__}")
        self.layer = layer
        if isinstance(output_transform, str):
            _check_choice(output_transform, "output_transform", tuple(OUTPUT_TRANSFORMS))
        elif output_transform is not None and not callable(output_transform):
            raise TypeError(f"`output_transform` must be a name or a callable, got {type(output_transform).__name__}")
        self.output_transform = output_transform
        if unpack is not None and not callable(unpack):
            raise TypeError(f"`unpack` must be callable, got {type(unpack).__name__}")
        self.unpack = unpack or default_unpack
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.drift_metric = _check_choice(drift_metric, "drift_metric", DRIFT_METRICS)
        self.drift_reference = _check_choice(drift_reference, "drift_reference", REFERENCES)
        self.drift_threshold = _check_optional_threshold(drift_threshold, "drift_threshold")
        self.completeness_threshold = _check_optional_threshold(completeness_threshold, "completeness_threshold")
        if isinstance(region, list):  # from a config file: nested lists of booleans
            region = torch.tensor(region)
        if region is not None and (not isinstance(region, torch.Tensor) or region.dtype != torch.bool):
            raise TypeError(f"`region` must be a bool Tensor mask over one example's features, got {region!r}")
        self.region = region
        self.region_threshold = _check_optional_threshold(region_threshold, "region_threshold")
        if self.region_threshold is not None and region is None:
            raise ValueError("`region_threshold` needs a `region` mask")
        self.warmup = check_int(warmup, "warmup", minimum=0)
        self.patience = check_int(patience, "patience", minimum=1)
        self.on_breach = _check_choice(on_breach, "on_breach", ON_BREACH)
        self.top_k = check_int(top_k, "top_k", minimum=1)
        if not isinstance(autocast, bool):
            raise TypeError(f"`autocast` must be a bool, got {autocast!r}")
        self.autocast = autocast
        self.kind = _check_choice(kind, "kind", VIEW_KINDS)
        self.vocabulary, self.feature_names, self.class_names = vocabulary, feature_names, class_names
        self.max_images = check_int(max_images, "max_images", minimum=1)
        self.log_images = bool(log_images)
        self.color_headroom = check_positive_float(color_headroom, "color_headroom")

        # Progress (in the checkpoint): the probe, its targets, references and counters.
        self.targets: torch.Tensor | None = None
        self.first_scores: torch.Tensor | None = None
        self.previous_scores: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None
        self.rules: dict[int, list[tuple[int, float]]] = {}
        self.checks = 0
        self.breach_streak = 0
        # Per run, not saved.
        self.last_result: IGResult | None = None
        self.last_metrics: dict[str, float] = {}
        self.rules_history: list[dict[str, Any]] = []
        self._tensorboard: TensorBoardLogger | None = None
        self._layer_module: nn.Module | None = None
        self._view: View | None = None
        self._single_output = False

    # --- configuration ------------------------------------------------------------------------------

    @staticmethod
    def _check_probe(probe: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if isinstance(probe, bool):
            raise TypeError(f"`probe` must be an int, a Tensor or an (inputs, labels) pair, got {probe!r}")
        if isinstance(probe, int):
            check_int(probe, "probe", minimum=1)
            return None, None
        if isinstance(probe, torch.Tensor):
            inputs, labels = probe, None
        elif isinstance(probe, (tuple, list)) and len(probe) == 2 and isinstance(probe[0], torch.Tensor):
            inputs, labels = probe
            if labels is not None and (not isinstance(labels, torch.Tensor) or len(labels) != len(inputs)):
                raise ValueError(f"`probe` labels must be a Tensor with one label per input ({len(inputs)})")
        else:
            raise TypeError(f"`probe` must be an int, a Tensor or an (inputs, labels) pair, got {type(probe).__name__}")
        if inputs.ndim < 1 or inputs.shape[0] == 0:
            raise ValueError(f"`probe` must hold at least one example, got shape {tuple(inputs.shape)}")
        return inputs.detach().cpu().clone(), None if labels is None else labels.detach().cpu().clone()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            method=self.method, n_steps=self.n_steps, layer=self.layer, drift_metric=self.drift_metric,
            target=self.target if isinstance(self.target, (str, int)) else "callable",
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.layer is not None:
            try:
                self._layer_module = pl_module.get_submodule(self.layer)
            except AttributeError:
                names = [n for n, _ in pl_module.named_modules() if n][:20]
                raise ValueError(f"`layer` {self.layer!r} is not a submodule of the model; some names: {names}")
        self._tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if self._tensorboard is None and self.log_images:
            rank_zero_info(
                "IntegratedGradientsMonitor: no TensorBoardLogger in the trainer, so only scalars are logged "
                "(add `logger=TensorBoardLogger(...)` for attribution pictures)"
            )

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
        with preserved_rng(pl_module.device):
            record, breaches = self._run_check(trainer, pl_module)
        self._log_pictures(trainer, record)
        self._act_on_breaches(trainer, breaches)

    # --- the check ---------------------------------------------------------------------------------

    def _run_check(self, trainer: Trainer, pl_module: LightningModule) -> tuple[CheckRecord, list[str]]:
        self._ensure_probe(trainer, pl_module)
        result = self._attribute(trainer, pl_module)
        scores = self._feature_scores(result.attributions)
        finite = bool(torch.isfinite(scores).all())
        relative = result.relative_error(DELTA_FLOOR)
        metrics = self._measure(result, relative, scores, finite)
        self._log_scalars(trainer, pl_module, metrics)
        if self.scales is None:  # fixed per-example colour scale, with room for attributions to grow
            self.scales = self.color_headroom * scores.reshape(len(scores), -1).abs().amax(1).clamp_min(1e-12)
        if self.first_scores is None:
            self.first_scores = scores
        self.previous_scores = scores
        changes = self._update_rules(trainer, scores, finite)
        self.checks += 1
        self.last_result, self.last_metrics = result, metrics
        record = CheckRecord(trainer.global_step, trainer.current_epoch, self.probe_inputs, self.targets, scores,
                             self.scales, relative, self.rules, changes)
        return record, self._breaches(trainer, metrics, finite)

    def _measure(
        self, result: IGResult, relative: torch.Tensor, scores: torch.Tensor, finite: bool
    ) -> dict[str, float]:
        """The check's scalars: completeness, drift against the reference (from the second check on), region."""
        metrics = {
            "ig/completeness_error": float(relative.mean()),
            "ig/completeness_error_max": float(relative.max()),
            "ig/delta_mean": float(result.delta.mean()),
        }
        if self.n_steps == "auto":
            metrics["ig/n_steps_mean"] = float(result.n_steps.double().mean())
        reference = self.previous_scores if self.drift_reference == "previous" else self.first_scores
        if reference is not None and finite:
            distances = drift_distances(scores, reference, k=self.top_k)
            metrics.update({f"ig/drift_{name}": float(d.mean()) for name, d in distances.items()})
            metrics["ig/drift"] = metrics[f"ig/drift_{self.drift_metric}"]
        if self.region is not None:
            metrics["ig/region_mass"] = self._region_mass(scores)
        return metrics

    def _update_rules(
        self, trainer: Trainer, scores: torch.Tensor, finite: bool
    ) -> dict[int, dict[str, list[int]]] | None:
        """Extract this check's rules and return what entered/left each class's top-k since the last one."""
        previous = self.rules or None
        if self.targets is not None and finite:
            self.rules = self._extract_rules(scores)
        changes = rule_changes(previous, self.rules) if self.rules else None
        self.rules_history.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                   "rules": self.rules, "changes": changes})
        return changes

    def _ensure_probe(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take the probe (once) and fix the targets (once), identically on every process."""
        if self.probe_inputs is None:
            loader = first_val_dataloader(trainer.val_dataloaders)
            if loader is None:
                raise ValueError("`probe` is an int but the trainer has no validation dataloader to take it from")
            inputs, labels = take_probe(loader, self.probe_size, self.unpack)
            # Map-style datasets give every rank the same probe; broadcasting also covers iterable ones.
            self.probe_inputs, self.probe_labels = trainer.strategy.broadcast((inputs, labels), src=0)
        if self.targets is None and not self._single_output:
            targets = self._resolve_targets(pl_module)
            self.targets = trainer.strategy.broadcast(targets, src=0)
            self._single_output = self.targets is None

    def _forward_func(self, pl_module: LightningModule) -> nn.Module:
        transform = self.output_transform
        if transform is None:
            return pl_module
        return _Transformed(pl_module, OUTPUT_TRANSFORMS[transform] if isinstance(transform, str) else transform)

    @staticmethod
    def _on_model(pl_module: LightningModule, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` on the model's device, floating inputs in its parameters' dtype (e.g. bf16-true)."""
        inputs = inputs.to(pl_module.device)
        params = [p for p in pl_module.parameters() if p.is_floating_point()]
        return inputs.to(params[0].dtype) if inputs.is_floating_point() and params else inputs

    def _resolve_targets(self, pl_module: LightningModule) -> torch.Tensor | None:
        inputs = self._on_model(pl_module, self.probe_inputs)
        forward = self._forward_func(pl_module)
        step = self.internal_batch_size or len(inputs)
        with torch.no_grad(), eval_mode(pl_module):
            outputs = torch.cat([forward(inputs[i:i + step]).detach().cpu() for i in range(0, len(inputs), step)])
        n = len(inputs)
        if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
            return None  # one output per example: nothing to choose
        target, labels = self.target, self.probe_labels
        if target == "auto":
            target = "label" if labels is not None and not labels.dtype.is_floating_point else "prediction"
        if target == "label":
            if labels is None or labels.dtype.is_floating_point or labels.shape != (n,):
                raise ValueError(
                    "`target`='label' needs integer class labels of shape (B,) in the probe; got "
                    f"{None if labels is None else (labels.dtype, tuple(labels.shape))}: use target='prediction' "
                    "or pass `unpack=`"
                )
            return labels.long()
        if target == "prediction":
            return outputs.argmax(-1)
        if callable(target):
            return check_target(target(outputs, labels), n)
        return check_target(target, n)

    def _attribute(self, trainer: Trainer, pl_module: LightningModule) -> IGResult:
        """IG on this process's shard of the probe, gathered from every process in probe order, on CPU."""
        world, rank = trainer.world_size, trainer.global_rank
        n = self.probe_inputs.shape[0]
        per_rank = math.ceil(n / world)
        # Every rank computes the same number of examples (repeating its last one as padding) so that
        # all_gather sees equal shapes; the padding is dropped after the gather.
        idx = torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp_max(n - 1)
        device = pl_module.device
        inputs = self._on_model(pl_module, self.probe_inputs[idx])
        target = None if self.targets is None else self.targets[idx].to(device)
        precision = trainer.precision_plugin.forward_context() if self.autocast else \
            torch.autocast(device.type, enabled=False)
        with eval_mode(pl_module), precision:
            result = integrated_gradients(
                self._forward_func(pl_module), inputs, target=target, baselines=self._baseline(device),
                n_steps=self.n_steps, method=self.method, internal_batch_size=self.internal_batch_size,
                tolerance=self.tolerance, layer=self._layer_module, max_steps=self.max_steps,
                delta_floor=DELTA_FLOOR,
            )
        if world > 1:
            result = IGResult(*(self._gather(trainer, t, n) for t in (
                result.attributions, result.delta, result.completeness_error, result.n_steps, result.n_evaluations)))
        return result.to("cpu")

    @staticmethod
    def _gather(trainer: Trainer, t: torch.Tensor, n: int) -> torch.Tensor:
        gathered = trainer.strategy.all_gather(t)  # (world, per_rank, ...), ranks in order
        return gathered.reshape(-1, *t.shape[1:])[:n]

    def _baseline(self, device: torch.device) -> float | torch.Tensor | None:
        if isinstance(self.baseline, torch.Tensor):
            return self.baseline.to(device)
        return self.baseline

    def _feature_scores(self, attributions: torch.Tensor) -> torch.Tensor:
        """One score per input feature: attributions at an embedding are summed over its last dimension."""
        if self._layer_module is not None and attributions.ndim == self.probe_inputs.ndim + 1:
            return attributions.sum(-1)
        return attributions

    def _region_mass(self, scores: torch.Tensor) -> float:
        """Share of ``|attribution|`` inside ``region``, over input features (tokens, with a layer)."""
        mass = scores.abs().reshape(len(scores), -1)
        try:
            region = self.region.expand(scores.shape[1:]).reshape(-1)
        except RuntimeError:
            raise ValueError(
                f"`region` of shape {tuple(self.region.shape)} does not broadcast to one example's features "
                f"{tuple(scores.shape[1:])}"
            ) from None
        return float((mass[:, region].sum(1) / mass.sum(1).clamp_min(1e-30)).mean())

    def _extract_rules(self, scores: torch.Tensor) -> dict[int, list[tuple[int, float]]]:
        flat = scores.reshape(len(scores), -1)
        if self._resolved_kind(scores) == "text":  # pool positions by token id, leaving out baseline tokens
            keys = self.probe_inputs.reshape(len(scores), -1).long()
            base = torch.as_tensor(0 if self.baseline is None else self.baseline).cpu()
            mask = keys != base.expand_as(self.probe_inputs).reshape(keys.shape)
        else:
            keys = torch.arange(flat.shape[1]).expand_as(flat)
            mask = None
        return class_top_features(keys, flat, self.targets, k=self.top_k, mask=mask)

    def _resolved_kind(self, scores: torch.Tensor) -> str:
        if self.kind != "auto":
            return self.kind
        return infer_kind(self.probe_inputs, scores, self.layer)

    # --- logging ------------------------------------------------------------------------------------

    def _log_scalars(self, trainer: Trainer, pl_module: LightningModule, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            # Same value on every rank (the attributions are gathered): syncing only keeps Lightning quiet.
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1,
                          batch_size=1)

    def _make_view(self, scores: torch.Tensor) -> View:
        kind = self._resolved_kind(scores)
        if kind == "text":
            return TextView(self.vocabulary, self.class_names, self.max_images)
        if kind == "tabular":
            return TabularView(self.feature_names, self.class_names, max_examples=min(4, self.max_images))
        return ImageView(self.class_names, self.max_images)

    def _log_pictures(self, trainer: Trainer, record: CheckRecord) -> None:
        if not trainer.is_global_zero or self._tensorboard is None:
            return
        self._write_rules_file(record)
        if not self.log_images:
            return
        writer = self._tensorboard.experiment
        log_common(writer, record)
        if self._view is None:
            self._view = self._make_view(record.scores)
        self._view.log(writer, record)

    def _write_rules_file(self, record: CheckRecord) -> None:
        """Rules as data a program can read back: one JSON line per check in the logger's directory."""
        if not record.rules:
            return
        os.makedirs(self._tensorboard.log_dir, exist_ok=True)
        line = {"epoch": record.epoch, "step": record.step,
                "rules": {str(c): v for c, v in record.rules.items()},
                "changes": {str(c): v for c, v in (record.changes or {}).items()}}
        with open(os.path.join(self._tensorboard.log_dir, "ig_rules.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")

    # --- thresholds ---------------------------------------------------------------------------------

    def _breaches(self, trainer: Trainer, metrics: dict[str, float], finite: bool) -> list[str]:
        epoch = trainer.current_epoch
        found = [] if finite else [f"attributions are NaN or infinite at epoch {epoch}"]
        in_warmup = self.checks <= self.warmup  # self.checks already counts this check
        limits = [
            ("ig/drift", self.drift_threshold, f"{self.drift_metric} vs {self.drift_reference} check"),
            ("ig/completeness_error_max", self.completeness_threshold, "worst relative completeness error"),
            ("ig/region_mass", self.region_threshold, "share of |attribution| inside `region`"),
        ]
        names = {"ig/drift": "drift_threshold", "ig/completeness_error_max": "completeness_threshold",
                 "ig/region_mass": "region_threshold"}
        for key, limit, what in limits:
            value = metrics.get(key)
            if not in_warmup and limit is not None and value is not None and value > limit:
                found.append(f"{key} ({what}) = {value:.4g} > {names[key]}={limit:g} at epoch {epoch}")
        return found

    def _act_on_breaches(self, trainer: Trainer, breaches: list[str]) -> None:
        self.breach_streak = self.breach_streak + 1 if breaches else 0
        should_act = self.breach_streak >= self.patience
        # Every rank sees the same gathered attributions, but decide globally anyway: nobody acts alone.
        should_act = trainer.strategy.reduce_boolean_decision(should_act, all=False)
        if not should_act:
            return
        message = "IntegratedGradientsMonitor: " + "; ".join(breaches or ["a threshold was breached on another rank"])
        if self.patience > 1:
            message += f" ({self.breach_streak} checks in a row)"
        if self.on_breach == "raise":
            raise AttributionDriftError(message)
        if self.on_breach == "stop":
            trainer.should_stop = True
            message += ": stopping the run"
        rank_zero_warn(message)

    # --- checkpoint ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "probe_inputs": self.probe_inputs,
            "probe_labels": self.probe_labels,
            "targets": self.targets,
            "first_scores": self.first_scores,
            "previous_scores": self.previous_scores,
            "scales": self.scales,
            "rules": {int(c): [[int(k), float(v)] for k, v in r] for c, r in self.rules.items()},
            "single_output": self._single_output,
            "checks": self.checks,
            "breach_streak": self.breach_streak,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("probe_inputs", "probe_labels", "targets", "first_scores", "previous_scores", "scales"):
            if state_dict.get(key) is not None:
                setattr(self, key, state_dict[key])
        self._single_output = bool(state_dict.get("single_output", False))
        self.rules = {int(c): [(int(k), float(v)) for k, v in r] for c, r in state_dict.get("rules", {}).items()}
        self.checks = state_dict.get("checks", self.checks)
        self.breach_streak = state_dict.get("breach_streak", self.breach_streak)
