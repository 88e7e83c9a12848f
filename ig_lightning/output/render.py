"""Turn attribution tensors into pictures (and Markdown) for TensorBoard.

Every image is a ``torch.uint8`` tensor shaped ``(3, H, W)``, ready for
``SummaryWriter.add_image(tag, img, step, dataformats="CHW")``. Signed attributions are
coloured through a diverging lookup table whose centre entry is the colormap's neutral
colour, so zero is always neutral and the sign is read from the hue. Callers pass a FIXED
scale (per example or per chart) so pictures from different epochs can be compared: a
brighter colour means a larger attribution, never a re-normalised one.

Nothing here raises on NaN or infinite values (a diverged model must not crash the run):
non-finite attributions and input pixels are drawn in :data:`NONFINITE_RGB` (mid-grey, a
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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ig_lightning._validation import validate_int

# Token strip layout, in points (1/72 inch) for a monospace font at _FONT_SIZE.
_FONT_SIZE = 10.0
_CHAR_WIDTH = 0.61 * _FONT_SIZE  # DejaVu Sans Mono advance is ~0.602 em
_LINE_HEIGHT = 2.0 * _FONT_SIZE
_MARGIN = 6.0
_MAX_TOKEN_CHARS = 16
_STRIP_DPI = 100

NONFINITE_RGB = (128, 128, 128)
"""Mid-grey: the colour of NaN / infinite attributions (and NaN / infinite input pixels)."""


# --------------------------------------------------------------------------- validation


def validate_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x.detach().cpu().float()


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


def validate_tokens(tokens: object, scores: torch.Tensor) -> list[list[str]]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"`tokens` must be a sequence of token sequences, got {type(tokens).__name__}")
    rows = [[str(t) for t in row] for row in tokens]
    if not rows:
        raise ValueError("`tokens` must hold at least one example, got 0")
    if scores.ndim != 2 or scores.shape[0] != len(rows):
        raise ValueError(f"`scores` must be shaped (N={len(rows)}, T), got {tuple(scores.shape)}")
    longest = max(len(row) for row in rows)
    if longest > scores.shape[1]:
        raise ValueError(
            f"`tokens` has an example of {longest} tokens, more than the {scores.shape[1]} columns"
            " of `scores`"
        )
    return rows


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Replace scales that are <= 0 or not finite by 1, so dividing by them is safe."""
    bad = ~torch.isfinite(scale) | (scale <= 0)
    return torch.where(bad, torch.ones_like(scale), scale)


def _paint_nonfinite(rgb: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
    """``rgb`` (``(..., 3)``, any dtype) with :data:`NONFINITE_RGB` where ``nonfinite`` is True."""
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
        values: Any shape; NaN and +-inf are drawn in :data:`NONFINITE_RGB` (mid-grey).
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
) -> torch.Tensor:
    """One row per example: the input, its signed heatmap, and the heatmap over the input.

    The heatmap is the attribution summed over channels, coloured at the example's fixed
    ``scales[i]`` (so brighter means larger across epochs). The overlay blends the grey
    input with the heatmap colour, weighted by ``|attribution| / scale`` clipped to [0, 1].
    Small images are enlarged by an integer nearest-neighbour factor so each panel is at
    least ``min_size`` pixels on its short side.

    Non-finite values never raise: a pixel whose attribution (any channel) is NaN or
    infinite is :data:`NONFINITE_RGB` (mid-grey) in the heatmap and the overlay; an input
    pixel with a non-finite channel is mid-grey in the input panel and under the overlay,
    and inputs are normalised over their finite values only. A scale that is not finite or
    not positive falls back to the example's largest finite ``|attribution|`` (or 1).

    Args:
        inputs: ``(N, C, H, W)`` with C in {1, 3}, or ``(N, H, W)``.
        attributions: Same shape as ``inputs``.
        scales: ``N`` positive scales (any shape with N elements, or one float for all).
            Bad ones (0, negative, NaN, inf) fall back as described above.
        min_size: Smallest panel side in pixels after upscaling.
        pad: White pixels between (and around) panels.
        cmap: Diverging matplotlib colormap name.

    Returns:
        uint8 ``(3, N * (h + pad) + pad, 3 * (w + pad) + pad)`` where ``h, w`` is the
        upscaled panel size.

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
    if a.shape != x.shape:
        raise ValueError(
            f"`attributions` must match inputs {tuple(x.shape)}, got {tuple(attributions.shape)}"
        )
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
    return _tile(_upscale(panels, factor), pad)


# --------------------------------------------------------------------------- text pictures


def _figure_to_chw(fig: Figure) -> torch.Tensor:
    """Render a figure with the Agg canvas and return it as ``(3, H, W)`` uint8."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(np.ascontiguousarray(rgba[:, :, :3])).permute(2, 0, 1).contiguous()


def _short(token: str, limit: int = _MAX_TOKEN_CHARS) -> str:
    token = token.replace("\n", " ").replace("\t", " ")
    return token if len(token) <= limit else token[: limit - 1] + "…"


def _text_colour(rgb: torch.Tensor) -> str:
    """Black on light backgrounds, white on dark ones."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "black" if float(luminance) > 140 else "white"


def _strip_lines(rows: list[list[str]], max_tokens: int) -> list[list[str]]:
    lines = []
    for i, row in enumerate(rows):
        shown = [_short(t) for t in row[:max_tokens]]
        lines.append([f"{i}:"] + shown + (["…"] if len(row) > max_tokens else []))
    return lines


def token_strip(
    tokens: Sequence[Sequence[str]],
    scores: torch.Tensor,
    scales: torch.Tensor,
    *,
    cmap: str = "RdBu_r",
    max_tokens: int = 64,
) -> torch.Tensor:
    """Draw each example as one line of tokens on backgrounds coloured by their scores.

    A token whose score is NaN or infinite is drawn on a :data:`NONFINITE_RGB` (mid-grey)
    box; a scale that is not finite or not positive falls back to the example's largest
    finite ``|score|`` over its tokens (or 1).

    Args:
        tokens: N token lists (lengths may differ); tokens longer than 16 characters are cut.
        scores: ``(N, T)`` signed scores, padded; only the first ``len(tokens[i])`` are used.
        scales: N fixed positive scales (any shape with N elements, or one float).
        cmap: Diverging matplotlib colormap name.
        max_tokens: At most this many tokens per line; more are shown as ``…``.

    Returns:
        uint8 ``(3, H, W)`` image, white background.

    Raises:
        TypeError: ``tokens`` not a sequence, ``scores`` not a tensor.
        ValueError: ``scores`` not ``(N, T)``, an example longer than T, bad ``scales``,
            ``max_tokens`` < 1, unknown ``cmap``.

    Example::

        >>> scores = torch.tensor([[0.9, 0.5], [-0.4, 0.0]])
        >>> img = token_strip([["how", "many"], ["why"]], scores, torch.ones(2))
        >>> img.dtype, img.shape[0]
        (torch.uint8, 3)
    """
    s = validate_tensor(scores, "scores")
    rows = validate_tokens(tokens, s)
    used = torch.arange(s.shape[1]) < torch.tensor([len(row) for row in rows]).view(-1, 1)
    scale = _validate_scales(scales, torch.where(used, s, 0.0)).view(-1, 1)
    max_tokens = validate_int(max_tokens, "max_tokens", minimum=1)
    colours = colorize_signed(s, scale, _cached_lut(_validate_cmap(cmap), 257))  # (N, T, 3)
    lines = _strip_lines(rows, max_tokens)

    width_pt = 2 * _MARGIN + _CHAR_WIDTH * max(sum(len(t) + 1 for t in line) for line in lines)
    height_pt = 2 * _MARGIN + _LINE_HEIGHT * len(lines)
    fig = Figure(figsize=(width_pt / 72.0, height_pt / 72.0), dpi=_STRIP_DPI, facecolor="white")
    for i, line in enumerate(lines):
        y = (height_pt - _MARGIN - _LINE_HEIGHT * (i + 0.5)) / height_pt
        x = _MARGIN
        for j, token in enumerate(line):
            style = {"color": "dimgray"}
            if 0 < j <= min(len(rows[i]), max_tokens):
                rgb = colours[i, j - 1]
                style = {"color": _text_colour(rgb), "bbox": _bbox(rgb)}
            fig.text(x / width_pt, y, token, va="center", ha="left", family="monospace",
                     fontsize=_FONT_SIZE, parse_math=False, **style)
            x += _CHAR_WIDTH * (len(token) + 1)
    return _figure_to_chw(fig)


def _bbox(rgb: torch.Tensor) -> dict:
    face = (rgb.float() / 255.0).tolist()
    return {"facecolor": face, "edgecolor": "none", "boxstyle": "square,pad=0.2"}


def bar_chart(
    values: torch.Tensor,
    names: Sequence[str] | None = None,
    *,
    title: str = "",
    max_bars: int = 20,
    scale: float | None = None,
    cmap: str = "RdBu_r",
) -> torch.Tensor:
    """Horizontal bars of the ``max_bars`` largest-magnitude signed attributions.

    Bars are sorted by ``|value|`` (largest on top) and coloured from the diverging table.
    With ``scale`` the x range is fixed to ``[-scale, scale]`` and colours use that scale,
    so charts from different epochs are comparable; without it both follow the data.

    Non-finite values never raise: they rank above every finite one and are drawn as
    :data:`NONFINITE_RGB` (mid-grey) bars, ``+inf`` from 0 to the right edge, ``-inf`` from
    0 to the left edge, NaN across the whole range (the edge being ``scale``, or the largest
    finite ``|value|``, or 1), and their label ends with ``= nan`` / ``= +inf`` / ``= -inf``.

    Args:
        values: 1-D tensor of signed attributions (one example or a mean).
        names: One label per value; default ``x0, x1, ...``.
        title: Chart title.
        max_bars: Most bars drawn.
        scale: Fixed positive half-width of the x axis, or None.
        cmap: Diverging matplotlib colormap name.

    Returns:
        uint8 ``(3, 320, 480)`` image (6 x 4 inches at 80 dpi).

    Raises:
        TypeError: ``values`` not a tensor, ``max_bars`` not int, ``scale`` not a number.
        ValueError: ``values`` not 1-D or empty, ``names`` of the wrong length,
            ``max_bars`` < 1, ``scale`` not positive and finite, unknown ``cmap``.

    Example::

        >>> tuple(bar_chart(torch.tensor([0.5, -1.0, 0.1]), ["a", "b", "c"], scale=1.0).shape)
        (3, 320, 480)
    """
    v = validate_tensor(values, "values")
    if v.ndim != 1 or v.numel() == 0:
        raise ValueError(f"`values` must be a non-empty 1-D tensor, got shape {tuple(v.shape)}")
    labels = _bar_names(names, v.numel())
    max_bars = validate_int(max_bars, "max_bars", minimum=1)
    limit = _validate_bar_scale(scale)
    lut = _cached_lut(_validate_cmap(cmap), 257)

    finite = torch.isfinite(v)
    rank = torch.where(finite, v.abs(), math.inf)  # non-finite values first
    order = torch.argsort(rank, descending=True, stable=True)[:max_bars].flip(0)
    shown, shown_finite = v[order], finite[order]
    largest = float(torch.where(finite, v.abs(), 0.0).max())
    edge = limit if limit is not None else (largest if largest > 0 else 1.0)
    colours = (colorize_signed(shown, edge, lut).float() / 255.0).numpy()
    # Non-finite bars span [0, edge] (+inf), [-edge, 0] (-inf) or [-edge, edge] (NaN).
    left = torch.where(shown_finite, 0.0, torch.where(shown == math.inf, 0.0, -edge))
    right = torch.where(shown_finite, shown, torch.where(shown == -math.inf, 0.0, edge))
    ticks = [_short(labels[i], 24) + _nonfinite_suffix(float(v[i])) for i in order.tolist()]

    fig = Figure(figsize=(6, 4), dpi=80, facecolor="white")
    ax = fig.add_subplot()
    y = np.arange(len(order))
    ax.barh(y, (right - left).numpy(), left=left.numpy(), color=colours, edgecolor="0.3", linewidth=0.5)
    ax.set_yticks(y, ticks, fontsize=8, parse_math=False)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.tick_params(axis="x", labelsize=8)
    if limit is not None:
        ax.set_xlim(-limit, limit)
    if title:
        ax.set_title(title, fontsize=10, parse_math=False)
    fig.tight_layout()
    return _figure_to_chw(fig)


def _nonfinite_suffix(value: float) -> str:
    return "" if math.isfinite(value) else " = nan" if math.isnan(value) else f" = {value:+}"


def _bar_names(names: Sequence[str] | None, n: int) -> list[str]:
    if names is None:
        return [f"x{i}" for i in range(n)]
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"`names` must be a sequence of str, got {type(names).__name__}")
    if len(names) != n:
        raise ValueError(f"`names` must have one entry per value ({n}), got {len(names)}")
    return [str(name) for name in names]


def _validate_bar_scale(scale: object) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"`scale` must be a float or None, got {scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"`scale` must be positive and finite, got {scale}")
    return float(scale)
