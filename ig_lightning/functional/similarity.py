"""How alike two attribution maps are: Spearman rank correlation per example, over the informative units.

Why the mask: with Integrated Gradients, every feature equal to its baseline gets attribution exactly 0 in
*every* model, trained or random. Those shared zeros tie at the bottom of both rankings and push the
Spearman correlation up whatever the model (measured on 64 digits: 0.91 over all pixels against 0.39 over
the pixels that differ from the baseline). ``informative_mask(x, baseline)`` keeps only the latter.

Example::

    >>> import torch
    >>> rank_correlation(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[10.0, 20.0, 40.0, 30.0]])).tolist()
    [0.8]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Union

import torch

from ig_lightning._validation import validate_bool

__all__ = ["Maps", "informative_mask", "mean_similarity", "rank_correlation"]

Maps = Union[torch.Tensor, Sequence[torch.Tensor]]

# ------------------------------------------------------------------------------------------- similarity


def _flat(maps: Any, name: str) -> torch.Tensor:
    """``(B, N)`` on the CPU: a Tensor flattened per example, or a tuple of them concatenated."""
    tensors = [maps] if isinstance(maps, torch.Tensor) else maps
    if isinstance(tensors, (str, bytes)) or not isinstance(tensors, Sequence) or not tensors:
        raise TypeError(f"`{name}` must be a Tensor (B, ...) or a non-empty tuple of them, got {type(maps).__name__}")
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must hold Tensors, got {type(t).__name__}")
        if t.ndim == 0:
            raise ValueError(f"`{name}` must have a batch dimension, got a 0-d tensor")
    if len({t.shape[0] for t in tensors}) > 1:
        raise ValueError(f"`{name}` holds tensors of different batch sizes: {[t.shape[0] for t in tensors]}")
    return torch.cat([t.detach().to("cpu").reshape(t.shape[0], -1) for t in tensors], dim=1)


def _shapes(maps: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in ([maps] if isinstance(maps, torch.Tensor) else maps)]


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-d float64 vector, ties sharing the average of their positions."""
    order = torch.argsort(v, stable=True)
    ordered = v[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(starts.long(), 0) - 1
    first = torch.nonzero(starts).squeeze(1).double()
    count = torch.bincount(group).double()
    ranks = torch.empty_like(v)
    ranks[order] = (first + (count + 1) / 2)[group]
    return ranks


def rank_correlation(a: Maps, b: Maps, mask: Maps | None = None, *, absolute: bool = True) -> torch.Tensor:
    """Spearman rank correlation between ``a`` and ``b`` per example, over the units where ``mask`` is True.

    The Pearson correlation of the two examples' ranks, ties given their average rank, in float64. With
    ``absolute`` (the sanity-check default, as in Adebayo et al. and Quantus) the magnitudes ``|a|``, ``|b|``
    are ranked; ``absolute=False`` ranks the signed values.

    Pass ``mask=informative_mask(x, baseline)`` for Integrated Gradients: units equal to the baseline are 0
    in every map, trained model or random, and ranking them inflates the correlation.

    Args:
        a: ``(B, ...)`` maps, or a tuple of them (one per input: flattened and concatenated per example).
        b: Same shape(s) as ``a``.
        mask: ``None`` (every unit) or a bool Tensor (tuple) broadcastable to ``a``'s shape(s).
        absolute: Rank ``|a|`` and ``|b|`` (default) or the signed values.

    Returns:
        ``(B,)`` float64 on the CPU, in ``[-1, 1]``; NaN for an example with fewer than 3 selected units, a
        constant side among them, or a NaN among them.

    Raises:
        TypeError: ``a``, ``b``, ``mask`` or ``absolute`` of the wrong type.
        ValueError: shapes that do not match.

    Example::

        >>> import torch
        >>> a = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, 3.0]])
        >>> b = torch.tensor([[0.0, 0.0, 0.0, 3.0, 2.0, 1.0]])
        >>> round(rank_correlation(a, b).item(), 4)  # the shared zeros agree
        0.7419
        >>> rank_correlation(a, b, mask=a != 0).tolist()  # the informative units disagree
        [-1.0]
    """
    absolute = validate_bool(absolute, "absolute")
    fa, fb = _flat(a, "a").double(), _flat(b, "b").double()
    if _shapes(a) != _shapes(b):
        raise ValueError(f"`a` and `b` must have the same shape(s), got {_shapes(a)} and {_shapes(b)}")
    if mask is None:
        fm = torch.ones_like(fa, dtype=torch.bool)
    else:
        masks = [mask] if isinstance(mask, torch.Tensor) else mask
        targets = _shapes(a)
        if isinstance(masks, (str, bytes)) or not isinstance(masks, Sequence) or len(masks) != len(targets):
            raise TypeError(f"`mask` must be a bool Tensor (or tuple) like `a`, got {type(mask).__name__}")
        parts = []
        for m, shape in zip(masks, targets):
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"`mask` must hold bool tensors, got {getattr(m, 'dtype', type(m).__name__)}")
            try:
                parts.append(torch.broadcast_to(m.detach().to("cpu"), shape))
            except RuntimeError:
                raise ValueError(f"`mask` of shape {tuple(m.shape)} does not broadcast to {shape}") from None
        fm = _flat(tuple(parts), "mask")
    if absolute:
        fa, fb = fa.abs(), fb.abs()
    out = torch.full((fa.shape[0],), math.nan, dtype=torch.float64)
    for i in range(fa.shape[0]):
        x, y = fa[i][fm[i]], fb[i][fm[i]]
        if x.numel() < 3 or x.isnan().any() or y.isnan().any():
            continue
        if bool((x == x[0]).all()) or bool((y == y[0]).all()):
            continue
        rx, ry = _average_ranks(x), _average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        out[i] = ((rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum())).clamp(-1.0, 1.0)
    return out


def informative_mask(x: Maps, baseline: Any = 0.0) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Where ``x`` differs from ``baseline``: the units an Integrated Gradients map can make non-zero.

    Args:
        x: ``(B, ...)`` inputs, or a tuple of them.
        baseline: A number, ``None`` (0), or a Tensor broadcastable to ``x`` (a tuple of such, one per input,
            for a tuple ``x``); or a **list** of those for several baselines (or several draws of a random
            baseline): a unit is informative when it differs from at least one of them.

    Returns:
        A bool Tensor shaped like ``x`` (a tuple of them for a tuple ``x``).

    Raises:
        TypeError: ``x`` or ``baseline`` of the wrong type.
        ValueError: a baseline that does not broadcast to ``x``, or an empty list.

    Example::

        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0, 2.0]])
        >>> informative_mask(x, 0.0).tolist(), informative_mask(x, [0.0, torch.tensor([0.0, 1.0, 1.0])]).tolist()
        ([[False, True, True]], [[False, True, True]])
    """
    single = isinstance(x, torch.Tensor)
    xs = (x,) if single else x
    if not isinstance(xs, tuple) or not xs or not all(isinstance(t, torch.Tensor) for t in xs):
        raise TypeError(f"`x` must be a Tensor or a non-empty tuple of Tensors, got {type(x).__name__}")
    entries = baseline if isinstance(baseline, list) else [baseline]
    if not entries:
        raise ValueError("`baseline` must not be an empty list")
    masks = [torch.zeros(t.shape, dtype=torch.bool, device=t.device) for t in xs]
    for entry in entries:
        per_input = (entry,) * len(xs) if (single or not isinstance(entry, tuple)) else entry
        if len(per_input) != len(xs):
            raise ValueError(f"`baseline` must have one entry per input ({len(xs)}), got {len(per_input)}")
        for j, (t, base) in enumerate(zip(xs, per_input)):
            if base is None:
                base = 0.0
            if isinstance(base, numbers.Number) and not isinstance(base, bool):
                base = torch.tensor(base, dtype=t.dtype, device=t.device)
            if not isinstance(base, torch.Tensor):
                raise TypeError(f"`baseline` must hold numbers or Tensors, got {type(base).__name__}")
            try:
                differs = torch.broadcast_to(t.detach() != base.detach().to(t.device), t.shape)
            except RuntimeError:
                raise ValueError(
                    f"`baseline` of shape {tuple(base.shape)} does not broadcast to {tuple(t.shape)}"
                ) from None
            masks[j] |= differs
    return masks[0] if single else tuple(masks)


def mean_similarity(values: torch.Tensor | Sequence[float]) -> float:
    """The mean of ``values`` ignoring NaNs (examples with no correlation); NaN when all are NaN.

    Example::

        >>> mean_similarity(torch.tensor([0.5, float("nan"), 0.25])), math.isnan(mean_similarity([float("nan")]))
        (0.375, True)
    """
    if isinstance(values, torch.Tensor):
        v = values.detach().to("cpu", torch.float64).reshape(-1)
    elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    else:
        raise TypeError(f"`values` must be a Tensor or a sequence of numbers, got {type(values).__name__}")
    v = v[~v.isnan()]
    return float(v.mean()) if v.numel() else math.nan

