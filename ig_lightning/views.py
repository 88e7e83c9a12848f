"""What a check looks like in TensorBoard: one view per kind of input (images, text, tabular).

A view turns a :class:`CheckRecord` (CPU tensors of one check) into images, text and histograms
through a ``SummaryWriter``. Pixels come from :mod:`ig_lightning.render`, rules from
:mod:`ig_lightning.rules`; the callback decides what to compute, the views only draw it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

from ig_lightning import render
from ig_lightning.rules import class_mean_maps, rules_markdown

VIEW_KINDS = ("auto", "image", "text", "tabular")

Names = Sequence[str] | Callable[[int], str] | None


@dataclass
class CheckRecord:
    """Everything a view may draw about one check (CPU tensors).

    Attributes:
        step: The trainer's global step (the x axis in TensorBoard).
        epoch: The trainer's epoch.
        inputs: The probe inputs, ``(B, ...)``.
        targets: The explained output per example, or ``None`` for single-output models.
        scores: Attribution per input feature, ``(B, ...)``: per token (summed over the embedding) for text.
        scales: Fixed per-example colour scale, ``(B,)``.
        relative_error: ``|completeness error| / |delta|`` per example.
        rules: Per class, the top ``(key, score)`` features; keys are token ids or flat feature indices.
        changes: Per class, the keys that ``entered``/``left`` the top-k since the previous check.
    """

    step: int
    epoch: int
    inputs: torch.Tensor
    targets: torch.Tensor | None
    scores: torch.Tensor
    scales: torch.Tensor
    relative_error: torch.Tensor
    rules: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    changes: dict[int, dict[str, list[int]]] | None = None


class View(Protocol):
    """Draws one check into a ``SummaryWriter``."""

    def log(self, writer: Any, record: CheckRecord) -> None: ...


def _name_fn(names: Names, default: Callable[[int], str]) -> Callable[[int], str]:
    if names is None:
        return default
    if callable(names):
        return names
    return lambda i: names[i] if 0 <= i < len(names) else default(i)


def add_png(writer: Any, tag: str, image: torch.Tensor, step: int) -> None:
    """Log a ``(3, H, W)`` uint8 image, encoded once as a fast PNG.

    ``SummaryWriter.add_image`` converts every image to float and back before encoding, which costs
    more than the encoding itself; our images are already uint8 RGB.
    """
    file_writer = getattr(writer, "_get_file_writer", None)
    if file_writer is None:  # not a torch SummaryWriter: let it do its own thing
        writer.add_image(tag, image, step, dataformats="CHW")
        return
    pixels = image.permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=1)
    encoded = Summary.Image(height=pixels.shape[0], width=pixels.shape[1], colorspace=3,
                            encoded_image_string=buffer.getvalue())
    file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


def log_common(writer: Any, record: CheckRecord) -> None:
    """Histograms every view shares: attributions and per-example completeness error."""
    writer.add_histogram("ig/histograms/attributions", record.scores.float(), record.step)
    writer.add_histogram("ig/histograms/completeness_error", record.relative_error.float(), record.step)


class ImageView:
    """Input, signed heatmap and overlay per probe example, and class-mean maps, as grid images."""

    def __init__(self, class_names: Sequence[str] | None = None, max_examples: int = 8, cmap: str = "RdBu_r",
                 min_size: int = 64) -> None:
        self.class_names, self.max_examples, self.cmap, self.min_size = class_names, max_examples, cmap, min_size

    def log(self, writer: Any, record: CheckRecord) -> None:
        n = min(self.max_examples, record.inputs.shape[0])
        grid = render.image_grid(record.inputs[:n], record.scores[:n], record.scales[:n], cmap=self.cmap,
                                 min_size=self.min_size)
        add_png(writer, "ig/attribution_maps", grid, record.step)
        if record.targets is None:
            return
        maps = class_mean_maps(record.scores, record.targets)
        classes = sorted(maps)
        mean_inputs = torch.stack([record.inputs[record.targets == c].float().mean(0) for c in classes])
        scales = torch.stack([record.scales[record.targets == c].mean() for c in classes])
        grid = render.image_grid(mean_inputs, torch.stack([maps[c] for c in classes]), scales, cmap=self.cmap,
                                 min_size=self.min_size)
        add_png(writer, "ig/class_mean_maps", grid, record.step)
        if record.rules:
            names = _name_fn(self.class_names, str)
            caption = "Rows of `ig/class_mean_maps`: " + ", ".join(names(c) for c in classes) + "\n\n"
            table = rules_markdown(record.rules, record.changes, key_names=pixel_namer(record.scores.shape[1:]),
                                   class_names=self.class_names)
            writer.add_text("ig/rules", caption + table, record.step)


def pixel_namer(shape: Sequence[int]) -> Callable[[int], str]:
    """Names of flat feature indices of an image: ``(row,col)``, with the channel first when there are several."""
    shape = tuple(shape)
    keep = slice(1, None) if len(shape) == 3 and shape[0] == 1 else slice(None)

    def name(index: int) -> str:
        coords = []
        for size in reversed(shape):
            index, c = divmod(index, size)
            coords.append(c)
        return "(" + ",".join(map(str, coords[::-1][keep])) + ")"

    return name


class TextView:
    """Tokens coloured by attribution (an image and a table) and the tokens that carry each class."""

    def __init__(self, vocabulary: Names = None, class_names: Sequence[str] | None = None,
                 max_examples: int = 8, cmap: str = "RdBu_r") -> None:
        self.token = _name_fn(vocabulary, str)
        self.class_names, self.max_examples, self.cmap = class_names, max_examples, cmap

    def tokens(self, ids: torch.Tensor) -> list[list[str]]:
        return [[self.token(int(i)) for i in row] for row in ids.reshape(ids.shape[0], -1)]

    def log(self, writer: Any, record: CheckRecord) -> None:
        n = min(self.max_examples, record.inputs.shape[0])
        tokens = self.tokens(record.inputs[:n])
        scores = record.scores[:n].reshape(n, -1)
        strip = render.token_strip(tokens, scores, record.scales[:n], cmap=self.cmap)
        add_png(writer, "ig/token_attributions", strip, record.step)
        writer.add_text("ig/tokens", render.token_table(tokens, scores, title=f"epoch {record.epoch}"), record.step)
        if record.rules:
            table = rules_markdown(record.rules, record.changes, key_names=self.token, class_names=self.class_names)
            writer.add_text("ig/rules", table, record.step)


class TabularView:
    """Bar charts of feature attributions per example and for the probe, and each class's top features."""

    def __init__(self, feature_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 max_examples: int = 4, max_bars: int = 20) -> None:
        self.feature_names, self.class_names = feature_names, class_names
        self.max_examples, self.max_bars = max_examples, max_bars

    def log(self, writer: Any, record: CheckRecord) -> None:
        scores = record.scores.reshape(record.scores.shape[0], -1)
        names = list(self.feature_names) if self.feature_names is not None else None
        for i in range(min(self.max_examples, scores.shape[0])):
            chart = render.bar_chart(scores[i], names, title=f"example {i}", max_bars=self.max_bars,
                                     scale=float(record.scales[i]))
            add_png(writer, f"ig/feature_attributions/example_{i}", chart, record.step)
        chart = render.bar_chart(scores.mean(0), names, title="probe mean", max_bars=self.max_bars,
                                 scale=float(record.scales.mean()))
        add_png(writer, "ig/feature_attributions/probe_mean", chart, record.step)
        if record.rules:
            table = rules_markdown(record.rules, record.changes, key_names=names, class_names=self.class_names)
            writer.add_text("ig/rules", table, record.step)


def infer_kind(inputs: torch.Tensor, scores: torch.Tensor, layer: object) -> str:
    """``text`` for token ids attributed at a layer, ``image`` for ``(B, C, H, W)``/``(B, H, W)``, else ``tabular``."""
    if layer is not None and not inputs.dtype.is_floating_point:
        return "text"
    if scores.ndim in (3, 4) and (scores.ndim == 3 or scores.shape[1] in (1, 3)):
        return "image"
    return "tabular"
