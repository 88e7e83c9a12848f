"""Run by tests/integration/test_faults.py as `python tests/fault_worker.py MODE OUT_DIR`: 2 CPU processes, DDP (gloo).

Lightning's "ddp" strategy re-launches this script for rank 1. Each rank saves what it saw to
``OUT_DIR/MODE_rank{r}.pt``, also when the run raises (then the error is re-raised, so the exit status fails).

Modes:
    write_fails_then_stop: on rank 0, every write of rank-zero-only output (TensorBoard pictures, the rules file)
        fails with ENOSPC; the model's outputs turn NaN from epoch 1 on, with ``on_breach="stop"``.
    nan_raise: the model's outputs are NaN in eval mode, with ``on_breach="raise"``.
"""

import errno
import os
import warnings

import torch
from conftest import TinyCNN, loaders, trainer, worker_main
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.output import report as report_module


class NaNInEval(TinyCNN):
    """NaN outputs in eval mode (the monitor's checks) from epoch ``start`` on; training stays finite."""

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.start = start

    def forward(self, x):
        out = super().forward(x)
        return out if self.training or self.current_epoch < self.start else out * float("nan")


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def main(mode: str, out: str) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    kw = dict(strategy="ddp", devices=2, accelerator="cpu", num_sanity_val_steps=0, limit_train_batches=2,
              limit_val_batches=1)
    result = {}
    t = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if mode == "write_fails_then_stop":
                if os.environ.get("LOCAL_RANK", "0") == "0":  # rank-zero work fails on rank 0 only
                    SummaryWriter.add_histogram = enospc
                    report_module.open = enospc
                monitor = IntegratedGradientsMonitor(probe=5, n_steps=4, alarm=dict(on_breach="stop"))
                t = trainer(out, [monitor], max_epochs=5, logger=TensorBoardLogger(out, name="tb"), **kw)
                t.fit(NaNInEval(start=1), train, val)
            else:
                monitor = IntegratedGradientsMonitor(probe=5, n_steps=4, alarm=dict(on_breach="raise"))
                t = trainer(out, [monitor], max_epochs=4, **kw)
                t.fit(NaNInEval(), train, val)
        except Exception as error:
            result.update(error=type(error).__name__, message=str(error))
            raise
        finally:
            rank = t.global_rank if t is not None else -1
            result.update(epoch=None if t is None else t.current_epoch, checks=monitor.checks,
                          failures=[str(w.message) for w in caught if "could not write" in str(w.message)])
            torch.save(result, f"{out}/{mode}_rank{rank}.pt")


if __name__ == "__main__":
    worker_main(main)
