"""The one fixtures module: small models, data and trainer helpers shared by every test folder and the worker
scripts (``ddp_worker.py``, ``fault_worker.py``).

- :class:`TinyCNN`, :func:`make_data`, :func:`loaders`, :func:`trainer`, :func:`fit_cnn`: the callback tests' model;
- :class:`TokenModel`, :func:`token_data`, :func:`token_loaders`: a Hugging Face-shaped model;
- :class:`Net`, :func:`dataset`, :func:`data_loaders`, :func:`make_trainer`, :func:`fit_net`, poisons and
  :class:`Snapshots`: the fault suite's models of three kinds.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("PL_DISABLE_FORK", "1")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


class Classifier(pl.LightningModule):
    """Cross-entropy training and validation with SGD (momentum 0.9) at ``lr``: the models below add a forward."""

    lr = 0.05

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TinyCNN(Classifier):
    """Conv + BatchNorm + Dropout: every way a careless callback could change training."""

    def __init__(self, classes: int = 4, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
            nn.Dropout(0.3), nn.Linear(6 * 8 * 8, classes),
        ).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)



def make_data(n: int = 96, classes: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Images whose class is where a bright blob sits, plus noise: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=dtype) * 0.3
    for c in range(classes):
        r, col = divmod(c, 2)
        x[y == c, 0, r * 4:r * 4 + 4, col * 4:col * 4 + 4] += 1.0
    return TensorDataset(x, y)


def loaders(batch_size: int = 16, **kw):
    data = make_data(**kw)
    return DataLoader(data, batch_size=batch_size, shuffle=True), DataLoader(data, batch_size=batch_size)


def trainer(tmp_path, callbacks=(), **kw) -> pl.Trainer:
    args = dict(max_epochs=2, enable_progress_bar=False, enable_model_summary=False, logger=False,
                enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    args.update(kw)
    return pl.Trainer(callbacks=list(callbacks), **args)


def fit_cnn(tmp_path, monitor=None, seed=0, max_epochs=2, callbacks=(), **kw):
    """Fit a fresh seeded :class:`TinyCNN` on :func:`loaders` (with Lightning's sanity check)."""
    torch.manual_seed(seed)
    model = TinyCNN()
    train, val = loaders()
    t = trainer(tmp_path, ([monitor] if monitor else []) + list(callbacks), max_epochs=max_epochs, **kw)
    t.fit(model, train, val)
    return t, model


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TokenModel(pl.LightningModule):
    """A Hugging Face-shaped model without Hugging Face: keyword inputs, a padding mask, a dict output."""

    def __init__(self, vocab: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, classes))
        self.masks_seen: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask):
        self.masks_seen.append(attention_mask.detach().cpu())
        emb = self.embedding(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        return {"logits": self.head(emb.sum(1) / attention_mask.sum(1, keepdim=True).clamp_min(1))}

    def training_step(self, batch, batch_idx):
        out = self(batch["input_ids"], batch["attention_mask"])
        return nn.functional.cross_entropy(out["logits"], batch["labels"])

    def validation_step(self, batch, batch_idx):
        out = self(batch["input_ids"], batch["attention_mask"])
        self.log("val_loss", nn.functional.cross_entropy(out["logits"], batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def token_data(n: int = 48, length: int = 7, vocab: int = 12, classes: int = 3, seed: int = 0) -> list[dict]:
    """Dict examples whose class is the token at a random position (ids 1..classes), padded with id 0."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        label = i % classes
        size = int(torch.randint(3, length + 1, (1,), generator=g))
        ids = torch.randint(classes + 1, vocab, (length,), generator=g)
        ids[int(torch.randint(0, size, (1,), generator=g))] = label + 1
        mask = (torch.arange(length) < size).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor(label)})
    return out


def token_loaders(batch_size: int = 8, **kw):
    data = token_data(**kw)
    return DataLoader(data, batch_size=batch_size, shuffle=True), DataLoader(data, batch_size=batch_size)


def monitor_defaults() -> dict:
    """``IntegratedGradientsMonitor``'s keyword defaults, where tests set ``max_overhead`` to ``None``.

    The real default, a budget of 5% of the run's wall time, spaces checks by the clock: a test's tiny run would
    check once, and which later epochs it checks would depend on the machine's speed. So tests check at every epoch
    unless they pass ``max_overhead`` (the autouse fixture below; the worker scripts through :func:`worker_main`);
    a test marked ``budget_default`` keeps the real default.
    """
    from ig_lightning import IntegratedGradientsMonitor

    return IntegratedGradientsMonitor.__init__.__kwdefaults__


@pytest.fixture(autouse=True)
def _checks_at_every_epoch(request, monkeypatch) -> None:
    if request.node.get_closest_marker("budget_default") is None:
        monkeypatch.setitem(monitor_defaults(), "max_overhead", None)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "budget_default: the monitor keeps its real default max_overhead=0.05")


def worker_main(main) -> None:
    """``main(mode, out_dir)`` of a DDP worker script, from its command line, ending the process group after it.
    Monitors check at every epoch by default, as in the tests (:func:`monitor_defaults`).

    Lightning leaves the process group alive; tearing gloo down at interpreter exit can abort ("terminate
    called without an active exception"), so it is ended here.
    """
    import sys

    monitor_defaults()["max_overhead"] = None
    try:
        main(sys.argv[1], sys.argv[2])
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run many small ops: one thread is faster and steadier on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the fault suite's models, data and helpers ----------------------------------------------------------

NAN = float("nan")


class Net(Classifier):
    """A tiny model of one kind ("image", "tabular", "text") that counts its training steps.

    ``poison(module, x, out) -> out`` is applied to the outputs in eval mode only (the monitor's checks and
    validation), so training itself stays finite and comparable.
    """

    def __init__(self, kind: str = "image", classes: int = 4) -> None:
        super().__init__()
        self.kind = kind
        if kind == "image":
            self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                                     nn.Dropout(0.2), nn.Linear(3 * 8 * 8, classes))
        elif kind == "tabular":
            self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, classes))
        else:
            self.embedding = nn.Embedding(10, 4)
            self.head = nn.Linear(4, classes)
        self.steps = 0
        self.poison = None
        self.on_first_step = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.embedding(x).mean(1)) if self.kind == "text" else self.net(x)
        if self.poison is not None and not self.training:
            out = self.poison(self, x, out)
        return out

    def training_step(self, batch, batch_idx):
        if self.steps == 0 and self.on_first_step is not None:
            self.on_first_step()
        self.steps += 1
        return super().training_step(batch, batch_idx)


def dataset(kind: str = "image", n: int = 32, classes: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    if kind == "image":
        return make_data(n, classes)
    if kind == "tabular":
        x = torch.randn(n, 5, generator=g) + 0.5  # feature 0 is never exactly 0
        return TensorDataset(x, (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long())
    ids = torch.randint(1, 9, (n, 6), generator=g)  # token 9 is kept as a marker, 0 as the baseline
    return TensorDataset(ids, (ids[:, 0] > 4).long())


def data_loaders(kind: str = "image", n: int = 32, batch_size: int = 8, val=None, classes: int = 4):
    data = dataset(kind, n, classes)
    return (DataLoader(data, batch_size=batch_size, shuffle=True),
            DataLoader(data if val is None else val, batch_size=batch_size))


def make_trainer(tmp_path, callbacks=(), **kw) -> pl.Trainer:
    """:func:`trainer` without Lightning's sanity check (the fault suite counts every check)."""
    return trainer(tmp_path, callbacks, **{"num_sanity_val_steps": 0, **kw})


def fit_net(tmp_path, monitor=None, kind="image", model=None, val=None, callbacks=(), before=(), seed=0, batch_size=8,
        ckpt_path=None, **kw):
    """Fit a fresh seeded ``Net(kind)`` (or ``model``, seeded by the caller); ``before`` run ahead of the monitor."""
    torch.manual_seed(seed)
    model = Net(kind) if model is None else model
    train, val_loader = data_loaders(kind, batch_size=batch_size, val=val)
    t = make_trainer(tmp_path, [*before, *([monitor] if monitor is not None else []), *callbacks], **kw)
    t.fit(model, train, val_loader, ckpt_path=ckpt_path)
    return t, model


@contextmanager
def caught_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def monitor_messages(caught) -> list[str]:
    return [str(w.message) for w in caught if "IntegratedGradientsMonitor" in str(w.message)]


def write_failures(caught) -> list[str]:
    return [m for m in monitor_messages(caught) if "could not write" in m]


class Snapshots(Callback):
    """Placed after the monitor: copies its state at the end of every check."""

    def __init__(self, monitor) -> None:
        self.monitor, self.metrics, self.first, self.previous, self.scales = monitor, [], [], [], []

    def on_validation_epoch_end(self, trainer, pl_module):
        from ig_lightning.monitor.stages import Drift, Pictures

        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        self.metrics.append(dict(self.monitor.last_metrics))
        self.first.append(clone(self.monitor.stage(Drift).references.first))
        self.previous.append(clone(self.monitor.stage(Drift).references.previous))
        self.scales.append(clone(self.monitor.stage(Pictures).scales.scales))


def nan_all(module, x, out):
    return out * NAN


def inf_all(module, x, out):
    return out + math.inf


def marked(x: torch.Tensor) -> torch.Tensor:
    """The marked examples: token 9 somewhere (text), or a first feature above 500."""
    return (x == 9).any(1) if not x.is_floating_point() else x.flatten(1)[:, 0] > 500


def nan_marked(module, x, out):
    return torch.where(marked(x)[:, None], NAN, out)


def nan_gradient_all(module, x, out):
    # sqrt(0 * x) is 0 (finite), but its gradient is 0 * inf = NaN: finite outputs, non-finite gradients.
    return out + torch.sqrt(x.flatten(1)[:, :1] * 0.0)


def nan_gradient_at_zero(module, x, out):
    # |x0| written as sqrt(x0^2): finite everywhere, gradient 0/0 = NaN where x0 == 0 (every path point then).
    return out + torch.sqrt(x.flatten(1)[:, :1] ** 2)


def nan_at_first_epoch(module, x, out):
    return out * NAN if module.current_epoch == 0 else out


def nan_marked_at_first_epoch(module, x, out):
    return nan_marked(module, x, out) if module.current_epoch == 0 else out


def probe_with_marker(kind: str, n: int = 4, at: int = 1):
    x, y = dataset(kind)[:n]
    x = x.clone()
    if kind == "text":
        x[at, 2] = 9
    else:
        x.view(n, -1)[at, 0] = 1000.0
    return x, y
