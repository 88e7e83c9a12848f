"""Faithfulness curves: deletion (most and least relevant first), insertion, their areas and SRG.

Forward passes only, under ``torch.no_grad()``. Each example's eligible *units* (features, pixels shared by
their channels, tokens) are ranked by their **signed** score, largest first (ties: lower unit index first),
and removed, or inserted, a fraction at a time:

- **MoRF** deletion (Petsiuk et al., RISE, BMVC 2018; "pixel flipping"): the most relevant units first.
  A faithful attribution makes the output fall fast: a *low* area is good.
- **LeRF** deletion: the least relevant first; the output should hold: a *high* area is good.
- **Insertion**: start from the fill on every eligible unit and put back the most relevant first; a *high*
  area is good. With the same fill, inserting the top ``k`` units is the same input as deleting the other
  ``n - k``: the insertion curve is the LeRF curve read backwards, up to ties and the rounding of ``k``.
- **SRG**, the Symmetric Relevance Gain (Bluecher et al., TMLR 2024): ``auc_lerf - auc_morf``, higher is
  better; the fill's own effect on the output appears in both curves and largely cancels.

At point ``j`` of ``points`` an example with ``n`` eligible units has ``k_j = round(j * n / points)`` (halves up)
units removed (or inserted). A curve value is the explained output normalised per example,
``(F(x_j) - F(x_fill)) / max(|F(x) - F(x_fill)|, delta_floor)`` with ``x_fill`` the input with every eligible
unit filled: 1 is the whole prediction and 0 none of it (when ``F(x) > F(x_fill)``, the usual case; below it,
the curves start at -1 and every "lower/higher is better" above still holds, as in ``deletion_drop()``).

Cost: the three curves have ``3 * (points + 1)`` points, but four of their six end points are the same two
inputs (``x`` and ``x_fill``): ``3 * points - 1`` forward passes of ``B`` rows (``result.forwards``), grouped
into calls of at most ``batch_size`` rows.

Examples where something is NaN or infinite (inputs, scores, any output), or with no eligible unit, never
raise: their curves are NaN and they are left out of every mean.

Example::

    >>> import torch
    >>> w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    >>> x = torch.ones(1, 3, dtype=torch.float64)
    >>> res = faithfulness_curves(lambda v: v @ w, x, x * w, points=3)
    >>> res.morf_output.tolist(), res.lerf_output.tolist(), res.insertion_output.tolist()
    ([[6.0, 3.0, 1.0, 0.0]], [[6.0, 5.0, 3.0, 0.0]], [[0.0, 3.0, 5.0, 6.0]])
    >>> [round(v, 4) for v in res.morf[0].tolist()], res.forwards
    ([1.0, 0.5, 0.1667, 0.0], 8)
    >>> {k: round(v, 4) for k, v in res.summary().items()}
    {'deletion_auc': 0.3889, 'lerf_auc': 0.6111, 'insertion_auc': 0.6111, 'srg': 0.2222}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf

from ig_lightning._validation import validate_choice, validate_int, validate_positive_float, validate_target
from ig_lightning.functional._inputs import make_baselines
from ig_lightning.functional.baselines import blurred
from ig_lightning.functional.deletion import _outputs, _pick, _units

__all__ = ["CURVE_FILLS", "CurveResult", "faithfulness_curves"]

ForwardFunc = Callable[[torch.Tensor], Any]
NAN = float("nan")
#: What a removed unit becomes: see ``faithfulness_curves()``.
CURVE_FILLS = ("baseline", "blur", "neighbours")
#: Relative weights of the 8 neighbours in the ``"neighbours"`` fill (ROAD's 1/6 edge, 1/12 corner).
_NEIGHBOUR_KERNEL = ((1.0, 2.0, 1.0), (2.0, 0.0, 2.0), (1.0, 2.0, 1.0))


def _trapezoid(curves: torch.Tensor) -> torch.Tensor:
    """Area under each row of ``curves`` ``(B, P + 1)`` over the fractions ``0, 1/P, ..., 1``."""
    points = curves.shape[1] - 1
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * points)


def _nanmean(values: torch.Tensor) -> float:
    finite = values[values.isfinite()]
    return float(finite.mean()) if finite.numel() else NAN


@dataclass
class CurveResult:
    """What ``faithfulness_curves()`` returns; every tensor is on CPU, float64 unless said otherwise.

    Attributes:
        fractions: ``(P + 1,)``: ``0, 1/P, ..., 1``, the share of each example's eligible units removed
            (deletion) or inserted (insertion) at each point.
        morf: ``(B, P + 1)``: the normalised output, most relevant units deleted first (starts at 1, ends at 0).
        lerf: ``(B, P + 1)``: the same, least relevant first.
        insertion: ``(B, P + 1)``: most relevant units inserted first into the filled input (0 to 1).
        morf_output: ``(B, P + 1)``: the raw explained output along ``morf`` (NaN for examples left out for
            non-finite inputs or scores, or no eligible unit).
        lerf_output: ``(B, P + 1)``: the raw output along ``lerf``.
        insertion_output: ``(B, P + 1)``: the raw output along ``insertion``.
        output: ``(B,)``: ``F(x)``.
        fill_output: ``(B,)``: ``F(x_fill)``, every eligible unit filled.
        counts: ``(B, P + 1)`` long: the units removed (deletion) or inserted (insertion) at each point.
        forwards: Forward passes of ``B`` rows: ``3 * P - 1``.
        calls: Calls of ``forward_func`` (``forwards`` without ``batch_size``; fewer or more with it).
        fill: The fill used.
        delta_floor: The floor of the normalising denominator.
    """

    fractions: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor
    insertion: torch.Tensor
    morf_output: torch.Tensor
    lerf_output: torch.Tensor
    insertion_output: torch.Tensor
    output: torch.Tensor
    fill_output: torch.Tensor
    counts: torch.Tensor
    forwards: int
    calls: int
    fill: str = "baseline"
    delta_floor: float = 1e-3

    @property
    def auc_morf(self) -> torch.Tensor:
        """``(B,)``: trapezoid area under ``morf`` (lower is better); NaN for examples left out."""
        return _trapezoid(self.morf)

    @property
    def auc_lerf(self) -> torch.Tensor:
        """``(B,)``: area under ``lerf`` (higher is better)."""
        return _trapezoid(self.lerf)

    @property
    def auc_insertion(self) -> torch.Tensor:
        """``(B,)``: area under ``insertion`` (higher is better)."""
        return _trapezoid(self.insertion)

    @property
    def srg(self) -> torch.Tensor:
        """``(B,)``: Symmetric Relevance Gain ``auc_lerf - auc_morf`` (higher is better)."""
        return self.auc_lerf - self.auc_morf

    def summary(self) -> dict[str, float]:
        """Means over the finite examples: ``deletion_auc`` (MoRF), ``lerf_auc``, ``insertion_auc``, ``srg``.

        Every value is NaN when no example is finite.
        """
        return {"deletion_auc": _nanmean(self.auc_morf), "lerf_auc": _nanmean(self.auc_lerf),
                "insertion_auc": _nanmean(self.auc_insertion), "srg": _nanmean(self.srg)}


def _image_view(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` or ``(B, H, W)`` as ``(N, H, W)`` images (a view when possible)."""
    return x.reshape(-1, *x.shape[-2:])


def _neighbours(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``x`` with every ``removed`` pixel imputed from its 8-neighbours, ring by ring from the kept pixels inward.

    Each pass gives every removed pixel that touches a known pixel the weighted mean of its known
    neighbours (weights 1/6 for edge and 1/12 for corner neighbours, renormalised over the known ones), then
    counts it as known. Images with no kept pixel get their own mean. Kept pixels are never changed.
    """
    img, gone = _image_view(x).unsqueeze(1), _image_view(removed).unsqueeze(1)  # (N, 1, H, W)
    kernel = torch.tensor(_NEIGHBOUR_KERNEL, dtype=img.dtype, device=img.device).view(1, 1, 3, 3)
    known = ~gone
    value = img.masked_fill(gone, 0.0)
    for _ in range(sum(img.shape[-2:])):  # the farthest pixel is at most H + W rings away
        todo = gone & ~known
        if not bool(todo.any()):
            break
        weight = nnf.conv2d(known.to(img.dtype), kernel, padding=1)
        total = nnf.conv2d(value * known, kernel, padding=1)
        new = todo & (weight > 0)
        if not bool(new.any()):
            break
        value = torch.where(new, total / weight.clamp_min(1e-30), value)
        known = known | new
    todo = gone & ~known  # images with nothing kept
    value = torch.where(todo, img.mean(dim=(2, 3), keepdim=True).expand_as(img), value)
    return value.reshape(x.shape)


def faithfulness_curves(
    forward_func: ForwardFunc, inputs: torch.Tensor, scores: torch.Tensor, *, target: Any = None,
    fill: str = "baseline", baseline: torch.Tensor | float | None = None, points: int = 10,
    units: torch.Tensor | None = None, eligible: torch.Tensor | None = None, blur_sigma: float | None = None,
    batch_size: int | None = None, delta_floor: float = 1e-3,
) -> CurveResult:
    """Deletion (MoRF, LeRF) and insertion curves of each example, their areas and SRG.

    Args:
        forward_func: The model: ``(B, ...) -> (B,)``, ``(B, C)``, a tuple or a mapping with ``logits``. Other
            model arguments belong in a closure; it sees stacked copies of ``inputs`` (put the model in eval
            mode: batch statistics would mix the perturbed copies).
        inputs: ``(B, ...)`` floating features (integer token ids only with ``fill="baseline"``).
        scores: One score per unit ``(B, U)``; without ``units`` one per feature, ``(B, D)`` or ``inputs``' shape.
        target: ``(B,)`` long, an int or None: the output column to explain; not needed with one output.
        fill: What a removed unit becomes: ``"baseline"`` (``baseline``); ``"blur"`` (the input under a
            Gaussian blur of its last two dims, ``baselines.blurred()``); ``"neighbours"`` (ROAD-like, Rong et
            al. ICML 2022, noise-free: each removed pixel is the weighted mean of its 8-neighbours, 1/6 edge and
            1/12 corner, filled ring by ring from the kept pixels inward; an image with nothing kept takes its
            own mean). ``"blur"`` and ``"neighbours"`` need images ``(B, C, H, W)`` or ``(B, H, W)``;
            ``"neighbours"`` imputes each channel from the same channel.
        baseline: With ``fill="baseline"``: a number or a tensor broadcastable to ``inputs``; default zeros.
        points: Steps along each curve; each curve has ``points + 1`` values.
        units: Long ``inputs.shape[1:]``: the unit of every feature (e.g. an RGB pixel's 3 channels share one).
        eligible: Bool ``(B, U)``: the units that may be removed or inserted (e.g. real tokens, not padding);
            the others always keep their value. Default: all.
        blur_sigma: With ``fill="blur"``: the Gaussian's standard deviation in pixels; default
            ``max(1, min(H, W) / 32)``.
        batch_size: Rows per call of ``forward_func`` (copies of several points are stacked up to it); default
            one point (``B`` rows) per call.
        delta_floor: Lower bound of the normalising denominator ``|F(x) - F(x_fill)|``.

    Returns:
        A ``CurveResult``.

    Raises:
        TypeError, ValueError: a bad argument; the message names it.
    """
    if not callable(forward_func):
        raise TypeError(f"`forward_func` must be callable, got {type(forward_func).__name__}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"`inputs` must be a Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must have shape (B, ...) with B >= 1, got {tuple(inputs.shape)}")
    if inputs.dtype == torch.bool or inputs.dtype.is_complex:
        raise TypeError(f"`inputs` must be a real Tensor, got dtype {inputs.dtype}")
    inputs = inputs.detach()
    n = inputs.shape[0]
    fill = validate_choice(fill, "fill", CURVE_FILLS)
    points = validate_int(points, "points", minimum=1)
    batch_size = None if batch_size is None else validate_int(batch_size, "batch_size", minimum=1)
    delta_floor = validate_positive_float(delta_floor, "delta_floor")
    target = validate_target(target, n)
    if baseline is not None and fill != "baseline":
        raise ValueError(f"`baseline` is only used with fill='baseline', got fill={fill!r}")
    if blur_sigma is not None and fill != "blur":
        raise ValueError(f"`blur_sigma` is only used with fill='blur', got fill={fill!r}")
    if fill != "baseline":
        if inputs.ndim not in (3, 4):
            raise ValueError(f"`fill`={fill!r} needs images (B, C, H, W) or (B, H, W), got `inputs` of shape "
                             f"{tuple(inputs.shape)}: use fill='baseline'")
        if not inputs.dtype.is_floating_point:
            raise TypeError(f"`fill`={fill!r} needs floating `inputs`, got dtype {inputs.dtype}")
    scores, unit_map, eligible = _units(inputs, scores, units, eligible)
    n_units = scores.shape[1]

    if fill == "baseline":
        filled = make_baselines(baseline, (inputs,))[0]
    elif fill == "blur":
        sigma = (max(1.0, min(inputs.shape[-2:]) / 32) if blur_sigma is None
                 else validate_positive_float(blur_sigma, "blur_sigma"))
        filled = blurred(inputs, sigma)
    else:
        filled = None  # depends on what is removed

    # Ranks: position of every unit in the most- and least-relevant-first orders; ineligible units go last.
    key = scores.nan_to_num(0.0, posinf=0.0, neginf=0.0)
    ranks = []
    for signed in (-key, key):
        order = signed.masked_fill(~eligible, math.inf).sort(dim=1, stable=True).indices
        ranks.append(torch.empty_like(order).scatter_(1, order, torch.arange(n_units).expand_as(order)))
    rank_morf, rank_lerf = ranks
    n_eligible = eligible.sum(1)
    steps = torch.arange(points + 1)
    counts = (2 * steps * n_eligible.unsqueeze(1) + points).div(2 * points, rounding_mode="floor")  # (B, P + 1)

    bad = ~scores.isfinite().all(1) | (n_eligible == 0)
    if inputs.dtype.is_floating_point:
        bad |= ~inputs.reshape(n, -1).isfinite().all(1).cpu()

    # The distinct inputs: x, x_fill, then the inner points of MoRF, LeRF and insertion.
    states = [("x", 0), ("fill", points)] + [(kind, j) for kind in ("morf", "lerf", "insertion")
                                             for j in range(1, points)]

    def removed_units(kind: str, j: int) -> torch.Tensor:
        k = counts[:, j : j + 1]
        if kind == "x":
            return torch.zeros_like(eligible)
        if kind == "fill":
            return eligible
        if kind == "morf":
            return rank_morf < k
        if kind == "lerf":
            return rank_lerf < k
        return eligible & (rank_morf >= k)  # insertion: everything but the top k

    def build(kind: str, j: int) -> torch.Tensor:
        mask = removed_units(kind, j)[:, unit_map].reshape(inputs.shape).to(inputs.device)
        if filled is None:
            return _neighbours(inputs, mask)
        return torch.where(mask, filled, inputs)

    def chunks() -> Iterator[torch.Tensor]:
        if batch_size is None:
            for s in states:
                yield build(*s)
            return
        pending: list[torch.Tensor] = []
        rows = 0
        for s in states:
            pending.append(build(*s))
            rows += n
            while rows >= batch_size:
                stacked = torch.cat(pending)
                yield stacked[:batch_size]
                pending, rows = [stacked[batch_size:]], rows - batch_size
        if rows:
            yield torch.cat(pending)

    calls = 0
    parts = []
    with torch.no_grad():
        for chunk in chunks():
            parts.append(_outputs(forward_func, chunk, None))
            calls += 1
    stacked_out = torch.cat(parts)
    picked = _pick(stacked_out, None if target is None else target.repeat(len(states))).view(len(states), n)

    output, fill_output = picked[0], picked[1]
    index = {state: i for i, state in enumerate(states)}

    def raw(kind: str) -> torch.Tensor:
        start, end = (1, 0) if kind == "insertion" else (0, 1)  # rows of x and x_fill in `picked`
        cols = [picked[start]] + [picked[index[(kind, j)]] for j in range(1, points)] + [picked[end]]
        return torch.stack(cols, 1).masked_fill(bad.unsqueeze(1), NAN)

    raws = [raw(kind) for kind in ("morf", "lerf", "insertion")]
    denom = (output - fill_output).abs().clamp_min(delta_floor).unsqueeze(1)
    curves = [(r - fill_output.unsqueeze(1)) / denom for r in raws]
    ok = ~bad & output.isfinite() & fill_output.isfinite()
    for c in curves:
        ok &= c.isfinite().all(1)
    curves = [c.masked_fill(~ok.unsqueeze(1), NAN) for c in curves]
    return CurveResult(
        fractions=steps.to(torch.float64) / points, morf=curves[0], lerf=curves[1], insertion=curves[2],
        morf_output=raws[0], lerf_output=raws[1], insertion_output=raws[2], output=output,
        fill_output=fill_output, counts=counts, forwards=len(states), calls=calls, fill=fill,
        delta_floor=delta_floor,
    )
