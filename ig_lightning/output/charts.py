"""Charts drawn with matplotlib: token strips (text) and bar charts (tabular), as ``(3, H, W)`` uint8 images.

Non-finite scores are drawn on a mid-grey box (``NONFINITE_RGB``) and named
(``nan``, ``+inf``, ``-inf``); nothing here raises on a diverged model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ig_lightning._validation import validate_int, validate_tensor, validate_tokens
from ig_lightning.output.render import (
    _cached_lut,
    _validate_cmap,
    _validate_scales,
    colorize_signed,
)

# Token strip layout, in points (1/72 inch) for a monospace font at _FONT_SIZE.
_FONT_SIZE = 10.0
_CHAR_WIDTH = 0.61 * _FONT_SIZE  # DejaVu Sans Mono advance is ~0.602 em
_LINE_HEIGHT = 2.0 * _FONT_SIZE
_MARGIN = 6.0
_MAX_TOKEN_CHARS = 16
_CAPTION_FONT_SIZE = 11.0  # 15 px at _STRIP_DPI: capitals about 11 px high
_CAPTION_CHAR_WIDTH = 0.61 * _CAPTION_FONT_SIZE
_STRIP_DPI = 100
_TITLE_FONT_SIZE = 11.0  # bar chart titles: 12 px at 80 dpi, the caption of the example


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
    captions: Sequence[str] | None = None,
) -> torch.Tensor:
    """Draw each example as one line of tokens on backgrounds coloured by their scores.

    A token whose score is NaN or infinite is drawn on a ``NONFINITE_RGB`` (mid-grey)
    box; a scale that is not finite or not positive falls back to the example's largest
    finite ``|score|`` over its tokens (or 1).

    Args:
        tokens: N token lists (lengths may differ); tokens longer than 16 characters are cut.
        scores: ``(N, T)`` signed scores, padded; only the first ``len(tokens[i])`` are used.
        scales: N fixed positive scales (any shape with N elements, or one float).
        cmap: Diverging matplotlib colormap name.
        max_tokens: At most this many tokens per line; more are shown as ``…``.
        captions: One text per example (index, label, prediction, ...), drawn in grey on a line of
            its own above the example's tokens, at a size legible when TensorBoard shrinks the strip.

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
    if captions is not None:
        captions = [str(c).replace("\n", " ") for c in captions]
        if len(captions) != len(rows):
            raise ValueError(f"`captions` must hold one text per example ({len(rows)}), got {len(captions)}")
    per_example = 1 if captions is None else 2  # a caption line above each line of tokens

    widest = max(sum(len(t) + 1 for t in line) for line in lines)
    width_pt = 2 * _MARGIN + max(_CHAR_WIDTH * widest,
                                 max((_CAPTION_CHAR_WIDTH * len(c) for c in captions or []), default=0.0))
    height_pt = 2 * _MARGIN + _LINE_HEIGHT * len(lines) * per_example
    fig = Figure(figsize=(width_pt / 72.0, height_pt / 72.0), dpi=_STRIP_DPI, facecolor="white")
    for i, line in enumerate(lines):
        if captions is not None:
            y = (height_pt - _MARGIN - _LINE_HEIGHT * (2 * i + 0.5)) / height_pt
            fig.text(_MARGIN / width_pt, y, captions[i], va="center", ha="left", family="monospace",
                     fontsize=_CAPTION_FONT_SIZE, color="0.25", parse_math=False)
        y = (height_pt - _MARGIN - _LINE_HEIGHT * (per_example * i + per_example - 0.5)) / height_pt
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
    ``NONFINITE_RGB`` (mid-grey) bars, ``+inf`` from 0 to the right edge, ``-inf`` from
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
        ax.set_title(title, fontsize=_TITLE_FONT_SIZE, parse_math=False)
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
