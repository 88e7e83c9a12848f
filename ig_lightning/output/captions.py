"""Captions: what every picture row says (example, label, prediction, explained target, completeness), and
the pixels of that text.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch

from ig_lightning.output.markdown import name_lookup
from ig_lightning.output.record import CheckRecord


def class_namer(class_names: Sequence[str] | None) -> Callable[[Any], str]:
    lookup = name_lookup(class_names, str)

    def name(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                return str(value.tolist())
            value = value.item()
        if isinstance(value, float) and not value.is_integer():
            return f"{value:g}"
        return lookup(int(value))

    return name


def format_completeness(value: float) -> str:
    """``0.4%``-style relative completeness error; ``nan`` when it is not finite.

    Example::

        >>> format_completeness(0.0042), format_completeness(float("nan"))
        ('0.4%', 'nan')
    """
    value = float(value)
    return f"{100 * value:.1f}%" if math.isfinite(value) else "nan"


def example_caption(record: CheckRecord, i: int, class_names: Sequence[str] | None = None) -> str:
    """What row ``i`` shows: ``#3 label 7 · pred 1 · explains 7 · completeness 0.4%`` (the parts the record has).

    Example::

        >>> r = CheckRecord(0, 0, torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]), torch.zeros(4, 2), torch.ones(4),
        ...                 torch.tensor([0.1, 0.0042, 0.2, 0.3]), labels=torch.tensor([0, 1, 0, 0]),
        ...                 predictions=torch.tensor([1, 0, 0, 0]))
        >>> example_caption(r, 1, ["cat", "dog"])
        '#1 label dog · pred cat · explains dog · completeness 0.4%'
    """
    name = class_namer(class_names)
    head = f"#{i}"
    parts = []
    if record.labels is not None and i < len(record.labels):
        head += f" label {name(record.labels[i])}"
    if record.predictions is not None and i < len(record.predictions):
        parts.append(f"pred {name(record.predictions[i])}")
    if record.targets is not None and i < len(record.targets):
        parts.append(f"explains {name(record.targets[i])}")
    if i < record.relative_error.numel():
        parts.append(f"completeness {format_completeness(record.relative_error.reshape(-1)[i])}")
    return CAPTION_SEPARATOR.join([head] + parts)


def wrap_title(text: str, limit: int = 52) -> str:
    """A chart title on as many lines as it needs, broken at ``·``."""
    lines, current = [], ""
    for part in text.split(CAPTION_SEPARATOR):
        trial = part if not current else current + CAPTION_SEPARATOR + part
        if current and len(trial) > limit:
            lines.append(current)
            current = part
        else:
            current = trial
    return "\n".join(lines + [current])


def grid_caption(record: CheckRecord, rows: Sequence[str]) -> str:
    return f"epoch {record.epoch}, step {record.step}\n" + "\n".join(rows)


CAPTION_PX = 15
"""Pixel size of the caption font: capital letters about 11 pixels high, legible at TensorBoard's default size."""

CAPTION_SEPARATOR = " · "


@functools.lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(path, size)
    except OSError:  # no FreeType in this Pillow: its own default font, scaled when it can be
        try:
            return ImageFont.load_default(size)
        except TypeError:
            return ImageFont.load_default()


def _wrap(text: str, width: int, font) -> list[str]:
    """Lines of ``text`` no wider than ``width`` pixels, broken at ``CAPTION_SEPARATOR`` (then at spaces)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for part in paragraph.split(CAPTION_SEPARATOR):
            trial = part if not current else current + CAPTION_SEPARATOR + part
            if not current or font.getlength(trial) <= width:
                current = trial
            else:
                lines.append(current)
                current = part
        lines.append(current)
    return lines


def text_band(text: str, width: int, *, size: int = CAPTION_PX, margin: int = 4) -> torch.Tensor:
    """``text`` in black on a white band ``(3, h, W)``: wrapped at ``·`` to fit ``width`` pixels (``W`` is
    ``width``, or more when one piece of the text is wider), in DejaVu Sans at ``size`` pixels.

    Example::

        >>> band = text_band("#0 · label 3 · completeness 0.4%", 296)
        >>> band.dtype, band.shape[0], band.shape[2]
        (torch.uint8, 3, 296)
    """
    from PIL import Image, ImageDraw

    font = _font(int(size))
    lines = _wrap(str(text), max(1, width - 2 * margin), font)
    line_height = math.ceil(size * 1.25)
    widest = max(math.ceil(font.getlength(line)) for line in lines) + 2 * margin
    canvas = Image.new("RGB", (max(width, widest), line_height * len(lines) + margin), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_height), line, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- text pictures
