"""What goes into a model and what comes out: inputs, baselines, extra arguments and outputs.

The engine integrates along one flat vector per example. ``Flat`` turns a list of tensors
``(B, ...)`` (several inputs, or a layer's tuple output) into ``(B, D)`` and back, so the
quadrature code never needs to know how many tensors there are.

Example::

    >>> import torch
    >>> flat = Flat([torch.zeros(2, 3), torch.zeros(2, 1, 2)])
    >>> v = flat.flatten([torch.ones(2, 3), 2 * torch.ones(2, 1, 2)])
    >>> v.shape, [tuple(t.shape) for t in flat.split(v)]
    (torch.Size([2, 5]), [(2, 3), (2, 1, 2)])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Sequence

import torch


def as_tuple(value: Any) -> tuple:
    """``()`` for None, the tuple itself, or a 1-tuple."""
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


def validate_inputs(inputs: Any, needs_float: bool) -> tuple[torch.Tensor, ...]:
    """``inputs`` (a Tensor or a tuple of Tensors with one batch size) as a tuple; errors name the bad entry."""
    if isinstance(inputs, torch.Tensor):
        items: tuple = (inputs,)
    elif isinstance(inputs, tuple) and inputs:
        items = inputs
    else:
        raise TypeError(f"`inputs` must be a Tensor or a non-empty tuple of Tensors, got {type(inputs).__name__}")
    for i, t in enumerate(items):
        name = "`inputs`" if len(items) == 1 else f"`inputs[{i}]`"
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.ndim < 1 or t.shape[0] == 0:
            raise ValueError(f"{name} must have a non-empty batch dimension, got shape {tuple(t.shape)}")
        if t.shape[0] != items[0].shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]}, but `inputs[0]` has {items[0].shape[0]}")
        if needs_float and not t.dtype.is_floating_point:
            raise TypeError(
                f"{name} must be floating point (got {t.dtype}); for token ids pass `layer=` (e.g. the embedding), "
                "and pass masks and other non-attributed tensors as `additional_forward_args`"
            )
    return items


def make_baselines(baselines: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """One baseline tensor per input: ``baselines`` is None, a number, a Tensor, or a tuple of those per input."""
    if isinstance(baselines, tuple):
        if len(baselines) != len(inputs):
            raise ValueError(f"`baselines` must have one entry per input ({len(inputs)}), got {len(baselines)}")
        return tuple(_baseline(b, x, f"`baselines[{i}]`") for i, (b, x) in enumerate(zip(baselines, inputs)))
    if isinstance(baselines, torch.Tensor) and len(inputs) > 1:
        raise TypeError(f"`baselines` must be a tuple with one entry per input ({len(inputs)}), got a Tensor")
    return tuple(_baseline(baselines, x, "`baselines`") for x in inputs)


def _baseline(value: Any, inputs: torch.Tensor, name: str) -> torch.Tensor:
    if value is None:
        return torch.zeros_like(inputs)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        if not inputs.dtype.is_floating_point and not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int for integer inputs, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}: every attribution would be NaN")
        return torch.full_like(inputs, value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be None, a number or a Tensor, got {type(value).__name__}")
    try:
        shape = torch.broadcast_shapes(value.shape, inputs.shape)
    except RuntimeError:
        shape = None
    if shape != inputs.shape:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to the inputs' shape {tuple(inputs.shape)}"
        )
    if inputs.dtype.is_floating_point != value.dtype.is_floating_point:
        raise TypeError(f"{name} dtype {value.dtype} does not match the inputs' dtype {inputs.dtype}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or infinite values: the attributions of those examples would be NaN")
    return value.detach().to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs).clone()


class Extras:
    """``additional_forward_args``: tensors whose first dimension is the batch follow their example."""

    def __init__(self, args: Any, n: int, device: torch.device) -> None:
        self.args = as_tuple(args)
        self.per_example = [isinstance(a, torch.Tensor) and a.ndim >= 1 and a.shape[0] == n for a in self.args]
        self.args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in self.args)

    def take(self, idx: torch.Tensor) -> tuple:
        """The arguments for the examples ``idx`` (per-example tensors indexed, the rest as they are)."""
        return tuple(a[idx] if per else a for a, per in zip(self.args, self.per_example))


def model_output(out: Any) -> torch.Tensor:
    """The tensor to explain in what a model returned.

    A Tensor; a mapping or object with a ``logits`` Tensor (Hugging Face ``ModelOutput``); or a
    tuple/list whose first element is a Tensor.

    Raises:
        TypeError: none of these; the message names what the model returned.
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    what = type(out).__name__
    if isinstance(out, Mapping):
        what += f" with keys {list(out)[:8]}"
    elif isinstance(out, (tuple, list)):
        what += f" of {[type(o).__name__ for o in out][:8]}"
    raise TypeError(
        f"the model returned {what}: expected a Tensor, a tuple/list whose first element is a Tensor, or a "
        "mapping/object with a `logits` Tensor; select the output to explain with `output_transform` "
        "(the monitor) or a wrapper function"
    )


def select_outputs(out: Any, target: torch.Tensor | None, n: int) -> torch.Tensor:
    """One scalar per row: the model's output ``(n,)`` or ``(n, C)``, indexed by ``target``."""
    out = model_output(out)
    if out.ndim not in (1, 2) or out.shape[0] != n:
        raise ValueError(
            f"`forward_func` must return outputs of shape ({n},) or ({n}, C) for {n} inputs, got {tuple(out.shape)}"
        )
    if out.ndim == 1:
        if target is not None:
            raise ValueError(f"`target` must be None when `forward_func` returns shape ({n},), got a target")
        return out
    n_classes = out.shape[1]
    if target is None:
        if n_classes != 1:
            raise ValueError(
                f"`target` is None but `forward_func` returns {n_classes} outputs per example: pass a target")
        return out[:, 0]
    bad = (target < 0) | (target >= n_classes)
    if bool(bad.any()):
        raise ValueError(f"`target` must be in [0, {n_classes - 1}], got {target[bad].unique()[:5].tolist()}")
    return out.gather(1, target.to(out.device).view(-1, 1)).squeeze(1)


class Flat:
    """Several tensors ``(B, ...)`` as one ``(B, D)`` vector per example, in their common dtype, and back."""

    def __init__(self, like: Sequence[torch.Tensor]) -> None:
        self.shapes = [t.shape[1:] for t in like]
        self.dtypes = [t.dtype for t in like]
        self.sizes = [t[0].numel() if t.shape[0] else int(torch.Size(t.shape[1:]).numel()) for t in like]
        dtype = like[0].dtype
        for t in like[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        self.dtype = dtype

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        n = tensors[0].shape[0]
        return torch.cat([t.reshape(n, -1).to(self.dtype) for t in tensors], 1)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        n = flat.shape[0]
        parts = torch.split(flat, self.sizes, dim=1)
        return [p.reshape(n, *shape).to(dtype) for p, shape, dtype in zip(parts, self.shapes, self.dtypes)]
