"""One check, from the model and the probe to attributions and per-feature scores (no logging here).

``Explainer`` knows which of the model's inputs are attributed (all floating-point ones, or with
a layer the one the baseline replaces), calls the engine on this process's shard of the probe with
everything else passed unchanged at every path point, and gathers the shards in probe order.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Callable, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ig_lightning.functional._hooks import tap_layers
from ig_lightning.functional._inputs import make_baselines, model_output
from ig_lightning.functional.averaged import averaged_integrated_gradients
from ig_lightning.functional.integrated_gradients import IGResult, NonFiniteAttributionWarning, integrated_gradients
from ig_lightning.monitor._isolation import eval_mode
from ig_lightning.monitor.meshes import PathMeshes
from ig_lightning.monitor.probe import LAYER_INPUT_KEYS, ModelInputs, Name

OUTPUT_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda out: out.softmax(-1),
    "log_softmax": lambda out: out.log_softmax(-1),
    "sigmoid": torch.sigmoid,
}


class _Forward(nn.Module):
    """The model as the engine calls it: attributed tensors first, then the rest, rebuilt into the model's call.

    A module, so that the engine sees (and freezes) the model's parameters and finds the layer inside it.
    """

    def __init__(self, model: nn.Module, names: Sequence[Name], template: ModelInputs,
                 transform: str | Callable[[Any], torch.Tensor] | None) -> None:
        super().__init__()
        self.model, self.names, self.template, self.transform = model, list(names), template, transform

    def forward(self, *tensors: torch.Tensor) -> Any:
        out = self.template.replace(dict(zip(self.names, tensors))).call(self.model)
        if self.transform is None:
            return out
        if isinstance(self.transform, str):
            return OUTPUT_TRANSFORMS[self.transform](model_output(out))
        return self.transform(out)  # a user's callable receives the raw output


def on_model(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``t`` on the model's device; floating tensors in its parameters' dtype (e.g. bf16-true)."""
    params = [p for p in module.parameters() if p.is_floating_point()]
    device = params[0].device if params else torch.device("cpu")
    t = t.to(device)
    return t.to(params[0].dtype) if t.is_floating_point() and params else t


class ProbeMismatchError(ValueError, RuntimeError):
    """The model fails on the probe before training (its shapes or structure do not fit the model): a
    ``ValueError`` naming the probe, and a ``RuntimeError`` like the model's own error."""

    @classmethod
    def of(cls, error: Exception, inputs: ModelInputs) -> ProbeMismatchError:
        shapes = {name: tuple(t.shape) for name, t in inputs.items()}
        hint = ""
        if isinstance(error, TypeError) and len(inputs.args) == 1:
            hint = ("; if the model takes two positional inputs, `probe`=(x1, x2) was read as (inputs, labels): pass "
                    "probe=((x1, x2), None), or ((x1, x2), labels)")
        return cls(f"the model fails on the `probe` (inputs {shapes}): {type(error).__name__}: {error}{hint}")


class Explainer:
    """Attributes a probe with a model: the monitor's bridge to ``ig_lightning.integrated_gradients()``.

    Args:
        inputs: The probe's model inputs (CPU).
        attribute: Names (dict keys) or positions of the inputs to attribute, or ``None``: every
            floating-point input, or with ``layer`` the token ids / pixels the baseline replaces.
        layer: The module to attribute at, and its name.
        output_transform: A name of ``OUTPUT_TRANSFORMS``, a callable of the raw output, or ``None``.
        baseline: ``None``, a number, a Tensor (one attributed input), or a tuple/dict with one per input; or a list
            of several of those: each example is attributed from each and the attributions averaged
            (``ig_lightning.monitor.baselines``). Removing a feature sets it to the first.
        noise: Noise averaging: one ``(J, N, ...)`` tensor of noise per attributed input (``N`` the probe's size).
        noise_type: How the noisy copies' attributions are combined (``integration.noise_type``).

    Raises:
        ValueError: ``attribute`` names an input that is not in the probe, or nothing can be attributed.
    """

    def __init__(self, inputs: ModelInputs, attribute: Sequence[Name] | None, layer: nn.Module | None,
                 layer_name: str | None, output_transform: Any, baseline: Any,
                 noise: tuple[torch.Tensor, ...] | None = None, noise_type: str = "smoothgrad") -> None:
        self.layer, self.layer_name, self.transform = layer, layer_name, output_transform
        self.n = len(inputs)
        self.notes: list[str] = []  # the engine's warnings during checks, for the monitor to pass on
        self._noted: set[str] = set()
        self.names = self.attributed_names(inputs, attribute, layer is not None)
        self.others = [name for name in inputs.names if name not in self.names]
        several = baseline if isinstance(baseline, list) else [baseline]
        self.baselines = [self._order_baseline(b) for b in several]
        self.baseline = self.baselines[0]  # what a removed feature is set to
        self.noise, self.noise_type = noise, noise_type

    @property
    def paths(self) -> int:
        """Paths per example: baselines times noisy copies."""
        return len(self.baselines) * (1 if self.noise is None else len(self.noise[0]))

    @property
    def averaged(self) -> bool:
        """Whether each example's attribution averages several paths (baselines or noisy copies)."""
        return len(self.baselines) > 1 or self.noise is not None

    @staticmethod
    def attributed_names(inputs: ModelInputs, attribute: Sequence[Name] | None, with_layer: bool) -> list[Name]:
        if attribute is not None:
            missing = [a for a in attribute if a not in inputs.names]
            if missing:
                raise ValueError(f"`inputs.attribute` names inputs {missing} that the probe does not have; it has "
                                 f"{inputs.names}")
            return list(attribute)
        if with_layer:
            preferred = [k for k in LAYER_INPUT_KEYS if k in inputs.kwargs]
            return [preferred[0] if preferred else inputs.names[0]]
        names = [name for name, t in inputs.items() if t.is_floating_point()]
        if not names:
            raise ValueError(
                "the probe has no floating-point input to attribute (inputs "
                f"{[(n, str(t.dtype)) for n, t in inputs.items()]}): "
                "token ids are attributed at their embedding, pass `layer=` (e.g. 'embedding')"
            )
        return names

    def _order_baseline(self, baseline: Any) -> Any:
        if isinstance(baseline, dict):
            unknown = [k for k in baseline if k not in self.names]
            if unknown:
                raise ValueError(f"`baseline` has entries {unknown} for inputs that are not attributed ({self.names})")
            return tuple(baseline.get(name) for name in self.names)
        if isinstance(baseline, tuple):
            if len(baseline) != len(self.names):
                raise ValueError(
                    f"`baseline` must have one entry per attributed input {self.names}, got {len(baseline)}")
            return tuple(baseline)
        return baseline

    def forward(self, model: nn.Module, template: ModelInputs) -> _Forward:
        return _Forward(model, self.names + self.others, template, self.transform)

    def split(self, inputs: ModelInputs) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The attributed tensors and the others, in the order ``forward()`` takes them."""
        return tuple(inputs[n] for n in self.names), tuple(inputs[n] for n in self.others)

    def baselines_for(self, device: torch.device, idx: torch.Tensor | None = None, which: int = 0) -> Any:
        """The (first) baseline on ``device`` (a tuple of one per attributed input for several); a per-example
        baseline (first dimension = the probe's size) is indexed by ``idx``, the probe examples being attributed (a
        group, a rank's shard). ``which``: another of several baselines."""
        baseline = self.baselines[which]

        def move(b: Any) -> Any:
            if not isinstance(b, torch.Tensor):
                return b
            if idx is not None and b.ndim >= 1 and b.shape[0] == self.n and self.n > 1:
                b = b[idx.to(b.device)]
            return b.to(device)

        if isinstance(baseline, tuple):
            return tuple(move(b) for b in baseline)
        if len(self.names) > 1 and isinstance(baseline, torch.Tensor):
            raise TypeError(f"`baseline` must be a tuple or dict with one entry per attributed input {self.names}, "
                            "got one Tensor")
        return move(baseline)

    def validate_baseline(self, inputs: ModelInputs) -> None:
        """Raise now, naming ``baseline``, if it does not fit the attributed inputs."""
        attributed, _ = self.split(inputs)
        for k in range(len(self.baselines)):
            try:
                make_baselines(self.baselines_for(torch.device("cpu"), which=k), attributed)
            except (TypeError, ValueError) as error:
                name = "`baseline" if len(self.baselines) == 1 else f"`baseline[{k}]"
                raise type(error)(str(error).replace("`baselines", name)) from None

    def outputs(self, model: nn.Module, inputs: ModelInputs, batch: int,
                name_the_probe: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The explained outputs ``(B,)``/``(B, C)`` on CPU (no gradients, eval mode) and, with a layer, its
        floating tensors on the first chunk (to check their shapes).

        With ``name_the_probe``, a ``RuntimeError``/``TypeError`` of the model's call becomes a
        ``ProbeMismatchError`` that names the probe's shapes (before training)."""
        template = inputs.map(lambda t: on_model(model, t))
        forward = self.forward(model, template)
        attributed, others = self.split(template)
        tensors, n = attributed + others, len(inputs)
        outs, layer_values = [], []
        with torch.no_grad(), eval_mode(model):
            for k in range(0, n, batch):
                chunk = [t[k:k + batch] for t in tensors]
                try:
                    if self.layer is not None and k == 0:
                        with tap_layers([self.layer]) as tap:
                            out = tap.run(forward, tuple(chunk))
                        layer_values = tap.batch_first_values(len(chunk[0]))
                    else:
                        out = forward(*chunk)
                except (RuntimeError, TypeError) as error:
                    if not name_the_probe:
                        raise
                    raise ProbeMismatchError.of(error, inputs) from error
                out = model_output(out)
                if out.ndim not in (1, 2) or out.shape[0] != len(chunk[0]):
                    what = "`output_transform`" if self.transform is not None else "the model"
                    raise ValueError(f"{what} must give one output (B,) or one row of outputs (B, C) per example; "
                                     f"got shape {tuple(out.shape)} for {len(chunk[0])} examples")
                outs.append(out.detach().float().cpu())
        return torch.cat(outs), layer_values

    def validate_path(self, model: nn.Module, inputs: ModelInputs, batch: int,
                      layer_values: list[torch.Tensor]) -> torch.Tensor:
        """Run the model on the baseline once: it must run (e.g. a baseline token id inside the vocabulary) and
        differ from the inputs where attributions are taken, or there is nothing to attribute.

        Returns:
            The explained outputs at the baseline, ``(B,)``/``(B, C)`` on CPU.
        """
        attributed, _ = self.split(inputs)
        bases = make_baselines(self.baselines_for(torch.device("cpu"), torch.arange(self.n)), attributed)
        at_baseline = inputs.replace(dict(zip(self.names, bases)))
        try:
            base_outputs, base_values = self.outputs(model, at_baseline, batch)
        except Exception as error:  # noqa: BLE001  named and re-raised
            raise ValueError(f"the model fails on the `baseline` ({type(error).__name__}: {error}); with a `layer`, "
                             "the baseline holds token ids (0 by default) that must be valid inputs") from error
        same = all(torch.equal(a, b) for a, b in zip(base_values, layer_values)) if self.layer is not None \
            else all(torch.equal(a, b) for a, b in zip(attributed, bases))
        if same:
            where = f"the output of `layer` {self.layer_name!r}" if self.layer is not None else "the attributed inputs"
            raise ValueError(f"{where} on the `baseline` equals that on the probe for every example: there is nothing "
                             f"to attribute (attributed inputs: {self.names}; check `inputs.attribute` and `baseline`)")
        return base_outputs

    def attribute(self, trainer: Any, model: nn.Module, inputs: ModelInputs, targets: torch.Tensor | None,
                  meshes: PathMeshes | None = None, progress: Callable[[str], None] | None = None,
                  **engine_kwargs: Any) -> IGResult:
        """IG on this process's shard of the probe, gathered from every process in probe order, on CPU.

        The attributions are a Tensor for one attributed input, a tuple for several.

        Every process computes the same number of examples (repeating its last one as padding), so that
        ``all_gather`` sees equal shapes and every process runs the same forward passes; the padding is
        dropped after the gather. With ``meshes`` (``n_steps="auto"``), every group starts from its rows' meshes
        of the last check and leaves its own for the next.
        """
        world, rank = trainer.world_size, trainer.global_rank
        if world > 1 and engine_kwargs.get("n_steps") == "auto":
            engine_kwargs["sync"] = _rank_sync(trainer, on_model(model, torch.zeros(())).device)
        n = len(inputs)
        per_rank = math.ceil(n / world)
        idx = torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp_max(n - 1)
        # A group's paths (examples x baselines x noisy copies) hold as many rows as a forward holds points.
        group = max(1, (engine_kwargs.get("internal_batch_size") or per_rank) // self.paths)
        parts = []
        for k in range(0, per_rank, group):
            if progress is not None:
                progress(f"attribution, examples {k + 1}-{min(k + group, per_rank)} of {per_rank}")
            parts.append(self._attribute_group(model, inputs, targets, idx[k:k + group], engine_kwargs, meshes))
        if meshes is not None:
            meshes.share(trainer)
        result = parts[0] if len(parts) == 1 else _concatenate(parts)
        if world > 1:
            gather = lambda t: _gather(trainer, t, n)  # noqa: E731
            attributions = result.attributions
            attributions = tuple(map(gather, attributions)) if isinstance(attributions, tuple) else gather(attributions)
            result = IGResult(attributions, gather(result.delta),
                              gather(result.completeness_error), gather(result.n_steps), gather(result.n_evaluations),
                              gather(result.attribution_error), result.rounds)
        return result.to("cpu")

    def _attribute_group(self, model: nn.Module, inputs: ModelInputs, targets: torch.Tensor | None,
                         idx: torch.Tensor, engine_kwargs: dict[str, Any], meshes: PathMeshes | None) -> IGResult:
        """IG on the probe examples ``idx``; a group holds at most as many examples as a forward holds points,
        so the per-example buffers of a check stay as small as half a training batch."""
        shard = inputs.map(lambda t: on_model(model, t[idx]))
        attributed, others = self.split(shard)
        device = attributed[0].device
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            common = dict(additional_forward_args=others, target=None if targets is None else targets[idx].to(device),
                          layer=self.layer, **engine_kwargs)
            x = attributed if len(attributed) > 1 else attributed[0]
            if self.averaged:
                noise = None if self.noise is None else tuple(on_model(model, t[:, idx]) for t in self.noise)
                result = averaged_integrated_gradients(
                    self.forward(model, shard), x,
                    baselines=[self.baselines_for(device, idx, k) for k in range(len(self.baselines))],
                    nt_type=self.noise_type if noise is not None else "smoothgrad",
                    nt_samples=0 if noise is None else len(noise[0]),
                    noise=noise if noise is None or len(noise) > 1 else noise[0], **common)
            else:
                result = integrated_gradients(
                    self.forward(model, shard), x, baselines=self.baselines_for(device, idx), **common,
                    **({} if meshes is None else {"warm_start": meshes.start_for(idx, engine_kwargs["max_steps"])}))
        if meshes is not None:
            meshes.update(idx, result.warm_start)
        # Non-finite attributions are a breach (the monitor's message); the rest is said once per run.
        self.notes.extend(str(w.message) for w in caught if not issubclass(w.category, NonFiniteAttributionWarning))
        return result

    def scores(self, result: IGResult, inputs: ModelInputs) -> list[torch.Tensor]:
        """One score per displayed unit for each attributed tensor (float32, CPU), reduced by ``layer_scores()``
        at a layer (per token, or a map over the input image)."""
        attributions = result.attributions if isinstance(result.attributions, tuple) else (result.attributions,)
        out = [a.float() for a in attributions]
        if self.layer is not None:
            out[0] = layer_scores(out[0], inputs[self.names[0]].shape)
        return out

    def pass_on_notes(self) -> None:
        """The engine's warnings (examples that did not converge, degenerate deltas), once per kind and run:
        they would repeat at every check and for every group of examples (a kind: the message without its
        numbers)."""
        for note in self.notes:
            kind = re.sub(r"[\d.e+-]+", "#", note)
            if kind not in self._noted:
                self._noted.add(kind)
                rank_zero_warn(f"IntegratedGradientsMonitor: {note} (said once; `ig/attribution_error_max` and "
                               "`ig/completeness_error_max` show it at every check)")
        self.notes.clear()

    def rule_keys(self, inputs: ModelInputs, scores: torch.Tensor,
                  kind: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The key of every score ``(B, D)`` (token ids for text, so a word pools over positions; else the flat
        feature index) and, for text, which positions are real tokens (not padding, not the baseline token)."""
        flat = scores.reshape(len(scores), -1)
        if kind != "text":
            return torch.arange(flat.shape[1]).expand_as(flat), None
        ids = inputs[self.names[0]]
        mask = torch.ones_like(ids, dtype=torch.bool)
        attention = inputs.kwargs.get("attention_mask")
        if attention is not None and attention.shape == ids.shape:
            mask &= attention.bool()
        baseline = self.baselines_for(torch.device("cpu"))
        base = torch.as_tensor(0 if (baseline[0] if isinstance(baseline, tuple) else baseline) is None
                               else (baseline[0] if isinstance(baseline, tuple) else baseline))
        mask &= ids != base.expand_as(ids)
        return ids.reshape(flat.shape).long(), mask.reshape(flat.shape)



def per_token(layer_shape: Sequence[int], input_shape: Sequence[int]) -> bool:
    """Whether attributions at a layer are per token (or patch) and hidden unit, to be summed over the hidden units:
    an embedding's ``(B, L, H)`` for ids ``(B, L)``, or a transformer's ``(B, T, H)`` for other inputs (a vision
    transformer's patches)."""
    if tuple(layer_shape) == tuple(input_shape):
        return False
    return len(layer_shape) == len(input_shape) + 1 or len(layer_shape) == 3


def layer_map(layer_shape: Sequence[int], input_shape: Sequence[int]) -> tuple[str, int, int, int] | None:
    """How a layer's attributions map onto an input image ``(B, C, H, W)``: ``("spatial", h, w, 0)`` for a
    ``(B, C', h, w)`` output (summed over channels), ``("grid", h, w, skip)`` for a token sequence ``(B, T, D)``
    whose ``T - skip`` tokens (``skip``: a leading class token, 0 or 1) tile the image in square patches; ``None``
    when the input is not an image or the layer's output does not map onto it.

    Example::

        >>> layer_map((2, 16, 4, 4), (2, 3, 32, 32)), layer_map((2, 65, 8), (2, 3, 32, 32))
        (('spatial', 4, 4, 0), ('grid', 8, 8, 1))
    """
    if len(input_shape) != 4 or tuple(layer_shape) == tuple(input_shape):
        return None
    height, width = input_shape[2], input_shape[3]
    if len(layer_shape) == 4 and height % layer_shape[2] == 0 and width % layer_shape[3] == 0:
        return "spatial", int(layer_shape[2]), int(layer_shape[3]), 0
    if len(layer_shape) == 3:
        for skip in (0, 1):
            tokens = layer_shape[1] - skip
            for rows in range(1, tokens + 1):
                cols, left = divmod(tokens, rows)
                if not left and height % rows == 0 and width % cols == 0 and height // rows == width // cols:
                    return "grid", rows, cols, skip
    return None


def layer_scores(attributions: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """The displayed scores of attributions at a layer: a map ``(B, h, w)`` over an input image (see
    ``layer_map()``), per token for an embedding (summed over its hidden units), else the layer's own shape."""
    mapped = layer_map(attributions.shape, input_shape)
    if mapped is not None:
        how, rows, cols, skip = mapped
        if how == "spatial":
            return attributions.sum(1)
        return attributions[:, skip:].sum(-1).reshape(len(attributions), rows, cols)
    if per_token(attributions.shape, input_shape):
        return attributions.sum(-1)
    return attributions


def _concatenate(parts: list[IGResult]) -> IGResult:
    first = parts[0].attributions
    if isinstance(first, tuple):
        attributions = tuple(torch.cat([p.attributions[i] for p in parts]) for i in range(len(first)))
    else:
        attributions = torch.cat([p.attributions for p in parts])
    fields = ("delta", "completeness_error", "n_steps", "n_evaluations", "attribution_error")
    return IGResult(attributions, *(torch.cat([getattr(p, f) for p in parts]) for f in fields),
                    sum(p.rounds for p in parts))


def _gather(trainer: Any, t: torch.Tensor, n: int) -> torch.Tensor:
    gathered = trainer.strategy.all_gather(t)  # (world, per_rank, ...), ranks in order
    return gathered.reshape(-1, *t.shape[1:])[:n]


def _rank_sync(trainer: Any, device: torch.device) -> Callable[[int], int]:
    """``sync(k)``: the largest ``k`` over the ranks, so that every rank runs as many forward passes as the busiest."""
    def sync(k: int) -> int:
        return int(trainer.strategy.reduce(torch.tensor(k, device=device), reduce_op="max"))
    return sync
