"""The geometry of the bisection's meshes: which intervals a set of nodes makes, and where each one came from.

The adaptive rule (``ig_lightning.functional.adaptive``) only ever halves intervals of the grid
``0, 1/4, 1/2, 3/4, 1``: every node is a dyadic number, and every interval ``[l, l + w]`` is the lower or upper half
of its parent ``[l, l + 2w]`` or ``[l - w, l + w]``, whose three nodes are all in the mesh. The error indicator of
an interval is made from those three nodes, so a mesh (any set of nodes reached by halving, or by undoing
halvings) carries its own error estimate: nothing else needs to be remembered to start from it again.

Nodes of several examples are held flat, sorted by ``(owner, alpha)``; ``alpha`` is float64, where dyadic
numbers are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Leaves", "chunk_rows", "leaves_of", "prune", "sort_nodes", "split_indicators", "trapezoid"]

#: Temporaries of (intervals, D) are built for at most this many elements, or one interval per example, at a time:
#: never much more than the (examples, D) buffers the engine holds anyway.
CHUNK_ELEMENTS = 2 ** 16


def chunk_rows(rows: int, features: int) -> int:
    """How many intervals' ``(D,)`` temporaries to build at once (see ``CHUNK_ELEMENTS``)."""
    return max(1, rows, CHUNK_ELEMENTS // max(features, 1))


def _keys(owner: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """One increasing float64 key per node: exact for owners below 2**20 and nodes down to 2**-30 apart."""
    return owner.to(torch.float64) * 4.0 + alpha.to(torch.float64)


def sort_nodes(owner: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The order that sorts nodes by ``(owner, alpha)``."""
    return torch.argsort(_keys(owner, alpha), stable=True)


@dataclass
class Leaves:
    """The intervals between consecutive nodes of each example, as positions into the node list.

    Attributes:
        left, right: Each interval's end nodes.
        owner: Its example.
        a, mid, b: Its parent's three nodes (``mid`` is ``right`` for a lower half, ``left`` for an upper one).
        lower: Whether it is its parent's lower half.
        parent_width: ``b - a`` (float64).
    """

    left: torch.Tensor
    right: torch.Tensor
    owner: torch.Tensor
    a: torch.Tensor
    mid: torch.Tensor
    b: torch.Tensor
    lower: torch.Tensor
    parent_width: torch.Tensor

    def on_rows(self, rows: torch.Tensor) -> Leaves:
        """The same intervals with their nodes as ``rows[position]``: read from a larger pool, without copying
        the nodes' values out of it."""
        return Leaves(rows[self.left], rows[self.right], self.owner, rows[self.a], rows[self.mid], rows[self.b],
                      self.lower, self.parent_width)


def leaves_of(owner: torch.Tensor, alpha: torch.Tensor) -> Leaves:
    """The intervals of a mesh whose nodes are sorted by ``(owner, alpha)``, with their parents.

    Raises:
        ValueError: a parent node is missing (the nodes were not reached by halving the grid).
    """
    alpha = alpha.to(torch.float64)
    same = owner[1:] == owner[:-1]
    pos = torch.arange(len(alpha), device=alpha.device)
    left, right = pos[:-1][same], pos[1:][same]
    own = owner[left]
    lo, width = alpha[left], alpha[right] - alpha[left]
    lower = torch.remainder(torch.round(lo / width), 2) == 0
    a_alpha = torch.where(lower, lo, lo - width)
    b_alpha = torch.where(lower, lo + 2 * width, alpha[right])
    keys = _keys(owner, alpha)
    a, b = _find(keys, _keys(own, a_alpha)), _find(keys, _keys(own, b_alpha))
    mid = torch.where(lower, right, left)
    return Leaves(left, right, own, a, mid, b, lower, 2 * width)


def _find(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    at = torch.searchsorted(keys, queries).clamp_max(max(len(keys) - 1, 0))
    if len(queries) and not bool((keys[at] == queries).all()):
        raise ValueError("the mesh is not one the bisection makes: an interval's parent node is missing")
    return at


def split_indicators(values: torch.Tensor, diff: torch.Tensor, leaves: Leaves) -> torch.Tensor:
    """Each interval's error indicator, from its parent's three nodes.

    The parent's change when halved, ``||diff * (g(a) + g(b) - 2 g(mid))|| * (b - a) / 4``, shared between its
    halves in proportion to how much the attributions change across each (a kink sits in one half only).

    Args:
        values: ``(nodes, D)`` the integrand at each node.
        diff: ``(n, D)`` the examples' ``x - x'``.
        leaves: The mesh's intervals.
    """
    out = values.new_empty(len(leaves.owner))
    step = chunk_rows(len(diff), values.shape[1])  # (intervals, D) temporaries a chunk at a time
    for s in range(0, len(out), step):
        own, a, m, b = (t[s:s + step] for t in (leaves.owner, leaves.a, leaves.mid, leaves.b))
        d, ga, gm, gb = diff[own], values[a], values[m], values[b]
        change = (d * (ga + gb - 2 * gm)).norm(dim=1) * leaves.parent_width[s:s + step].to(values.dtype) / 4
        across_lo, across_hi = (d * (gm - ga)).norm(dim=1), (d * (gb - gm)).norm(dim=1)
        del d, ga, gm, gb
        both = torch.hypot(across_lo, across_hi)
        mine = torch.where(leaves.lower[s:s + step], across_lo, across_hi)
        share = torch.where(both == 0, torch.full_like(both, math.sqrt(0.5)), mine / both.clamp_min(1e-300))
        out[s:s + step] = change * share
    return out


def trapezoid(values: torch.Tensor, alpha: torch.Tensor, leaves: Leaves, n: int) -> torch.Tensor:
    """``(n, D)`` each example's trapezoid rule over its intervals."""
    out = values.new_zeros((n, values.shape[1]))
    step = chunk_rows(n, values.shape[1])
    for s in range(0, len(leaves.owner), step):
        left, right = leaves.left[s:s + step], leaves.right[s:s + step]
        width = (alpha[right] - alpha[left]).to(values.dtype).unsqueeze(1)
        out.index_add_(0, leaves.owner[s:s + step], width / 2 * (values[left] + values[right]))
    return out


def prune(owner: torch.Tensor, alpha: torch.Tensor, passes: int = 1) -> torch.Tensor:
    """Which nodes stay when, ``passes`` times, every pair of sibling intervals is merged back into its parent.

    A node can go when it halves an interval whose two halves are both intervals of the mesh; the nodes of
    the starting grid always stay. Two such nodes are never neighbours, so a pass merges them all at once.

    Returns:
        A bool mask over the nodes (sorted by ``(owner, alpha)``).
    """
    keep = torch.ones(len(alpha), dtype=torch.bool, device=alpha.device)
    alpha = alpha.to(torch.float64)
    for _ in range(passes):
        pos = keep.nonzero().flatten()
        own, at = owner[pos], alpha[pos]
        if len(pos) < 3:
            break
        inner = (own[1:-1] == own[:-2]) & (own[1:-1] == own[2:])
        gap_lo, gap_hi = at[1:-1] - at[:-2], at[2:] - at[1:-1]
        ratio = at[1:-1] / gap_lo.clamp_min(1e-300)
        odd = torch.remainder(torch.round(ratio), 2) == 1
        grid = torch.remainder(at[1:-1] * 4, 1) == 0
        removable = inner & (gap_lo == gap_hi) & odd & (ratio == torch.round(ratio)) & ~grid
        if not bool(removable.any()):
            break
        keep[pos[1:-1][removable]] = False
    return keep
