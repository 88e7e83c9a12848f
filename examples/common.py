"""Pieces every example shares: a classifier base, a split data module, a seeded trainer and a summary.

An example builds its data module, model and :class:`~ig_lightning.IntegratedGradientsMonitor`, calls
:func:`fit` (TensorBoard logs under ``runs/<example>``) and prints :func:`summarize`'s report.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.functional.rule_tests import Rule

RUNS = Path("runs")
Split = tuple[torch.Tensor, torch.Tensor]
KeyNames = Sequence[str] | Callable[[int], str] | None


def quiet() -> None:
    """Silence Lightning's advice that does not apply to these small in-memory examples."""
    for message in (
        ".*does not have many workers.*",
        ".*is smaller than the logging interval.*",
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning 2.6 with torch >= 2.10
    ):
        warnings.filterwarnings("ignore", message)


def monitor_with(settings: dict[str, Any], overrides: dict[str, Any]) -> IntegratedGradientsMonitor:
    """The monitor of ``settings`` with ``overrides``; a settings object overridden by a dict keeps its other fields
    (``alarm={"on_breach": "raise"}`` changes only ``on_breach``).

    The examples check at every epoch (``max_overhead=None``): their runs last seconds and a check costs more than an
    epoch, so the default budget (``max_overhead=0.05``, the monitor's largest share of the run's time) would check
    once and then wait longer than the run. In a run of real length, keep the default or set your own share."""
    merged = {"max_overhead": None, **settings}
    for key, value in overrides.items():
        given = merged.get(key)
        if isinstance(value, dict) and dataclasses.is_dataclass(given):
            value = dataclasses.replace(given, **value)
        elif isinstance(value, dict) and isinstance(given, dict):
            value = {**given, **value}
        merged[key] = value
    return IntegratedGradientsMonitor(**merged)


def seed(value: int = 0) -> None:
    """Seed Python, NumPy and torch, so that an example gives the same numbers on every run."""
    quiet()
    seed_everything(value, workers=True, verbose=False)


class Classifier(LightningModule):
    """Cross-entropy training with loss and accuracy logged; subclasses build the network and ``forward``.

    Args:
        lr: Adam's learning rate.
    """

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr

    def _step(self, batch: Split, stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch: Split, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Split, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class SplitDataModule(LightningDataModule):
    """A fixed (seeded) train/validation split of the tensors a subclass's :meth:`load` returns.

    The validation set is not shuffled, so the monitor's ``probe=N`` is always the same ``N`` examples.

    Args:
        batch_size: Examples per batch.
        val_fraction: Share of the examples held out for validation.
        seed: Seed of the split.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def load(self) -> Split:
        """All examples as ``(inputs, labels)``."""
        raise NotImplementedError

    def transform(self, train: Split, val: Split) -> tuple[Split, Split]:
        """Change the split data (e.g. standardise with the training statistics); identity by default."""
        return train, val

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        inputs, labels = self.load()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        n_val = round(len(labels) * self.val_fraction)
        val_idx, train_idx = order[:n_val], order[n_val:]
        train, val = self.transform((inputs[train_idx], labels[train_idx]), (inputs[val_idx], labels[val_idx]))
        self.train_set, self.val_set = TensorDataset(*train), TensorDataset(*val)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class EpochPrinter(Callback):
    """Prints one line per epoch: validation accuracy and the monitor's main scalars."""

    KEYS = ("val/acc", "ig/completeness_error", "ig/drift", "ig/region_mass")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        parts = [f"{key} {float(metrics[key]):.4f}" for key in self.KEYS if key in metrics]
        print(f"epoch {trainer.current_epoch:>2}: " + "  ".join(parts), flush=True)


@dataclass
class Run:
    """What :func:`fit` leaves behind."""

    trainer: Trainer
    model: LightningModule
    datamodule: LightningDataModule
    monitor: IntegratedGradientsMonitor

    @property
    def log_dir(self) -> Path:
        """This run's TensorBoard directory (holds ``ig_rules.jsonl``)."""
        return Path(self.trainer.logger.log_dir)

    @property
    def root_dir(self) -> Path:
        """The example's directory, with one ``version_N`` per run: what to give ``tensorboard --logdir``."""
        return Path(self.trainer.logger.root_dir)

    @property
    def epochs_run(self) -> int:
        """Epochs trained (fewer than ``max_epochs`` when the run was stopped)."""
        return self.trainer.current_epoch


def make_trainer(
    name: str, callbacks: list[Callback], *, max_epochs: int, root: str | Path = RUNS, verbose: bool = True,
    **trainer_kwargs: Any,
) -> Trainer:
    """A CPU trainer logging to TensorBoard under ``root/name``; ``verbose`` prints a line per epoch."""
    logger = TensorBoardLogger(save_dir=str(root), name=name, default_hp_metric=False)
    if verbose:
        callbacks = [*callbacks, EpochPrinter()]
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=logger, callbacks=callbacks,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        log_every_n_steps=10,
    )
    return Trainer(**{**defaults, **trainer_kwargs})


def fit(
    name: str, model: LightningModule, datamodule: LightningDataModule, monitor: IntegratedGradientsMonitor, *,
    max_epochs: int, root: str | Path = RUNS, verbose: bool = True, **trainer_kwargs: Any,
) -> Run:
    """Train ``model`` on ``datamodule`` with ``monitor`` watching; see :func:`make_trainer` for the arguments."""
    trainer = make_trainer(name, [monitor], max_epochs=max_epochs, root=root, verbose=verbose, **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule)
    return Run(trainer, model, datamodule, monitor)


def _namer(names: KeyNames, prefix: str) -> Callable[[int], str]:
    if names is None:
        return lambda i: f"{prefix}{i}"
    if callable(names):
        return names
    return lambda i: names[i] if 0 <= i < len(names) else f"{prefix}{i}"


def rules_lines(rules: dict[int, list[Rule]], *, key_names: KeyNames = None, class_names: KeyNames = None,
                top: int = 3) -> list[str]:
    """Each class's first ``top`` rules, one line each: the statement and its numbers on the rule set (an untested
    rule: its key's name and attribution)."""
    key, cls = _namer(key_names, "#"), _namer(class_names, "class ")
    lines = []
    for c in sorted(rules):
        for rule in rules[c][:top]:
            tested = rule.text and math.isfinite(rule.coverage)
            lines.append(f"  {rule.summary()}" if tested else f"  {cls(c)}: {key(rule.keys[0])} ({rule.share:+.3f})")
    return lines


def summarize(
    monitor: IntegratedGradientsMonitor, log_dir: str | Path, *, key_names: KeyNames = None,
    class_names: KeyNames = None, top: int = 3, stopped: bool = False,
) -> str:
    """Print (and return) the last check's completeness error, drift, region mass, top rules and the next command.

    Args:
        monitor: The monitor after a run.
        log_dir: The directory to give ``tensorboard --logdir``.
        key_names: Names of rule keys (tokens, features or pixels), a list or a callable ``key -> name``.
        class_names: Names of the classes.
        top: Rules shown per class.
        stopped: Whether the run ended early (said in the report).
    """
    metrics = monitor.last_metrics
    lines = [f"IG checks: {monitor.checks}" + ("  (run stopped early by a breach)" if stopped else "")]
    labels = {"ig/completeness_error": "completeness error (mean relative)",
              "ig/completeness_error_max": "completeness error (worst)",
              "ig/attribution_error_max": "attribution error, estimated (worst)",
              "ig/n_steps_mean": "gradient evaluations per example (mean)",
              "ig/drift": f"drift ({monitor.alarm.metric} vs {monitor.alarm.reference} check)",
              "ig/region_mass": "share of |attribution| in `region`"}
    lines += [f"{text}: {metrics[name]:.4g}" for name, text in labels.items() if name in metrics]
    if monitor.rules:
        lines.append(f"top {top} rules per class:")
        lines += rules_lines(monitor.rules, key_names=key_names, class_names=class_names, top=top)
    lines.append(f"next: tensorboard --logdir {log_dir}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def example_main(
    doc: str, train: Callable[..., Run], *, epochs: int, argv: list[str] | None = None,
    key_names: KeyNames = None, class_names: KeyNames = None,
) -> Run:
    """``python -m examples.NAME [--epochs N]``: train with the monitor, then print the summary."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=epochs)
    run = train(max_epochs=parser.parse_args(argv).epochs)
    summarize(run.monitor, run.root_dir, key_names=key_names, class_names=class_names)
    return run
