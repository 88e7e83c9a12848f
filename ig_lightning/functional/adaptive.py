"""``n_steps="auto"``: refine each example until its attributions are within ``tolerance`` of the exact integral.

The error that matters is per feature: the relative L2 distance ``||attr - exact|| / ||exact||`` between an
example's attributions and the exact path integral. Completeness (attributions adding up to ``F(x) - F(x')``)
cannot see it: errors of single features may cancel in the sum. Every example therefore gets an estimate of
that relative L2 error, made from the gradients already evaluated, and is refined until the estimate is within
``tolerance``.

Every rule (``method``) gets the same adaptive bisection; the rule only matters for a fixed ``n_steps``. Each
example holds a trapezoid rule on its own intervals. When an interval ``[a, b]`` is halved at ``m``, the change
of the attribution vector, ``diff * (b - a) / 4 * (g(a) + g(b) - 2 g(m))``, is the error indicator of the two
halves (shared between them in proportion to how much the attributions change across each). At the kinks of
ReLU networks (the gradient jumps) the error then roughly halves, so the change is about the error that is
left; on smooth stretches it overestimates it (up to 3x). The estimate of an example is
``0.8 * sqrt(sum over its intervals of indicator^2) / ||attr||`` (errors of different intervals point in
different directions, so they add in quadrature); each round halves the intervals that carry the top half of
that sum. Every gradient is kept and reused: ``n_evaluations == n_steps``. An example also keeps refining while
its attributions miss completeness (``|sum(attr) - delta| > tolerance * max(|delta|, delta_floor)``): nearly
free, as the two usually agree.

Why not the rules themselves: a Gauss rule cannot reuse its points and, with kinks, converges no faster than
the trapezoid; the nested uniform Riemann rules spend their points everywhere, and the change between two of
their sizes can vanish while a kink is still badly resolved (measured: a 2.6% error estimated as 0). The ends of
the path are evaluated a hair inside (``alpha = eps`` and ``1 - eps``): at a zero baseline every ReLU and
max-pool window is tied, and the gradient exactly there stands for none of its neighbours (on a digits CNN it
doubled the trapezoid's error).

Every round is one batched call over all active examples' new points, and with ``sync`` every process
evaluates the same number of points in it (padding with copies of a valid point whose results are dropped),
so that sharded strategies, where every forward is a collective, stay in lockstep.

Example::

    >>> import torch
    >>> class Linear:  # a stand-in path: F(z) = z @ w on the straight line from 0 to x
    ...     def __init__(self, x, w):
    ...         self.n, self.diff, self.w = x.shape[0], x, w
    ...         self.dtype, self.device = x.dtype, x.device
    ...     def gradients_at(self, idx, alphas):
    ...         return self.w.expand(len(idx), -1), alphas * (self.diff[idx] @ self.w)
    >>> x, w = torch.ones(2, 3, dtype=torch.float64), torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    >>> res = integrate_auto(Linear(x, w), x @ w, tolerance=0.01, max_steps=64,
    ...                      delta_floor=1e-3)
    >>> res.avg_grad[0].tolist(), res.n_steps.tolist(), res.attribution_error.tolist(), res.unconverged
    ([1.0, -2.0, 3.0], [5, 5], [0.0, 0.0], 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from ig_lightning.functional._mesh import Leaves, chunk_rows, leaves_of, prune, sort_nodes, split_indicators, trapezoid
from ig_lightning.functional.quadrature import AUTO_MIN_STEPS
from ig_lightning.functional.warm import WarmStart

__all__ = ["AutoResult", "PathGradients", "integrate_auto"]

#: The estimate is this factor times the root sum of squares of an example's interval indicators (measured on
#: a trained digits CNN, logits and softmax: the estimate is then within a factor 2 of the true error on ~95%
#: of examples and rarely below it; see benchmarks/bench_auto.py).
BISECTION_SCALE = 0.8
#: Each round halves, per example, the intervals holding this share of the example's squared estimate.
BISECTION_SHARE = 0.5
#: Points of the first round (odd: its pairs of intervals give the first indicators).
BISECTION_START = 5
#: Also refine until the attributions add up to ``delta`` within ``tolerance`` (relative, ``|delta|`` floored at
#: ``delta_floor``): it costs almost nothing (+0.2 evaluations per example on the digits CNN) and keeps the
#: completeness contract of earlier versions.
COMPLETENESS = True
#: The mesh a call leaves for the next (``warm_start``) is its final mesh with sibling intervals merged back, up
#: to this many times, as long as the estimate stays within tolerance on the gradients just evaluated.
WARM_COARSEN = 3


class PathGradients(Protocol):
    """What ``integrate_auto()`` needs of the straight paths (the engine's ``StraightPaths`` provides it)."""

    n: int
    diff: torch.Tensor
    dtype: torch.dtype
    device: torch.device

    def gradients_at(self, idx: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients ``(k, D)`` and outputs ``(k,)`` at ``start[idx[j]] + alphas[j] * diff[idx[j]]``."""
        ...


@dataclass
class AutoResult:
    """What ``integrate_auto()`` returns.

    Attributes:
        avg_grad: ``(n, D)`` the path-averaged gradient per example (flat features).
        n_steps: ``(n,)`` long: points of the final rule per example.
        n_evaluations: ``(n,)`` long: gradient evaluations spent per example (padding not counted).
        attribution_error: ``(n,)`` float64, estimated relative L2 error of ``diff * avg_grad`` against the
            exact integral; NaN where the gradients were not finite.
        unconverged: Examples that hit ``max_steps`` without reaching ``tolerance``.
        rounds: Batched rounds of evaluations (each one call of the model per chunk, and one sync).
        warm_start: What the next call on (nearly) the same model can start from (see ``warm``); ``None``
            unless the call was given ``warm_start``.
    """

    avg_grad: torch.Tensor
    n_steps: torch.Tensor
    n_evaluations: torch.Tensor
    attribution_error: torch.Tensor
    unconverged: int
    rounds: int = 0
    warm_start: WarmStart | None = None


def integrate_auto(
    path: PathGradients,
    delta: torch.Tensor,
    *,
    tolerance: float,
    max_steps: int,
    delta_floor: float,
    sync: Callable[[int], int] | None = None,
    warm_start: WarmStart | bool | None = None,
) -> AutoResult:
    """Integrate every example's gradient along its path until its estimated relative L2 error is within tolerance.

    Args:
        path: The paths (see ``PathGradients``).
        delta: ``(n,)`` ``F(x) - F(x')``, for the completeness condition.
        tolerance: Target relative L2 error of each example's attributions (and relative completeness).
        max_steps: Most points one example may use.
        delta_floor: Floor of ``|delta|`` and of ``||attr||`` in the relative errors (near zero there is nothing
            to be relative to; attributions share ``F``'s units, as ``delta`` does).
        sync: ``sync(k)`` returns the largest ``k`` over the processes; every round then evaluates that many
            points on every process. ``None`` for one process.
        warm_start: The ``warm_start`` of an earlier result on the same examples: its meshes are evaluated first,
            in one round (see ``ig_lightning.functional.warm``). ``True``: a cold start that leaves a warm start
            for the next call in the result. ``None``/``False``: a cold start, and none.

    Returns:
        An ``AutoResult``.

    Raises:
        ValueError: ``max_steps`` is below ``AUTO_MIN_STEPS``, ``sync`` asks a process without examples to
            evaluate points (there is nothing to pad with), or ``warm_start`` does not fit the call.
    """
    if max_steps < AUTO_MIN_STEPS:
        raise ValueError(f"`max_steps` must be >= {AUTO_MIN_STEPS} for n_steps='auto', got {max_steps}")
    if warm_start is not None and not isinstance(warm_start, bool):
        if not isinstance(warm_start, WarmStart):
            raise TypeError(f"`warm_start` must be a WarmStart (a result's `warm_start`), True, False or None, got "
                            f"{type(warm_start).__name__}")
        warm_start.validate(path.n)
        biggest = int(warm_start.mesh_size().max()) if path.n else 0
        if biggest > max_steps:
            raise ValueError(f"`warm_start` has meshes of up to {biggest} nodes, more than max_steps={max_steps}")
    bisection = _Bisection(path, delta, tolerance, max_steps, delta_floor, sync)
    bisection.keep_mesh = warm_start is not None and warm_start is not False
    return bisection.run(warm_start if isinstance(warm_start, WarmStart) else None)


class _Bisection:
    """Adaptive trapezoid bisection with per-interval vector error indicators (see the module's docstring)."""

    def __init__(self, path: PathGradients, delta: torch.Tensor, tolerance: float, max_steps: int, delta_floor: float,
                 sync: Callable[[int], int] | None) -> None:
        self.path, self.tolerance, self.max_steps, self.floor, self.sync = path, tolerance, max_steps, delta_floor, sync
        self.n, self.dtype, self.device = path.n, path.dtype, path.device
        self.diff = path.diff.reshape(self.n, -1)
        self.delta = delta.to(device=self.device, dtype=self.dtype)
        self.count = torch.zeros(self.n, dtype=torch.long, device=self.device)
        self.dead = torch.zeros(self.n, dtype=torch.bool, device=self.device)  # non-finite gradients seen
        self.rounds, self.keep_mesh = 0, False
        # The ends of the path, a hair inside: a tied baseline's gradient stands for none of its neighbours.
        self.eps = max(2.0 ** -12, 4 * torch.finfo(self.dtype).eps)
        # Every node evaluated: its gradient, its alpha (float64, exact) and its example.
        self.grads = torch.empty((0, self.diff.shape[1]), dtype=self.dtype, device=self.device)
        self.alpha = torch.empty(0, dtype=torch.float64, device=self.device)
        self.owner = torch.empty(0, dtype=torch.long, device=self.device)
        self.used = 0

    # --- lockstep evaluation ----------------------------------------------------------------------------

    def _total_points(self, k: int) -> int:
        """How many points every process evaluates this round (``k`` here)."""
        return k if self.sync is None else int(self.sync(k))

    def _evaluate(self, idx: torch.Tensor, alphas: torch.Tensor, total: int) -> torch.Tensor:
        """Gradients at the ``k`` points, padded to ``total`` points with example 0 at alpha 0 (dropped)."""
        k = len(idx)
        alphas = alphas.to(self.dtype)
        if total > k:
            if self.n == 0:
                raise ValueError("`sync` asks a process without examples to evaluate points: there is no valid "
                                 "point to pad its rounds with")
            idx = torch.cat([idx, idx.new_zeros(total - k)])
            alphas = torch.cat([alphas, alphas.new_zeros(total - k)])
        grads, _ = self.path.gradients_at(idx, alphas)
        grads = grads.reshape(total, -1)[:k]
        self.count.index_add_(0, idx[:k], torch.ones_like(idx[:k]))
        bad = ~torch.isfinite(grads).all(1)
        self.dead.index_fill_(0, idx[:k][bad], True)  # non-finite cannot improve by refining: stop there
        return grads

    def _add(self, owner: torch.Tensor, alpha: torch.Tensor, inside: bool = False) -> torch.Tensor | None:
        """Evaluate one round of nodes (every process as many); their rows in the pool, or None where no process
        has any. ``inside``: nodes may be the ends of the path, evaluated a hair inside."""
        total = self._total_points(len(owner))
        if total == 0:
            return None
        self.rounds += 1
        alpha = alpha.to(device=self.device, dtype=torch.float64)
        grads = self._evaluate(owner, alpha.clamp(self.eps, 1 - self.eps) if inside else alpha, total)
        end = self.used + len(grads)
        if self.used == 0:  # the first round's gradients are the pool: no copy
            self.grads, self.alpha, self.owner, self.used = grads, alpha.clone(), owner.clone(), end
            return torch.arange(end, device=self.device)
        if end > len(self.alpha):  # grow the pool by half
            size = max(len(self.alpha) * 3 // 2, end)
            for name in ("grads", "alpha", "owner"):
                old = getattr(self, name)
                grown = old.new_empty((size, *old.shape[1:]))
                grown[:self.used] = old[:self.used]
                setattr(self, name, grown)
        self.grads[self.used:end], self.alpha[self.used:end], self.owner[self.used:end] = grads, alpha, owner
        rows = torch.arange(self.used, end, device=self.device)
        self.used = end
        return rows

    # --- the estimate -------------------------------------------------------------------------------------

    def _relative(self, error_norm: torch.Tensor, avg_grad: torch.Tensor) -> torch.Tensor:
        """``error_norm / max(||diff * avg_grad||, delta_floor)``, NaN for dead examples."""
        estimate = error_norm / (self.diff * avg_grad).norm(dim=1).clamp_min(self.floor)
        return torch.where(self.dead, torch.full_like(estimate, float("nan")), estimate)

    def _incomplete(self, avg_grad: torch.Tensor) -> torch.Tensor:
        """Examples whose attributions miss ``delta`` by more than ``tolerance`` (relative, floored)."""
        if not COMPLETENESS:
            return torch.zeros(self.n, dtype=torch.bool, device=self.device)
        goal = self.tolerance * self.delta.abs().clamp_min(self.floor)
        return ((self.diff * avg_grad).sum(1) - self.delta).abs() > goal

    def _squares(self, owner: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n, dtype=self.dtype, device=self.device).index_add_(0, owner, indicator ** 2)

    # --- the start: a mesh evaluated in one round ---------------------------------------------------------

    def run(self, warm: WarmStart | None = None) -> AutoResult:
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        if warm is None:
            m0 = BISECTION_START if self.max_steps >= BISECTION_START else 3
            grid = torch.linspace(0, 1, m0, dtype=torch.float64, device=self.device)
            owner, alpha = torch.arange(self.n, device=self.device).repeat_interleave(m0), grid.repeat(self.n)
        else:
            owner, alpha = warm.owner.to(self.device), warm.alpha.to(device=self.device, dtype=torch.float64)
        rows = self._add(owner, alpha, inside=True)
        return self._bisect(empty if rows is None else rows)

    # --- the bisection ------------------------------------------------------------------------------------

    def _bisect(self, rows: torch.Tensor) -> AutoResult:
        """Refine every example from the mesh of nodes ``rows`` (sorted by example and alpha)."""
        leaves = leaves_of(self.owner[rows], self.alpha[rows]).on_rows(rows)  # the pool is read in place
        indicator = split_indicators(self.grads, self.diff, leaves)
        avg_grad = trapezoid(self.grads, self.alpha, leaves, self.n)
        left, right, owner = leaves.left, leaves.right, leaves.owner
        while True:
            squares = self._squares(owner, indicator)
            estimate = self._relative(BISECTION_SCALE * squares.sqrt(), avg_grad)
            active = ((estimate > self.tolerance) | self._incomplete(avg_grad)) & ~self.dead
            active &= self.count < self.max_steps
            chosen = self._choose(indicator ** 2, owner, squares, active)
            lft, rgt, ex = left[chosen], right[chosen], owner[chosen]
            new = self._add(ex, (self.alpha[lft] + self.alpha[rgt]) / 2)
            if new is None:
                missed = (estimate > self.tolerance) | self._incomplete(avg_grad)
                unconverged = int((missed & ~self.dead).sum())
                warm = self._next_start(torch.unique(torch.cat([left, right]))) if self.keep_mesh else None
                return AutoResult(avg_grad, self.count.clone(), self.count.clone(), estimate.to(torch.float64),
                                  unconverged, self.rounds, warm)
            width = (self.alpha[rgt] - self.alpha[lft]).to(self.dtype).unsqueeze(1)
            # The interval's h/2 (ga + gb) becomes h/4 (ga + 2 gm + gb), a chunk of intervals at a time.
            step = chunk_rows(self.n, self.diff.shape[1])
            for s in range(0, len(ex), step):
                g, a, b = (self.grads[t[s:s + step]] for t in (new, lft, rgt))
                avg_grad.index_add_(0, ex[s:s + step], width[s:s + step] / 2 * g - width[s:s + step] / 4 * (a + b))
                del g, a, b
            k = len(ex)
            halves = Leaves(torch.cat([lft, new]), torch.cat([new, rgt]), ex.repeat(2), lft.repeat(2), new.repeat(2),
                            rgt.repeat(2), torch.arange(2 * k, device=self.device) < k, width.squeeze(1).repeat(2))
            keep = torch.ones(len(left), dtype=torch.bool, device=self.device)
            keep[chosen] = False
            left, right = torch.cat([left[keep], halves.left]), torch.cat([right[keep], halves.right])
            owner = torch.cat([owner[keep], halves.owner])
            indicator = torch.cat([indicator[keep], split_indicators(self.grads, self.diff, halves)])

    def _next_start(self, rows: torch.Tensor) -> WarmStart:
        """Each example's final mesh, coarsened as far as the gradients just evaluated allow: sibling intervals are
        merged back, those that raise the estimate least first, while it stays within tolerance (up to
        ``WARM_COARSEN`` passes)."""
        rows = rows[sort_nodes(self.owner[rows], self.alpha[rows])]
        own, alpha = self.owner[rows], self.alpha[rows]
        keep = torch.ones(len(rows), dtype=torch.bool, device=self.device)
        for _ in range(WARM_COARSEN):
            pos = keep.nonzero().flatten()
            leaves = leaves_of(own[pos], alpha[pos])
            indicator = split_indicators(self.grads, self.diff, leaves.on_rows(rows[pos]))
            avg = trapezoid(self.grads, self.alpha, leaves.on_rows(rows[pos]), self.n)
            norm = (self.diff * avg).norm(dim=1).clamp_min(self.floor)
            budget = (self.tolerance * norm / BISECTION_SCALE) ** 2 - self._squares(leaves.owner, indicator)
            merged = prune(own[pos], alpha[pos], 1)  # every sibling pair merged at once (they are independent)
            gone = (~merged).nonzero().flatten()
            if not len(gone) or not bool((budget > 0).any()):
                break
            coarse = leaves_of(own[pos][merged], alpha[pos][merged])
            coarse_ind = split_indicators(self.grads, self.diff, coarse.on_rows(rows[pos][merged]))
            # The merged interval of a removed node m starts at m's left neighbour.
            leaf_from = torch.full((len(pos),), -1, dtype=torch.long, device=self.device)
            leaf_from[leaves.left] = torch.arange(len(leaves.left), device=self.device)
            place = torch.cumsum(merged.long(), 0) - 1  # each kept node's position in the merged mesh
            coarse_from = torch.full((int(merged.sum()),), -1, dtype=torch.long, device=self.device)
            coarse_from[coarse.left] = torch.arange(len(coarse.left), device=self.device)
            lo, hi = leaf_from[gone - 1], leaf_from[gone]
            rise = coarse_ind[coarse_from[place[gone - 1]]] ** 2 - indicator[lo] ** 2 - indicator[hi] ** 2
            ex = own[pos][gone]
            order = torch.argsort(rise, stable=True)
            order = order[torch.argsort(ex[order], stable=True)]  # per example, the smallest rise first
            spent = _segment_cumsum(rise[order], ex[order])
            take = order[spent <= budget[ex[order]]]
            if not len(take):
                break
            trial = keep.clone()
            trial[pos[gone[take]]] = False
            # Merging also moves the sum of the attributions: keep an example's merges only if it stays complete.
            sub = trial.nonzero().flatten()
            trial_leaves = leaves_of(own[sub], alpha[sub]).on_rows(rows[sub])
            incomplete = self._incomplete(trapezoid(self.grads, self.alpha, trial_leaves, self.n))
            keep = torch.where(incomplete[own], keep, trial)
        return WarmStart(own[keep], alpha[keep], self.n)

    def _choose(self, key: torch.Tensor, owner: torch.Tensor, total: torch.Tensor,
                active: torch.Tensor) -> torch.Tensor:
        """Per active example, its largest intervals holding ``BISECTION_SHARE`` of its squared estimate."""
        # Shares of each example's total, in float64: every example's shares add up to one, so a running sum
        # over all examples never swamps a small example's (and a NaN of a dead one is never summed).
        share = torch.where(active[owner], key.double() / total.double()[owner].clamp_min(1e-300), 0.0)
        order = torch.argsort(share, descending=True, stable=True)
        order = order[torch.argsort(owner[order], stable=True)]  # grouped by example, largest first
        ss, es = share[order], owner[order]
        before = torch.cumsum(ss, 0) - ss
        starts = torch.ones_like(es, dtype=torch.bool)
        starts[1:] = es[1:] != es[:-1]
        position = torch.arange(len(es), device=key.device)
        first = torch.zeros(self.n, dtype=torch.long, device=key.device)
        first[es[starts]] = position[starts]
        rank = position - first[es]
        pick = (before - before[first[es]] < BISECTION_SHARE) & active[es]
        pick &= rank < (self.max_steps - self.count)[es]  # never beyond max_steps points
        return order[pick]


def _segment_cumsum(values: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Running sums of ``values`` restarting where ``segment`` (sorted) changes."""
    total = torch.cumsum(values, 0)
    starts = torch.ones_like(segment, dtype=torch.bool)
    starts[1:] = segment[1:] != segment[:-1]
    offset = torch.cummax(torch.where(starts, torch.arange(len(values), device=values.device), -1), 0).values
    return total - (total - values)[offset]
