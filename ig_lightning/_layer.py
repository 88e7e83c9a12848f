"""A forward hook on one module: read its output, or replace it, and always remove the hook."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class LayerTap:
    """Reads (``replacement is None``) or replaces a module's output during a forward pass.

    Used as a context manager through :func:`tap_layer`; counts calls so that a layer used
    more than once per forward (whose attribution would be ambiguous) is reported.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.replacement: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, module: nn.Module, args: object, output: object) -> torch.Tensor | None:
        self.calls += 1
        if self.calls > 1:
            raise ValueError(
                f"`layer` ({type(module).__name__}) ran more than once in one forward pass; "
                "attribute at a module that runs exactly once"
            )
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"`layer` ({type(module).__name__}) must return a Tensor, got {type(output).__name__}")
        if self.replacement is None:
            self.output = output.detach()
            return None
        if self.replacement.shape != output.shape:
            raise ValueError(
                f"`layer` output has shape {tuple(output.shape)} but the path point has shape "
                f"{tuple(self.replacement.shape)}: the layer's output must have the batch as its first dimension"
            )
        return self.replacement

    def run(self, forward_func: object, inputs: torch.Tensor, replacement: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``forward_func(inputs)``, replacing the layer's output by ``replacement`` if given."""
        self.calls, self.output, self.replacement = 0, None, replacement
        try:
            out = forward_func(inputs)  # type: ignore[operator]
        finally:
            self.replacement = None
        if self.calls == 0:
            raise ValueError(f"`layer` ({type(self.layer).__name__}) was not called by `forward_func`")
        return out


@contextmanager
def tap_layer(layer: nn.Module) -> Iterator[LayerTap]:
    """Install a :class:`LayerTap` on ``layer`` for the duration of the block."""
    tap = LayerTap(layer)
    handle = layer.register_forward_hook(tap)
    try:
        yield tap
    finally:
        handle.remove()
