"""Everything that can be checked before training: is there a check at all, the probe's data, the model's outputs.

Called when ``fit`` starts (after Lightning's sanity check, before the first training step) and at the start of
``trainer.validate``, so that a configuration mistake costs seconds, not an epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from ig_lightning.monitor.config import batch_size_of
from ig_lightning.monitor.explainer import per_token, resolve_targets
from ig_lightning.monitor.probe import first_val_dataloader
from ig_lightning.output.views import infer_kind


def will_check(trainer: Trainer, pl_module: LightningModule, every_n_epochs: int) -> bool:
    """Whether this fit's validation ever runs a check; warns when it never does."""
    # No validation loop (no validation_step, or limit_val_batches=0): Lightning never calls the check.
    overridden = type(pl_module).validation_step is not LightningModule.validation_step
    if not overridden or trainer.limit_val_batches == 0:
        rank_zero_warn("IntegratedGradientsMonitor: validation never runs in this fit (no `validation_step` or "
                       "`limit_val_batches=0`), so the monitor never checks")
        return False
    max_epochs, every_val = trainer.max_epochs, trainer.check_val_every_n_epoch
    if max_epochs is not None and max_epochs > 0 and every_val is not None:
        checked = [e for e in range(trainer.current_epoch, max_epochs)
                   if (e + 1) % every_val == 0 and (e + 1) % every_n_epochs == 0]
        if not checked:
            rank_zero_warn(f"IntegratedGradientsMonitor: with max_epochs={max_epochs}, check_val_every_n_epoch="
                           f"{every_val} and every_n_epochs={every_n_epochs} the monitor never checks")
    return True


def request_val_dataloader(trainer: Trainer) -> Any:
    """The first validation dataloader, loading the validation data now if Lightning has not yet.

    With ``check_val_every_n_epoch > 1`` and no sanity check, Lightning loads the validation data only at the
    first validation; it is loaded now, as Lightning itself does at the start of fit.
    """
    val_loop = trainer.fit_loop.epoch_loop.val_loop
    training = trainer.training
    try:
        trainer.validating = True
        val_loop.setup_data()
    finally:
        trainer.training = training
    return first_val_dataloader(trainer.val_dataloaders)


def points_per_forward(trainer: Trainer, override: int | None, probe_size: int) -> int:
    """Path points per forward/backward: ``override``, else the training batch size (validation's under
    ``trainer.validate``), so that a check needs no more memory than a training step."""
    if override is not None:
        return override
    loaders = [getattr(trainer.fit_loop, "_combined_loader", None)] if trainer.state.fn == "fit" else []
    sizes = [batch_size_of(getattr(cl, "iterables", None)) for cl in loaders if cl is not None]
    sizes.append(batch_size_of(trainer.val_dataloaders))
    return next((s for s in sizes if s), probe_size)


def check_outputs(monitor: Any, outputs: torch.Tensor, layer_values: list[torch.Tensor]) -> str:
    """Everything the model's outputs on the probe settle: targets, transform, names, kind, region.

    Args:
        monitor: The :class:`~ig_lightning.IntegratedGradientsMonitor` (its arguments, probe and explainer).
        outputs: The explained outputs on the probe, ``(B,)`` or ``(B, C)``.
        layer_values: With a layer, its floating tensors on the first chunk of the probe.

    Returns:
        The kind of pictures: ``"image"``, ``"text"`` or ``"tabular"``.

    Raises:
        ValueError: a setting that does not fit the model or the data, naming the argument.
    """
    n = len(monitor.probe)
    single = outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)
    if single and monitor.output_transform in ("softmax", "log_softmax"):
        raise ValueError(f"`output_transform`={monitor.output_transform!r} over a model with one output per example "
                         "normalises over nothing (always 1 / 0): use 'sigmoid' or no transform")
    # Targets are fixed at the first check; resolving them now only checks them (labels in range, ...).
    resolve_targets(monitor.target, outputs, None if monitor.target == "prediction" else monitor.probe_labels)
    n_classes = None if single else outputs.shape[1]
    if monitor.class_names is not None and n_classes is not None and len(monitor.class_names) != n_classes:
        raise ValueError(f"`class_names` has {len(monitor.class_names)} names but the model has {n_classes} outputs")
    primary = monitor.probe[monitor._explainer.names[0]]
    shape = tuple(primary.shape[1:])
    if layer_values:
        out = layer_values[0]
        shape = tuple(out.shape[1:-1]) if per_token(out.shape, primary.shape) else tuple(out.shape[1:])
    fake_scores = torch.zeros(min(n, 2), *shape)
    kind = monitor.kind if monitor.kind != "auto" else infer_kind(primary, fake_scores, monitor.layer)
    if kind == "image" and (fake_scores.ndim not in (3, 4) or shape != tuple(primary.shape[1:])):
        if monitor.kind == "image":
            raise ValueError(f"`kind`='image' needs attributions shaped like the input image "
                             f"{tuple(primary.shape[1:])}, got {shape} (at `layer`={monitor.layer!r})")
        kind = "tabular"  # e.g. a vision transformer's patches: one bar per patch
    if kind == "text" and (primary.is_floating_point() or monitor.layer is None):
        raise ValueError("`kind`='text' needs integer token ids attributed at an embedding `layer`")
    features = math.prod(shape)
    if kind == "tabular" and monitor.feature_names is not None and len(monitor.feature_names) != features:
        raise ValueError(f"`feature_names` has {len(monitor.feature_names)} names but the inputs have {features} "
                         "features")
    vocab = monitor.vocabulary
    if kind == "text" and isinstance(vocab, list) and int(primary.max()) >= len(vocab):
        raise ValueError(f"`vocabulary` has {len(vocab)} tokens but the probe holds token id {int(primary.max())}")
    if monitor.drift_metric == "topk_jaccard" and features <= monitor.top_k:
        rank_zero_warn(f"IntegratedGradientsMonitor: drift_metric='topk_jaccard' compares the top_k={monitor.top_k} "
                       f"features of each example, but the probe has {features}: it is always 0 (lower top_k)")
    labels = monitor.probe_labels
    if monitor.target == "auto" and labels is not None and (labels.dtype.is_floating_point or labels.ndim != 1):
        rank_zero_warn(f"IntegratedGradientsMonitor: the probe's labels ({labels.dtype}, shape "
                       f"{tuple(labels.shape)}) are not class indices, so target='auto' explains the prediction; "
                       "if `probe` is a pair of inputs, pass it as ((a, b), None)")
    if monitor.region is not None:
        try:
            monitor.region.expand(shape)
        except RuntimeError:
            raise ValueError(f"`region` of shape {tuple(monitor.region.shape)} does not broadcast to one example's "
                             f"scores {shape}") from None
    return kind
