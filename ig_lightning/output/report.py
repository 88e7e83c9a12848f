"""Rank-zero output of a check: pictures, histograms, rules text and the rules file, to every logger.

Nothing here may end a run: a failure to write (a read-only or full disk, a removed directory, a
logger error) is reported once per kind of failure as a warning, and training goes on. Scalars are
not written here: they go through ``LightningModule.log`` so that every logger and callback sees them.

With ``background=True`` (the monitor's default) a check's record is copied (``worker.snapshot()``) and drawn and
written on the reporter's worker thread (``ig_lightning.output.worker``), in order; ``flush()`` and ``close()``
wait for it. The pictures, texts and files are the same as when drawn in line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ig_lightning.output import writers
from ig_lightning.output.worker import DRAWING, Worker, snapshot
from ig_lightning.output.views import CheckRecord, Item, View, common_items
from ig_lightning.output.writers import Writer


def logger_step(trainer: Any) -> int:
    """The step Lightning gives the scalars logged at the end of a validation epoch, so every item of a check
    shares it in TensorBoard."""
    loop = getattr(trainer, "fit_loop", None)
    step = getattr(getattr(loop, "epoch_loop", None), "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else int(trainer.global_step)


class Reporter:
    """Writes a ``CheckRecord`` to every supported logger and its rules file (call it on rank zero only).

    Each ``TensorBoardLogger``, ``WandbLogger``, ``MLFlowLogger`` and ``CSVLogger`` of the trainer gets its own
    writer (``ig_lightning.output.writers``) and the same pictures, texts, histograms and rules. Each is
    isolated: a failing backend warns once per kind of failure and the others still get the check. Other
    loggers get the scalars only (said once).

    Args:
        loggers: The trainer's loggers.
        log_images: Draw pictures and histograms.
        view: What a check looks like (see ``make_view()``).
        prefix: What tags start with (``ig``, or ``ig/<name>``).
        rules_file: The rules file's name, in each writer's directory (an artifact of that name for MLflow).
        background: Draw and write on a worker thread (``write`` returns once the record is copied).
        queue_size: Checks waiting for the worker at most; ``write`` waits for room beyond.
    """

    def __init__(self, loggers: Sequence[Any], log_images: bool, view: View, prefix: str = "ig",
                 rules_file: str = "ig_rules.jsonl", background: bool = False, queue_size: int = 2) -> None:
        self.log_images, self.view, self.prefix, self.rules_file = log_images, view, prefix, rules_file
        self.background = background
        self.worker = Worker(queue_size, on_error=self._job_failed)
        self.failed: set[str] = set()
        self.writers: list[Writer] = []
        for logger in loggers:
            backend = writers.backend_of(logger)
            if backend is None:
                rank_zero_info(f"IntegratedGradientsMonitor: {type(logger).__name__} gets the scalars only "
                               "(pictures and rules go to TensorBoard, W&B, MLflow and CSV loggers)")
                continue
            try:
                writer = writers.make_writer(logger, rules_file)
            except Exception as error:  # noqa: BLE001  e.g. wandb or mlflow not importable
                self._warn(f"{backend} pictures", error)
                continue
            if writer is not None:
                self.writers.append(writer)
        if not self.writers and log_images:
            rank_zero_info("IntegratedGradientsMonitor: no TensorBoard, W&B, MLflow or CSV logger in the trainer, so "
                           "only scalars are logged (add `logger=TensorBoardLogger(...)` for attribution pictures)")

    @property
    def tensorboard(self) -> Any:
        """The first ``TensorBoardLogger``, or ``None``."""
        return next((w.logger for w in self.writers if isinstance(w, writers.TensorBoardWriter)), None)

    def write(self, record: CheckRecord) -> None:
        """Draw and write ``record``: now, or (``background``) a copy of it on the worker thread."""
        if not self.writers:
            return
        if not self.background:
            with DRAWING:
                self.draw_and_write(record)
            return
        if not self.worker.alive:
            self._prime()
        self._directories()
        copied = snapshot(record)
        self.worker.submit(lambda: self.draw_and_write(copied))

    def flush(self) -> None:
        """Wait until every check written so far is drawn and written; issue the warnings it left."""
        self.worker.flush()

    def close(self) -> None:
        """``flush()``, then stop the worker thread (a later ``write`` starts it again)."""
        self.worker.close()

    def _prime(self) -> None:
        """Each logger's lazily made parts (directory, experiment) made here on the calling thread, not raced for
        by the worker and the training thread; a failure is left for the worker to report."""
        for writer in self.writers:
            try:
                writer.directory  # noqa: B018
                if not isinstance(writer, writers.CSVWriter):
                    writer.logger.experiment  # noqa: B018
            except Exception:  # noqa: BLE001, S110
                pass

    def _directories(self) -> None:
        """Each writer's directory, made again on the training thread if it went away (a cleaned-up log directory):
        the loggers' own scalar writes there must not wait for the worker to make it."""
        for writer in self.writers:
            try:
                directory = writer.directory
                if directory:
                    os.makedirs(directory, exist_ok=True)
            except Exception:  # noqa: BLE001, S110  the worker's write reports it
                pass

    def draw_and_write(self, record: CheckRecord) -> None:
        """Draw ``record`` and hand it to every writer, on the calling thread."""
        line = rules_line(record) if record.rules or record.tested_rules else None
        items: list[Item] = []
        if self.log_images and not self._safely("pictures", lambda: items.extend(self._items(record))):
            items = []
        written: set[str] = set()
        for writer in self.writers:
            if line is not None:
                self._safely(self._kind(writer, "rules"), lambda w=writer: self._write_rules(w, line, written))
            if items:
                self._write_items(writer, items, record.step)

    def _items(self, record: CheckRecord) -> list[Item]:
        return common_items(record) + self.view.items(record)

    @staticmethod
    def _kind(writer: Writer, what: str) -> str:
        if what == "rules":
            if writer.directory is None:
                return f"the {writer.name} rules artifact"
            return "the rules file" if writer.name == "TensorBoard" else f"the {writer.name} rules file"
        return f"{writer.name} pictures"

    def _write_items(self, writer: Writer, items: list[Item], step: int) -> None:
        kind = self._kind(writer, "pictures")
        for item in items:  # one at a time: a failing histogram does not keep the pictures out
            self._safely(kind, lambda i=item: writers.write_items(writer, [i], step, flush=False))
        self._safely(kind, writer.flush)

    def _write_rules(self, writer: Writer, line: dict, written: set[str]) -> None:
        """Rules as data a program can read back: one JSON line per check in the writer's directory (once per
        directory: a TensorBoard and a CSV logger may share one), or the backend's own way."""
        directory = writer.directory
        if directory is None:
            writer.rules(line)
            return
        path = os.path.realpath(os.path.join(directory, self.rules_file))
        if path in written:
            return
        written.add(path)
        os.makedirs(directory, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _safely(self, what: str, write: Callable[[], None]) -> bool:
        try:
            write()
            return True
        except Exception as error:  # noqa: BLE001  the monitor's own output must never end a run
            self._warn(what, error)
            return False

    def _job_failed(self, error: BaseException) -> None:
        self._warn("the check's pictures and files", error)

    def _warn(self, what: str, error: BaseException) -> None:
        if what not in self.failed:
            self.failed.add(what)
            message = (f"IntegratedGradientsMonitor: could not write {what} ({type(error).__name__}: {error}); "
                       "training goes on, further failures of this kind are not reported")
            if self.worker.on_thread:
                self.worker.warn(message)  # issued on the training thread at the next write or flush
            else:
                rank_zero_warn(message)


def rules_line(record: CheckRecord) -> dict:
    """One check's rules as a JSON-ready dict: the line of the rules file. With tested rules, ``rules`` holds every
    class's rules (each with all its fields), ``top_features`` the attribution's ``[key, score]`` pairs."""
    features = {"rules": {str(c): v for c, v in record.rules.items()},
                "changes": {str(c): v for c, v in (record.changes or {}).items()},
                "rule_drops": {str(c): v if math.isfinite(v) else None for c, v in record.rule_drops.items()}}
    line = {"epoch": record.epoch, "step": record.step}
    if record.tested_rules is None:
        return {**line, **features}
    return {**line, "rules": {str(c): [r.to_dict() for r in rs] for c, rs in record.tested_rules.items()},
            "changes": {str(c): v for c, v in (record.rule_changes or {}).items()},
            "events": list(record.rule_events), "guards": [g.to_dict() for g in record.guard_rules],
            "top_features": features["rules"], "top_feature_changes": features["changes"],
            "rule_drops": features["rule_drops"]}
