"""Can the maps be trusted? Three stages of a check (``docs/trust.md``):

- ``BaselineWatch``: how far the model's output at the baseline is from neutral, at every check (a baseline the
  model comes to predict confidently makes every attribution "the distance from that class");
- ``Curves``: deletion and insertion curves over the probe, their areas and the Symmetric Relevance Gain;
- ``Sanity``: the randomisation sanity check, the maps of the model with its layers re-initialised from the top down
  against the trained model's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ig_lightning.monitor._isolation import eval_mode
from ig_lightning.monitor.baselines import confident_class
from ig_lightning.monitor.config import MetricNames, MonitorConfig
from ig_lightning.monitor.stages import Check, Stage


class BaselineWatch(Stage):
    """The model's top-class probability at the (first) baseline, ``ig/baseline_confidence``, at every check; a
    warning (once per run) when most of the probe's baselines are predicted as one class with high confidence.

    Logged for classifiers explained on their raw outputs (no ``output_transform``), and not for ``baseline="data"``
    or ``"gaussian"``, whose draws are real examples or lie around each example: the model should recognise them."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.names, self.baseline = names, config.baseline
        self.on = config.output_transform is None and not (isinstance(config.baseline, str) and
                                                           config.baseline in ("data", "gaussian"))
        self.warned = False

    def update(self, check: Check) -> None:
        if not self.on or check.targets is None:
            return
        explainer, inputs = check.explainer, check.probe.inputs
        attributed, _ = explainer.split(inputs)
        from ig_lightning.functional._inputs import make_baselines

        bases = make_baselines(explainer.baselines_for(torch.device("cpu"), torch.arange(len(inputs))), attributed)
        outputs, _ = explainer.outputs(check.model, inputs.replace(dict(zip(explainer.names, bases))), check.batch)
        if outputs.ndim != 2 or outputs.shape[1] < 2:
            return
        confidence, found = confident_class(outputs)
        check.metrics[self.names["baseline_confidence"]] = float(confidence.mean())
        if not self.warned and found is not None:
            resolved = explainer.baselines if len(explainer.baselines) > 1 else explainer.baseline
            self.warned = True
            top, mean = found
            rank_zero_warn(f"IntegratedGradientsMonitor: at epoch {check.epoch} the model predicts the `baseline` "
                           f"({_describe(self.baseline, resolved)}) as class {top} with confidence "
                           f"{mean:.2f}: it is no longer neutral, and the attributions "
                           f"explain the distance from class {top}; try another `baseline` (images: 'blur', "
                           "'uniform' or several averaged such as [0.0, 1.0]; text: another token id or "
                           "'special_tokens'); `ig/baseline_confidence` follows it")


class Curves(Stage):
    """Deletion and insertion curves over the probe (``ig_lightning.functional.curves``): each example's units
    removed most relevant first (``ig/deletion_auc``) and inserted most relevant first (``ig/insertion_auc``, the
    same inputs as least-relevant-first deletion read backwards), and the Symmetric Relevance Gain (``ig/srg``).
    Forward passes only: ``3 * faithfulness.curve_points - 1`` of the probe's rows."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.names, self.settings, self.sigma = names, config.faithfulness, config.integration.baseline_sigma

    def prepare(self, trainer: Any, model: Any, probe: Any, explainer: Any, kind: str, batch: int,
                layer: Any) -> None:
        fill = self.settings.fill
        primary = probe.inputs[explainer.names[0]]
        if fill != "baseline" and (kind != "image" or not primary.is_floating_point() or primary.ndim not in (3, 4)):
            raise ValueError(f"`faithfulness.fill`={fill!r} fills pixels of images, but the attributed input is "
                             f"{tuple(primary.shape)} {primary.dtype} ({kind}): use fill='baseline'")

    def update(self, check: Check) -> None:
        from ig_lightning.functional._inputs import make_baselines
        from ig_lightning.functional.curves import faithfulness_curves
        from ig_lightning.monitor.explainer import on_model
        from ig_lightning.monitor.faithfulness import removal_units

        explainer, inputs, model = check.explainer, check.probe.inputs, check.model
        primary = inputs[explainer.names[0]]
        found = removal_units(check.scores, primary)
        if found is None:
            return
        flat, units, _ = found
        eligible = None if check.mask is None or units is not None else check.mask.reshape(flat.shape)
        fill, parts = self.settings.fill, []
        group = 2 * check.batch  # rows per forward (one point of each example): a training batch, no gradients
        for start in range(0, len(inputs), group):
            idx = torch.arange(start, min(start + group, len(inputs)))
            rows = inputs.map(lambda t: on_model(model, t[idx]))
            attributed, others = explainer.split(rows)
            forward = explainer.forward(model, rows)
            base = make_baselines(explainer.baselines_for(attributed[0].device, idx), attributed)[0]
            x = attributed[0]
            blur = self.sigma * max(x.shape[-2:]) if fill == "blur" else None
            with eval_mode(model):
                parts.append(faithfulness_curves(
                    lambda v: forward(v, *attributed[1:], *others), x, flat[idx].to(x.device),  # noqa: B023
                    target=None if check.targets is None else check.targets[idx].to(x.device), fill=fill,
                    baseline=base if fill == "baseline" else None, points=self.settings.curve_points,
                    units=None if units is None else units.to(x.device),
                    eligible=None if eligible is None else eligible[idx].to(x.device), blur_sigma=blur))
        joined = {f: torch.cat([getattr(p, f).double().cpu() for p in parts])
                  for f in ("morf_output", "lerf_output", "insertion_output", "output", "fill_output")}
        metrics = probe_areas(joined, check.ok)
        check.metrics.update({self.names[k]: v for k, v in metrics.items()})


def probe_areas(curves: dict[str, torch.Tensor], ok: torch.Tensor) -> dict[str, float]:
    """The probe's areas under its curves: the mean over its (finite) examples of ``F(x_t) - F(fill)``, over the
    mean of ``F(x) - F(fill)`` (1: the whole prediction kept all along; 0: none of it), integrated by the trapezoid
    rule over the share of units removed (inserted). A ratio of means, so that an example whose output barely
    differs from its fill's cannot blow the mean up. ``srg`` is the area of least-relevant-first deletion minus
    ``deletion_auc``; with one fill, least-relevant-first deletion passes through the inputs of most-relevant-first
    insertion read backwards, so its area is ``insertion_auc`` (logged once).

    Example::

        >>> import torch
        >>> one = lambda *rows: torch.tensor(rows, dtype=torch.float64)
        >>> c = {"morf_output": one([2.0, 0.0, 0.0]), "lerf_output": one([2.0, 2.0, 0.0]),
        ...      "insertion_output": one([0.0, 2.0, 2.0]), "output": one(2.0), "fill_output": one(0.0)}
        >>> probe_areas(c, torch.tensor([True]))
        {'deletion_auc': 0.25, 'insertion_auc': 0.75, 'srg': 0.5}
    """
    keep = ok.clone()
    for t in curves.values():
        keep &= torch.isfinite(t.reshape(len(t), -1)).all(1)
    if not bool(keep.any()):
        return {}
    fill = curves["fill_output"][keep].unsqueeze(1)
    scale = float((curves["output"][keep] - curves["fill_output"][keep]).mean())
    if abs(scale) < 1e-12:
        return {}
    areas = {}
    for name, key in (("deletion_auc", "morf_output"), ("lerf_auc", "lerf_output"),
                      ("insertion_auc", "insertion_output")):
        mean = (curves[key][keep] - fill).mean(0) / scale
        areas[name] = float(((mean[1:] + mean[:-1]) / 2).mean())
    areas["srg"] = areas.pop("lerf_auc") - areas["deletion_auc"]
    return areas


#: The most points per example of a randomised model's path (``n_steps="auto"``): a rank correlation needs
#: no more.
SANITY_MAX_STEPS = 64


class Sanity(Stage):
    """The randomisation sanity check (Adebayo et al., NeurIPS 2018), at the first check and every
    ``faithfulness.sanity_every_n_checks``: the probe is attributed on the model with its layers re-initialised from
    the top down (``ig_lightning.functional.sanity``: in place, one layer's copy at a time on the CPU, restored
    bit-exactly, BatchNorm statistics never touched) at ``faithfulness.sanity_steps`` points of the cascade, and
    each map is compared with the trained model's by Spearman rank correlation over the units that differ from the
    baseline (``ig/sanity_spearman``, ``ig/sanity_spearman_signed``, ``ig/sanity_cascade/<layers randomised>``)."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.names, self.config = names, config
        self.settings = config.faithfulness
        self.layers: list[tuple[str, Any]] = []
        self.warned, self.skip = False, None

    def prepare(self, trainer: Any, model: Any, probe: Any, explainer: Any, kind: str, batch: int,
                layer: Any) -> None:
        from ig_lightning.functional.sanity import randomizable_layers
        from ig_lightning.monitor.explainer import on_model

        strategy = type(trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy:
            self.skip = f"its parameters are sharded ({strategy})"
        first = probe.inputs.map(lambda t: on_model(model, t[:1]))
        attributed, others = explainer.split(first)
        forward = explainer.forward(model, first)
        with eval_mode(model):
            self.layers = randomizable_layers(model, order_by=lambda: forward(*attributed, *others))
        if not self.layers:
            self.skip = "it has no layer with `reset_parameters()` outside normalisation layers"
        if self.skip:
            rank_zero_warn(f"IntegratedGradientsMonitor: the randomisation sanity check is off for this model: "
                           f"{self.skip}")

    def update(self, check: Check) -> None:
        every = self.settings.sanity_every_n_checks
        if not every or check.index % every or self.skip or not self.layers:
            return
        from ig_lightning.functional.sanity import cascade, cascade_points, mean_similarity, rank_correlation

        mask = self._mask(check)
        config, explainer, model = self.config, check.explainer, check.model
        integration = config.integration

        def attribute() -> torch.Tensor:
            notes = len(explainer.notes)
            with eval_mode(model), torch.autocast(model.device.type, enabled=False):
                result = explainer.attribute(
                    check.trainer, model, check.probe.inputs, check.targets, None, n_steps=config.n_steps,
                    method=integration.method, internal_batch_size=check.batch,
                    tolerance=self.settings.sanity_tolerance, max_steps=min(integration.max_steps, SANITY_MAX_STEPS),
                    delta_floor=1e-3)
            del explainer.notes[notes:]  # a randomised model's paths are not the user's: no convergence notes
            return explainer.scores(result, check.probe.inputs)[0]

        points = cascade_points(len(self.layers), self.settings.sanity_steps)
        trained = check.scores[check.ok]
        ok_mask = None if mask is None else mask[check.ok]
        found = cascade(model, self.layers, attribute, points=points, seed=integration.seed)
        metrics = {}
        for k, _, scores in found:
            metrics[self.names[f"sanity_cascade/{k}"]] = mean_similarity(
                rank_correlation(trained, scores[check.ok], ok_mask, absolute=True))
        final = found[-1][2][check.ok]
        metrics[self.names["sanity_spearman"]] = value = metrics[self.names[f"sanity_cascade/{found[-1][0]}"]]
        metrics[self.names["sanity_spearman_signed"]] = mean_similarity(
            rank_correlation(trained, final, ok_mask, absolute=False))
        check.metrics.update(metrics)
        if not self.warned and math.isfinite(value) and value > self.settings.sanity_warn_above:
            self.warned = True
            rank_zero_warn(
                f"IntegratedGradientsMonitor: the randomisation sanity check at epoch {check.epoch}: the maps of the "
                f"model with all {len(self.layers)} layers re-initialised keep a rank correlation of {value:.2f} "
                f"(|attribution|, over the units that differ from the baseline) with the trained model's, above "
                f"faithfulness.sanity_warn_above={self.settings.sanity_warn_above}: they show the input more than the "
                "model. Try another `baseline` ('uniform', 'blur' or 'data'), noise averaging "
                "(integration.noise_samples), or attributing at a `layer` (see docs/trust.md)")

    def _mask(self, check: Check) -> torch.Tensor | None:
        """The units compared: those that differ from every baseline (a unit equal to the baseline is zero in every
        map, whatever the model), or a text's real tokens; ``None`` (all) for maps at a layer."""
        from ig_lightning.functional._inputs import make_baselines

        if check.mask is not None:
            return check.mask.reshape(check.scores.shape)
        explainer, inputs = check.explainer, check.probe.inputs
        primary = inputs[explainer.names[0]]
        if explainer.layer is not None or tuple(check.scores.shape) != tuple(primary.shape):
            return None
        if explainer.noise is not None:
            return None  # the noisy copies differ from the baseline everywhere
        attributed, _ = explainer.split(inputs)
        idx = torch.arange(len(inputs))
        differs = torch.zeros(primary.shape, dtype=torch.bool)
        for k in range(len(explainer.baselines)):
            base = make_baselines(explainer.baselines_for(torch.device("cpu"), idx, k), attributed)[0]
            differs |= primary != base
        return differs

    def state_dict(self) -> dict[str, Any]:
        return {"sanity_warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = bool(state.get("sanity_warned", self.warned))


def _describe(baseline: Any, resolved: Any = None) -> str:
    if isinstance(baseline, str) and baseline in ("auto", "blur", "uniform"):
        return f"{baseline!r}: {_describe(resolved)}" if baseline == "auto" else repr(baseline)
    if baseline is None:
        return "zeros"
    if isinstance(baseline, torch.Tensor):
        return f"a Tensor of shape {tuple(baseline.shape)}"
    text = repr(baseline)
    return text if len(text) <= 60 else text[:57] + "..."
