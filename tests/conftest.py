"""Small models and data shared by the callback tests (and the DDP worker script)."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("PL_DISABLE_FORK", "1")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


class TinyCNN(pl.LightningModule):
    """Conv + BatchNorm + Dropout: every way a careless callback could change training."""

    def __init__(self, classes: int = 4, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
            nn.Dropout(0.3), nn.Linear(6 * 8 * 8, classes),
        ).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


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


def worker_main(main) -> None:
    """``main(mode, out_dir)`` of a DDP worker script, from its command line, ending the process group after it.

    Lightning leaves the process group alive; tearing gloo down at interpreter exit can abort ("terminate
    called without an active exception"), so it is ended here.
    """
    import sys

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
