"""Baseline draws and the blur baseline: determinism, the global RNG left alone, shapes, values, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from ig_lightning.functional.baselines import blurred, data_draws, gaussian_draws, uniform_draws

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x() -> torch.Tensor:
    return torch.linspace(0, 1, 2 * 3 * 4 * 4, dtype=F64).view(2, 3, 4, 4)


DRAWS = {
    "uniform": lambda x, g: uniform_draws(x, 5, low=0.0, high=1.0, generator=g),
    "gaussian": lambda x, g: gaussian_draws(x, 5, sigma=0.3, generator=g),
    "gaussian_clipped": lambda x, g: gaussian_draws(x, 5, sigma=0.3, generator=g, low=0.0, high=1.0),
    "data": lambda x, g: data_draws(x, 7, 5, generator=g),
}


@pytest.mark.parametrize("kind", list(DRAWS))
def test_draws_are_deterministic_given_the_seed(kind):
    x = _x()
    first, again, other = DRAWS[kind](x, gen(3)), DRAWS[kind](x, gen(3)), DRAWS[kind](x, gen(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("kind", list(DRAWS) + ["blurred"])
def test_the_global_rng_is_not_consumed(kind):
    x = _x()
    state = torch.get_rng_state()
    if kind == "blurred":
        blurred(x, 1.0)
    else:
        DRAWS[kind](x, gen())
    assert torch.equal(torch.get_rng_state(), state)
    # And the global seed does not change the draws.
    if kind != "blurred":
        torch.manual_seed(123)
        a = DRAWS[kind](x, gen())
        torch.manual_seed(456)
        assert torch.equal(a, DRAWS[kind](x, gen()))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_shapes_dtypes_and_ranges(dtype):
    x = _x().to(dtype)
    u = uniform_draws(x, 5, low=-2.0, high=3.0, generator=gen())
    assert u.shape == (5, *x.shape) and u.dtype == dtype
    assert -2 <= u.min().item() and u.max().item() <= 3
    g = gaussian_draws(x, 5, sigma=0.3, generator=gen())
    assert g.shape == (5, *x.shape) and g.dtype == dtype
    d = data_draws(x, 7, 5, generator=gen())
    assert d.shape == (5, 7, *x.shape[1:]) and d.dtype == dtype
    assert blurred(x, 1.0).shape == x.shape and blurred(x, 1.0).dtype == dtype


def test_uniform_draws_cover_the_interval():
    u = uniform_draws(torch.zeros(100, 100), 1, low=2.0, high=4.0, generator=gen())
    assert abs(u.mean().item() - 3.0) < 0.02 and u.min().item() < 2.01 and u.max().item() > 3.99


def test_gaussian_draws_are_centred_on_x_with_sigma():
    x = torch.randn(4, 50, dtype=F64, generator=gen(9))
    d = gaussian_draws(x, 400, sigma=0.5, generator=gen())
    assert (d.mean(0) - x).abs().max().item() < 0.15
    assert abs((d - x).std().item() - 0.5) < 0.01


def test_gaussian_draws_per_example_sigma_and_clipping():
    x = torch.full((3, 20), 0.5, dtype=F64)
    d = gaussian_draws(x, 10, sigma=torch.tensor([0.0, 0.1, 5.0], dtype=F64), generator=gen())
    assert torch.equal(d[:, 0], x[0].expand(10, 20))
    assert 0.05 < (d[:, 1] - 0.5).std().item() < 0.15
    clipped = gaussian_draws(x, 10, sigma=5.0, generator=gen(), low=0.0, high=1.0)
    assert clipped.min().item() == 0.0 and clipped.max().item() == 1.0
    only_low = gaussian_draws(x, 10, sigma=5.0, generator=gen(), low=0.25)
    assert only_low.min().item() == 0.25 and only_low.max().item() > 1.0
    # Clipping is a clamp of the same draws.
    assert torch.equal(clipped, gaussian_draws(x, 10, sigma=5.0, generator=gen()).clamp(0.0, 1.0))


def test_data_draws_are_rows_of_the_data_and_share_indices_across_a_tuple():
    data = torch.arange(12, dtype=F64).view(6, 2)
    ids = torch.arange(6).view(6, 1) * 10
    d, i = data_draws((data, ids), 4, 50, generator=gen())
    assert d.shape == (50, 4, 2) and i.shape == (50, 4, 1) and i.dtype == ids.dtype
    rows = (d[..., 0] / 2).long()
    assert torch.equal(d[..., 1], d[..., 0] + 1)  # whole rows
    assert torch.equal(i[..., 0], rows * 10)  # the same row of every tensor
    assert set(rows.flatten().tolist()) == set(range(6))  # with replacement, every row shows up
    assert torch.equal(data_draws(data, 4, 50, generator=gen()), d)


# --- blur -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 8, 5), (2, 1, 2, 2), (1, 1, 1, 1), (2, 2, 2, 6, 7)])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 5.0])
def test_blur_preserves_a_constant_image(shape, sigma):
    x = torch.full(shape, 0.7, dtype=F64)
    torch.testing.assert_close(blurred(x, sigma), x, rtol=0, atol=1e-14)


def _kernel(sigma: float, radius: int) -> torch.Tensor:
    k = torch.tensor([math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)], dtype=F64)
    return k / k.sum()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_of_a_delta_is_the_normalised_gaussian(sigma):
    radius = max(math.ceil(3 * sigma), 1)
    size = 2 * radius + 5
    x = torch.zeros(1, 1, size, size, dtype=F64)
    x[0, 0, size // 2, size // 2] = 1.0
    out = blurred(x, sigma)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-14)
    k = _kernel(sigma, radius)
    c = size // 2
    torch.testing.assert_close(out[0, 0, c - radius:c + radius + 1, c - radius:c + radius + 1], torch.outer(k, k),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(out, out.flip(-1).flip(-2))


def test_blur_borders_reflect_when_the_image_is_big_enough_else_replicate():
    k = _kernel(1.0, 3)
    x = torch.zeros(1, 9, 9, dtype=F64)
    x[0, 0, 0] = 1.0
    # Reflect (without the edge pixel itself): the padding holds zeros, so the corner keeps k0 * k0.
    assert blurred(x, 1.0)[0, 0, 0].item() == pytest.approx(k[3].item() ** 2, abs=1e-15)
    small = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=F64)
    # Radius 3 is cut to the size (2): replicate, so the corner's mass also comes back from the padding.
    k2 = _kernel(1.0, 2)
    expected = (k2[0] + k2[1] + k2[2]).item() ** 2
    assert blurred(small, 1.0)[0, 0, 0].item() == pytest.approx(expected, abs=1e-15)


def test_blur_smooths_and_a_huge_sigma_flattens_a_small_image():
    x = torch.rand(2, 1, 8, 8, dtype=F64, generator=gen())
    assert blurred(x, 1.0).std().item() < x.std().item()
    # Tiny sigma: the kernel's side weights vanish.
    torch.testing.assert_close(blurred(x, 0.05), x, rtol=0, atol=1e-12)


# --- errors ----------------------------------------------------------------------------------------------------


X = torch.zeros(2, 3, dtype=F64)
IMG = torch.zeros(2, 4, 4)
BAD = [
    ("blurred", lambda: blurred(torch.zeros(2, 4, 4, dtype=torch.long), 1.0), TypeError, "`x`"),
    ("blurred", lambda: blurred(torch.zeros(4, 4), 1.0), ValueError, "`x`"),
    ("blurred", lambda: blurred([[0.0]], 1.0), TypeError, "`x`"),
    ("blurred", lambda: blurred(IMG, 0.0), ValueError, "`sigma`"),
    ("blurred", lambda: blurred(IMG, "1"), TypeError, "`sigma`"),
    ("blurred", lambda: blurred(IMG, float("nan")), ValueError, "`sigma`"),
    ("uniform", lambda: uniform_draws(X.long(), 2, low=0.0, high=1.0, generator=gen()), TypeError, "`x`"),
    ("uniform", lambda: uniform_draws(X, 0, low=0.0, high=1.0, generator=gen()), ValueError, "`n`"),
    ("uniform", lambda: uniform_draws(X, 2.0, low=0.0, high=1.0, generator=gen()), TypeError, "`n`"),
    ("uniform", lambda: uniform_draws(X, 2, low=1.0, high=1.0, generator=gen()), ValueError, "`low`"),
    ("uniform", lambda: uniform_draws(X, 2, low=0.0, high=math.inf, generator=gen()), ValueError, "`high`"),
    ("uniform", lambda: uniform_draws(X, 2, low="0", high=1.0, generator=gen()), TypeError, "`low`"),
    ("uniform", lambda: uniform_draws(X, 2, low=0.0, high=1.0, generator=None), TypeError, "`generator`"),
    ("uniform", lambda: uniform_draws(X, 2, low=0.0, high=1.0, generator=0), TypeError, "`generator`"),
    ("gaussian", lambda: gaussian_draws(X, 2, sigma=0.0, generator=gen()), ValueError, "`sigma`"),
    ("gaussian", lambda: gaussian_draws(X, 2, sigma=torch.ones(3), generator=gen()), ValueError, "`sigma`"),
    ("gaussian", lambda: gaussian_draws(X, 2, sigma=torch.tensor([1.0, -1.0]), generator=gen()), ValueError,
     "`sigma`"),
    ("gaussian", lambda: gaussian_draws(X, 2, sigma=torch.ones(2, dtype=torch.long), generator=gen()), TypeError,
     "`sigma`"),
    ("gaussian", lambda: gaussian_draws(X, 2, sigma=1.0, generator=gen(), low=1.0, high=0.0), ValueError, "`low`"),
    ("gaussian", lambda: gaussian_draws(X, 2, sigma=1.0, generator=gen(), high=math.nan), ValueError, "`high`"),
    ("gaussian", lambda: gaussian_draws(X, -1, sigma=1.0, generator=gen()), ValueError, "`n`"),
    ("gaussian", lambda: gaussian_draws(torch.zeros(0, 3), 1, sigma=1.0, generator=gen()), ValueError, "`x`"),
    ("data", lambda: data_draws(torch.zeros(0, 3), 2, 2, generator=gen()), ValueError, "`data`"),
    ("data", lambda: data_draws(torch.tensor(1.0), 2, 2, generator=gen()), ValueError, "`data`"),
    ("data", lambda: data_draws([X], 2, 2, generator=gen()), TypeError, "`data`"),
    ("data", lambda: data_draws((X, torch.zeros(3, 1)), 2, 2, generator=gen()), ValueError, "`data[1]`"),
    ("data", lambda: data_draws(X, 0, 2, generator=gen()), ValueError, "`batch_size`"),
    ("data", lambda: data_draws(X, 2, 0, generator=gen()), ValueError, "`n`"),
    ("data", lambda: data_draws(X, 2, 2, generator="seed"), TypeError, "`generator`"),
]


@pytest.mark.parametrize("call,error,name", [b[1:] for b in BAD], ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_are_named(call, error, name):
    with pytest.raises(error, match=name.replace("[", r"\[").replace("]", r"\]")):
        call()
