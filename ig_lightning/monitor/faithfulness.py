"""Are the attributions faithful? The deletion check: remove what they point at and watch the output drop.

At each check every probe example's ``top_k`` most attributed units (features, pixels, tokens, or the block of
pixels under a layer map's cell) are set to the baseline, against ``top_k`` random units; each class's rule is
removed from its examples. Forward passes only (``ig_lightning.functional.deletion``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ig_lightning.functional._inputs import make_baselines
from ig_lightning.functional.deletion import DeletionResult, deletion_drop, rule_deletion_drop
from ig_lightning.monitor._isolation import eval_mode
from ig_lightning.monitor.explainer import Explainer, layer_map, on_model
from ig_lightning.monitor.probe import ModelInputs

#: Floor of ``|F(x) - F(baseline)|`` in the deletion check's relative drops.
DELETION_FLOOR = 1e-3


def deletion_check(explainer: Explainer, model: nn.Module, inputs: ModelInputs, scores: torch.Tensor,
                   targets: torch.Tensor | None, keys: torch.Tensor, mask: torch.Tensor | None,
                   rules: dict[int, list[tuple[int, float]]], k: int, batch: int,
                   seed: int) -> tuple[dict[str, float], dict[int, float]]:
    """Whether the attributions point at what the model uses: the ``k`` top units of each example set to the
    baseline, against ``k`` random ones (``deletion_*`` scalars), and each class's rule removed from its
    examples (relative drop of the class's score). Forward passes only, a group of ``batch`` examples at a
    time; the random units come from a generator seeded with ``seed`` (never the global stream).

    Empty when the scores do not map onto the attributed input (a layer that is not per token)."""
    primary = inputs[explainer.names[0]]
    found = removal_units(scores, primary)
    if found is None:
        return {}, {}
    flat, units, is_map = found
    generator = torch.Generator().manual_seed(seed)
    parts, rule_parts = [], {}
    for start in range(0, len(inputs), batch):
        idx = torch.arange(start, min(start + batch, len(inputs)))
        group = inputs.map(lambda t: on_model(model, t[idx]))
        attributed, others = explainer.split(group)
        forward = explainer.forward(model, group)
        run = lambda x: forward(x, *attributed[1:], *others)  # noqa: E731
        base = make_baselines(explainer.baselines_for(attributed[0].device, idx), attributed)[0]
        target = None if targets is None else targets[idx].to(attributed[0].device)
        with eval_mode(model):
            parts.append(deletion_drop(run, attributed[0], base, flat[idx], k=k, target=target, units=units,
                                       eligible=None if mask is None else mask[idx], generator=generator,
                                       delta_floor=DELETION_FLOOR))
            if rules and targets is not None:
                pixel_keys = units.expand(len(idx), *units.shape) if is_map else keys[idx].reshape(primary[idx].shape)
                found = rule_deletion_drop(run, attributed[0], base, pixel_keys,
                                           {c: [key for key, _ in r] for c, r in rules.items()}, targets[idx],
                                           delta_floor=DELETION_FLOOR)
                for c, drop in found.items():  # weighted by the group's examples of the class
                    rule_parts.setdefault(c, []).append((drop, int((targets[idx] == c).sum())))
    summary = _join_deletions(parts).summary()
    return summary, {c: _weighted_mean(v) for c, v in rule_parts.items()}


def removal_units(scores: torch.Tensor, primary: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor | None, bool] | None:
    """What a removal removes: ``(flat scores (B, U), the unit of every input element or None for one unit per
    element, whether the scores are a layer map)``; ``None`` when the scores do not map onto the attributed input
    (a layer that is not per token). Units: a pixel's channels together, a layer map's cell as a block of pixels."""
    flat = scores.reshape(len(scores), -1)
    features = math.prod(primary.shape[1:])
    is_map = scores.ndim == 3 and primary.ndim == 4 and tuple(scores.shape[1:]) != tuple(primary.shape[2:]) \
        and layer_map((1, 1, *scores.shape[1:]), primary.shape) is not None
    if flat.shape[1] != features and not (primary.ndim == 4 and flat.shape[1] * primary.shape[1] == features) \
            and not is_map:
        return None
    units = None
    if is_map:
        units = _cells(scores.shape[1:], primary.shape[1:])  # a layer map: a cell covers a block of pixels
    elif flat.shape[1] != features:  # (B, C, H, W) input with (B, H, W) scores: a pixel's channels together
        units = torch.arange(flat.shape[1]).view(1, *primary.shape[2:]).expand(primary.shape[1:])
    elif primary.ndim == 4 and primary.shape[1] > 1:  # RGB: one unit per pixel, scored by its channels' sum
        flat = scores.reshape(*primary.shape).sum(1).reshape(len(scores), -1)
        units = torch.arange(flat.shape[1]).view(1, *primary.shape[2:]).expand(primary.shape[1:])
    return flat, units, is_map


def _cells(grid: Sequence[int], image: Sequence[int]) -> torch.Tensor:
    """The map cell of every pixel of a ``(C, H, W)`` image, for a ``(h, w)`` map whose cells are blocks."""
    rows = torch.arange(image[1]) * grid[0] // image[1]
    cols = torch.arange(image[2]) * grid[1] // image[2]
    return (rows.view(-1, 1) * grid[1] + cols.view(1, -1)).expand(*image)


def _join_deletions(parts: list[DeletionResult]) -> DeletionResult:
    fields = ("output", "baseline_output", "deleted", "randomized", "top_units", "random_units")
    return DeletionResult(*(torch.cat([getattr(p, f) for p in parts]) for f in fields), parts[0].delta_floor)


def _weighted_mean(values: list[tuple[float, int]]) -> float:
    finite = [(v, n) for v, n in values if math.isfinite(v) and n]
    total = sum(n for _, n in finite)
    return sum(v * n for v, n in finite) / total if total else math.nan
