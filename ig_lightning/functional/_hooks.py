"""Hooks on one or more modules: read their outputs (or inputs), or replace them, and always remove the hooks.

A module's output (or its positional and keyword inputs, with ``to_input=True``) may be a Tensor or
any nesting of tuples, lists and dicts holding tensors (an LSTM returns ``(out, (h, c))``). Its
floating-point tensors are the *leaves* that are read or replaced; everything else passes unchanged.

Example::

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> with tap_layers([model[0]]) as tap:
    ...     _ = tap.run(model, (torch.ones(4, 2),))
    ...     [tuple(t.shape) for t in tap.values]
    [(4, 3)]
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten


def _floating_positions(leaves: list[Any]) -> list[int]:
    return [j for j, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]


class LayerTap:
    """Reads (``replacement is None``) or replaces the floating tensors at some modules during a forward.

    Used through ``tap_layers()``. Each module must run exactly once per forward: a module used
    twice would make its attribution ambiguous, and one never used has nothing to attribute.

    Attributes:
        values: After a reading run, the floating leaves of every module, in module order (detached).
        single: Per module, whether its output (input) was one plain Tensor (attributions come back as a
            Tensor then, else as a tuple of its floating leaves).
    """

    def __init__(self, layers: Sequence[nn.Module], to_input: bool = False) -> None:
        self.layers, self.to_input = list(layers), to_input
        self.where = "input" if to_input else "output"
        self.replacement: list[torch.Tensor] | None = None
        self.values: list[torch.Tensor] = []
        self.counts: list[int] = []
        self.single: list[bool] = [True] * len(self.layers)
        self.calls = [0] * len(self.layers)
        self._read: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._offsets: list[int] = []

    def _name(self, i: int) -> str:
        return type(self.layers[i]).__name__

    def _handle(self, i: int, value: Any) -> Any:
        self.calls[i] += 1
        if self.calls[i] > 1:
            raise ValueError(
                f"`layer` ({self._name(i)}) ran more than once in one forward pass; attribute at a module that "
                "runs exactly once"
            )
        leaves, spec = tree_flatten(value)
        positions = _floating_positions(leaves)
        if not positions:
            raise TypeError(
                f"`layer` ({self._name(i)}) {self.where} holds no floating point tensor to attribute, got "
                f"{_describe(value)}"
            )
        if self.replacement is None:
            args_only_one = self.to_input and len(value[0]) == 1 and not value[1]
            self.single[i] = isinstance(value[0][0] if args_only_one else value, torch.Tensor)
            self._read[i] = [leaves[j].detach() for j in positions]
            return None
        start = self._offsets[i]
        new = self.replacement[start:start + len(positions)]
        for j, leaf in zip(positions, new):
            if leaf.shape != leaves[j].shape:
                raise ValueError(
                    f"`layer` ({self._name(i)}) {self.where} has shape {tuple(leaves[j].shape)} but the path point "
                    f"has shape {tuple(leaf.shape)}: the layer's {self.where} must have the batch as its first "
                    "dimension and the same shape for inputs and baselines"
                )
            leaves[j] = leaf
        return tree_unflatten(leaves, spec)

    def hook(self, i: int) -> Callable[..., Any]:
        if self.to_input:
            def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
                return self._handle(i, (args, kwargs))
            return pre_hook

        def forward_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            return self._handle(i, output)
        return forward_hook

    def run(self, forward_func: Callable[..., Any], args: tuple, replacement: list[torch.Tensor] | None = None) -> Any:
        """``forward_func(*args)``; reads every module's leaves into ``values``, or puts ``replacement`` there.

        ``replacement`` holds one tensor per leaf, in the order of ``values`` from a reading run.
        """
        self.calls = [0] * len(self.layers)
        self.replacement = replacement
        if replacement is None:
            self._read = [[] for _ in self.layers]
        try:
            out = forward_func(*args)
        finally:
            self.replacement = None
        missing = [self._name(i) for i, c in enumerate(self.calls) if c == 0]
        if missing:
            raise ValueError(f"`layer` ({', '.join(missing)}) was not called by `forward_func`")
        if replacement is None:  # leaves in module order, whatever order the modules ran in
            self.values = [v for read in self._read for v in read]
            self.counts = [len(read) for read in self._read]
            self._offsets = [sum(self.counts[:i]) for i in range(len(self.counts))]
        return out

    def batch_first_values(self, n: int) -> list[torch.Tensor]:
        """``values`` of a reading run on a batch of ``n``; raises if one is not batch-first."""
        for value in self.values:
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(
                    f"`layer` {self.where} holds a tensor of shape {tuple(value.shape)} for a batch of {n}: every "
                    f"floating tensor of the layer's {self.where} must have the batch as its first dimension (an "
                    "LSTM's (h, c) does not: attribute at a module that returns batch-first tensors)"
                )
        return list(self.values)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} Tensor"
    return type(value).__name__


@contextmanager
def tap_layers(layers: Sequence[nn.Module], to_input: bool = False) -> Iterator[LayerTap]:
    """Install a ``LayerTap`` on ``layers`` for the duration of the block; the hooks always go."""
    tap = LayerTap(layers, to_input)
    handles = []
    try:
        for i, layer in enumerate(tap.layers):
            if to_input:
                handles.append(layer.register_forward_pre_hook(tap.hook(i), with_kwargs=True))
            else:
                handles.append(layer.register_forward_hook(tap.hook(i)))
        yield tap
    finally:
        for handle in handles:
            handle.remove()
