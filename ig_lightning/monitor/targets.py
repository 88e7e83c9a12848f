"""Which output each probe example explains: the label, the prediction, a fixed class, or a user's choice.

One-hot labels ``(B, C)`` are read through their argmax. Multi-hot labels are explained one (example, positive
label) pair at a time with ``target="positive_labels"`` (``positive_pairs()``).

Example::

    >>> import torch
    >>> outputs = torch.tensor([[0.1, 2.0], [3.0, 0.5]])
    >>> resolve_targets("auto", outputs, torch.tensor([1, 1])).tolist()
    [1, 1]
    >>> resolve_targets("prediction", outputs, None).tolist()
    [1, 0]
"""

from __future__ import annotations

from typing import Any

import torch

from ig_lightning._validation import validate_target


def resolve_targets(target: Any, outputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The output explained per probe example, from the model's outputs on the probe ``(B,)``/``(B, C)``.

    ``None`` when the model has one output per example. Raises naming ``target`` when it cannot be used.
    """
    n = outputs.shape[0]
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return None  # one output per example: nothing to choose
    if outputs.ndim != 2:
        raise ValueError(f"the model's outputs must be (B,) or (B, C) to be explained, got {tuple(outputs.shape)}: "
                         "select one score per class with `output_transform`")
    n_classes = outputs.shape[1]
    if is_one_hot(labels):
        labels = labels.argmax(1)  # one-hot labels (B, C): their class indices (the monitor says so before training)
    if target == "positive_labels":
        target = "label"  # the probe holds one row per (example, positive label): its label is that class
    if target == "auto":
        target = "label" if labels is not None and not labels.dtype.is_floating_point and labels.ndim == 1 \
            else "prediction"
    if target == "label":
        if labels is None or labels.dtype.is_floating_point or labels.shape != (n,):
            raise ValueError(
                "`target`='label' needs integer class labels of shape (B,) in the probe; got "
                f"{None if labels is None else (labels.dtype, tuple(labels.shape))}: use target='prediction' "
                "or pass `unpack=`"
            )
        chosen = labels.long()
    elif target == "prediction":
        chosen = outputs.argmax(-1)
    elif callable(target):
        chosen = validate_target(target(outputs, labels), n)
    else:
        chosen = validate_target(target, n)
    bad = (chosen < 0) | (chosen >= n_classes)
    if bool(bad.any()):
        source = "labels" if target == "label" else "`target`"
        raise ValueError(f"{source} must be class indices in [0, {n_classes - 1}] for a model with {n_classes} "
                         f"outputs, got {chosen[bad].unique()[:5].tolist()}")
    return chosen


def is_one_hot(labels: torch.Tensor | None) -> bool:
    """Whether ``labels`` are one-hot rows ``(B, C)``: 0/1 values, exactly one 1 per row.

    Example::

        >>> is_one_hot(torch.tensor([[0, 1], [1, 0]])), is_one_hot(torch.tensor([[1, 1], [1, 0]]))
        (True, False)
    """
    if labels is None or labels.ndim != 2 or labels.shape[1] < 2 or labels.dtype == torch.bool:
        return False
    binary = bool(((labels == 0) | (labels == 1)).all())
    return binary and bool((labels.sum(1) == 1).all())


def is_multi_hot(labels: torch.Tensor | None) -> bool:
    """Whether ``labels`` are multi-hot rows ``(B, C)`` of 0/1 (or bool) values, any number of 1s per row."""
    if labels is None or labels.ndim != 2:
        return False
    return bool(((labels == 0) | (labels == 1)).all())
