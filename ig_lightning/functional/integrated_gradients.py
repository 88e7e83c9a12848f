"""Integrated Gradients in plain PyTorch: no Lightning needed.

``IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i da``, computed with a
quadrature rule from ``ig_lightning.functional.quadrature``. Every point of every example is an
independent forward+backward, so points are batched (``internal_batch_size`` caps a batch).
Several inputs (or a layer's several tensors) are integrated together along one straight path.

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

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ig_lightning._validation import validate_int, validate_positive_float, validate_target
from ig_lightning.functional._hooks import tap_layers
from ig_lightning.functional._inputs import Extras, make_baselines, validate_inputs
from ig_lightning.functional._paths import (
    Attributions,
    ForwardFunc,
    StraightPaths,
    frozen_parameters,
    gradients_enabled,
    input_problem,
    layer_problem,
    own_copy,
    validate_layers,
)
from ig_lightning.functional.adaptive import AutoResult, integrate_auto
from ig_lightning.functional.quadrature import quadrature_rule, validate_steps
from ig_lightning.functional.warm import WarmStart

__all__ = ["IGResult", "NonFiniteAttributionWarning", "integrated_gradients"]



class NonFiniteAttributionWarning(RuntimeWarning):
    """Some attributions are NaN or infinite (the model's gradients or outputs are)."""


def _nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full(t.shape, float("nan"), dtype=torch.float64, device=t.device)


@dataclass
class IGResult:
    """What ``integrated_gradients()`` returns.

    Attributes:
        attributions: The inputs' structure (a Tensor, or a tuple for a tuple of inputs), each tensor
            with its input's shape and dtype. With ``layer=``: the layer's output (or input) structure;
            a list with one entry per layer when several layers are given.
        delta: ``F(x) - F(x')`` per example, shape ``(B,)``.
        completeness_error: Attributions summed per example (over every input) minus ``delta``, signed,
            ``(B,)``. Always the true completeness, also with ``multiply_by_inputs=False``.
        n_steps: Points of the quadrature rule that produced each example's attributions, ``(B,)``.
        n_evaluations: Gradient evaluations spent per example, ``(B,)``: equal to ``n_steps`` for a fixed
            rule and for nested refinement, larger with ``n_steps="auto"`` and Gauss-Legendre (not nested).
        attribution_error: Estimated relative L2 error of each example's attributions against the exact
            integral, ``(B,)`` float64; NaN where no estimate was made (fixed ``n_steps``).
        rounds: With ``n_steps="auto"``: batched rounds of evaluations (each a pass over the points' chunks,
            and under several processes one sync); 0 for a fixed rule.
        warm_start: With ``n_steps="auto"`` and ``warm_start`` given: what a later call on the same examples can
            start from (pass it as ``warm_start=``; see ``ig_lightning.functional.warm``); else ``None``.
    """

    attributions: Attributions
    delta: torch.Tensor
    completeness_error: torch.Tensor
    n_steps: torch.Tensor
    n_evaluations: torch.Tensor
    attribution_error: torch.Tensor = field(default=None)  # type: ignore[assignment]
    rounds: int = 0
    warm_start: WarmStart | None = None

    def __post_init__(self) -> None:
        if self.attribution_error is None:
            self.attribution_error = _nan_like(self.delta)

    def relative_error(self, delta_floor: float = 1e-3) -> torch.Tensor:
        """``|completeness_error| / max(|delta|, delta_floor)`` per example."""
        return self.completeness_error.abs() / self.delta.abs().clamp_min(delta_floor)

    def to(self, device: torch.device | str) -> IGResult:
        """A copy with every tensor moved to ``device``."""
        move = lambda t: t.to(device)  # noqa: E731
        return IGResult(tree_map(move, self.attributions), move(self.delta), move(self.completeness_error),
                        move(self.n_steps), move(self.n_evaluations), move(self.attribution_error), self.rounds,
                        None if self.warm_start is None else self.warm_start.to(device))


def integrated_gradients(
    forward_func: ForwardFunc,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    target: int | Sequence[int] | torch.Tensor | None = None,
    baselines: Any = None,
    additional_forward_args: Any = None,
    n_steps: int | str = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    tolerance: float = 0.01,
    layer: nn.Module | Sequence[nn.Module] | None = None,
    attribute_to_layer_input: bool = False,
    multiply_by_inputs: bool = True,
    grad_kwargs: dict[str, Any] | None = None,
    max_steps: int = 512,
    delta_floor: float = 1e-3,
    sync: Callable[[int], int] | None = None,
    warm_start: WarmStart | bool | None = None,
) -> IGResult:
    """Integrated Gradients of ``forward_func`` at ``inputs`` relative to ``baselines``.

    Argument names and results follow captum's ``IntegratedGradients`` / ``LayerIntegratedGradients``.
    Works under ``torch.no_grad()`` and ``torch.inference_mode()`` and on tensors made there.
    Never touches parameters' ``.grad`` and leaves no hook or ``requires_grad`` change behind.
    The model's training mode is the caller's: call ``model.eval()`` first for dropout/BatchNorm.

    Args:
        forward_func: An ``nn.Module`` or callable, called as ``forward_func(*inputs, *additional_forward_args)``.
            It returns ``(B,)`` or ``(B, C)`` outputs: a Tensor, a tuple/list (its first element), or a
            mapping/object with ``logits`` (a Hugging Face ``ModelOutput``).
        inputs: The batch to explain: a Tensor ``(B, ...)`` or a tuple of them (attributed together, one
            path); floating point unless ``layer`` is given.
        target: Which output to explain: ``None`` (outputs are ``(B,)`` or ``(B, 1)``), an int, or ``(B,)`` ints.
        baselines: ``None`` (zeros), a number, or a Tensor broadcastable to the input; for a tuple of
            inputs, a tuple with one such entry per input (or one number/None for all).
        additional_forward_args: Arguments passed after the inputs at every path point, never attributed
            (an attention mask, flags). Tensors whose first dimension is ``B`` follow their example through
            batching (so a per-feature constant of length ``B`` would be sliced too: give it another shape);
            anything else is passed as it is.
        n_steps: Points of the quadrature rule, or ``"auto"``: refine each example until the estimated relative
            L2 error of its attributions against the exact integral is within ``tolerance`` and they add up to
            ``delta`` within ``tolerance * max(|delta|, delta_floor)``, or ``max_steps`` is reached (see
            ``ig_lightning.functional.adaptive``: an adaptive trapezoid that bisects where the path bends; the
            estimate is in ``attribution_error``).
        method: ``riemann_left``, ``riemann_right``, ``riemann_middle``, ``riemann_trapezoid`` or
            ``gausslegendre`` (captum's names), for a fixed ``n_steps``; ``"auto"`` uses its own rule.
        internal_batch_size: Most points per forward/backward; ``None`` = all at once.
        tolerance: With ``n_steps="auto"``: the relative L2 error target of each example's attributions.
        layer: A module inside ``forward_func`` (e.g. an ``nn.Embedding`` for token ids), or a list of
            modules that do not feed each other: attribute at their outputs, all on one path. The
            baseline there is the layers' output on ``baselines``. A layer's output may be a Tensor or a
            tuple (any nesting) of tensors; its floating tensors, batch first, are attributed.
        attribute_to_layer_input: Attribute at the layers' inputs (positional and keyword) instead.
        multiply_by_inputs: ``False`` returns the path-averaged gradient, without ``(x - x')``.
        grad_kwargs: Keyword arguments for ``torch.autograd.grad``.
        max_steps: With ``n_steps="auto"``: the most points (gradient evaluations) one example may use.
        delta_floor: With ``n_steps="auto"``: floor of ``|delta|`` and of the attributions' norm in the relative
            targets (a degenerate baseline leaves nothing to be relative to); a warning says so.
        sync: With ``n_steps="auto"`` under several processes: ``sync(k)`` returns the largest ``k`` over
            the processes, so that every process runs as many forward passes as the others (sharded
            strategies need it). ``None`` for one process.
        warm_start: With ``n_steps="auto"``: the ``warm_start`` of an earlier result on the same examples (the
            model may have changed): the call evaluates the meshes that one left first, in one round, and refines
            only where the estimate says so (``ig_lightning.functional.warm``); the error target and its
            estimate are those of a cold call. ``True``: start cold and leave a ``warm_start`` in the result.

    Returns:
        An ``IGResult``; its tensors are on the inputs' device.

    Raises:
        TypeError: an argument of the wrong type (named in the message), or a model output that holds no
            tensor to explain.
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

        Two inputs and an extra argument that follows its example:

        >>> f = lambda a, b, mask: (a.sum(1) + 2 * b.sum(1)) * mask
        >>> res = integrated_gradients(f, (torch.ones(2, 3), torch.ones(2, 1)),
        ...                            additional_forward_args=torch.tensor([1.0, 0.0]), n_steps=4)
        >>> [t[0].tolist() for t in res.attributions], res.attributions[0][1].tolist()
        ([[1.0, 1.0, 1.0], [2.0]], [0.0, 0.0, 0.0])
    """
    if not callable(forward_func):
        raise TypeError(f"`forward_func` must be callable, got {type(forward_func).__name__}")
    layers = validate_layers(layer, forward_func)
    items = validate_inputs(inputs, needs_float=layers is None)
    n_steps, method, max_steps = validate_steps(n_steps, method, max_steps)
    auto = n_steps == "auto"
    if internal_batch_size is not None:
        internal_batch_size = validate_int(internal_batch_size, "internal_batch_size", minimum=1)
    tolerance = validate_positive_float(tolerance, "tolerance")
    delta_floor = validate_positive_float(delta_floor, "delta_floor")
    for flag, name in ((attribute_to_layer_input, "attribute_to_layer_input"),
                       (multiply_by_inputs, "multiply_by_inputs")):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {flag!r}")
    if attribute_to_layer_input and layers is None:
        raise ValueError("`attribute_to_layer_input=True` needs a `layer`")
    if grad_kwargs is not None and not isinstance(grad_kwargs, dict):
        raise TypeError(f"`grad_kwargs` must be a dict, got {type(grad_kwargs).__name__}")
    if sync is not None and not callable(sync):
        raise TypeError(f"`sync` must be callable, got {type(sync).__name__}")
    if warm_start is not None and not isinstance(warm_start, (WarmStart, bool)):
        raise TypeError(f"`warm_start` must be a WarmStart (an earlier result's `warm_start`), True, False or None, "
                        f"got {type(warm_start).__name__}")
    if warm_start is not None and warm_start is not False and not auto:
        raise ValueError(f"`warm_start` needs n_steps='auto', got n_steps={n_steps!r}")
    target_t = validate_target(target, items[0].shape[0])
    if auto:
        tolerance = _reachable_tolerance(tolerance, items[0].device, None if layers else items[0].dtype)

    try:
        return _integrated_gradients(
            forward_func, items, isinstance(inputs, tuple), target_t, baselines, additional_forward_args,
            n_steps, method, internal_batch_size, tolerance, layers, isinstance(layer, (list, tuple, nn.ModuleList)),
            attribute_to_layer_input, multiply_by_inputs, grad_kwargs, max_steps, delta_floor, sync, warm_start)
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
    items: tuple[torch.Tensor, ...],
    is_tuple: bool,
    target_t: torch.Tensor | None,
    baselines: Any,
    additional_forward_args: Any,
    n_steps: int | str,
    method: str,
    internal_batch_size: int | None,
    tolerance: float,
    layers: list[nn.Module] | None,
    is_list: bool,
    to_layer_input: bool,
    multiply_by_inputs: bool,
    grad_kwargs: dict[str, Any] | None,
    max_steps: int,
    delta_floor: float,
    sync: Callable[[int], int] | None,
    warm_start: WarmStart | bool | None,
) -> IGResult:
    """The computation of ``integrated_gradients()``, on checked arguments."""
    n = items[0].shape[0]
    with gradients_enabled(), frozen_parameters(forward_func):
        # At a layer the inputs are fed to the model: copies, since tensors made under inference_mode cannot
        # be saved for backward. On the input path only their flat copy is used.
        xs = items if layers is None else tuple(own_copy(t) for t in items)
        bases = make_baselines(baselines, xs)
        device = xs[0].device
        extras = Extras(additional_forward_args, n, device)
        if target_t is not None:
            target_t = target_t.to(device)
        with tap_layers(layers, to_layer_input) if layers is not None else nullcontext() as tap:
            if tap is None:
                problem = input_problem(forward_func, xs, bases, extras, target_t, internal_batch_size, is_tuple)
            else:
                problem = layer_problem(forward_func, xs, bases, extras, target_t, internal_batch_size, tap,
                                         is_list)
            path = StraightPaths(problem.run, problem.start, problem.diff, internal_batch_size, grad_kwargs)
            del bases
            delta = problem.delta
            estimate, rounds, warm = None, 0, None
            if n_steps == "auto":
                res = _refine(path, delta, tolerance, max_steps, delta_floor, sync, warm_start)
                avg_grad, steps, evals, estimate = res.avg_grad, res.n_steps, res.n_evaluations, res.attribution_error
                rounds, warm = res.rounds, res.warm_start
            else:
                alphas, weights = quadrature_rule(method, n_steps, dtype=path.dtype, device=device)
                avg_grad = path.weighted_gradients(torch.arange(n, device=device), alphas, weights)
                steps = evals = torch.full((n,), n_steps, dtype=torch.long, device=device)
    total = path.diff * avg_grad
    error = total.sum(1) - delta
    _warn_non_finite(total)
    flat_attr = total if multiply_by_inputs else avg_grad
    attributions = problem.rebuild([t.detach() for t in problem.flat.split(flat_attr)])
    return IGResult(attributions, delta.detach(), error.detach(), steps, evals, estimate, rounds, warm)


def _reachable_tolerance(tolerance: float, device: torch.device, dtype: torch.dtype | None) -> float:
    """``tolerance``, raised to what half precision can reach (autocast, or half inputs): there the gradients are
    only good to ~1%, refining cannot do better and would run to ``max_steps``; a warning says so."""
    compute = dtype
    try:
        if torch.is_autocast_enabled(device.type):
            compute = torch.get_autocast_dtype(device.type)
    except (AttributeError, TypeError, RuntimeError):  # older torch: no per-device autocast queries
        pass
    if compute is None or compute not in (torch.float16, torch.bfloat16):
        return tolerance
    floor = 8 * torch.finfo(compute).eps
    if tolerance < floor:
        warnings.warn(f"n_steps='auto' in {compute}: tolerance={tolerance:g} is below what its gradients can "
                      f"reach; using {floor:g}", RuntimeWarning, stacklevel=3)
        return floor
    return tolerance


def _refine(
    path: StraightPaths, delta: torch.Tensor, tolerance: float, max_steps: int, delta_floor: float,
    sync: Callable[[int], int] | None, warm_start: WarmStart | bool | None,
) -> AutoResult:
    """Refine each example until its attributions are within tolerance (or ``max_steps`` is reached)."""
    res = integrate_auto(path, delta, tolerance=tolerance, max_steps=max_steps, delta_floor=delta_floor,
                         sync=sync, warm_start=warm_start)
    n = delta.shape[0]
    if res.unconverged:
        warnings.warn(
            f"n_steps='auto': {res.unconverged} of {n} examples did not reach tolerance={tolerance} within "
            f"max_steps={max_steps}; `n_steps` and `attribution_error` of the result show what they reached",
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
    return res


def _warn_non_finite(attributions: torch.Tensor) -> None:
    bad = ~torch.isfinite(attributions).all(1)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        warnings.warn(
            f"attributions of {len(idx)} example(s) are NaN or infinite (examples {idx[:10]}): "
            "the model's outputs or gradients are not finite there",
            NonFiniteAttributionWarning,
            stacklevel=4,
        )
