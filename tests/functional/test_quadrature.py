"""Quadrature rules: properties, never copied constants."""

import math

import pytest
import torch

from ig_lightning.functional.quadrature import METHODS, MIN_STEPS, quadrature_rule

# Highest polynomial degree each n-point rule integrates exactly on [0, 1].
EXACT_DEGREE = {
    "riemann_left": lambda n: 0,
    "riemann_right": lambda n: 0,
    "riemann_middle": lambda n: 1,
    "riemann_trapezoid": lambda n: 1,
    "gausslegendre": lambda n: 2 * n - 1,
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 7, 50, 300])
def test_weights_sum_to_one_in_the_requested_dtype(method, dtype, n):
    alphas, weights = quadrature_rule(method, n, dtype=dtype)
    assert alphas.dtype == weights.dtype == dtype
    assert alphas.shape == weights.shape == (n,)
    assert abs(float(weights.sum()) - 1.0) <= 4 * n * torch.finfo(dtype).eps
    assert bool((weights > 0).all())
    assert bool((alphas >= 0).all() and (alphas <= 1).all())
    assert bool((alphas.diff() > 0).all())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_exact_on_polynomials_up_to_the_rules_degree(method, n):
    alphas, weights = quadrature_rule(method, n, dtype=torch.float64)
    for degree in range(EXACT_DEGREE[method](n) + 1):
        assert float((weights * alphas**degree).sum()) == pytest.approx(1 / (degree + 1), abs=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_rules_converge_to_the_integral(method):
    exact = (math.e - 1)  # integral of exp on [0, 1]
    errors = []
    for n in (8, 16, 32):
        alphas, weights = quadrature_rule(method, n, dtype=torch.float64)
        errors.append(abs(float((weights * alphas.exp()).sum()) - exact))
    assert errors[2] < errors[0] and errors[2] < 0.05


@pytest.mark.parametrize("bad", ["trapezoid", "riemann", "", None, 3])
def test_unknown_method_names_the_argument(bad):
    with pytest.raises(ValueError, match="`method`.*" + (repr(bad).replace("(", r"\(") if bad else "")):
        quadrature_rule(bad, 5)


@pytest.mark.parametrize("method", METHODS)
def test_too_few_steps_names_the_argument(method):
    with pytest.raises(ValueError, match="`n_steps` must be >= "):
        quadrature_rule(method, MIN_STEPS[method] - 1)
    with pytest.raises(TypeError, match="`n_steps` must be an int"):
        quadrature_rule(method, 2.5)
