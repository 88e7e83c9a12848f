"""Context managers that keep a training run exactly as it was: RNG streams and module modes."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn


@contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Restore the global torch (CPU and ``device``'s CUDA), NumPy and ``random`` streams after the block.

    Anything in the block that draws random numbers (a DataLoader iterator's seed, a dataset's random
    transform) then leaves the training run's random stream where it was.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode (dropout off, BatchNorm frozen), then restore each one's own mode."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training
