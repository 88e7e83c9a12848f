"""Tests for ig_lightning.output.render: colours, grids and text pictures."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from ig_lightning.output.charts import bar_chart, token_strip
from ig_lightning.output.render import (
    colorize_signed,
    diverging_lut,
    image_grid,
)
from ig_lightning.output.markdown import token_table


def strength(rgb: torch.Tensor) -> torch.Tensor:
    """Distance of ``(..., 3)`` colours from the neutral centre colour: how strong they look."""
    centre = diverging_lut()[128].float()
    return (rgb.float() - centre).norm(dim=-1)


# --------------------------------------------------------------------------- LUT and colours


def test_lut_centre_is_colormap_centre() -> None:
    lut = diverging_lut("RdBu_r", 257)
    centre = np.round(np.asarray(matplotlib.colormaps["RdBu_r"](0.5)[:3]) * 255).astype(np.uint8)
    assert lut.shape == (257, 3) and lut.dtype == torch.uint8
    assert lut[128].tolist() == centre.tolist()
    assert colorize_signed(torch.zeros(4), 1.0, lut).tolist() == [centre.tolist()] * 4


def test_lut_is_a_copy_and_validates() -> None:
    lut = diverging_lut()
    lut.zero_()
    assert diverging_lut().sum() > 0  # the cache was not modified
    with pytest.raises(ValueError, match="cmap"):
        diverging_lut("no_such_colormap")
    with pytest.raises(ValueError, match="`n`"):
        diverging_lut("RdBu_r", 256)


def test_sign_and_magnitude() -> None:
    colours = colorize_signed(torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]), 1.0).int()
    red, blue = colours[:, 0], colours[:, 2]
    assert red[4] > blue[4] + 50 and red[3] > blue[3] + 50  # positive is red for RdBu_r
    assert blue[0] > red[0] + 50 and blue[1] > red[1] + 50  # negative is blue
    away = strength(colours)
    assert away[4] > away[3] > away[2] == 0 and away[0] > away[1] > away[2]


def test_clipping_beyond_scale() -> None:
    colours = colorize_signed(torch.tensor([1.0, 5.0, 100.0, -1.0, -100.0]), 1.0)
    assert colours[0].tolist() == colours[1].tolist() == colours[2].tolist()
    assert colours[3].tolist() == colours[4].tolist()


def test_per_example_scale_and_bad_scales() -> None:
    values = torch.full((2, 3, 3), 0.5)
    colours = colorize_signed(values, torch.tensor([0.5, 1.0]).view(2, 1, 1))
    assert strength(colours[0]).min() > strength(colours[1]).max()  # smaller scale, stronger
    for bad in (0.0, -2.0, float("nan"), float("inf")):
        assert colorize_signed(values, bad).tolist() == colorize_signed(values, 1.0).tolist()
    with pytest.raises(ValueError, match="scale"):
        colorize_signed(values, torch.ones(5))
    with pytest.raises(TypeError, match="values"):
        colorize_signed([0.5], 1.0)


# --------------------------------------------------------------------------- image grid


def test_image_grid_shape_for_small_digits() -> None:
    img = image_grid(torch.rand(5, 1, 8, 8), torch.randn(5, 1, 8, 8), torch.ones(5), min_size=96, pad=2)
    assert img.dtype == torch.uint8
    assert tuple(img.shape) == (3, 5 * 96 + 6 * 2, 3 * 96 + 4 * 2)
    assert img[:, :2].eq(255).all() and img[:, :, :2].eq(255).all()  # white padding


def test_image_grid_accepts_rgb_and_nhw() -> None:
    rgb = image_grid(torch.rand(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.ones(2), min_size=64)
    assert tuple(rgb.shape) == (3, 2 * 64 + 3 * 2, 3 * 64 + 4 * 2)
    nhw = image_grid(torch.rand(2, 8, 8), torch.randn(2, 8, 8), torch.ones(2))
    assert tuple(nhw.shape) == (3, 2 * 96 + 3 * 2, 3 * 96 + 4 * 2)


def heatmap_panel(img: torch.Tensor, size: int = 96, pad: int = 2) -> torch.Tensor:
    """The first example's heatmap panel (second column)."""
    left = pad + size + pad
    return img[:, pad : pad + size, left : left + size]


def test_fixed_scale_means_doubling_is_brighter() -> None:
    torch.manual_seed(0)
    inputs, attr = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8) * 0.4
    scales = torch.ones(1)
    once = heatmap_panel(image_grid(inputs, attr, scales))
    twice = heatmap_panel(image_grid(inputs, 2 * attr, scales))
    assert not torch.equal(once, twice)  # no re-normalisation to the new maximum
    assert strength(twice.permute(1, 2, 0)).mean() > strength(once.permute(1, 2, 0)).mean()


def test_image_grid_overlay_is_grey_where_attribution_is_zero() -> None:
    inputs = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    img = image_grid(inputs, torch.zeros(1, 1, 8, 8), torch.ones(1), pad=0)
    shown, overlay = img[:, :, :96], img[:, :, 192:]
    assert torch.equal(shown, overlay)
    assert torch.equal(overlay[0], overlay[1]) and torch.equal(overlay[1], overlay[2])


def test_image_grid_validates() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="attributions"):
        image_grid(x, torch.rand(2, 1, 8, 7), torch.ones(2))
    with pytest.raises(ValueError, match="scales"):
        image_grid(x, torch.rand(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="inputs"):
        image_grid(torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8), torch.ones(2))
    with pytest.raises(TypeError, match="inputs"):
        image_grid(x.numpy(), torch.rand(2, 1, 8, 8), torch.ones(2))
    with pytest.raises(ValueError, match="min_size"):
        image_grid(x, x, torch.ones(2), min_size=0)


# --------------------------------------------------------------------------- text pictures


def test_token_strip_draws_reddish_token() -> None:
    tokens = [["how", "many", "apples"], ["why"]]
    scores = torch.tensor([[0.8, 0.0, 0.0], [-0.8, 0.0, 0.0]])  # padded; last two of row 1 unused
    img = token_strip(tokens, scores, torch.ones(2))
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
    assert img.min() < 255  # not blank
    r, g, b = img.int()
    assert ((r > b + 80) & (r > g + 80)).any()  # the positive token's red box
    assert (b > r + 80).any()  # the negative token's blue box


def test_token_strip_validates() -> None:
    with pytest.raises(ValueError, match="tokens"):
        token_strip([["a", "b", "c"]], torch.zeros(1, 2), torch.ones(1))
    with pytest.raises(ValueError, match="scores"):
        token_strip([["a"], ["b"]], torch.zeros(1, 2), torch.ones(2))
    with pytest.raises(ValueError, match="scales"):
        token_strip([["a"]], torch.zeros(1, 2), torch.ones(2))


def test_token_table_lists_tokens_and_escapes_pipes() -> None:
    tokens = [["how", "many"], ["a|b"]]
    table = token_table(tokens, torch.tensor([[0.5, -0.25], [1.0, 0.0]]), title="probe")
    assert "how (+0.500)" in table and "many (-0.250)" in table
    assert "a\\|b (+1.000)" in table
    assert "| 1 |" in table and "probe" in table
    with pytest.raises(TypeError, match="precision"):
        token_table(tokens, torch.zeros(2, 2), precision=1.5)


def test_bar_chart_with_names_and_fixed_scale() -> None:
    values = torch.tensor([0.3, -0.9, 0.05, 0.6])
    img = bar_chart(values, ["a", "b|c", "$x$", "d"], title="mean", max_bars=3, scale=1.0)
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
    r, g, b = img.int()
    assert ((r > b + 80) & (r > g + 60)).any() and (b > r + 80).any()
    assert tuple(bar_chart(values).shape) == tuple(img.shape)


def test_bar_chart_validates() -> None:
    with pytest.raises(ValueError, match="names"):
        bar_chart(torch.ones(3), ["a", "b"])
    with pytest.raises(ValueError, match="values"):
        bar_chart(torch.ones(2, 2))
    with pytest.raises(ValueError, match="scale"):
        bar_chart(torch.ones(3), scale=0.0)
    with pytest.raises(ValueError, match="max_bars"):
        bar_chart(torch.ones(3), max_bars=0)
