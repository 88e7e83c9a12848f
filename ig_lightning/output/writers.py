"""One writer per logger: where a check's pictures, texts, histograms and rules go in each backend.

Every writer has the same methods (``Writer``); the ``Reporter`` builds
one per supported logger of the trainer (``writers_for()``) and hands each the same items:

=================  ==========================================  ==================  ===============================
logger             pictures, texts, histograms                 rules table         rules file (one JSON line a check)
=================  ==========================================  ==================  ===============================
TensorBoardLogger  images, text tab, histograms                Markdown (text)     ``logger.log_dir``
WandbLogger        ``wandb.Image`` (captioned), ``wandb.Html``,  ``wandb.Table``     ``run.dir`` (synced with the run)
                   ``wandb.Histogram``, at ``trainer/global_step``
MLFlowLogger       ``log_image(key=tag, step=)`` (or a PNG      ``.md`` artifacts   artifact ``ig_rules.jsonl``
                   artifact), ``.md`` artifacts; no histograms
CSVLogger          ``log_dir/<tag>/step_<step>.png``, ``.md``,  ``.md`` and ``.csv``  ``logger.log_dir``
                   histogram bin counts as ``.csv``
=================  ==========================================  ==================  ===============================

``wandb`` and ``mlflow`` are imported only when such a logger is in the trainer. Writers raise on failure; the
reporter isolates each writer, so one failing backend never keeps the others from a check (nor ends the run).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from ig_lightning.output import record


class Writer(Protocol):
    """Where one logger gets a check.

    Attributes:
        name: The backend, as warnings say it (``TensorBoard``, ``W&B``, ``MLflow``, ``CSV``).
        directory: Where the rules file goes, or ``None`` when the backend keeps rules its own way.
    """

    name: str

    @property
    def directory(self) -> str | None: ...

    def image(self, tag: str, pixels: torch.Tensor, step: int, caption: str | None = None) -> None:
        """``pixels``: ``(3, H, W)`` uint8 RGB."""

    def text(self, tag: str, markdown: str, step: int) -> None: ...

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """``values``: finite, never empty."""

    def table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[str]], step: int) -> None: ...

    def rules(self, line: dict) -> None:
        """One check's rules as a JSON-ready dict, for backends without a ``directory``."""

    def flush(self) -> None:
        """End of a check: everything written so far reaches the backend."""


def write_items(writer: Writer, items: Sequence[record.Item], step: int, flush: bool = True) -> None:
    """Hand every item to ``writer`` (then flush, unless told not to)."""
    for item in items:
        if isinstance(item, record.Image):
            writer.image(item.tag, item.pixels, step, item.caption)
        elif isinstance(item, record.Text):
            writer.text(item.tag, item.markdown, step)
        elif isinstance(item, record.Histogram):
            writer.histogram(item.tag, item.values, step)
        elif isinstance(item, record.Table):
            writer.table(item.tag, item.columns, item.rows, step)
    if flush:
        writer.flush()


def hwc(pixels: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` uint8 tensor to a ``(H, W, 3)`` array."""
    return pixels.detach().cpu().permute(1, 2, 0).contiguous().numpy()


def png_bytes(pixels: torch.Tensor, caption: str | None = None) -> bytes:
    """A fast PNG of ``(3, H, W)`` uint8 pixels; the caption, if any, as its ``Description``."""
    info = None
    if caption:
        info = PngInfo()
        info.add_itxt("Description", caption)
    buffer = io.BytesIO()
    PILImage.fromarray(hwc(pixels), mode="RGB").save(buffer, format="PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


def tag_path(tag: str) -> str:
    """A tag as a relative path: its slashes become folders, odd characters ``_``, never ``..``."""
    parts = [re.sub(r"[^\w.\-]", "_", part).strip(".") or "_" for part in tag.split("/") if part]
    return os.path.join(*parts) if parts else "_"


class _Base:
    name = "?"

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    @property
    def directory(self) -> str | None:
        return None

    def image(self, tag: str, pixels: torch.Tensor, step: int, caption: str | None = None) -> None:
        pass

    def text(self, tag: str, markdown: str, step: int) -> None:
        pass

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        pass

    def table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[str]], step: int) -> None:
        pass

    def rules(self, line: dict) -> None:
        pass

    def flush(self) -> None:
        pass


class TensorBoardWriter(_Base):
    """A ``TensorBoardLogger``'s ``SummaryWriter``: fast PNGs (``record.add_png()``), text, histograms."""

    name = "TensorBoard"

    @property
    def directory(self) -> str | None:
        return self.logger.log_dir

    def image(self, tag: str, pixels: torch.Tensor, step: int, caption: str | None = None) -> None:
        record.add_png(self.logger.experiment, tag, pixels, step)  # looked up here: tests replace it

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.logger.experiment.add_text(tag, markdown, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.logger.experiment.add_histogram(tag, values, step)

    def flush(self) -> None:
        self.logger.experiment.flush()


class CSVWriter(_Base):
    """Files under a ``CSVLogger``'s ``log_dir``: ``<tag>/step_<step>.png`` (the tag's slashes are folders),
    ``.md`` for texts, ``.csv`` for tables and histograms (bin edges and counts)."""

    name = "CSV"

    @property
    def directory(self) -> str | None:
        return self.logger.log_dir

    def _path(self, tag: str, step: int, suffix: str) -> str:
        folder = os.path.join(self.logger.log_dir, tag_path(tag))
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"step_{step}{suffix}")

    def image(self, tag: str, pixels: torch.Tensor, step: int, caption: str | None = None) -> None:
        with open(self._path(tag, step, ".png"), "wb") as f:
            f.write(png_bytes(pixels, caption))

    def text(self, tag: str, markdown: str, step: int) -> None:
        with open(self._path(tag, step, ".md"), "w", encoding="utf-8") as f:
            f.write(markdown + "\n")

    def table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[str]], step: int) -> None:
        with open(self._path(tag, step, ".csv"), "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(columns)
            out.writerows(rows)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        counts, edges = np.histogram(values.detach().cpu().double().numpy(), bins=30)
        with open(self._path(tag, step, ".csv"), "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["left", "right", "count"])
            out.writerows((repr(float(a)), repr(float(b)), int(n)) for a, b, n in zip(edges[:-1], edges[1:], counts))


class WandbWriter(_Base):
    """A ``WandbLogger``'s run: one ``run.log`` per check, at ``trainer/global_step`` = the check's step.

    Lightning logs its scalars the same way (``WandbLogger.log_metrics`` adds ``trainer/global_step`` and lets
    W&B count its own steps), so pictures and scalars share the x axis ``trainer/global_step`` and W&B's own
    step only ever grows. Pictures are ``wandb.Image`` with their caption, texts ``wandb.Html``, histograms
    ``wandb.Histogram``, the rules a ``wandb.Table``; the rules file is written into ``run.dir``, which W&B
    uploads with the run.
    """

    name = "W&B"

    def __init__(self, logger: Any) -> None:
        import wandb  # only with a WandbLogger in the trainer

        super().__init__(logger)
        self.wandb, self.pending, self.step = wandb, {}, None

    @property
    def directory(self) -> str | None:
        return self.logger.experiment.dir

    def _put(self, tag: str, value: Any, step: int) -> None:
        self.pending[tag], self.step = value, step

    def image(self, tag: str, pixels: torch.Tensor, step: int, caption: str | None = None) -> None:
        self._put(tag, self.wandb.Image(hwc(pixels), caption=caption), step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        import html

        self._put(tag, self.wandb.Html(f"<pre>{html.escape(markdown)}</pre>", inject=False), step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self._put(tag, self.wandb.Histogram(values.detach().cpu().double().numpy()), step)

    def table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[str]], step: int) -> None:
        self._put(tag, self.wandb.Table(columns=list(columns), data=[list(r) for r in rows]), step)

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        self.logger.experiment.log({**pending, "trainer/global_step": self.step})


class MLflowWriter(_Base):
    """An ``MLFlowLogger``'s run: pictures through ``MlflowClient.log_image`` (with ``key`` and ``step`` where
    this mlflow has them, 2.12 on; else PNG artifacts ``<tag>/step_<step>.png``), texts and tables as ``.md``
    artifacts ``<tag>/step_<step>.md``, the rules as the artifact ``<rules_file>`` rewritten with every line so
    far at each check. Histograms are left out (MLflow has none): said once."""

    name = "MLflow"

    def __init__(self, logger: Any, rules_file: str = "ig_rules.jsonl") -> None:
        import inspect

        import mlflow  # noqa: F401  only with an MLFlowLogger in the trainer

        super().__init__(logger)
        self.rules_file, self.lines, self.said_histograms = rules_file, [], False
        try:
            self.keyed = "key" in inspect.signature(logger.experiment.log_image).parameters
        except (TypeError, ValueError, AttributeError):
            self.keyed = False

    @property
    def client(self) -> Any:
        return self.logger.experiment

    def image(self, tag: str, pixels: torch.Tensor, step: int, caption: str | None = None) -> None:
        if self.keyed:
            self.client.log_image(self.logger.run_id, hwc(pixels), key=tag, step=step)
        else:
            self.client.log_image(self.logger.run_id, hwc(pixels), artifact_file=f"{tag_path(tag)}/step_{step}.png")

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.client.log_text(self.logger.run_id, markdown + "\n", f"{tag_path(tag)}/step_{step}.md")

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if not self.said_histograms:
            self.said_histograms = True
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info("IntegratedGradientsMonitor: MLflow has no histograms; the attribution and completeness "
                           "histograms go to the other loggers only")

    def rules(self, line: dict) -> None:
        self.lines.append(json.dumps(line))
        self.client.log_text(self.logger.run_id, "\n".join(self.lines) + "\n", self.rules_file)


def _class_names(logger: Any) -> set[str]:
    return {cls.__name__ for cls in type(logger).__mro__}


SUPPORTED = {"TensorBoardLogger": "TensorBoard", "WandbLogger": "W&B", "MLFlowLogger": "MLflow", "CSVLogger": "CSV"}
"""Logger class names (``lightning.pytorch.loggers``, or any subclass) and their backends."""


def backend_of(logger: Any) -> str | None:
    """The backend a logger is written to, or ``None`` for one this package does not write pictures to."""
    names = _class_names(logger)
    return next((backend for cls, backend in SUPPORTED.items() if cls in names), None)


def make_writer(logger: Any, rules_file: str = "ig_rules.jsonl") -> Writer | None:
    """The writer for ``logger`` (importing ``wandb``/``mlflow`` only for theirs), ``None`` when unsupported."""
    backend = backend_of(logger)
    if backend == "TensorBoard":
        return TensorBoardWriter(logger)
    if backend == "CSV":
        return CSVWriter(logger)
    if backend == "W&B":
        return WandbWriter(logger)
    if backend == "MLflow":
        return MLflowWriter(logger, rules_file)
    return None
