"""Quadrature rules on [0, 1] for the path integral of Integrated Gradients.

A rule is a set of points ``alphas`` in [0, 1] and weights summing to one, so that
``integral_0^1 g(a) da ~= sum_k weights[k] * g(alphas[k])``. The rules are kept apart
from the attribution code: the engine only asks for points and weights.

``n_steps="auto"`` has its own adaptive rule (``ig_lightning.functional.adaptive``).

Example::

    >>> import torch
    >>> alphas, weights = quadrature_rule("riemann_trapezoid", 3, dtype=torch.float64)
    >>> alphas.tolist(), weights.tolist()
    ([0.0, 0.5, 1.0], [0.25, 0.5, 0.25])
"""

from __future__ import annotations

import functools

import numpy as np
import torch

METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)

#: Smallest number of points each rule accepts.
MIN_STEPS = {method: (2 if method == "riemann_trapezoid" else 1) for method in METHODS}
#: Smallest ``max_steps`` of ``n_steps="auto"``: its bisection starts from three points, whatever the rule.
AUTO_MIN_STEPS = 3


def validate_method(method: object, name: str = "method") -> str:
    """Return ``method`` if it names a rule, else raise naming the bad value."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`{name}` must be one of {METHODS}, got {method!r}")
    return method


def validate_n_steps(n_steps: object, method: str, name: str = "n_steps") -> int:
    """Return ``n_steps`` as an int if the rule accepts it, else raise naming it."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {n_steps!r}")
    low = MIN_STEPS[method]
    if n_steps < low:
        raise ValueError(f"`{name}` must be >= {low} for method {method!r}, got {n_steps}")
    return int(n_steps)


def validate_n_steps_or_auto(n_steps: object, method: str) -> int | str:
    """Return ``"auto"`` or a valid ``n_steps`` for ``method``, else raise naming it."""
    if n_steps == "auto":
        return "auto"
    if isinstance(n_steps, str):
        raise ValueError(f"`n_steps` must be an int or 'auto', got {n_steps!r}")
    return validate_n_steps(n_steps, method)


def validate_steps(n_steps: object, method: object, max_steps: object) -> tuple[int | str, str, int]:
    """The one rule for the step settings, shared by the engine and the monitor: ``(n_steps, method, max_steps)``.

    ``max_steps`` caps ``n_steps="auto"``, whose bisection needs at least ``AUTO_MIN_STEPS`` points whatever
    the rule; with a fixed ``n_steps`` it only has to be a valid size for ``method``.

    Example::

        >>> validate_steps("auto", "gausslegendre", 256)
        ('auto', 'gausslegendre', 256)
        >>> validate_steps("auto", "gausslegendre", 2)
        Traceback (most recent call last):
        ...
        ValueError: `max_steps` must be >= 3 for n_steps='auto', got 2
    """
    method = validate_method(method)
    n_steps = validate_n_steps_or_auto(n_steps, method)
    max_steps = validate_n_steps(max_steps, method, name="max_steps")
    if n_steps == "auto" and max_steps < AUTO_MIN_STEPS:
        raise ValueError(f"`max_steps` must be >= {AUTO_MIN_STEPS} for n_steps='auto', got {max_steps}")
    return n_steps, method, max_steps


@functools.lru_cache(maxsize=256)
def _points_and_weights(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Cached (Gauss-Legendre nodes cost ~14 ms at n=512); read-only so no caller can change the cache.
    alphas, weights = _compute_points_and_weights(method, n)
    alphas.setflags(write=False)
    weights.setflags(write=False)
    return alphas, weights


def _compute_points_and_weights(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(n, dtype=np.float64)
    if method == "riemann_left":
        return k / n, np.full(n, 1.0 / n)
    if method == "riemann_right":
        return (k + 1) / n, np.full(n, 1.0 / n)
    if method == "riemann_middle":
        return (k + 0.5) / n, np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] *= 0.5
        return k / (n - 1), weights
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1.0) / 2.0, weights / 2.0


def _as_tensors(
    alphas: np.ndarray, weights: np.ndarray, dtype: torch.dtype, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    # Computed in float64, cast once; weights renormalised in the target dtype so they sum to one there.
    a = torch.tensor(alphas, dtype=torch.float64).to(dtype=dtype, device=device)
    w = torch.tensor(weights, dtype=torch.float64)
    w = (w / w.sum()).to(dtype=dtype, device=device)
    return a, w


def quadrature_rule(
    method: str,
    n_steps: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in [0, 1] and weights (summing to one) of an ``n_steps``-point rule.

    Args:
        method: One of ``METHODS`` (captum's names).
        n_steps: Number of points; at least 2 for ``riemann_trapezoid``, else at least 1.
        dtype: Floating dtype of the returned tensors (use the inputs' dtype).
        device: Device of the returned tensors.

    Returns:
        ``(alphas, weights)``, two 1-D tensors of length ``n_steps``.

    Raises:
        ValueError: unknown ``method`` or too few ``n_steps``.
        TypeError: ``n_steps`` is not an int.

    Example::

        >>> a, w = quadrature_rule("gausslegendre", 2, dtype=torch.float64)
        >>> float(w.sum())
        1.0
    """
    method = validate_method(method)
    n = validate_n_steps(n_steps, method)
    return _as_tensors(*_points_and_weights(method, n), dtype=dtype, device=device)
