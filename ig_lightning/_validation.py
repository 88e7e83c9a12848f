"""Argument validation shared by the engine and the monitor: one rule per kind of argument.

Every error names the argument and the value it got. The engine and the monitor's configuration both call
these, so an argument the monitor accepts is one the engine accepts. (A *check* is a monitoring pass; this
module *validates*.)

Example::

    >>> validate_choice("stop", "on_breach", ("warn", "stop", "raise"))
    'stop'
    >>> validate_int(0, "every_n_epochs", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `every_n_epochs` must be >= 1, got 0
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch


def validate_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int (bools refused), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}")
    return int(value)


def validate_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {bound}, got {value!r}")
    return value


def validate_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a bool (``0``/``1`` refused: a flag is a flag)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}")
    return value


def validate_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` can be {set(choices)}, got {value!r}")
    return value


def validate_optional_threshold(value: Any, name: str) -> float | None:
    """``None`` (no threshold) or a finite number >= 0."""
    return None if value is None else validate_positive_float(value, name, allow_zero=True)


def validate_names(value: Any, name: str) -> list[str] | None:
    """``None`` or a non-empty list of names (each turned into ``str``)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a list of names, got {type(value).__name__}")
    if not value:
        raise ValueError(f"`{name}` must not be empty")
    return [str(v) for v in value]


def validate_target(target: Any, batch_size: int) -> torch.Tensor | None:
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


def validate_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x.detach().cpu().float()


def validate_tokens(tokens: object, scores: torch.Tensor) -> list[list[str]]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"`tokens` must be a sequence of token sequences, got {type(tokens).__name__}")
    rows = [[str(t) for t in row] for row in tokens]
    if not rows:
        raise ValueError("`tokens` must hold at least one example, got 0")
    if scores.ndim != 2 or scores.shape[0] != len(rows):
        raise ValueError(f"`scores` must be shaped (N={len(rows)}, T), got {tuple(scores.shape)}")
    longest = max(len(row) for row in rows)
    if longest > scores.shape[1]:
        raise ValueError(
            f"`tokens` has an example of {longest} tokens, more than the {scores.shape[1]} columns"
            " of `scores`"
        )
    return rows
