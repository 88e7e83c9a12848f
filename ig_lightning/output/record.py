"""What one check hands to the output side: the ``CheckRecord``, and the items a view makes of it.

Views turn a record into items (``Image``, ``Text``, ``Histogram``, ``Table``); the reporter
sends the items to every logger's writer (``ig_lightning.output.writers``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image as PILImage
from tensorboard.compat.proto.summary_pb2 import Summary


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
        mask: Optional bool, same shape as ``inputs``, True for a real token and False for padding;
            ``TextView`` neither draws nor lists masked-out positions. ``None``: all are real.
        prefix: What every tag starts with: ``ig``, or ``ig/<name>`` for a named monitor.
        labels: The probe's labels ``(B,)``, when it has class labels.
        predictions: The predicted class per example at this check ``(B,)``, for multi-class models.
        rule_drops: Per class, the relative drop of its score when its rule is removed from its examples
            (the deletion check); shown as a column of the rules table.
        tested_rules: Per class, its tested rules (``ig_lightning.functional.rule_tests.Rule``), ranked.
        rule_changes: Per class, the statements that ``entered``/``left`` its tested rules since the last check.
        rule_events: Rule events of this check, as sentences.
        guard_rules: The guarded features, tested as rules of every class.
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
    mask: torch.Tensor | None = None
    rule_drops: dict[int, float] = field(default_factory=dict)
    prefix: str = "ig"
    labels: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    tested_rules: dict[int, list[Any]] | None = None
    rule_changes: dict[int, dict[str, list[str]]] | None = None
    rule_events: list[str] = field(default_factory=list)
    guard_rules: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """A picture: ``pixels`` ``(3, H, W)`` uint8 RGB; ``caption`` says what its rows show (for loggers with
    captions; the rows also carry it inside the picture)."""

    tag: str
    pixels: torch.Tensor
    caption: str | None = None


@dataclass(frozen=True)
class Text:
    """Markdown (TensorBoard's text tab, a ``.md`` file or artifact elsewhere)."""

    tag: str
    markdown: str


@dataclass(frozen=True)
class Histogram:
    """A distribution: finite values only, never empty."""

    tag: str
    values: torch.Tensor


@dataclass(frozen=True)
class Table:
    """Rows of plain-text cells (the rules, for loggers with tables; TensorBoard gets the same as a Text)."""

    tag: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Item = Image | Text | Histogram | Table


class View(Protocol):
    """What one check looks like, as items for every writer."""

    def items(self, record: CheckRecord) -> list[Item]: ...


def log_items(writer: Any, items: Sequence[Item], step: int) -> None:
    """Write items into a ``SummaryWriter`` (TensorBoard), as the monitor always did; tables are skipped (their
    Markdown twin is among the items)."""
    for item in items:
        if isinstance(item, Image):
            add_png(writer, item.tag, item.pixels, step)
        elif isinstance(item, Text):
            writer.add_text(item.tag, item.markdown, step)
        elif isinstance(item, Histogram):
            writer.add_histogram(item.tag, item.values, step)


class LogsToSummaryWriter:
    """``view.log(writer, record)``: the view's items written into a ``SummaryWriter``."""

    def log(self, writer: Any, record: CheckRecord) -> None:
        log_items(writer, self.items(record), record.step)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- captions


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
    PILImage.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=1)
    encoded = Summary.Image(height=pixels.shape[0], width=pixels.shape[1], colorspace=3,
                            encoded_image_string=buffer.getvalue())
    file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)
