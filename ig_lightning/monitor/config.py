"""Checks of the monitor's arguments that need no model: each error names the argument and its value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ig_lightning._validation import check_int, check_positive_float
from ig_lightning.monitor.probe import ModelInputs, Name, default_unpack
from ig_lightning.output.views import Names


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` can be {set(choices)}, got {value!r}")
    return value


def check_optional_threshold(value: Any, name: str) -> float | None:
    return None if value is None else check_positive_float(value, name, allow_zero=True)


def check_names(value: Any, name: str) -> Sequence[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a list of names, got {type(value).__name__}")
    if not value:
        raise ValueError(f"`{name}` must not be empty")
    return [str(v) for v in value]


def check_vocabulary(value: Any) -> Names:
    if value is None or callable(value) or callable(getattr(value, "convert_ids_to_tokens", None)):
        return value
    return check_names(value, "vocabulary")


def check_baseline(value: Any, name: str = "baseline") -> Any:
    """``None``, a finite number, a Tensor, or (several attributed inputs) a tuple/dict of those."""
    if isinstance(value, list):  # from a config file
        value = torch.tensor(value)
    if isinstance(value, Mapping):
        return {k: check_baseline(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(check_baseline(v, f"{name}[{i}]") for i, v in enumerate(value))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"`{name}` must be None, a number or a Tensor, got {type(value).__name__}")
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` must be finite, got a Tensor with NaN or infinite values")
    return value


def check_attribute(value: Any) -> list[Name] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, int)) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise TypeError(f"`attribute` must be an input name, a position, or a non-empty list of them, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"`attribute` entries must be input names (str) or positions (int), got {item!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"`attribute` names an input twice: {value!r}")
    return list(items)


def check_probe(probe: Any) -> tuple[ModelInputs | None, torch.Tensor | None, int]:
    """``(inputs, labels, size)`` of a given probe, or ``(None, None, n)`` for an int ``n``."""
    if isinstance(probe, bool):
        raise TypeError(
            f"`probe` must be an int, a Tensor, a dict of Tensors or an (inputs, labels) pair, got {probe!r}")
    if isinstance(probe, numbers.Integral):
        return None, None, check_int(probe, "probe", minimum=1)
    labels = None
    try:
        if isinstance(probe, (tuple, list)) and len(probe) == 2:  # (inputs, labels); inputs may be a structure
            inputs, labels = ModelInputs.of(probe[0], "`probe`"), probe[1]
        elif isinstance(probe, Mapping):
            inputs, labels = default_unpack(probe)
        elif isinstance(probe, torch.Tensor):
            inputs = ModelInputs.of(probe, "`probe`")
        else:
            raise TypeError
    except TypeError:
        raise TypeError(f"`probe` must be an int, a Tensor, a dict of Tensors or an (inputs, labels) pair, got "
                        f"{type(probe).__name__}") from None
    if len(inputs) == 0:
        raise ValueError("`probe` must hold at least one example")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.ndim == 0 or len(labels) != len(inputs)):
        raise ValueError(f"`probe` labels must be a Tensor with one label per input ({len(inputs)})")
    for name, t in inputs.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"`probe` input {name!r} holds NaN or infinite values")
    inputs = inputs.map(lambda t: t.detach().cpu().clone())
    return inputs, None if labels is None else labels.detach().cpu().clone(), len(inputs)


def model_fingerprint(module: nn.Module) -> str:
    shapes = ",".join(f"{n}:{tuple(p.shape)}" for n, p in module.named_parameters())
    return f"{type(module).__qualname__}[{shapes}]"


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
