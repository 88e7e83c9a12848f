"""What a check looks like in TensorBoard: one view per kind of input (images, text, tabular).

A view turns a :class:`CheckRecord` (CPU tensors of one check) into images, text and histograms
through a ``SummaryWriter``. Pixels come from :mod:`ig_lightning.output.render`, rules from
:mod:`ig_lightning.functional.rules`; the callback decides what to compute, the views only draw it.

Drawing never breaks a run whose model diverged: NaN or infinite scores, scales, inputs and
completeness errors are drawn (in :data:`ig_lightning.output.render.NONFINITE_RGB`, mid-grey) or
left out, as each function's docstring says, never raised on.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

from ig_lightning.output import charts, render
from ig_lightning.functional.rules import class_mean_maps
from ig_lightning.output.markdown import Names, name_lookup, rules_markdown, token_table

VIEW_KINDS = ("auto", "image", "text", "tabular")


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
            :class:`TextView` neither draws nor lists masked-out positions. ``None``: all are real.
        prefix: What every tag starts with: ``ig``, or ``ig/<name>`` for a named monitor.
        labels: The probe's labels ``(B,)``, when it has class labels.
        predictions: The predicted class per example at this check ``(B,)``, for multi-class models.
        rule_drops: Per class, the relative drop of its score when its rule is removed from its examples
            (the deletion check); shown as a column of the rules table.
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


class View(Protocol):
    """Draws one check into a ``SummaryWriter``."""

    def log(self, writer: Any, record: CheckRecord) -> None: ...


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
    """Histograms every view shares: attributions and per-example completeness error.

    Only finite values are logged (TensorBoard's ``add_histogram`` raises on NaN and on an empty
    tensor); a histogram with no finite value at all is skipped for this step.
    """
    _add_finite_histogram(writer, f"{record.prefix}/histograms/attributions", record.scores, record.step)
    _add_finite_histogram(writer, f"{record.prefix}/histograms/completeness_error", record.relative_error, record.step)


def _add_finite_histogram(writer: Any, tag: str, values: torch.Tensor, step: int) -> None:
    values = values.detach().float().reshape(-1)
    finite = values[torch.isfinite(values)]
    if finite.numel():
        writer.add_histogram(tag, finite, step)


def _finite_examples(scores: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: True for examples whose scores are all finite."""
    return torch.isfinite(scores.reshape(scores.shape[0], -1)).all(1)


def _mean_scale(scales: torch.Tensor) -> float:
    """Mean of the finite positive scales; NaN when there is none (the renderers then fall back)."""
    good = scales[torch.isfinite(scales) & (scales > 0)]
    return float(good.mean()) if good.numel() else math.nan


class ImageView:
    """Input, signed heatmap and overlay per probe example, and class-mean maps, as grid images.

    Non-finite attributions and input pixels are drawn mid-grey (see :func:`render.image_grid`).
    Class-mean maps average only the class's examples whose attributions are all finite; a class
    with no such example is drawn entirely mid-grey. Their input is the per-pixel mean of the
    class's finite input values, and their scale the mean of the class's finite positive scales.
    """

    def __init__(self, class_names: Sequence[str] | None = None, max_examples: int = 8, cmap: str = "RdBu_r",
                 min_size: int = 64) -> None:
        self.class_names, self.max_examples, self.cmap, self.min_size = class_names, max_examples, cmap, min_size

    def log(self, writer: Any, record: CheckRecord) -> None:
        n = min(self.max_examples, record.inputs.shape[0])
        grid = render.image_grid(record.inputs[:n], record.scores[:n], record.scales[:n], cmap=self.cmap,
                                 min_size=self.min_size)
        add_png(writer, f"{record.prefix}/attribution_maps", grid, record.step)
        if record.targets is None:
            return
        maps = class_mean_maps(record.scores, record.targets)
        classes = torch.unique(record.targets).tolist()
        diverged = torch.full(record.scores.shape[1:], math.nan)
        mean_maps = torch.stack([maps[c].float() if c in maps else diverged for c in classes])
        mean_inputs = torch.stack([_finite_mean(record.inputs[record.targets == c]) for c in classes])
        scales = torch.tensor([_mean_scale(record.scales[record.targets == c]) for c in classes])
        grid = render.image_grid(mean_inputs, mean_maps, scales, cmap=self.cmap, min_size=self.min_size)
        add_png(writer, f"{record.prefix}/class_mean_maps", grid, record.step)
        if record.rules:
            names = name_lookup(self.class_names, str)
            caption = f"Rows of `{record.prefix}/class_mean_maps`: " + ", ".join(names(c) for c in classes) + "\n\n"
            table = rules_markdown(record.rules, record.changes, drops=record.rule_drops,
                                   key_names=pixel_namer(record.scores.shape[1:]), class_names=self.class_names)
            writer.add_text(f"{record.prefix}/rules", caption + table, record.step)


def _finite_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the finite values only; NaN where there is none."""
    x = x.float()
    finite = torch.isfinite(x)
    return torch.where(finite, x, 0.0).sum(0) / finite.sum(0)


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
    """Tokens coloured by attribution (an image and a table) and the tokens that carry each class.

    Args:
        vocabulary: Token names: a list indexed by id, a callable ``id -> str``, or a tokenizer with
            ``convert_ids_to_tokens`` (e.g. Hugging Face). Default ``str(id)``.
        class_names: Names of the classes, indexed by class.
        max_examples: Examples drawn per check.
        cmap: Diverging matplotlib colormap name.

    Positions masked out by ``CheckRecord.mask`` (padding) are neither drawn nor listed; tokens with
    a non-finite score are drawn on a mid-grey box and listed as ``nan``/``+inf``/``-inf``.

    Raises:
        TypeError: ``vocabulary`` is of none of the accepted kinds.
    """

    def __init__(self, vocabulary: Names = None, class_names: Sequence[str] | None = None,
                 max_examples: int = 8, cmap: str = "RdBu_r") -> None:
        self.token = name_lookup(vocabulary, str, "vocabulary")
        self.class_names, self.max_examples, self.cmap = class_names, max_examples, cmap

    def tokens(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[str]]:
        """The names of each example's token ids, leaving out the positions where ``mask`` is False."""
        flat = ids.reshape(ids.shape[0], -1)
        keep = torch.ones_like(flat, dtype=torch.bool) if mask is None else mask.reshape(flat.shape).bool()
        return [[self.token(int(i)) for i in row[k]] for row, k in zip(flat, keep)]

    def log(self, writer: Any, record: CheckRecord) -> None:
        n = min(self.max_examples, record.inputs.shape[0])
        scores = record.scores[:n].reshape(n, -1)
        mask = _validate_mask(record.mask, record.inputs)
        keep = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask[:n].reshape(n, -1)
        tokens = self.tokens(record.inputs[:n], keep)
        scores = _compact(scores, keep)
        strip = charts.token_strip(tokens, scores, record.scales[:n], cmap=self.cmap)
        add_png(writer, f"{record.prefix}/token_attributions", strip, record.step)
        table = token_table(tokens, scores, title=f"epoch {record.epoch}")
        writer.add_text(f"{record.prefix}/tokens", table, record.step)
        if record.rules:
            table = rules_markdown(record.rules, record.changes, drops=record.rule_drops, key_names=self.token,
                                   class_names=self.class_names)
            writer.add_text(f"{record.prefix}/rules", table, record.step)


def _validate_mask(mask: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != inputs.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"`mask` must be a tensor shaped like inputs {tuple(inputs.shape)}, got {got}")
    return mask.detach().cpu().bool()


def _compact(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Move each row's kept scores to the front, in order, padding with zeros: ``(N, max kept)``."""
    lengths = keep.sum(1)
    out = torch.zeros(scores.shape[0], int(lengths.max()) if lengths.numel() else 0, dtype=scores.dtype)
    out[torch.arange(out.shape[1]) < lengths.view(-1, 1)] = scores[keep]
    return out


class TabularView:
    """Bar charts of feature attributions per example and for the probe, and each class's top features.

    Non-finite attributions are drawn as mid-grey bars (see :func:`charts.bar_chart`); an example's
    scale that is not finite or not positive gives a chart whose axis follows the data. The probe mean
    averages only the examples whose attributions are all finite (all mid-grey when there is none).
    """

    def __init__(self, feature_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 max_examples: int = 4, max_bars: int = 20) -> None:
        self.feature_names, self.class_names = feature_names, class_names
        self.max_examples, self.max_bars = max_examples, max_bars

    def log(self, writer: Any, record: CheckRecord) -> None:
        scores = record.scores.reshape(record.scores.shape[0], -1)
        names = list(self.feature_names) if self.feature_names is not None else None
        for i in range(min(self.max_examples, scores.shape[0])):
            chart = charts.bar_chart(scores[i], names, title=f"example {i}", max_bars=self.max_bars,
                                     scale=_usable_scale(float(record.scales[i])))
            add_png(writer, f"{record.prefix}/feature_attributions/example_{i}", chart, record.step)
        finite = _finite_examples(scores)
        mean = scores[finite].mean(0) if finite.any() else torch.full(scores.shape[1:], math.nan)
        chart = charts.bar_chart(mean, names, title="probe mean", max_bars=self.max_bars,
                                 scale=_usable_scale(_mean_scale(record.scales)))
        add_png(writer, f"{record.prefix}/feature_attributions/probe_mean", chart, record.step)
        if record.rules:
            table = rules_markdown(record.rules, record.changes, drops=record.rule_drops, key_names=names,
                                   class_names=self.class_names)
            writer.add_text(f"{record.prefix}/rules", table, record.step)


def _usable_scale(scale: float) -> float | None:
    return scale if math.isfinite(scale) and scale > 0 else None


def infer_kind(inputs: torch.Tensor, scores: torch.Tensor, layer: object) -> str:
    """``text`` for token ids attributed at a layer, ``image`` for ``(B, C, H, W)``/``(B, H, W)``, else ``tabular``."""
    if layer is not None and not inputs.dtype.is_floating_point:
        return "text"
    if scores.ndim in (3, 4) and (scores.ndim == 3 or scores.shape[1] in (1, 3)):
        return "image"
    return "tabular"


def make_view(kind: str, config: Any) -> View:
    """The view for ``kind`` (decided once, before training), with the names and sizes of ``config``."""
    if kind == "text":
        return TextView(config.vocabulary, config.class_names, config.max_images)
    if kind == "tabular":
        return TabularView(config.feature_names, config.class_names, max_examples=min(4, config.max_images))
    return ImageView(config.class_names, config.max_images)
