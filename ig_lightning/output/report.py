"""Rank-zero output of a check: pictures, histograms, rules text and the rules file.

Nothing here may end a run: a failure to write (a read-only or full disk, a removed directory, a
logger error) is reported once per kind of failure as a warning, and training goes on. Scalars are
not written here: they go through ``LightningModule.log`` so that every logger and callback sees them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any, Callable

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ig_lightning.output.views import CheckRecord, View, log_common


def logger_step(trainer: Any) -> int:
    """The step Lightning gives the scalars logged at the end of a validation epoch, so every item of a check
    shares it in TensorBoard."""
    loop = getattr(trainer, "fit_loop", None)
    step = getattr(getattr(loop, "epoch_loop", None), "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else int(trainer.global_step)


class Reporter:
    """Writes a :class:`CheckRecord` to TensorBoard and the rules file (call it on rank zero only).

    Args:
        loggers: The trainer's loggers; the first ``TensorBoardLogger`` gets pictures and the rules file.
        log_images: Draw pictures and histograms.
        view: What a check looks like (see :func:`~ig_lightning.output.views.make_view`).
        prefix: What tags start with (``ig``, or ``ig/<name>``).
        rules_file: The rules file's name, in the logger's directory.
    """

    def __init__(self, loggers: Sequence[Any], log_images: bool, view: View, prefix: str = "ig",
                 rules_file: str = "ig_rules.jsonl") -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        self.tensorboard = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
        if self.tensorboard is None and log_images:
            rank_zero_info("IntegratedGradientsMonitor: no TensorBoardLogger in the trainer, so only scalars are "
                           "logged (add `logger=TensorBoardLogger(...)` for attribution pictures)")
        self.log_images, self.view, self.prefix, self.rules_file = log_images, view, prefix, rules_file
        self.failed: set[str] = set()

    def write(self, record: CheckRecord) -> None:
        if self.tensorboard is None:
            return
        self._safely("the rules file", self._write_rules_file, record)
        if self.log_images:
            self._safely("TensorBoard pictures", self._draw, record)

    def _draw(self, record: CheckRecord) -> None:
        writer = self.tensorboard.experiment
        log_common(writer, record)
        self.view.log(writer, record)
        writer.flush()

    def _write_rules_file(self, record: CheckRecord) -> None:
        """Rules as data a program can read back: one JSON line per check in the logger's directory."""
        if not record.rules:
            return
        os.makedirs(self.tensorboard.log_dir, exist_ok=True)
        line = {"epoch": record.epoch, "step": record.step,
                "rules": {str(c): v for c, v in record.rules.items()},
                "changes": {str(c): v for c, v in (record.changes or {}).items()},
                "rule_drops": {str(c): v if math.isfinite(v) else None for c, v in record.rule_drops.items()}}
        with open(os.path.join(self.tensorboard.log_dir, self.rules_file), "a") as f:
            f.write(json.dumps(line) + "\n")

    def _safely(self, what: str, write: Callable[[CheckRecord], None], record: CheckRecord) -> None:
        try:
            write(record)
        except Exception as error:  # noqa: BLE001  the monitor's own output must never end a run
            if what not in self.failed:
                self.failed.add(what)
                rank_zero_warn(f"IntegratedGradientsMonitor: could not write {what} ({type(error).__name__}: "
                               f"{error}); training goes on, further failures of this kind are not reported")
