"""Argument checks shared by the engine and the callback: errors name the argument and value."""

from __future__ import annotations

import numbers
from typing import Any

import torch


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int (bools refused), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}")
    return int(value)


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {bound}, got {value!r}")
    return value


def check_target(target: Any, batch_size: int) -> torch.Tensor | None:
    """Normalise ``target`` to ``None`` or a LongTensor of shape ``(batch_size,)`` (on CPU).

    Accepts ``None``, an int, a 0-d or ``(B,)`` integer tensor, or a sequence of ints.
    The range against the number of outputs is checked later, once the outputs are known.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"`target` must be None, an int or a LongTensor of shape ({batch_size},), got {target!r}")
    if isinstance(target, numbers.Integral):
        return torch.full((batch_size,), int(target), dtype=torch.long)
    if isinstance(target, (list, tuple)):
        if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target):
            raise TypeError(f"`target` must hold ints, got {target!r}")
        target = torch.tensor(target, dtype=torch.long)
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"`target` must be None, an int or a LongTensor of shape ({batch_size},), got {type(target).__name__}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"`target` must be an integer tensor, got dtype {target.dtype}")
    if target.ndim == 0:
        return torch.full((batch_size,), int(target), dtype=torch.long)
    if target.shape != (batch_size,):
        raise ValueError(f"`target` must have shape ({batch_size},), got {tuple(target.shape)}")
    return target.detach().to("cpu", torch.long).clone()
