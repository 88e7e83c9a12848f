"""Turn attribution tensors into pictures (and Markdown) for TensorBoard.

Every image is a ``torch.uint8`` tensor shaped ``(3, H, W)``, ready for
``SummaryWriter.add_image(tag, img, step, dataformats="CHW")``. Signed attributions are
coloured through a diverging lookup table whose centre entry is the colormap's neutral
colour, so zero is always neutral and the sign is read from the hue. Callers pass a FIXED
scale (per example or per chart) so pictures from different epochs can be compared: a
brighter colour means a larger attribution, never a re-normalised one.

Nothing here raises on NaN or infinite values (a diverged model must not crash the run):
non-finite attributions and input pixels are drawn in ``NONFINITE_RGB`` (mid-grey, a
colour no diverging colormap uses for a value), finite values of the same example are drawn
normally, and a scale that is not finite or not positive falls back to the example's largest
finite ``|attribution|`` (or 1 when there is none).

Heatmaps are a plain table lookup (no matplotlib); matplotlib is only used, through
``Figure`` and the Agg canvas and without touching global state, where text is drawn.

Example::

    >>> import torch
    >>> img = image_grid(torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.ones(2))
    >>> img.dtype, tuple(img.shape)
    (torch.uint8, (3, 198, 296))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch

from ig_lightning._validation import validate_int, validate_tensor
from ig_lightning.output.captions import text_band

NONFINITE_RGB = (128, 128, 128)
"""Mid-grey: the colour of NaN / infinite attributions (and NaN / infinite input pixels)."""


# --------------------------------------------------------------------------- validation


def _validate_cmap(cmap: object) -> str:
    if not isinstance(cmap, str) or cmap not in matplotlib.colormaps:
        raise ValueError(f"`cmap` must name a matplotlib colormap, got {cmap!r}")
    return cmap


def _validate_scales(scales: object, values: torch.Tensor) -> torch.Tensor:
    """``(N,)`` usable scales for ``values`` shaped ``(N, ...)``.

    A scale that is not finite or not positive becomes the example's largest finite
    ``|value|``, or 1 when that is 0 or the example has no finite value.
    """
    n = values.shape[0]
    if isinstance(scales, (int, float)) and not isinstance(scales, bool):
        s = torch.full((n,), float(scales))
    else:
        s = validate_tensor(scales, "scales").reshape(-1)
        if s.numel() != n:
            raise ValueError(
                f"`scales` must hold one value per example ({n}), got shape {tuple(scales.shape)}"
            )
    flat = values.reshape(n, -1)
    largest = torch.where(torch.isfinite(flat), flat.abs(), 0.0).amax(1) if flat.shape[1] else torch.zeros(n)
    fallback = torch.where(largest > 0, largest, torch.ones_like(largest))
    bad = ~torch.isfinite(s) | (s <= 0)
    return torch.where(bad, fallback, s)


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Replace scales that are <= 0 or not finite by 1, so dividing by them is safe."""
    bad = ~torch.isfinite(scale) | (scale <= 0)
    return torch.where(bad, torch.ones_like(scale), scale)


def _paint_nonfinite(rgb: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
    """``rgb`` (``(..., 3)``, any dtype) with ``NONFINITE_RGB`` where ``nonfinite`` is True."""
    grey = torch.tensor(NONFINITE_RGB, dtype=rgb.dtype)
    return torch.where(nonfinite.unsqueeze(-1), grey, rgb)


# --------------------------------------------------------------------------- colour


@functools.lru_cache(maxsize=16)
def _cached_lut(cmap: str, n: int) -> torch.Tensor:
    rgba = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, n))
    return torch.from_numpy(np.round(rgba[:, :3] * 255.0).astype(np.uint8))


def diverging_lut(cmap: str = "RdBu_r", n: int = 257) -> torch.Tensor:
    """A lookup table of ``n`` colours sampled evenly from a matplotlib colormap.

    Args:
        cmap: Name in ``matplotlib.colormaps``; a diverging one makes zero neutral.
        n: Number of entries, odd so the middle entry is the colormap's centre colour.

    Returns:
        A fresh ``(n, 3)`` uint8 tensor (the table is cached; this is a copy).

    Raises:
        ValueError: unknown ``cmap``, or ``n`` even or below 3.
        TypeError: ``n`` is not an int.

    Example::

        >>> lut = diverging_lut("RdBu_r", 5)
        >>> lut.shape, lut.dtype
        (torch.Size([5, 3]), torch.uint8)
    """
    cmap = _validate_cmap(cmap)
    n = validate_int(n, "n", minimum=3)
    if n % 2 == 0:
        raise ValueError(f"`n` must be odd so zero has its own entry, got {n}")
    return _cached_lut(cmap, n).clone()


def colorize_signed(
    values: torch.Tensor, scale: torch.Tensor | float, lut: torch.Tensor | None = None
) -> torch.Tensor:
    """Colour signed values: ``values / scale`` clipped to [-1, 1] indexes the table.

    Args:
        values: Any shape; NaN and +-inf are drawn in ``NONFINITE_RGB`` (mid-grey).
        scale: A float or a tensor broadcastable to ``values`` (e.g. ``(N, 1, 1)`` for one
            scale per example). Scales <= 0 or not finite count as 1.
        lut: ``(n, 3)`` uint8 table; default ``diverging_lut("RdBu_r")``.

    Returns:
        uint8 tensor shaped ``(*values.shape, 3)``; zero maps to the centre entry.

    Raises:
        TypeError: ``values`` or ``lut`` is not a tensor, ``lut`` not uint8.
        ValueError: ``lut`` not shaped (n, 3), ``scale`` not broadcastable to ``values``.

    Example::

        >>> lut = diverging_lut("RdBu_r", 3)
        >>> bool((colorize_signed(torch.tensor([-5.0, 0.0, 5.0]), 1.0, lut) == lut).all())
        True
    """
    raw = validate_tensor(values, "values")
    nonfinite = ~torch.isfinite(raw)
    v = torch.where(nonfinite, 0.0, raw)
    table = _cached_lut("RdBu_r", 257) if lut is None else _validate_lut(lut)
    s = _safe_scale(torch.as_tensor(scale).detach().cpu().float())
    if not _broadcasts_to(s, v):
        raise ValueError(
            f"`scale` of shape {tuple(s.shape)} does not broadcast to values of shape {tuple(v.shape)}"
        )
    unit = (v / s).clamp(-1.0, 1.0)
    index = torch.round((unit + 1.0) * 0.5 * (table.shape[0] - 1)).long()
    return _paint_nonfinite(table[index], nonfinite)


def _validate_lut(lut: object) -> torch.Tensor:
    if not isinstance(lut, torch.Tensor) or lut.dtype != torch.uint8:
        got = getattr(lut, "dtype", type(lut).__name__)
        raise TypeError(f"`lut` must be a uint8 torch.Tensor, got {got}")
    if lut.ndim != 2 or lut.shape[1] != 3 or lut.shape[0] < 1:
        raise ValueError(f"`lut` must be shaped (n, 3), got {tuple(lut.shape)}")
    return lut.cpu()


def _broadcasts_to(s: torch.Tensor, v: torch.Tensor) -> bool:
    """True if ``s`` broadcasts to ``v``'s shape without enlarging it."""
    try:
        return torch.broadcast_shapes(v.shape, s.shape) == v.shape
    except RuntimeError:
        return False


# --------------------------------------------------------------------------- image grid


def _as_nchw(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(
            f"`{name}` must be shaped (N, C, H, W) with C in {{1, 3}} or (N, H, W), got {tuple(x.shape)}"
        )
    return x


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Normalise each example of ``(N, C, H, W)`` over its finite values to [0, 1].

    Constant examples become 0; non-finite values become 0 (callers paint them separately).
    """
    finite = torch.isfinite(x)
    flat, flat_finite = x.flatten(1), finite.flatten(1)
    low = torch.where(flat_finite, flat, math.inf).amin(dim=1)
    high = torch.where(flat_finite, flat, -math.inf).amax(dim=1)
    has_finite = flat_finite.any(dim=1)
    low = torch.where(has_finite, low, 0.0).view(-1, 1, 1, 1)
    span = torch.where(has_finite, high - low.view(-1), 1.0).clamp_min(1e-12).view(-1, 1, 1, 1)
    return torch.where(finite, (x - low) / span, 0.0).clamp(0.0, 1.0)


def _grey(x01: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` in [0, 1] to ``(N, H, W)`` luminance."""
    if x01.shape[1] == 1:
        return x01[:, 0]
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x01 * weights).sum(dim=1)


def _upscale(panels: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscale of ``(..., H, W, 3)`` by an integer factor."""
    return panels.repeat_interleave(factor, dim=-3).repeat_interleave(factor, dim=-2)


def _tile(panels: torch.Tensor, pad: int) -> torch.Tensor:
    """``(N, P, h, w, 3)`` uint8 panels to one ``(3, H, W)`` image, white ``pad`` around each."""
    n, p, h, w, _ = panels.shape
    canvas = torch.full((n, pad + h, p, pad + w, 3), 255, dtype=torch.uint8)
    canvas[:, pad:, :, pad:, :] = panels.permute(0, 2, 1, 3, 4)
    image = torch.full((n * (pad + h) + pad, p * (pad + w) + pad, 3), 255, dtype=torch.uint8)
    image[: n * (pad + h), : p * (pad + w)] = canvas.reshape(n * (pad + h), p * (pad + w), 3)
    return image.permute(2, 0, 1).contiguous()


def image_grid(
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    scales: torch.Tensor,
    *,
    min_size: int = 96,
    pad: int = 2,
    cmap: str = "RdBu_r",
    captions: Sequence[str] | None = None,
) -> torch.Tensor:
    """One row per example: the input, its signed heatmap, and the heatmap over the input.

    The heatmap is the attribution summed over channels, coloured at the example's fixed
    ``scales[i]`` (so brighter means larger across epochs). The overlay blends the grey
    input with the heatmap colour, weighted by ``|attribution| / scale`` clipped to [0, 1].
    Small images are enlarged by an integer nearest-neighbour factor so each panel is at
    least ``min_size`` pixels on its short side.

    Non-finite values never raise: a pixel whose attribution (any channel) is NaN or
    infinite is ``NONFINITE_RGB`` (mid-grey) in the heatmap and the overlay; an input
    pixel with a non-finite channel is mid-grey in the input panel and under the overlay,
    and inputs are normalised over their finite values only. A scale that is not finite or
    not positive falls back to the example's largest finite ``|attribution|`` (or 1).

    Args:
        inputs: ``(N, C, H, W)`` with C in {1, 3}, or ``(N, H, W)``.
        attributions: Same shape as ``inputs``, or one map per example ``(N, H, W)`` / ``(N, 1, H, W)``
            (e.g. a layer's map upsampled with ``upsample_map()``) for inputs with 3 channels.
        scales: ``N`` positive scales (any shape with N elements, or one float for all).
            Bad ones (0, negative, NaN, inf) fall back as described above.
        min_size: Smallest panel side in pixels after upscaling.
        pad: White pixels between (and around) panels.
        cmap: Diverging matplotlib colormap name.
        captions: One text per example, drawn above its row (see ``text_band()``); the picture
            grows by the bands (and widens when a piece of a caption is wider than the grid).

    Returns:
        uint8 ``(3, N * (h + pad) + pad, 3 * (w + pad) + pad)`` where ``h, w`` is the
        upscaled panel size (plus the caption bands, with ``captions``).

    Raises:
        TypeError: an argument is not a tensor / int.
        ValueError: bad ``inputs`` shape, ``attributions`` not matching ``inputs``,
            ``scales`` not holding N values, ``min_size`` < 1, ``pad`` < 0, unknown ``cmap``.

    Example::

        >>> img = image_grid(torch.rand(4, 8, 8), torch.randn(4, 8, 8), torch.full((4,), 2.0))
        >>> tuple(img.shape)
        (3, 394, 296)
    """
    x = _as_nchw(validate_tensor(inputs, "inputs"), "inputs")
    a = validate_tensor(attributions, "attributions")
    if a.ndim == 3:
        a = a.unsqueeze(1)
    one_map = a.ndim == 4 and a.shape[1] == 1 and a.shape[0] == x.shape[0] and a.shape[2:] == x.shape[2:]
    if a.shape != x.shape and not one_map:
        raise ValueError(
            f"`attributions` must match inputs {tuple(x.shape)} (or be one map (N, H, W)), got "
            f"{tuple(attributions.shape)}"
        )
    if captions is not None:
        captions = [str(c) for c in captions]
        if len(captions) != x.shape[0]:
            raise ValueError(f"`captions` must hold one text per example ({x.shape[0]}), got {len(captions)}")
    signed = a.sum(dim=1)  # (N, H, W); NaN/inf if any channel is
    s = _validate_scales(scales, signed).view(-1, 1, 1)
    min_size = validate_int(min_size, "min_size", minimum=1)
    pad = validate_int(pad, "pad", minimum=0)
    lut = _cached_lut(_validate_cmap(cmap), 257)

    bad_attribution = ~torch.isfinite(signed)
    bad_input = ~torch.isfinite(x).all(dim=1)
    heat = colorize_signed(signed, s, lut).float()  # (N, H, W, 3), mid-grey where not finite
    x01 = _minmax(x)
    shown = _paint_nonfinite(x01.permute(0, 2, 3, 1).expand(-1, -1, -1, 3) * 255.0, bad_input)
    grey = _paint_nonfinite((_grey(x01) * 255.0).unsqueeze(-1).expand(-1, -1, -1, 3), bad_input)
    weight = (torch.where(bad_attribution, 0.0, signed).abs() / s).clamp(0.0, 1.0).unsqueeze(-1)
    overlay = _paint_nonfinite((1.0 - weight) * grey + weight * heat, bad_attribution)

    panels = torch.stack([shown, heat, overlay], dim=1).round().clamp(0, 255).to(torch.uint8)
    factor = max(1, math.ceil(min_size / min(x.shape[2], x.shape[3])))
    grid = _tile(_upscale(panels, factor), pad)
    if captions is None:
        return grid
    return _caption_rows(grid, captions, panels.shape[2] * factor, pad)


def _caption_rows(grid: torch.Tensor, captions: Sequence[str], height: int, pad: int) -> torch.Tensor:
    """``grid`` (rows of ``height`` pixels between ``pad`` lines) with each row's caption in a band above it."""
    bands = [text_band(text, grid.shape[2]) for text in captions]
    width = max([grid.shape[2]] + [band.shape[2] for band in bands])
    parts = [torch.full((3, pad, width), 255, dtype=torch.uint8)]
    for i, band in enumerate(bands):
        top = pad + i * (height + pad)
        parts += [band, grid[:, top : top + height + pad]]
    out = torch.full((3, sum(p.shape[1] for p in parts), width), 255, dtype=torch.uint8)
    y = 0
    for part in parts:
        out[:, y : y + part.shape[1], : part.shape[2]] = part
        y += part.shape[1]
    return out


# --------------------------------------------------------------------------- layer maps


def upsample_map(scores: torch.Tensor, size: Sequence[int], *, mode: str = "bilinear") -> torch.Tensor:
    """Resize spatial maps ``(N, h, w)`` (or ``(N, 1, h, w)``) to ``(N, H, W)``: a layer's map over its input.

    A conv layer's attribution summed over channels is a map smaller than the image; drawn at the input's size
    it can be read as an input attribution (same signed colours, same fixed scale: bilinear interpolation never
    leaves the range of the values it mixes). A non-finite cell stays non-finite (NaN, ``+inf`` or ``-inf``,
    drawn mid-grey) over the input pixels it covers (nearest-neighbour), and never leaks into its finite
    neighbours; a constant map stays that constant.

    Args:
        scores: ``(N, h, w)`` or ``(N, 1, h, w)`` maps.
        size: ``(H, W)``, the input's spatial size.
        mode: ``"bilinear"`` (smooth) or ``"nearest"`` (blocks).

    Returns:
        float ``(N, H, W)``.

    Raises:
        TypeError: ``scores`` not a tensor.
        ValueError: ``scores`` of another shape, bad ``size`` or ``mode``.

    Example::

        >>> tuple(upsample_map(torch.ones(2, 4, 4), (8, 8)).shape)
        (2, 8, 8)
    """
    s = validate_tensor(scores, "scores")
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 3 or s.shape[0] == 0 or 0 in s.shape[1:]:
        raise ValueError(f"`scores` must be shaped (N, h, w) or (N, 1, h, w), got {tuple(scores.shape)}")
    size = tuple(int(validate_int(v, "size", minimum=1)) for v in size)
    if len(size) != 2:
        raise ValueError(f"`size` must be (H, W), got {size}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"`mode` must be 'bilinear' or 'nearest', got {mode!r}")
    if tuple(s.shape[1:]) == size:
        return s.clone()
    import torch.nn.functional as F

    raw = s.unsqueeze(1)
    nearest = F.interpolate(raw, size=size, mode="nearest")[:, 0]
    if mode == "nearest":
        return nearest
    finite = torch.isfinite(raw)
    smooth = F.interpolate(torch.where(finite, raw, 0.0), size=size, mode="bilinear", align_corners=False)[:, 0]
    weight = F.interpolate(finite.float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    # Renormalise by the weight of the finite cells mixed in, so a finite pixel never mixes in a diverged cell.
    smooth = torch.where(weight > 0, smooth / weight.clamp_min(1e-12), nearest)
    # Rounding may step outside the values mixed (by an ulp): clamp to each map's finite range, which also
    # keeps a constant map exactly constant.
    flat, ok = raw.flatten(1), finite.flatten(1)
    low = torch.where(ok, flat, math.inf).amin(1).view(-1, 1, 1)
    high = torch.where(ok, flat, -math.inf).amax(1).view(-1, 1, 1)
    smooth = torch.maximum(torch.minimum(smooth, high), low)
    return torch.where(torch.isfinite(nearest), smooth, nearest)


# --------------------------------------------------------------------------- captions
