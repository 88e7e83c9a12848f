"""Everything that can be checked before training: is there a check at all, the probe's data, the model's outputs.

Called when ``fit`` starts (after Lightning's sanity check, before the first training step) and at the start of
``trainer.validate``, so that a configuration mistake costs seconds, not an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from torch import nn

from ig_lightning.functional.baselines import special_token_baseline
from ig_lightning.monitor.baselines import confident_class, make_baselines, make_noise
from ig_lightning.monitor.config import DELTA_FLOOR, SPECIAL_TOKENS, MonitorConfig
from ig_lightning.monitor.explainer import Explainer, layer_map, layer_scores
from ig_lightning.monitor.targets import is_multi_hot, is_one_hot, resolve_targets
from ig_lightning.monitor.probe import LAYER_INPUT_KEYS, Probe, first_val_dataloader, take_probe
from ig_lightning.output.views import infer_kind

#: Warn when more than this share of the probe has ``|F(x) - F(baseline)| < DELTA_FLOOR``.
BASELINE_FLAT_SHARE = 0.25


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


def validate_names_unique(monitor: Any, monitors: list[Any]) -> None:
    """Two monitors of one trainer must differ in ``name``: the same name would mix their metrics (Lightning
    averages two values logged under one key), pictures, rules files and checkpoint state."""
    same = [m for m in monitors if m is not monitor and m.config.name == monitor.config.name]
    if same:
        raise ValueError(f"{len(same) + 1} IntegratedGradientsMonitor callbacks share `name`={monitor.config.name!r}: "
                         "their ig/* metrics, pictures, rules files and checkpoint state would collide; give each "
                         "one a distinct `name` (e.g. name='label_0'), which prefixes its keys as ig/<name>/...")


def find_layer(model: nn.Module, name: str | None) -> nn.Module | None:
    """The submodule ``layer`` names (``None`` without a layer), or a ValueError listing some names."""
    if name is None:
        return None
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:20]
        raise ValueError(f"`layer` {name!r} is not a submodule of the model; some names: {names}") from None


def model_fingerprint(module: nn.Module) -> str:
    """The model's class and parameter shapes: a checkpoint's monitor state belongs to such a model."""
    shapes = ",".join(f"{n}:{tuple(p.shape)}" for n, p in module.named_parameters())
    return f"{type(module).__qualname__}[{shapes}]"


def take_probe_from(trainer: Trainer, config: MonitorConfig) -> Probe:
    """``config.probe_size`` examples of the trainer's first validation dataloader, the same on every rank."""
    loader = first_val_dataloader(trainer.val_dataloaders)
    if loader is None and trainer.state.fn == "fit":
        loader = request_val_dataloader(trainer)
    if loader is None:
        raise ValueError("`probe` is an int but the trainer has no validation dataloader to take it from: pass "
                         "`val_dataloaders` (or a datamodule with `val_dataloader`), or a Tensor probe")
    probe = take_probe(loader, config.probe_size, config.inputs.unpack_batch, config.inputs.probe_selection)
    # Map-style datasets give every rank the same probe; broadcasting also covers iterable ones.
    probe = Probe.from_state(trainer.strategy.broadcast(probe.state(), src=0))
    warn_about_coverage(probe, config.probe_size)
    return probe


def take_rule_set(trainer: Trainer, config: MonitorConfig) -> Probe | None:
    """``rule_extraction.rule_set`` validation examples spread over the classes, the same on every rank; ``None``
    without validation data (the rules are then tested on the probe)."""
    loader = first_val_dataloader(trainer.val_dataloaders)
    if loader is None:
        return None
    rule_set = take_probe(loader, config.rule_extraction.rule_set, config.inputs.unpack_batch, "stratified")
    return Probe.from_state(trainer.strategy.broadcast(rule_set.state(), src=0))


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


def batch_size_of(loader: Any) -> int | None:
    """The batch size of a DataLoader (or the first of several), if it says."""
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) and size > 0 else None


def points_per_forward(trainer: Trainer, override: int | None, probe_size: int) -> int:
    """Path points per forward/backward: ``override``, else half the training batch size (validation's under
    ``trainer.validate``), so that a check needs no more memory than a training step: a forward/backward for input
    gradients at a whole training batch already holds about as much as the training step (its activations, the
    points and their gradients), and the check's buffers come on top (``benchmarks/bench_memory.py``)."""
    if override is not None:
        return override
    loaders = [getattr(trainer.fit_loop, "_combined_loader", None)] if trainer.state.fn == "fit" else []
    sizes = [batch_size_of(getattr(cl, "iterables", None)) for cl in loaders if cl is not None]
    sizes.append(batch_size_of(trainer.val_dataloaders))
    return max(1, next((s for s in sizes if s), probe_size) // 2)


def resolve_baseline(config: MonitorConfig, probe: Probe, trainer: Trainer | None = None) -> Any:
    """``config.baseline`` for the ``probe``: for ``"special_tokens"`` the probe's token ids with their special tokens
    kept and every other token the pad token (one baseline per example); a kind (``"blur"``, ``"uniform"``, ...)
    made by ``ig_lightning.monitor.baselines`` (``"data"`` draws from the validation examples of the rule set, the
    same on every rank, when ``trainer`` is given; else from the probe itself)."""
    if isinstance(config.baseline, str) and config.baseline != SPECIAL_TOKENS:
        names = Explainer.attributed_names(probe.inputs, config.inputs.attribute, config.layer is not None)
        data = None
        if config.baseline == "data" and trainer is not None:
            rule_set = take_rule_set(trainer, config)
            if rule_set is not None and rule_set.inputs.same_layout(probe.inputs) and all(
                    rule_set.inputs[n].shape[1:] == probe.inputs[n].shape[1:] for n in names):
                data = rule_set.inputs
            else:
                rank_zero_info("IntegratedGradientsMonitor: baseline='data' draws from the probe itself (the "
                               "validation examples are not read as the probe's inputs, or are padded to other "
                               "lengths)")
        return make_baselines(config, probe.inputs, names, data)
    if config.baseline != SPECIAL_TOKENS:
        return config.baseline
    preferred = [k for k in LAYER_INPUT_KEYS if k in probe.inputs.kwargs]
    ids = probe.inputs[preferred[0] if preferred else probe.inputs.names[0]]
    return special_token_baseline(ids, config.display.vocabulary)


def resolve_noise(config: MonitorConfig, probe: Probe) -> tuple[torch.Tensor, ...] | None:
    """The noise of ``integration.noise_samples`` copies of every probe example (``ig_lightning.monitor.baselines``)."""
    names = Explainer.attributed_names(probe.inputs, config.inputs.attribute, config.layer is not None)
    return make_noise(config, probe.inputs, names)


def validate(config: MonitorConfig, probe: Probe, explainer: Explainer, model: nn.Module, batch: int) -> str:
    """Run the probe and the baseline through the model once (no gradients) and validate every setting that
    depends on them; warn when the baseline is not neutral for the model.

    Returns:
        The kind of pictures: ``"image"``, ``"text"`` or ``"tabular"``.

    Raises:
        ValueError: a setting that does not fit the model or the data, naming the argument.
    """
    explainer.validate_baseline(probe.inputs)
    outputs, layer_values = explainer.outputs(model, probe.inputs, batch, name_the_probe=True)
    base_outputs = explainer.validate_path(model, probe.inputs, batch, layer_values)
    kind = validate_outputs(config, probe, explainer, outputs, layer_values)
    warn_about_baseline(config, probe, outputs, base_outputs)
    return kind


def validate_outputs(config: MonitorConfig, probe: Probe, explainer: Explainer, outputs: torch.Tensor,
                     layer_values: list[torch.Tensor]) -> str:
    """Everything the model's outputs on the probe settle: targets, transform, names, kind, region.

    Args:
        config: The monitor's settings.
        probe: The probe.
        explainer: Which inputs are attributed.
        outputs: The explained outputs on the probe, ``(B,)`` or ``(B, C)``.
        layer_values: With a layer, its floating tensors on the first chunk of the probe.

    Returns:
        The kind of pictures: ``"image"``, ``"text"`` or ``"tabular"``.

    Raises:
        ValueError: a setting that does not fit the model or the data, naming the argument.
    """
    single = outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)
    if single and config.output_transform in ("softmax", "log_softmax"):
        raise ValueError(f"`output_transform`={config.output_transform!r} over a model with one output per example "
                         "normalises over nothing (always 1 / 0): use 'sigmoid' or no transform")
    # Targets are fixed at the first check; resolving them now only validates them (labels in range, ...).
    resolve_targets(config.target, outputs, None if config.target == "prediction" else probe.labels)
    n_classes = None if single else outputs.shape[1]
    display = config.display
    if display.class_names is not None and n_classes is not None and len(display.class_names) != n_classes:
        raise ValueError(f"`display.class_names` has {len(display.class_names)} names but the model has {n_classes} "
                         "outputs")
    primary = probe.inputs[explainer.names[0]]
    shape = tuple(primary.shape[1:])
    if layer_values:
        shape = tuple(layer_scores(torch.zeros(1, *layer_values[0].shape[1:]), primary.shape).shape[1:])
    kind = decide_kind(display.kind, primary, shape, config.layer)
    if kind == "image" and layer_values and shape != tuple(primary.shape[1:]):
        how = layer_map(layer_values[0].shape, primary.shape)[0]
        rank_zero_info(f"IntegratedGradientsMonitor: `layer` {config.layer!r} gives {tuple(layer_values[0].shape[1:])}"
                       f" per example: drawn as a {shape[0]}x{shape[1]} map ("
                       + ("summed over channels" if how == "spatial" else "one cell per patch token, the class token "
                          "left out") + "), upsampled onto the input image; completeness is over the layer")
    elif kind == "tabular" and config.layer is not None and len(shape) > 1:
        rank_zero_info(f"IntegratedGradientsMonitor: `layer` {config.layer!r} gives {shape} per example, which maps "
                       "onto no input image or token sequence: drawn as bars, one per layer unit")
    features = math.prod(shape)
    if kind == "tabular" and display.feature_names is not None and len(display.feature_names) != features:
        raise ValueError(f"`display.feature_names` has {len(display.feature_names)} names but the inputs have "
                         f"{features} features")
    vocab = display.vocabulary
    if kind == "text" and isinstance(vocab, list) and int(primary.max()) >= len(vocab):
        raise ValueError(f"`display.vocabulary` has {len(vocab)} tokens but the probe holds token id "
                         f"{int(primary.max())}")
    alarm = config.alarm
    if alarm.metric == "topk_jaccard" and features <= alarm.top_k:
        rank_zero_warn(f"IntegratedGradientsMonitor: alarm.metric='topk_jaccard' compares the alarm.top_k="
                       f"{alarm.top_k} features of each example, but the probe has {features}: it is always 0 "
                       "(lower alarm.top_k)")
    labels = probe.labels
    if is_one_hot(labels) and config.target in ("auto", "label"):
        rank_zero_info("IntegratedGradientsMonitor: the probe's labels are one-hot rows (B, C): their argmax is "
                       "the explained class")
    elif is_multi_hot(labels) and config.target == "auto":
        rank_zero_warn("IntegratedGradientsMonitor: the probe's labels look multi-hot (B, C): target='auto' explains "
                       "the prediction; pass target='positive_labels' to explain every positive label")
    elif config.target == "auto" and labels is not None and (labels.dtype.is_floating_point or labels.ndim != 1):
        rank_zero_warn(f"IntegratedGradientsMonitor: the probe's labels ({labels.dtype}, shape "
                       f"{tuple(labels.shape)}) are not class indices, so target='auto' explains the prediction; "
                       "if `probe` is a pair of inputs, pass it as ((a, b), None)")
    if alarm.region is not None:
        try:
            alarm.region.expand(shape)
        except RuntimeError:
            raise ValueError(f"`alarm.region` of shape {tuple(alarm.region.shape)} does not broadcast to one "
                             f"example's scores {shape}") from None
    return kind


def warn_about_coverage(probe: Probe, size: int) -> None:
    """Warn when the data holds fewer examples than asked for, or the probe misses classes of the validation data
    (its rules and per-class drift cannot see them)."""
    if len(probe) < size:
        rank_zero_warn(f"IntegratedGradientsMonitor: `probe`={size} but the validation data has {len(probe)} "
                       f"examples; the probe holds those {len(probe)}")
    missing = probe.missing_classes()
    if missing:
        rank_zero_warn(f"IntegratedGradientsMonitor: the probe ({len(probe)} examples) holds no example of "
                       f"validation classes {missing[:20]}: they get no rules and no drift; raise `probe` (it is "
                       f"{size}) to at least the number of classes ({len(probe.classes)})")


def warn_about_baseline(config: MonitorConfig, probe: Probe, outputs: torch.Tensor, base_outputs: torch.Tensor) -> None:
    """Warn when the baseline is not neutral: predicted as one class with high confidence, or so close to the
    inputs in output that many attributions explain (nearly) nothing."""
    hints = ("try another `baseline` (for images: a blurred or mean image; for text: the pad or mask token id, "
             "or keep the special tokens with baseline='special_tokens')")
    single = outputs.ndim == 1 or outputs.shape[1] == 1
    if not single and config.output_transform is None:
        _, found = confident_class(base_outputs)
        if found is not None:
            top, confidence = found
            rank_zero_warn(f"IntegratedGradientsMonitor: the model predicts the `baseline` as class {top} with "
                           f"confidence {confidence:.2f}: it is not neutral, and "
                           f"attributions then explain the distance from class {top}; {hints}")
    try:
        targets = resolve_targets(config.target, outputs, None if config.target == "prediction" else probe.labels)
    except ValueError:
        return
    pick = (lambda o: o.reshape(len(o), -1)[:, 0]) if targets is None else \
        (lambda o: o.gather(1, targets.view(-1, 1)).flatten())
    delta = (pick(outputs.float()) - pick(base_outputs.float())).abs()
    flat = delta < DELTA_FLOOR
    if bool(flat.float().mean() > BASELINE_FLAT_SHARE):
        rank_zero_warn(f"IntegratedGradientsMonitor: for {int(flat.sum())} of {len(delta)} probe examples the "
                       f"explained output barely differs between the input and the `baseline` (|F(x) - "
                       f"F(baseline)| < {DELTA_FLOOR}): their attributions say nothing; {hints}")


def decide_kind(kind: str, primary: torch.Tensor, shape: tuple[int, ...], layer: str | None) -> str:
    """The one place the kind of pictures is decided: ``kind``, or guessed from the attributed input and the
    shape of one example's scores (a ``(h, w)`` map at a layer over an image input is an image)."""
    fake_scores = torch.zeros(2, *shape)
    image_map = primary.ndim == 4 and primary.is_floating_point() and len(shape) == 2 and \
        layer_map((1, 1, *shape), primary.shape) is not None
    resolved = kind if kind != "auto" else "image" if image_map else infer_kind(primary, fake_scores, layer)
    if resolved == "image" and not image_map and (fake_scores.ndim not in (3, 4) or shape != tuple(primary.shape[1:])):
        if kind == "image":
            raise ValueError(f"`display.kind`='image' needs attributions shaped like the input image "
                             f"{tuple(primary.shape[1:])} or a map over it, got {shape} (at `layer`={layer!r})")
        resolved = "tabular"
    if resolved == "text" and (primary.is_floating_point() or layer is None):
        raise ValueError("`display.kind`='text' needs integer token ids attributed at an embedding `layer`")
    return resolved
