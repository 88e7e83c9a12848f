"""What a check looks like: one view per kind of input (images, text, tabular).

A view turns a ``CheckRecord`` (CPU tensors of one check) into items: ``Image`` (with a caption),
``Text`` (Markdown), ``Histogram`` and ``Table``, which the
``Reporter`` hands to every logger's writer
(``ig_lightning.output.writers``). Pixels come from ``ig_lightning.output.render``, rules from
``ig_lightning.functional.rules``; the callback decides what to compute, the views only draw it.

Drawing never breaks a run whose model diverged: NaN or infinite scores, scales, inputs and
completeness errors are drawn (in ``ig_lightning.output.render.NONFINITE_RGB``, mid-grey) or
left out, as each function's docstring says, never raised on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ig_lightning.functional.rules import class_mean_maps
from ig_lightning.output import charts, render
from ig_lightning.output.captions import (
    CAPTION_SEPARATOR,
    example_caption,
    format_completeness,
    grid_caption,
    wrap_title,
)
from ig_lightning.output.markdown import (
    Names,
    name_lookup,
    rules_markdown,
    rules_rows,
    rule_table_markdown,
    rule_table_rows,
    token_table,
)
from ig_lightning.output.record import (
    CheckRecord,
    Histogram,
    Image,
    Item,
    LogsToSummaryWriter,
    Table,
    Text,
    View,
    log_items,
)

VIEW_KINDS = ("auto", "image", "text", "tabular")


def common_items(record: CheckRecord) -> list[Item]:
    """Histograms every view shares: attributions and per-example completeness error.

    Only finite values are kept (TensorBoard's ``add_histogram`` raises on NaN and on an empty
    tensor); a histogram with no finite value at all is left out of this step.
    """
    items = [_finite_histogram(f"{record.prefix}/histograms/attributions", record.scores),
             _finite_histogram(f"{record.prefix}/histograms/completeness_error", record.relative_error)]
    return [item for item in items if item is not None]


def log_common(writer: Any, record: CheckRecord) -> None:
    """``common_items()`` written into a ``SummaryWriter``."""
    log_items(writer, common_items(record), record.step)


def _finite_histogram(tag: str, values: torch.Tensor) -> Histogram | None:
    values = values.detach().float().reshape(-1)
    finite = values[torch.isfinite(values)]
    return Histogram(tag, finite) if finite.numel() else None


def _rules_items(record: CheckRecord, key_names: Any, class_names: Sequence[str] | None,
                 caption: str = "") -> list[Item]:
    """The rules table (``rules``, ``rules_table``): the tested rules when there are, else the top features; with
    tested rules the top features go to ``top_features``."""
    table = rules_markdown(record.rules, record.changes, drops=record.rule_drops, key_names=key_names,
                           class_names=class_names)
    columns, rows = rules_rows(record.rules, record.changes, drops=record.rule_drops, key_names=key_names,
                               class_names=class_names)
    if record.tested_rules is None:
        return [Text(f"{record.prefix}/rules", caption + table), Table(f"{record.prefix}/rules_table", columns, rows)]
    tested = rule_table_markdown(record.tested_rules, record.rule_changes, class_names, record.rule_events,
                                   record.guard_rules)
    columns, rows = rule_table_rows(record.tested_rules, record.rule_changes, class_names)
    return [Text(f"{record.prefix}/rules", tested), Table(f"{record.prefix}/rules_table", columns, rows),
            Text(f"{record.prefix}/top_features", caption + table)]


def _finite_examples(scores: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: True for examples whose scores are all finite."""
    return torch.isfinite(scores.reshape(scores.shape[0], -1)).all(1)


def _mean_scale(scales: torch.Tensor) -> float:
    """Mean of the finite positive scales; NaN when there is none (the renderers then fall back)."""
    good = scales[torch.isfinite(scales) & (scales > 0)]
    return float(good.mean()) if good.numel() else math.nan


class ImageView(LogsToSummaryWriter):
    """Input, signed heatmap and overlay per probe example, and class-mean maps, as grid images.

    Each row is captioned inside the picture (``example_caption()``: index, label, prediction, explained
    class, completeness error; class-mean rows: the class, its number of examples and their mean completeness
    error), unless the panels are thumbnails under ``caption_min_size`` pixels. A layer's map (scores
    ``(B, h, w)`` of another size than the input ``(B, C, H, W)``, e.g. a conv layer's attribution summed over
    channels) is upsampled to the input (``render.upsample_map()``) and drawn the same way.

    Non-finite attributions and input pixels are drawn mid-grey (see ``render.image_grid()``).
    Class-mean maps average only the class's examples whose attributions are all finite; a class
    with no such example is drawn entirely mid-grey. Their input is the per-pixel mean of the
    class's finite input values, and their scale the mean of the class's finite positive scales.
    """

    def __init__(self, class_names: Sequence[str] | None = None, max_examples: int = 8, cmap: str = "RdBu_r",
                 min_size: int = 96, caption_min_size: int = 32) -> None:
        self.class_names, self.max_examples, self.cmap, self.min_size = class_names, max_examples, cmap, min_size
        self.caption_min_size = caption_min_size

    def _maps(self, inputs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` as drawable over ``inputs``: unchanged when they match, else a layer map upsampled."""
        if scores.shape == inputs.shape or scores.shape[1:] == inputs.shape[1:]:
            return scores
        maps = scores.float()
        if maps.ndim == 4 and maps.shape[1] != 1:  # (B, C', h, w) at a layer: one map per example
            maps = maps.sum(1)
        return render.upsample_map(maps, inputs.shape[-2:])

    def _grid(self, inputs: torch.Tensor, scores: torch.Tensor, scales: torch.Tensor,
              captions: list[str]) -> torch.Tensor:
        captioned = self.min_size >= self.caption_min_size
        return render.image_grid(inputs, self._maps(inputs, scores), scales, cmap=self.cmap, min_size=self.min_size,
                                 captions=captions if captioned else None)

    def items(self, record: CheckRecord) -> list[Item]:
        n = min(self.max_examples, record.inputs.shape[0])
        rows = [example_caption(record, i, self.class_names) for i in range(n)]
        grid = self._grid(record.inputs[:n], record.scores[:n], record.scales[:n], rows)
        items: list[Item] = [Image(f"{record.prefix}/attribution_maps", grid, grid_caption(record, rows))]
        if record.targets is None:
            return items
        maps = class_mean_maps(record.scores, record.targets)
        classes = torch.unique(record.targets).tolist()
        diverged = torch.full(record.scores.shape[1:], math.nan)
        mean_maps = torch.stack([maps[c].float() if c in maps else diverged for c in classes])
        mean_inputs = torch.stack([_finite_mean(record.inputs[record.targets == c]) for c in classes])
        scales = torch.tensor([_mean_scale(record.scales[record.targets == c]) for c in classes])
        names = name_lookup(self.class_names, str)
        rows = [self._class_caption(record, c, names) for c in classes]
        grid = self._grid(mean_inputs, mean_maps, scales, rows)
        items.append(Image(f"{record.prefix}/class_mean_maps", grid, grid_caption(record, rows)))
        if record.rules:
            caption = f"Rows of `{record.prefix}/class_mean_maps`: " + ", ".join(names(c) for c in classes) + "\n\n"
            items += _rules_items(record, pixel_namer(record.scores.shape[1:]), self.class_names, caption)
        return items

    @staticmethod
    def _class_caption(record: CheckRecord, c: int, names: Callable[[int], str]) -> str:
        members = record.targets == c
        errors = record.relative_error.reshape(-1)[members] if record.relative_error.numel() == len(members) \
            else torch.empty(0)
        finite = errors[torch.isfinite(errors)]
        parts = [f"class {names(c)}", f"{int(members.sum())} example" + ("s" if int(members.sum()) != 1 else "")]
        if finite.numel():
            parts.append(f"completeness {format_completeness(float(finite.mean()))}")
        return CAPTION_SEPARATOR.join(parts)


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


class TextView(LogsToSummaryWriter):
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

    def items(self, record: CheckRecord) -> list[Item]:
        n = min(self.max_examples, record.inputs.shape[0])
        scores = record.scores[:n].reshape(n, -1)
        mask = _validate_mask(record.mask, record.inputs)
        keep = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask[:n].reshape(n, -1)
        tokens = self.tokens(record.inputs[:n], keep)
        scores = _compact(scores, keep)
        rows = [example_caption(record, i, self.class_names) for i in range(n)]
        strip = charts.token_strip(tokens, scores, record.scales[:n], cmap=self.cmap, captions=rows)
        items: list[Item] = [Image(f"{record.prefix}/token_attributions", strip, grid_caption(record, rows)),
                             Text(f"{record.prefix}/tokens",
                                  token_table(tokens, scores, title=f"epoch {record.epoch}"))]
        if record.rules:
            items += _rules_items(record, self.token, self.class_names)
        return items


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


class TabularView(LogsToSummaryWriter):
    """Bar charts of feature attributions per example and for the probe, and each class's top features.

    Non-finite attributions are drawn as mid-grey bars (see ``charts.bar_chart()``); an example's
    scale that is not finite or not positive gives a chart whose axis follows the data. The probe mean
    averages only the examples whose attributions are all finite (all mid-grey when there is none).
    """

    def __init__(self, feature_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 max_examples: int = 4, max_bars: int = 20) -> None:
        self.feature_names, self.class_names = feature_names, class_names
        self.max_examples, self.max_bars = max_examples, max_bars

    def items(self, record: CheckRecord) -> list[Item]:
        scores = record.scores.reshape(record.scores.shape[0], -1)
        names = list(self.feature_names) if self.feature_names is not None else None
        items: list[Item] = []
        for i in range(min(self.max_examples, scores.shape[0])):
            caption = example_caption(record, i, self.class_names)
            chart = charts.bar_chart(scores[i], names, title=wrap_title(caption), max_bars=self.max_bars,
                                     scale=_usable_scale(float(record.scales[i])))
            items.append(Image(f"{record.prefix}/feature_attributions/example_{i}", chart, caption))
        finite = _finite_examples(scores)
        mean = scores[finite].mean(0) if finite.any() else torch.full(scores.shape[1:], math.nan)
        errors = record.relative_error.reshape(-1)
        errors = errors[torch.isfinite(errors)]
        mean_error = f" · completeness {format_completeness(float(errors.mean()))}" if errors.numel() else ""
        title = "probe mean" + mean_error
        chart = charts.bar_chart(mean, names, title=title, max_bars=self.max_bars,
                                 scale=_usable_scale(_mean_scale(record.scales)))
        items.append(Image(f"{record.prefix}/feature_attributions/probe_mean", chart,
                           f"probe mean of {int(finite.sum())} examples, epoch {record.epoch}"))
        if record.rules:
            items += _rules_items(record, names, self.class_names)
        return items


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
    """The view for ``kind`` (decided once, before training), with the names and sizes of ``config`` (the
    monitor's ``Display`` settings)."""
    if kind == "text":
        return TextView(config.vocabulary, config.class_names, config.max_images)
    if kind == "tabular":
        return TabularView(config.feature_names, config.class_names, max_examples=min(4, config.max_images))
    return ImageView(config.class_names, config.max_images)
