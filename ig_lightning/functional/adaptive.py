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

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from ig_lightning.functional.quadrature import AUTO_MIN_STEPS

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


class PathGradients(Protocol):
    """What :func:`integrate_auto` needs of the straight paths (the engine's ``StraightPaths`` provides it)."""

    n: int
    diff: torch.Tensor
    dtype: torch.dtype
    device: torch.device

    def gradients_at(self, idx: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients ``(k, D)`` and outputs ``(k,)`` at ``start[idx[j]] + alphas[j] * diff[idx[j]]``."""
        ...


@dataclass
class AutoResult:
    """What :func:`integrate_auto` returns.

    Attributes:
        avg_grad: ``(n, D)`` the path-averaged gradient per example (flat features).
        n_steps: ``(n,)`` long: points of the final rule per example.
        n_evaluations: ``(n,)`` long: gradient evaluations spent per example (padding not counted).
        attribution_error: ``(n,)`` float64, estimated relative L2 error of ``diff * avg_grad`` against the
            exact integral; NaN where the gradients were not finite.
        unconverged: Examples that hit ``max_steps`` without reaching ``tolerance``.
    """

    avg_grad: torch.Tensor
    n_steps: torch.Tensor
    n_evaluations: torch.Tensor
    attribution_error: torch.Tensor
    unconverged: int


def integrate_auto(
    path: PathGradients,
    delta: torch.Tensor,
    *,
    tolerance: float,
    max_steps: int,
    delta_floor: float,
    sync: Callable[[int], int] | None = None,
) -> AutoResult:
    """Integrate every example's gradient along its path until its estimated relative L2 error is within tolerance.

    Args:
        path: The paths (see :class:`PathGradients`).
        delta: ``(n,)`` ``F(x) - F(x')``, for the completeness condition.
        tolerance: Target relative L2 error of each example's attributions (and relative completeness).
        max_steps: Most points one example may use.
        delta_floor: Floor of ``|delta|`` and of ``||attr||`` in the relative errors (near zero there is nothing
            to be relative to; attributions share ``F``'s units, as ``delta`` does).
        sync: ``sync(k)`` returns the largest ``k`` over the processes; every round then evaluates that many
            points on every process. ``None`` for one process.

    Returns:
        An :class:`AutoResult`.

    Raises:
        ValueError: ``max_steps`` is below :data:`~ig_lightning.functional.quadrature.AUTO_MIN_STEPS`, or ``sync``
            asks a process without examples to evaluate points (there is nothing to pad with).
    """
    if max_steps < AUTO_MIN_STEPS:
        raise ValueError(f"`max_steps` must be >= {AUTO_MIN_STEPS} for n_steps='auto', got {max_steps}")
    return _Bisection(path, delta, tolerance, max_steps, delta_floor, sync).run()


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
        # The ends of the path, a hair inside: a tied baseline's gradient stands for none of its neighbours.
        self.eps = max(2.0 ** -12, 4 * torch.finfo(self.dtype).eps)

    # --- lockstep evaluation ----------------------------------------------------------------------------

    def _total_points(self, k: int) -> int:
        """How many points every process evaluates this round (``k`` here)."""
        return k if self.sync is None else int(self.sync(k))

    def _evaluate(self, idx: torch.Tensor, alphas: torch.Tensor, total: int) -> torch.Tensor:
        """Gradients at the ``k`` points, padded to ``total`` points with example 0 at alpha 0 (dropped)."""
        k = len(idx)
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

    def _result(self, avg_grad: torch.Tensor, estimate: torch.Tensor) -> AutoResult:
        missed = (estimate > self.tolerance) | self._incomplete(avg_grad)
        unconverged = int((missed & ~self.dead).sum())
        return AutoResult(avg_grad, self.count.clone(), self.count.clone(), estimate.to(torch.float64), unconverged)

    # --- the bisection ------------------------------------------------------------------------------------

    def run(self) -> AutoResult:
        n, dtype, device = self.n, self.dtype, self.device
        m0 = BISECTION_START if self.max_steps >= BISECTION_START else 3
        grid = torch.linspace(0, 1, m0, dtype=dtype, device=device)
        every = torch.arange(n, device=device)
        node_alpha = grid.repeat_interleave(n)  # node k of example e is row k * n + e
        grads = self._evaluate(every.repeat(m0), self._inside(node_alpha), self._total_points(n * m0))
        self.grads, self.alpha, self.used = self._pool(grads), self._pool(node_alpha), n * m0
        rows = lambda k: k * n + every  # noqa: E731
        left = torch.cat([rows(k) for k in range(m0 - 1)])  # interval j of example e: position j * n + e
        right = torch.cat([rows(k + 1) for k in range(m0 - 1)])
        owner = every.repeat(m0 - 1)
        h = 1.0 / (m0 - 1)
        avg_grad = torch.zeros(n, self.diff.shape[1], dtype=dtype, device=device)
        avg_grad.index_add_(0, owner, (h / 2) * (grads[left] + grads[right]))
        # First indicators: each pair of intervals against the one interval twice as long.
        pairs = range(0, m0 - 1, 2)
        a, mid, b = (torch.cat([rows(k + s) for k in pairs]) for s in (0, 1, 2))
        lo, hi = self._split(a, mid, b, every.repeat(len(pairs)), 2 * h)
        indicator = torch.empty(len(left), dtype=dtype, device=device)
        first = torch.cat([k * n + every for k in pairs])
        indicator[first], indicator[first + n] = lo, hi

        while True:
            squares = torch.zeros(n, dtype=dtype, device=device).index_add_(0, owner, indicator ** 2)
            estimate = self._relative(BISECTION_SCALE * squares.sqrt(), avg_grad)
            active = ((estimate > self.tolerance) | self._incomplete(avg_grad)) & ~self.dead
            active &= self.count < self.max_steps
            chosen = self._choose(indicator ** 2, owner, squares, active)
            total = self._total_points(len(chosen))
            if total == 0:
                return self._result(avg_grad, estimate)
            lft, rgt, ex = left[chosen], right[chosen], owner[chosen]
            mids = (self.alpha[lft] + self.alpha[rgt]) / 2
            new = self._evaluate(ex, mids, total)
            rows_new = self._store(new, mids)
            width = (self.alpha[rgt] - self.alpha[lft]).unsqueeze(1)
            # The interval's h/2 (ga + gb) becomes h/4 (ga + 2 gm + gb).
            avg_grad.index_add_(0, ex, width / 2 * new - width / 4 * (self.grads[lft] + self.grads[rgt]))
            lo, hi = self._split(lft, rows_new, rgt, ex, width.squeeze(1))
            keep = torch.ones(len(left), dtype=torch.bool, device=device)
            keep[chosen] = False
            left = torch.cat([left[keep], lft, rows_new])
            right = torch.cat([right[keep], rows_new, rgt])
            owner = torch.cat([owner[keep], ex, ex])
            indicator = torch.cat([indicator[keep], lo, hi])

    def _inside(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha.clamp(self.eps, 1 - self.eps)

    @staticmethod
    def _pool(first: torch.Tensor) -> torch.Tensor:
        pool = first.new_empty((max(2 * len(first), 16), *first.shape[1:]))
        pool[:len(first)] = first
        return pool

    def _store(self, grads: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """Append nodes to the pool (doubling it when full); their rows."""
        end = self.used + len(grads)
        if end > len(self.alpha):
            size = max(2 * len(self.alpha), end)
            for name in ("grads", "alpha"):
                old = getattr(self, name)
                grown = old.new_empty((size, *old.shape[1:]))
                grown[:self.used] = old[:self.used]
                setattr(self, name, grown)
        self.grads[self.used:end] = grads
        self.alpha[self.used:end] = alphas
        rows = torch.arange(self.used, end, device=self.device)
        self.used = end
        return rows

    def _split(self, a: torch.Tensor, m: torch.Tensor, b: torch.Tensor, ex: torch.Tensor,
               width: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Indicators of the halves ``[a, m]`` and ``[m, b]`` of intervals just bisected.

        The change of the attributions, ``diff * width / 4 * (ga + gb - 2 gm)``, shared between the halves in
        proportion to how much the attributions change across each (a kink sits in one half only).
        """
        diff, g = self.diff[ex], self.grads
        width = torch.as_tensor(width, dtype=self.dtype, device=self.device)
        change = (diff * (g[a] + g[b] - 2 * g[m])).norm(dim=1) * width / 4
        across_lo = (diff * (g[m] - g[a])).norm(dim=1)
        across_hi = (diff * (g[b] - g[m])).norm(dim=1)
        both = torch.hypot(across_lo, across_hi)
        flat = both == 0
        half = torch.full_like(both, math.sqrt(0.5))
        share_lo = torch.where(flat, half, across_lo / both.clamp_min(1e-300))
        share_hi = torch.where(flat, half, across_hi / both.clamp_min(1e-300))
        return change * share_lo, change * share_hi

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
