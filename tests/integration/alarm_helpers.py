"""A run whose model changes its reasons at a chosen epoch, for the alarm tests (and their DDP worker)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared fixtures module, tests/conftest.py
from conftest import TinyCNN, loaders, trainer  # noqa: E402


class Quiet(TinyCNN):
    """TinyCNN with a small learning rate: attributions move a little, steadily, from check to check."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.005)


class ChangeOfReasons(pl.Callback):
    """At the start of epoch ``epoch``, the classifier's rows are permuted: every class is now read off the
    evidence of another class, a sudden change of the model's reasons."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            linear = pl_module.net[-1]
            with torch.no_grad():
                order = torch.tensor([1, 2, 3, 0])
                linear.weight.copy_(linear.weight[order])
                linear.bias.copy_(linear.bias[order])


class Recorder(pl.Callback):
    """The monitor's metrics after every check (place it after the monitor)."""

    def __init__(self, monitor: pl.Callback) -> None:
        self.monitor, self.metrics = monitor, []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.metrics.append(dict(self.monitor.last_metrics))


def fit_with_change(root, monitor, *, epochs: int, change_at: int | None, extra=(), ckpt_path=None, **kw):
    torch.manual_seed(0)
    model = Quiet()
    train, val = loaders()
    recorder = Recorder(monitor)
    callbacks = [monitor, recorder, *extra] + ([ChangeOfReasons(change_at)] if change_at is not None else [])
    t = trainer(root, callbacks, max_epochs=epochs, num_sanity_val_steps=0, **kw)
    t.fit(model, train, val, ckpt_path=ckpt_path)
    return t, recorder
