"""Warm starts: where one ``n_steps="auto"`` call placed each example's points, to start the next call there.

A cold call starts every example from the grid ``0, 1/4, 1/2, 3/4, 1`` and halves intervals, round after round,
where the error estimate says; a late round refines only a few examples, in a small batch. Between two checks of
a monitor the model moves a little and each example's integrand keeps its shape: the mesh the last call ended
with is nearly the one this call needs. ``WarmStart`` holds, per example, that mesh, coarsened as far as
the last call's own gradients allowed (the coarsest one whose estimate was still within tolerance). The next
call evaluates it in one batched round and goes on with the usual bisection where the new estimate says so, so
the error target and its estimate are exactly a cold call's: only where the points start changes.

What it saves is rounds (batched calls, and under several processes syncs), not gradient evaluations: the
estimate of a mesh needs the mesh's own points, and a cold call already ends close to the fewest points that
meet its tolerance (``benchmarks/bench_warm.py`` measures both, side by side).

Example::

    >>> import torch
    >>> from ig_lightning import integrated_gradients
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).double()
    >>> x = torch.randn(8, 4, dtype=torch.float64)
    >>> cold = integrated_gradients(model, x, n_steps="auto", tolerance=1e-3, warm_start=True)
    >>> warm = integrated_gradients(model, x, n_steps="auto", tolerance=1e-3, warm_start=cold.warm_start)
    >>> warm.rounds < cold.rounds, bool((warm.attribution_error <= 1e-3).all())
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ig_lightning.functional._mesh import leaves_of

__all__ = ["WarmStart"]


@dataclass
class WarmStart:
    """Per example, the mesh to start its path from: nodes flat over the examples, sorted by ``(owner, alpha)``.

    Attributes:
        owner: ``(nodes,)`` long, each node's example.
        alpha: ``(nodes,)`` float64, its place on the path (a dyadic number: exact).
        n: Number of examples.
    """

    owner: torch.Tensor
    alpha: torch.Tensor
    n: int

    def mesh_size(self) -> torch.Tensor:
        """``(n,)`` nodes per example."""
        return torch.bincount(self.owner, minlength=self.n)

    def to(self, device: torch.device | str) -> WarmStart:
        """A copy on ``device``."""
        return WarmStart(self.owner.to(device), self.alpha.to(device), self.n)

    def select(self, idx: torch.Tensor) -> WarmStart:
        """The examples ``idx`` (distinct), renumbered in that order."""
        idx = idx.to(self.owner.device)
        number = torch.full((self.n,), -1, dtype=torch.long, device=self.owner.device)
        number[idx] = torch.arange(len(idx), device=idx.device)
        new = number[self.owner]
        keep = new >= 0
        order = torch.argsort(new[keep] * 4.0 + self.alpha[keep], stable=True)
        return WarmStart(new[keep][order], self.alpha[keep][order], len(idx))

    def state_dict(self) -> dict[str, Any]:
        """Plain values, for a checkpoint."""
        return {"owner": self.owner.cpu(), "alpha": self.alpha.cpu(), "n": self.n}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WarmStart:
        """The inverse of ``state_dict()``.

        Raises:
            ValueError: the state is not a warm start's (missing keys, or not a mesh the bisection makes).
        """
        if not isinstance(state, dict) or not {"owner", "alpha", "n"} <= set(state):
            raise ValueError(f"a `warm_start` state holds 'owner', 'alpha' and 'n'; got {state!r:.80}")
        warm = cls(torch.as_tensor(state["owner"], dtype=torch.long),
                   torch.as_tensor(state["alpha"], dtype=torch.float64), int(state["n"]))
        warm.validate(warm.n)
        return warm

    def validate(self, n: int) -> None:
        """Raise a ValueError unless this is a warm start for ``n`` examples, every one with a mesh the bisection
        could have made (the grid's ends, sorted, every interval's parent present)."""
        if self.n != n:
            raise ValueError(f"`warm_start` is for {self.n} examples; this call has {n}")
        if self.owner.shape != self.alpha.shape or self.owner.ndim != 1:
            raise ValueError("`warm_start` has `owner` and `alpha` of different shapes")
        if len(self.owner) and (int(self.owner.min()) < 0 or int(self.owner.max()) >= n):
            raise ValueError(f"`warm_start` has nodes of examples outside 0..{n - 1}")
        if bool((self.mesh_size() < 3).any()):
            raise ValueError("`warm_start` must hold a mesh of at least 3 nodes for every example")
        keys = self.owner.double() * 4.0 + self.alpha
        ends = (self.alpha.min() < 0) | (self.alpha.max() > 1) if len(self.alpha) else False
        if bool(ends) or bool((keys[1:] <= keys[:-1]).any()):
            raise ValueError("`warm_start` nodes must lie in [0, 1], sorted by example and alpha")
        first = torch.ones_like(self.owner, dtype=torch.bool)
        first[1:] = self.owner[1:] != self.owner[:-1]
        last = torch.ones_like(first)
        last[:-1] = first[1:]
        if bool((self.alpha[first] != 0).any()) or bool((self.alpha[last] != 1).any()):
            raise ValueError("every example's `warm_start` mesh must run from alpha 0 to alpha 1")
        leaves_of(self.owner, self.alpha)  # raises when an interval's parent node is missing
