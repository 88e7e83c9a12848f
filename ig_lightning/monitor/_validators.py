"""Validators of the settings' values that need more than ``ig_lightning._validation``'s rules: input names,
vocabularies, shares and guarded features. Every error names the setting's full path (``rule_extraction.guards``).

Example::

    >>> validate_share(0.25, "rule_extraction.event_rise")
    0.25
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ig_lightning._validation import validate_names, validate_positive_float
from ig_lightning.monitor.probe import Name
from ig_lightning.output.markdown import Names


def validate_vocabulary(value: Any, name: str = "vocabulary") -> Names:
    """``None``, a callable, a tokenizer (``convert_ids_to_tokens``) or a list of token names."""
    if value is None or callable(value) or callable(getattr(value, "convert_ids_to_tokens", None)):
        return value
    return validate_names(value, name)


def validate_attribute(value: Any, name: str = "attribute") -> list[Name] | None:
    """``None``, an input name or position, or a list of distinct ones."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, int)) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise TypeError(f"`{name}` must be an input name, a position, or a non-empty list of them, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"`{name}` entries must be input names (str) or positions (int), got {item!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"`{name}` names an input twice: {value!r}")
    return list(items)


def validate_share(value: Any, name: str) -> float:
    """A number in [0, 1]."""
    value = validate_positive_float(value, name, allow_zero=True)
    if value > 1:
        raise ValueError(f"`{name}` must be a share in [0, 1], got {value!r}")
    return value


def validate_guards(value: Any, name: str) -> list[Any] | None:
    """``None`` or a non-empty list of token texts / feature names (str), feature indices (int) or bool masks."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence) or not value:
        raise TypeError(f"`{name}` must be a non-empty list of token texts, feature names, feature indices or bool "
                        f"masks, got {value!r:.80}")
    out = []
    for item in value:
        if isinstance(item, list):  # a mask from a config file: nested lists of booleans
            item = torch.tensor(item)
        if isinstance(item, torch.Tensor):
            if item.dtype != torch.bool or not bool(item.any()):
                raise ValueError(f"`{name}` masks must be bool Tensors selecting at least one pixel, got {item!r:.80}")
        elif isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"`{name}` entries must be str, int or a bool mask, got {item!r:.80}")
        elif isinstance(item, int) and item < 0:
            raise ValueError(f"`{name}` feature indices must be >= 0, got {item}")
        out.append(item)
    return out


def validate_region(region: Any, threshold: float | None, path: str) -> torch.Tensor | None:
    """``None`` or a bool mask selecting at least one feature (nested lists of booleans from a config file are turned
    into one); a region threshold needs a region."""
    if isinstance(region, list):
        region = torch.tensor(region)
    if region is not None and (not isinstance(region, torch.Tensor) or region.dtype != torch.bool):
        raise TypeError(f"`{path}.region` must be a bool Tensor mask over one example's features, got {region!r}")
    if region is not None and not bool(region.any()):
        raise ValueError(f"`{path}.region` must select at least one feature, got an all-False mask")
    if threshold is not None and region is None:
        raise ValueError(f"`{path}.region_threshold` needs a `{path}.region` mask")
    return region
