"""Faithfulness by deletion: does removing what the attributions call important change the output?

Forward passes only, under ``torch.no_grad()``. For each example the *units* (features, pixels shared
by their channels, tokens) with the largest **signed** scores, i.e. those the attribution says push the
explained output *up*, are set to the baseline, and the relative drop of the output is compared with
removing as many random units. A faithful attribution drops the output far more than chance.

``drop = (F(x) - F(x_del)) / max(|F(x) - F(x')|, delta_floor)``: the share of the prediction, measured
from the baseline ``x'``, that the deletion takes away (1: all of it; 0: nothing; negative: it went up).

Examples where something is NaN or infinite (inputs, scores, outputs) never raise: their drops are
NaN and they are left out of every mean.

Example::

    >>> import torch
    >>> w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    >>> x = torch.ones(1, 3, dtype=torch.float64)
    >>> res = deletion_drop(lambda v: v @ w, x, 0.0, x * w, k=1)
    >>> res.top_units.tolist(), res.deleted.tolist(), res.drop.tolist()
    ([[2]], [3.0], [0.5])
    >>> rule_deletion_drop(lambda v: v @ w, x, 0.0, torch.tensor([[10, 11, 12]]), {0: [10, 11]}, torch.tensor([0]))
    {0: 0.5}
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ig_lightning._validation import validate_int, validate_positive_float, validate_target
from ig_lightning.functional._inputs import make_baselines, model_output

__all__ = ["DeletionResult", "deletion_drop", "rule_deletion_drop"]

ForwardFunc = Callable[[torch.Tensor], Any]
NAN = float("nan")
#: Floor of the random drop in ``deletion_ratio``.
RATIO_FLOOR = 0.01


def _relative_drop(before: torch.Tensor, after: torch.Tensor, baseline: torch.Tensor, floor: float) -> torch.Tensor:
    drop = (before - after) / (before - baseline).abs().clamp_min(floor)
    return drop.where(drop.isfinite(), torch.full_like(drop, NAN))


@dataclass
class DeletionResult:
    """What ``deletion_drop()`` returns; every tensor is per example, on CPU.

    Attributes:
        output: ``F(x)``, the explained output, ``(B,)`` float64.
        baseline_output: ``F(x')`` with ``x'`` the baselines, ``(B,)`` float64.
        deleted: ``F(x)`` with the top-``k`` units set to the baseline, ``(B,)`` float64 (NaN where the
            example's scores or inputs are not finite).
        randomized: ``F(x)`` with ``k`` random eligible units set to the baseline, ``(B,)`` float64.
        top_units: The units deleted, ``(B, k)`` long, largest score first; ``-1`` pads examples with
            fewer than ``k`` eligible units and fills examples left out (non-finite scores or inputs).
        random_units: The random units deleted, ``(B, k)`` long, padded the same way.
        delta_floor: The floor of the denominator of ``drop``.
    """

    output: torch.Tensor
    baseline_output: torch.Tensor
    deleted: torch.Tensor
    randomized: torch.Tensor
    top_units: torch.Tensor
    random_units: torch.Tensor
    delta_floor: float = 1e-3

    @property
    def drop(self) -> torch.Tensor:
        """``(F(x) - F(x_del)) / max(|F(x) - F(x')|, delta_floor)`` per example; NaN where not finite."""
        return _relative_drop(self.output, self.deleted, self.baseline_output, self.delta_floor)

    @property
    def random_drop(self) -> torch.Tensor:
        """``drop`` for the random deletion."""
        return _relative_drop(self.output, self.randomized, self.baseline_output, self.delta_floor)

    def summary(self) -> dict[str, float]:
        """Means over the examples where both drops are finite, and their ratio (top-k over random).

        The ratio's denominator is floored at ``RATIO_FLOOR`` (1% of the prediction): removing random units
        often changes almost nothing, or raises the output, and the ratio must not explode or flip sign then.
        Every value is NaN when no example is finite.
        """
        drop, rand = self.drop, self.random_drop
        ok = drop.isfinite() & rand.isfinite()
        if not bool(ok.any()):
            return {"deletion_drop": NAN, "deletion_random_drop": NAN, "deletion_ratio": NAN}
        mean, rand_mean = float(drop[ok].mean()), float(rand[ok].mean())
        return {"deletion_drop": mean, "deletion_random_drop": rand_mean,
                "deletion_ratio": mean / max(rand_mean, RATIO_FLOOR)}


def _common(inputs: Any, baselines: Any, delta_floor: Any, batch_size: Any) -> tuple[Any, ...]:
    """The arguments both checks share, validated: ``inputs``, its baselines, ``delta_floor``, ``batch_size``."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"`inputs` must be a Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must have shape (B, ...) with B >= 1, got {tuple(inputs.shape)}")
    inputs = inputs.detach()
    batch_size = None if batch_size is None else validate_int(batch_size, "batch_size", minimum=1)
    floor = validate_positive_float(delta_floor, "delta_floor")
    return inputs, make_baselines(baselines, (inputs,))[0], floor, batch_size


def _integer(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a Tensor, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {x.dtype}")
    return x.detach().long()


def _outputs(forward: ForwardFunc, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``forward`` over chunks of rows as a float64 CPU matrix ``(n, C)``; an output ``(n,)`` becomes ``(n, 1)``."""
    parts = []
    for chunk in torch.split(x, batch_size or x.shape[0]):
        out, m = model_output(forward(chunk)).detach(), chunk.shape[0]
        out = out.unsqueeze(1) if out.shape == (m,) else out
        if out.ndim != 2 or out.shape[0] != m:
            raise ValueError(f"`forward` must return shape ({m},) or ({m}, C) for {m} inputs, got {tuple(out.shape)}")
        parts.append(out.to("cpu", torch.float64))
    return torch.cat(parts)


def _pick(out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The explained column: the only one, or ``target``'s."""
    if out.shape[1] == 1:
        return out[:, 0]
    if target is None:
        raise ValueError(f"`target` is None but `forward` returns outputs of shape {tuple(out.shape)}: pass a target")
    bad = (target < 0) | (target >= out.shape[1])
    if bool(bad.any()):
        raise ValueError(f"`target` must be in [0, {out.shape[1] - 1}], got {target[bad].unique()[:5].tolist()}")
    return out.gather(1, target.view(-1, 1)).squeeze(1)


def _units(inputs: torch.Tensor, scores: Any, units: Any, eligible: Any) -> tuple[torch.Tensor, ...]:
    """``scores`` and ``eligible`` as ``(B, U)`` and ``units`` as a flat ``(D,)`` feature -> unit map, on CPU."""
    n, feat = inputs.shape[0], inputs.shape[1:]
    if not isinstance(scores, torch.Tensor) or scores.dtype == torch.bool or scores.dtype.is_complex:
        raise TypeError(f"`scores` must be a real Tensor, got {getattr(scores, 'dtype', type(scores).__name__)}")
    if units is None:
        if scores.shape not in ((n, feat.numel()), (n, *feat)):
            raise ValueError(f"`scores` must have shape ({n}, {feat.numel()}) or {(n, *feat)} (one score per "
                             f"feature, no `units`), got {tuple(scores.shape)}")
        scores, unit_map = scores.reshape(n, -1), torch.arange(feat.numel())
        if isinstance(eligible, torch.Tensor) and eligible.shape == inputs.shape:
            eligible = eligible.reshape(n, -1)
    else:
        unit_map = _integer(units, "units").cpu()
        if unit_map.shape != feat:
            raise ValueError(f"`units` must have the shape of one example {tuple(feat)}, got {tuple(unit_map.shape)}")
        if scores.ndim != 2 or scores.shape[0] != n:
            raise ValueError(f"`scores` must have shape ({n}, U) (one score per unit), got {tuple(scores.shape)}")
        unit_map = unit_map.reshape(-1)
        if unit_map.numel() and (int(unit_map.min()) < 0 or int(unit_map.max()) >= scores.shape[1]):
            raise ValueError(f"`units` values must be in [0, {scores.shape[1]}) (the columns of `scores`), got "
                             f"[{int(unit_map.min())}, {int(unit_map.max())}]")
    if eligible is None:
        eligible = torch.ones(scores.shape, dtype=torch.bool)
    elif not isinstance(eligible, torch.Tensor) or eligible.dtype != torch.bool:
        raise TypeError(f"`eligible` must be a bool Tensor, got {getattr(eligible, 'dtype', type(eligible).__name__)}")
    elif eligible.shape != scores.shape:
        raise ValueError(f"`eligible` must have shape {tuple(scores.shape)}, got {tuple(eligible.shape)}")
    return scores.detach().to("cpu", torch.float64), unit_map, eligible.detach().cpu()


def _choose(values: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the (up to) ``k`` eligible columns with the largest values, ``-1``-padded to ``(B, k)``."""
    kk = min(k, values.shape[1])
    idx = values.masked_fill(~eligible, -math.inf).topk(kk, dim=1).indices
    chosen = torch.full((values.shape[0], k), -1, dtype=torch.long)
    chosen[:, :kk] = idx.where(torch.arange(kk) < eligible.sum(1, keepdim=True), -1)
    return chosen


def _delete(inputs: torch.Tensor, base: torch.Tensor, chosen: torch.Tensor, unit_map: torch.Tensor,
            n_units: int) -> torch.Tensor:
    """``inputs`` with every feature of the ``chosen`` units replaced by the baseline."""
    removed = torch.zeros(chosen.shape[0], n_units + 1, dtype=torch.bool)
    removed.scatter_(1, chosen.where(chosen >= 0, n_units), True)  # -1 lands in a spare column
    mask = removed[:, unit_map].reshape(inputs.shape).to(inputs.device)
    return torch.where(mask, base, inputs)


def deletion_drop(
    forward: ForwardFunc, inputs: torch.Tensor, baselines: torch.Tensor | float, scores: torch.Tensor, *, k: int,
    target: torch.Tensor | None = None, units: torch.Tensor | None = None, eligible: torch.Tensor | None = None,
    generator: torch.Generator | None = None, delta_floor: float = 1e-3, batch_size: int | None = None,
) -> DeletionResult:
    """Delete each example's top-``k`` units by score, and ``k`` random ones, and measure the output's drop.

    Args:
        forward: The model: ``(B, ...) -> (B,)``, ``(B, C)``, a tuple or a mapping with ``logits``.
        inputs: ``(B, ...)``: floating features, or integer token ids.
        baselines: What a deleted feature becomes: a number (a token id such as 0 for ids) or a tensor
            broadcastable to ``inputs``.
        scores: One score per unit ``(B, U)``; without ``units`` one per feature, ``(B, D)`` or ``inputs``' shape.
        k: Units deleted per example (at most the number eligible).
        target: ``(B,)`` long: the output column to explain; not needed (and ignored) with one output.
        units: Long ``inputs.shape[1:]``: the unit of every feature (e.g. an RGB pixel's 3 channels share one).
        eligible: Bool ``(B, U)``: the units that may be deleted (e.g. not padding). Default: all.
        generator: Draws the random units; default a generator seeded 0 (never the global RNG).
        delta_floor: Lower bound of the denominator ``|F(x) - F(x')|``.
        batch_size: Examples per forward call; default all at once.

    Raises:
        TypeError, ValueError: a bad argument; the message names it.
    """
    k = validate_int(k, "k", minimum=1)
    inputs, base, delta_floor, batch_size = _common(inputs, baselines, delta_floor, batch_size)
    target = validate_target(target, inputs.shape[0])
    scores, unit_map, eligible = _units(inputs, scores, units, eligible)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
    noise = torch.rand(scores.shape, generator=generator, device=generator.device).cpu()
    bad = ~scores.isfinite().all(1)
    if inputs.dtype.is_floating_point:
        bad |= ~inputs.reshape(inputs.shape[0], -1).isfinite().all(1).cpu()
    top, rand = _choose(scores.nan_to_num(0.0), eligible, k), _choose(noise, eligible, k)
    top[bad], rand[bad] = -1, -1
    with torch.no_grad():
        output = _pick(_outputs(forward, inputs, batch_size), target)
        baseline_output = _pick(_outputs(forward, base, batch_size), target)
        outs = [_pick(_outputs(forward, _delete(inputs, base, c, unit_map, scores.shape[1]), batch_size), target)
                for c in (top, rand)]
    for out in outs:
        out[bad] = NAN
    return DeletionResult(output, baseline_output, outs[0], outs[1], top, rand, delta_floor)


def rule_deletion_drop(
    forward: ForwardFunc, inputs: torch.Tensor, baselines: torch.Tensor | float, keys: torch.Tensor,
    rules: Mapping[int, Sequence[int]], targets: torch.Tensor, *, delta_floor: float = 1e-3,
    batch_size: int | None = None,
) -> dict[int, float]:
    """Per class, the mean relative drop of its output when every feature whose key is one of its rules is deleted.

    For class ``c``, over the examples with ``targets == c``: every feature whose key is in ``rules[c]`` is
    set to the baseline and ``(F(x)_c - F(x_rem)_c) / max(|F(x)_c - F(x')_c|, delta_floor)`` is averaged
    over the finite examples (NaN if none; an example holding no rule key counts as 0). A single-output
    model uses its one output for every class: the classes only group the examples.

    Args:
        forward: As in ``deletion_drop()``.
        inputs: As in ``deletion_drop()``.
        baselines: As in ``deletion_drop()``.
        keys: Integer key per feature, ``inputs``' shape or broadcastable to it: token ids, or feature indices.
        rules: Class -> its rule keys (ints, or ``(key, score)`` pairs as from ``class_top_features``).
        targets: ``(B,)`` long: each example's class.
        delta_floor: As in ``deletion_drop()``.
        batch_size: As in ``deletion_drop()``.

    Returns:
        ``{class: mean drop}`` for the classes of ``rules`` that have examples, in class order.
    """
    inputs, base, delta_floor, batch_size = _common(inputs, baselines, delta_floor, batch_size)
    if targets is None:
        raise TypeError("`targets` must be a LongTensor of shape (B,), got None")
    targets = validate_target(targets, inputs.shape[0])
    keys = _integer(keys, "keys").to(inputs.device)
    try:
        keys = keys.expand_as(inputs)
    except RuntimeError:
        raise ValueError(f"`keys` of shape {tuple(keys.shape)} does not broadcast to {tuple(inputs.shape)}") from None
    if not isinstance(rules, Mapping):
        raise TypeError(f"`rules` must be a dict class -> list of keys, got {type(rules).__name__}")
    rule_keys = {}
    for c, rule in rules.items():
        rule = [r[0] if isinstance(r, tuple) else r for r in rule]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in [c, *rule]):
            raise TypeError(f"`rules` must map int classes to lists of int keys, got {c!r}: {rules[c]!r}")
        rule_keys[int(c)] = torch.tensor(rule, dtype=torch.long, device=inputs.device)
    result: dict[int, float] = {}
    with torch.no_grad():
        output, baseline_output = _outputs(forward, inputs, batch_size), _outputs(forward, base, batch_size)
        n_out = output.shape[1]
        # One forward for every example: each loses the rule of its own class (the model sees a whole batch,
        # so models that take other per-example tensors alongside keep them aligned).
        remove = torch.zeros(inputs.shape, dtype=torch.bool, device=inputs.device)
        present = []
        for c in sorted(rule_keys):
            rows = (targets == c).to(inputs.device)
            if not bool(rows.any()):
                continue
            if n_out > 1 and not 0 <= c < n_out:
                raise ValueError(f"`rules` has class {c}, but `forward` returns {n_out} outputs per example")
            hit = torch.isin(keys, rule_keys[c])
            remove |= hit & rows.view(-1, *([1] * (inputs.ndim - 1)))
            present.append(c)
        after = _outputs(forward, torch.where(remove, base, inputs), batch_size) if present else output
        for c in present:
            rows = (targets == c).nonzero().squeeze(1)
            col = 0 if n_out == 1 else c
            drop = _relative_drop(output[rows, col], after[rows, col], baseline_output[rows, col], delta_floor)
            finite = drop[drop.isfinite()]
            result[c] = float(finite.mean()) if finite.numel() else NAN
    return result
