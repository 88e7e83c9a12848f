"""Integrated Gradients in plain PyTorch: no Lightning needed.

``IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i da``, computed with a
quadrature rule from :mod:`ig_lightning.quadrature`. Every point of every example is an
independent forward+backward, so points are batched (``internal_batch_size`` caps a batch).

Example::

    >>> import torch
    >>> w = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    >>> res = integrated_gradients(lambda x: x @ w, torch.ones(2, 3, dtype=torch.float64))
    >>> res.attributions[0].tolist()
    [1.0, -2.0, 3.0]
    >>> res.delta.tolist(), res.n_steps.tolist()
    ([2.0, 2.0], [50, 50])
"""

from __future__ import annotations

import numbers
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ig_lightning._checks import check_int, check_positive_float, check_target
from ig_lightning._layer import LayerTap, tap_layer
from ig_lightning.quadrature import (
    Refinement,
    check_method,
    check_n_steps,
    check_n_steps_or_auto,
    first_steps,
    next_steps,
    quadrature_rule,
    refine,
)

__all__ = ["IGResult", "NonFiniteAttributionWarning", "integrated_gradients"]

ForwardFunc = Callable[[torch.Tensor], torch.Tensor]


class NonFiniteAttributionWarning(RuntimeWarning):
    """Some attributions are NaN or infinite (the model's gradients or outputs are)."""


@dataclass
class IGResult:
    """What :func:`integrated_gradients` returns.

    Attributes:
        attributions: Same shape and dtype as the inputs (or as the layer's output with ``layer=``).
        delta: ``F(x) - F(x')`` per example, shape ``(B,)``.
        completeness_error: Attributions summed per example minus ``delta``, signed, shape ``(B,)``.
        n_steps: Points of the quadrature rule that produced each example's attributions, ``(B,)``.
        n_evaluations: Gradient evaluations spent per example, ``(B,)``: equal to ``n_steps`` for a fixed
            rule and for nested refinement, larger with ``n_steps="auto"`` and Gauss-Legendre (not nested).
    """

    attributions: torch.Tensor
    delta: torch.Tensor
    completeness_error: torch.Tensor
    n_steps: torch.Tensor
    n_evaluations: torch.Tensor

    def relative_error(self, delta_floor: float = 1e-3) -> torch.Tensor:
        """``|completeness_error| / max(|delta|, delta_floor)`` per example."""
        return self.completeness_error.abs() / self.delta.abs().clamp_min(delta_floor)

    def to(self, device: torch.device | str) -> IGResult:
        """A copy with every tensor moved to ``device``."""
        return IGResult(*(t.to(device) for t in (self.attributions, self.delta, self.completeness_error,
                                                  self.n_steps, self.n_evaluations)))


@contextmanager
def gradients_enabled() -> Iterator[None]:
    """Leave ``inference_mode`` and ``no_grad`` (Lightning validates under them) for the block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def frozen_parameters(forward_func: object) -> Iterator[None]:
    """Stop recording parameter gradients for the block (they are never needed), then restore the flags.

    The graph then holds only what the input gradient needs, which saves time and memory.
    ``.grad`` is never touched: gradients are taken with ``torch.autograd.grad``.
    """
    params = [p for p in forward_func.parameters() if p.requires_grad] if isinstance(forward_func, nn.Module) else []
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _own_copy(t: torch.Tensor) -> torch.Tensor:
    # A fresh, ordinary tensor: usable by autograd even if it was created under inference_mode.
    return t.detach().clone()


def _make_baselines(baselines: Any, inputs: torch.Tensor) -> torch.Tensor:
    if baselines is None:
        return torch.zeros_like(inputs)
    if isinstance(baselines, numbers.Number) and not isinstance(baselines, bool):
        if not inputs.dtype.is_floating_point and not isinstance(baselines, numbers.Integral):
            raise TypeError(f"`baselines` must be an int for integer inputs, got {baselines!r}")
        return torch.full_like(inputs, baselines)
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(f"`baselines` must be None, a number or a Tensor, got {type(baselines).__name__}")
    try:
        shape = torch.broadcast_shapes(baselines.shape, inputs.shape)
    except RuntimeError:
        shape = None
    if shape != inputs.shape:
        raise ValueError(
            f"`baselines` of shape {tuple(baselines.shape)} does not broadcast to the inputs' shape "
            f"{tuple(inputs.shape)}"
        )
    if inputs.dtype.is_floating_point != baselines.dtype.is_floating_point:
        raise TypeError(f"`baselines` dtype {baselines.dtype} does not match the inputs' dtype {inputs.dtype}")
    return _own_copy(baselines.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs))


def _select_outputs(out: Any, target: torch.Tensor | None, n: int) -> torch.Tensor:
    """One scalar per row: ``out`` (n,) or (n, C) indexed by ``target``."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"`forward_func` must return a Tensor, got {type(out).__name__}")
    if out.ndim not in (1, 2) or out.shape[0] != n:
        raise ValueError(
            f"`forward_func` must return outputs of shape ({n},) or ({n}, C) for {n} inputs, got {tuple(out.shape)}"
        )
    if out.ndim == 1:
        if target is not None:
            raise ValueError(f"`target` must be None when `forward_func` returns shape ({n},), got a target")
        return out
    n_classes = out.shape[1]
    if target is None:
        if n_classes != 1:
            raise ValueError(f"`target` is None but `forward_func` returns {n_classes} outputs per example: pass a target")
        return out[:, 0]
    bad = (target < 0) | (target >= n_classes)
    if bool(bad.any()):
        raise ValueError(f"`target` must be in [0, {n_classes - 1}], got {target[bad].unique()[:5].tolist()}")
    return out.gather(1, target.to(out.device).view(-1, 1)).squeeze(1)


class _Path:
    """The straight path ``start + a * (end - start)`` for every example, and gradients along it."""

    def __init__(
        self,
        forward_func: ForwardFunc,
        inputs: torch.Tensor,
        start: torch.Tensor,
        end: torch.Tensor,
        target: torch.Tensor | None,
        internal_batch_size: int | None,
        tap: LayerTap | None,
    ) -> None:
        self.forward_func, self.inputs, self.start, self.end = forward_func, inputs, start, end
        self.target, self.batch, self.tap = target, internal_batch_size, tap

    def gradients_at(self, idx: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients and outputs at ``start + alphas[j] * (end - start)`` of example ``idx[j]``, for every j."""
        grads, outputs = [], []
        batch = self.batch or len(idx)
        for k in range(0, len(idx), batch):
            i, a = idx[k:k + batch], alphas[k:k + batch]
            start = self.start[i]
            a = a.view(-1, *(1,) * (start.ndim - 1))
            grad, out = self._grad(start + a * (self.end[i] - start), i, with_outputs=True)
            grads.append(grad)
            outputs.append(out)
        return torch.cat(grads), torch.cat(outputs)

    def _grad(self, points: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor | None = None,
              with_outputs: bool = False):
        points.requires_grad_(True)
        if self.tap is None:
            out = self.forward_func(points)
        else:  # the layer's output becomes the path point; the model still reads the real inputs
            out = self.tap.run(self.forward_func, self.inputs[idx], replacement=points)
        target = None if self.target is None else self.target[idx]
        selected = _select_outputs(out, target, len(idx))
        if not selected.requires_grad:
            raise ValueError(
                    "`forward_func` output does not depend differentiably on its inputs: does it detach them, "
                "or run under torch.no_grad()/inference_mode() itself?"
            )
        # The quadrature weights ride along as the backward's seed: no extra pass over the gradients.
        seed = torch.ones_like(selected) if weights is None else weights.to(selected.dtype)
        (grad,) = torch.autograd.grad(selected, points, grad_outputs=seed, allow_unused=True)
        grad = torch.zeros_like(points) if grad is None else grad
        return (grad, selected.detach()) if with_outputs else grad

    def weighted_gradients(self, idx: torch.Tensor, alphas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k weights[k] * dF/dz`` at ``z = start + alphas[k] * (end - start)`` for examples ``idx``."""
        start, diff = self.start[idx], self.end[idx] - self.start[idx]
        b, m, feat = len(idx), len(alphas), start.shape[1:]
        acc = torch.zeros_like(start)
        ones = (1,) * len(feat)
        per_alpha = m if self.batch is None else self.batch // b
        if per_alpha >= 1:  # whole rows of alphas per batch, ordered alpha-major like captum
            for k in range(0, m, per_alpha):
                a, w = alphas[k:k + per_alpha], weights[k:k + per_alpha]
                points = (start.unsqueeze(0) + a.view(-1, 1, *ones) * diff.unsqueeze(0)).reshape(-1, *feat)
                grad = self._grad(points, idx.repeat(len(a)), w.repeat_interleave(b))
                acc += grad.view(len(a), b, *feat).sum(0)
        else:  # fewer points per batch than examples: one alpha, a slice of examples at a time
            for k in range(m):
                for e in range(0, b, self.batch):
                    sl = slice(e, e + self.batch)
                    seed = weights[k].expand(len(idx[sl]))
                    acc[sl] += self._grad(start[sl] + alphas[k] * diff[sl], idx[sl], seed)
        return acc


def _check_layer(layer: Any, forward_func: Any) -> nn.Module | None:
    if layer is None:
        return None
    if not isinstance(layer, nn.Module):
        raise TypeError(f"`layer` must be an nn.Module inside `forward_func`, got {type(layer).__name__}")
    if isinstance(forward_func, nn.Module) and not any(m is layer for m in forward_func.modules()):
        raise ValueError(f"`layer` ({type(layer).__name__}) is not a submodule of `forward_func`")
    return layer


def _chunks(n: int, batch: int | None) -> list[slice]:
    """Slices of at most ``batch`` rows covering ``range(n)``."""
    step = batch or n
    return [slice(i, i + step) for i in range(0, n, step)]


def _endpoints(
    forward_func: ForwardFunc,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    target: torch.Tensor | None,
    tap: LayerTap | None,
    batch: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(start, end, delta)`` of the path: in input space, or at the layer's output.

    At a layer the path runs from the layer's output on the baselines to its output on the inputs,
    the rest of the model reading the inputs, so ``delta`` is exactly what the path integrates.
    Forwards run at most ``batch`` examples at a time, like the path itself.
    """
    n = inputs.shape[0]
    with torch.no_grad():
        if tap is None:
            both, targets = torch.cat([inputs, baselines]), _twice(target)
            out = torch.cat([
                _select_outputs(forward_func(both[sl]), None if targets is None else targets[sl], len(both[sl]))
                for sl in _chunks(2 * n, batch)
            ])
            return baselines, inputs, out[:n] - out[n:]
        starts, ends, f_end, f_start = [], [], [], []
        for sl in _chunks(n, batch):
            t = None if target is None else target[sl]
            tap.run(forward_func, baselines[sl])
            starts.append(tap.output)
            f_end.append(_select_outputs(tap.run(forward_func, inputs[sl]), t, len(inputs[sl])))
            ends.append(tap.output)
            f_start.append(_select_outputs(tap.run(forward_func, inputs[sl], replacement=starts[-1]), t,
                                           len(inputs[sl])))
        start, end = torch.cat(starts), torch.cat(ends)
    if not start.dtype.is_floating_point:
        raise TypeError(f"`layer` must output floating point values, got {start.dtype}")
    return _own_copy(start), _own_copy(end), torch.cat(f_end) - torch.cat(f_start)


def _twice(target: torch.Tensor | None) -> torch.Tensor | None:
    return None if target is None else torch.cat([target, target])


def integrated_gradients(
    forward_func: ForwardFunc,
    inputs: torch.Tensor,
    *,
    target: int | Sequence[int] | torch.Tensor | None = None,
    baselines: float | torch.Tensor | None = None,
    n_steps: int | str = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    tolerance: float = 0.01,
    layer: nn.Module | None = None,
    max_steps: int = 512,
    delta_floor: float = 1e-3,
) -> IGResult:
    """Integrated Gradients of ``forward_func`` at ``inputs`` relative to ``baselines``.

    Works under ``torch.no_grad()`` and ``torch.inference_mode()`` and on tensors made there.
    Never touches parameters' ``.grad`` and leaves no hook or ``requires_grad`` change behind.
    The model's training mode is the caller's: call ``model.eval()`` first for dropout/BatchNorm.

    Args:
        forward_func: An ``nn.Module`` or callable mapping a batch ``(B, ...)`` to outputs ``(B,)`` or ``(B, C)``.
        inputs: The batch to explain, ``(B, ...)``; floating point unless ``layer`` is given.
        target: Which output to explain: ``None`` (outputs are ``(B,)`` or ``(B, 1)``), an int, or ``(B,)`` ints.
        baselines: ``None`` (zeros), a number, or a Tensor broadcastable to ``inputs``.
        n_steps: Points of the quadrature rule, or ``"auto"``: refine each example until
            ``|completeness_error| <= tolerance * max(|delta|, delta_floor)`` or ``max_steps`` is reached.
            Completeness is one number per example: the attributions add up, but single features can
            still be off by more than ``tolerance`` (see the README's benchmark).
        method: ``riemann_left``, ``riemann_right``, ``riemann_middle``, ``riemann_trapezoid`` or
            ``gausslegendre`` (captum's names). With ``"auto"``: ``riemann_trapezoid`` refines adaptively
            (each round bisects the interval whose own completeness error is largest: the cheapest
            choice, keeping one gradient per node in memory); the other Riemann rules double (midpoints:
            triple) a uniform grid reusing every gradient; Gauss-Legendre is not nested and recomputes.
        internal_batch_size: Most points per forward/backward; ``None`` = all at once.
        tolerance: With ``n_steps="auto"``: relative completeness target per example.
        layer: A module inside ``forward_func``: attribute at its output (e.g. an ``nn.Embedding``
            for token ids). The baseline there is the layer's output on ``baselines``.
        max_steps: With ``n_steps="auto"``: the largest rule (points) one example may reach. Gauss-Legendre
            spends more evaluations than its final size, as it cannot reuse points (``n_evaluations``).
        delta_floor: With ``n_steps="auto"``: examples with ``|delta|`` below it get the absolute target
            ``tolerance * delta_floor`` (a degenerate baseline leaves nothing to be relative to); a warning says so.

    Returns:
        An :class:`IGResult`; its tensors are on the inputs' device.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: an argument with a bad value, or outputs of the wrong shape.

    Warns:
        NonFiniteAttributionWarning: some attributions are NaN or infinite.
        RuntimeWarning: with ``"auto"``, examples that did not converge or have a degenerate ``delta``.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> x = torch.randn(5, 4)
        >>> res = integrated_gradients(model, x, target=2, n_steps="auto", tolerance=1e-3)
        >>> bool((res.completeness_error.abs() <= 1e-3 * res.delta.abs().clamp_min(1e-3) + 1e-6).all())
        True
    """
    if not callable(forward_func):
        raise TypeError(f"`forward_func` must be callable, got {type(forward_func).__name__}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"`inputs` must be a Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must have a non-empty batch dimension, got shape {tuple(inputs.shape)}")
    layer = _check_layer(layer, forward_func)
    if layer is None and not inputs.dtype.is_floating_point:
        raise TypeError(f"`inputs` must be floating point (got {inputs.dtype}); for token ids pass `layer=`")
    method = check_method(method)
    n_steps = check_n_steps_or_auto(n_steps, method)
    auto = n_steps == "auto"
    if internal_batch_size is not None:
        internal_batch_size = check_int(internal_batch_size, "internal_batch_size", minimum=1)
    tolerance = check_positive_float(tolerance, "tolerance")
    max_steps = check_n_steps(max_steps, method, name="max_steps")
    if auto and method == "riemann_trapezoid" and max_steps < 3:
        raise ValueError(f"`max_steps` must be >= 3 for n_steps='auto' with riemann_trapezoid, got {max_steps}")
    delta_floor = check_positive_float(delta_floor, "delta_floor")
    target_t = check_target(target, inputs.shape[0])

    try:
        return _integrated_gradients(forward_func, inputs, target_t, baselines, n_steps, method,
                                     internal_batch_size, tolerance, layer, max_steps, delta_floor)
    except RuntimeError as error:
        if "Inference tensors cannot be saved for backward" not in str(error):
            raise
        raise RuntimeError(
            "the model holds a tensor created under torch.inference_mode() (for example a cache built "
            "lazily during trainer.validate), which autograd cannot use: build it in __init__ or under "
            "torch.inference_mode(False)"
        ) from error


def _integrated_gradients(
    forward_func: ForwardFunc,
    inputs: torch.Tensor,
    target_t: torch.Tensor | None,
    baselines: Any,
    n_steps: int | str,
    method: str,
    internal_batch_size: int | None,
    tolerance: float,
    layer: nn.Module | None,
    max_steps: int,
    delta_floor: float,
) -> IGResult:
    """The computation of :func:`integrated_gradients`, on checked arguments."""
    n, auto = inputs.shape[0], n_steps == "auto"
    with gradients_enabled(), frozen_parameters(forward_func):
        x = _own_copy(inputs)
        base = _make_baselines(baselines, x)
        if target_t is not None:
            target_t = target_t.to(x.device)
        with tap_layer(layer) if layer is not None else _no_tap() as tap:
            start, end, delta = _endpoints(forward_func, x, base, target_t, tap, internal_batch_size)
            path = _Path(forward_func, x, start, end, target_t, internal_batch_size, tap)
            if auto:
                avg_grad, steps, evals = _integrate_auto(path, method, delta, tolerance, max_steps, delta_floor)
            else:
                alphas, weights = quadrature_rule(method, n_steps, dtype=start.dtype, device=start.device)
                avg_grad = path.weighted_gradients(torch.arange(n, device=x.device), alphas, weights)
                steps = evals = torch.full((n,), n_steps, dtype=torch.long, device=x.device)
    attributions = (end - start) * avg_grad
    error = attributions.reshape(n, -1).sum(1) - delta
    _warn_non_finite(attributions)
    return IGResult(attributions.detach(), delta.detach(), error.detach(), steps, evals)


@contextmanager
def _no_tap() -> Iterator[None]:
    yield None


def _integrate_auto(
    path: _Path, method: str, delta: torch.Tensor, tolerance: float, max_steps: int, delta_floor: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refine each example until its completeness error is within tolerance (or ``max_steps`` is reached)."""
    goal = tolerance * delta.abs().clamp_min(delta_floor)
    refine_all = _refine_adaptive if method == "riemann_trapezoid" else _refine_nested
    avg_grad, steps, evals, unconverged = refine_all(path, method, delta, goal, max_steps)
    n = delta.shape[0]
    if unconverged:
        warnings.warn(
            f"n_steps='auto': {unconverged} of {n} examples did not reach tolerance={tolerance} within "
            f"max_steps={max_steps}; `n_steps` of the result shows what they used",
            RuntimeWarning,
            stacklevel=4,
        )
    degenerate = int((delta.abs() < delta_floor).sum())
    if degenerate:
        warnings.warn(
            f"n_steps='auto': {degenerate} of {n} examples have |F(x) - F(baseline)| < delta_floor={delta_floor}; "
            f"their completeness target is absolute ({tolerance * delta_floor:g})",
            RuntimeWarning,
            stacklevel=4,
        )
    return avg_grad, steps, evals


def _errors(path: _Path, avg_grad: torch.Tensor, delta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Absolute completeness error of the examples ``idx`` with their current average gradients."""
    diff = (path.end[idx] - path.start[idx]).reshape(len(idx), -1)
    return ((diff * avg_grad[idx].reshape(len(idx), -1)).sum(1) - delta[idx]).abs()


def _refine_nested(
    path: _Path, method: str, delta: torch.Tensor, goal: torch.Tensor, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Grow a uniform grid: x2 (x3 for midpoints) reusing every gradient; Gauss-Legendre starts over (x2)."""
    n, device = delta.shape[0], delta.device
    avg_grad = torch.zeros_like(path.start)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    evals = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)
    current: int | None = None
    while len(active):
        if current is None and first_steps(method) > max_steps:
            rule = quadrature_rule(method, max_steps, dtype=path.start.dtype, device=device)
            step = Refinement(max_steps, *rule, old_scale=0.0)
        else:
            step = refine(method, current, dtype=path.start.dtype, device=device)
        new = path.weighted_gradients(active, step.alphas, step.weights)
        avg_grad[active] = step.old_scale * avg_grad[active] + new
        steps[active] = step.n_steps
        evals[active] += len(step.alphas)
        error = _errors(path, avg_grad, delta, active)
        # Non-finite errors cannot improve by refining: stop there, the caller is warned.
        active = active[(error > goal[active]) & torch.isfinite(error)]
        current = step.n_steps
        if len(active) and next_steps(method, current) > max_steps:
            return avg_grad, steps, evals, len(active)
    return avg_grad, steps, evals, 0


def _refine_adaptive(
    path: _Path, method: str, delta: torch.Tensor, goal: torch.Tensor, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Trapezoid rule on a per-example grid that bisects, each round, the interval that is most off.

    Every evaluated point also gives ``F`` there, so each interval's own completeness error,
    ``F(b) - F(a) - (b - a) * (F'(a) + F'(b)) / 2`` along the path, is known exactly: splitting the worst
    interval puts points where the path bends (ReLU kinks, a softmax turning) and none where it is flat.
    Nested: every gradient is kept (one vector per node and example) and reused.
    """
    n, device, dtype = delta.shape[0], delta.device, path.start.dtype
    flat_diff = (path.end - path.start).reshape(n, -1)
    idx = torch.arange(n, device=device)
    first = torch.tensor([0.0, 0.5, 1.0], dtype=dtype, device=device)
    grads, outputs = path.gradients_at(idx.repeat(3), first.repeat_interleave(n))
    nodes = [
        [(float(first[k]), grads[k * n + e], float(outputs[k * n + e]),
          float(grads[k * n + e].reshape(-1) @ flat_diff[e])) for k in range(3)]
        for e in range(n)
    ]  # per example, sorted: (alpha, gradient, F, dF/dalpha)
    avg_grad = torch.stack([0.25 * g0 + 0.5 * g1 + 0.25 * g2 for (_, g0, _, _), (_, g1, _, _), (_, g2, _, _)
                            in nodes])
    error = _errors(path, avg_grad, delta, idx)
    active = idx[(error > goal) & torch.isfinite(error)]
    gave_up = 0
    while len(active):
        capped = [e for e in active.tolist() if len(nodes[e]) >= max_steps]
        gave_up += len(capped)
        todo = [e for e in active.tolist() if len(nodes[e]) < max_steps]
        if not todo:
            break
        worst = [_worst_interval(nodes[e]) for e in todo]
        mids = torch.tensor([(nodes[e][i][0] + nodes[e][i + 1][0]) / 2 for e, i in zip(todo, worst)],
                            dtype=dtype, device=device)
        todo_t = torch.tensor(todo, device=device)
        grads, outputs = path.gradients_at(todo_t, mids)
        for j, (e, i) in enumerate(zip(todo, worst)):
            (a, ga, _, _), (b, gb, _, _) = nodes[e][i], nodes[e][i + 1]
            h = b - a
            # The interval's trapezoid h/2 (ga + gb) becomes h/4 (ga + 2 gm + gb).
            avg_grad[e] += 0.5 * h * grads[j] - 0.25 * h * (ga + gb)
            slope = float(grads[j].reshape(-1) @ flat_diff[e])
            nodes[e].insert(i + 1, (float(mids[j]), grads[j], float(outputs[j]), slope))
        error = _errors(path, avg_grad, delta, todo_t)
        active = todo_t[(error > goal[todo_t]) & torch.isfinite(error)]
    steps = torch.tensor([len(v) for v in nodes], dtype=torch.long, device=device)
    return avg_grad, steps, steps.clone(), gave_up


def _worst_interval(nodes: list[tuple[float, torch.Tensor, float, float]]) -> int:
    """Index of the interval whose trapezoid misses its own ``F(b) - F(a)`` the most."""
    errors = [abs((fb - fa) - (b - a) * (sa + sb) / 2)
              for (a, _, fa, sa), (b, _, fb, sb) in zip(nodes, nodes[1:])]
    return max(range(len(errors)), key=errors.__getitem__)


def _warn_non_finite(attributions: torch.Tensor) -> None:
    bad = ~torch.isfinite(attributions.reshape(attributions.shape[0], -1)).all(1)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        warnings.warn(
            f"attributions of {len(idx)} example(s) are NaN or infinite (examples {idx[:10]}): "
            "the model's outputs or gradients are not finite there",
            NonFiniteAttributionWarning,
            stacklevel=4,
        )
