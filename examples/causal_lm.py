"""A causal language model, explained at the next token of each prompt, with left or right padding.

The monitor's ``output_transform`` sees only the model's output, not the attention mask, so the choice of
position lives in the model: :class:`NextTokenLM` wraps a ``GPT2LMHeadModel`` and its ``forward(input_ids,
attention_mask)`` returns the next-token logits ``(B, vocab)`` at each prompt's last real token, found from
the mask (so the same code serves both padding sides). GPT-2 numbers positions ``0..T-1`` whatever the
mask says, which shifts left-padded prompts: the wrapper passes ``position_ids`` counted from the mask.
The explained output is then the logit of the predicted next token (``target="prediction"``), attributed at
the token embeddings ``lm.transformer.wte``; the pad id (0, a valid id: GPT-2 has no pad token) is also the
baseline, so padding gets exactly zero attribution. Run ``python -m examples.causal_lm`` (a tiny random
GPT-2 built from a config, nothing downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from examples.common import RUNS, make_trainer, seed
from ig_lightning import IntegratedGradientsMonitor

PAD_ID = 0  # pad token and baseline: any valid id the prompts do not use
LAYER = "lm.transformer.wte"  # the token embeddings, in `NextTokenLM.named_modules()`
Batch = dict[str, torch.Tensor]


def tiny_config(**overrides) -> GPT2Config:
    """A 2-layer GPT-2 with a 50-token vocabulary."""
    return GPT2Config(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 50, "n_positions": 32, **overrides})


def last_real_position(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding.

    Example::

        >>> last_real_position(torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
        [2, 3, 3]
    """
    return attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (``0`` on left padding), as Hugging Face's ``generate`` does.

    Example::

        >>> position_ids(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])).tolist()
        [[0, 0, 0, 1], [0, 1, 2, 2]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class NextTokenLM(LightningModule):
    """A causal LM trained on its prompts; ``forward`` gives the next-token logits at the last real token.

    Args:
        config: The GPT-2 config (default: :func:`tiny_config`).
        lr: AdamW's learning rate.
    """

    def __init__(self, config: GPT2Config | None = None, lr: float = 3e-3) -> None:
        super().__init__()
        self.lm = GPT2LMHeadModel(config or tiny_config())
        self.lr = lr

    def all_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, T, vocab)`` logits of every position, with positions counted from the mask."""
        return self.lm(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask)).logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.all_logits(input_ids, attention_mask)
        return logits[torch.arange(len(logits), device=logits.device), last_real_position(attention_mask)]

    def loss(self, batch: Batch) -> torch.Tensor:
        mask = batch["attention_mask"]
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        return self.lm(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids(mask),
                       labels=labels).loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def prompts(n: int, seed: int = 0, min_len: int = 3, max_len: int = 8, vocab: int = 50) -> list[list[int]]:
    """``n`` prompts of token ids ``1..vocab-1`` that count up by a random step (a pattern to learn)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        size = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        start, step = (int(v) for v in torch.randint(1, vocab, (2,), generator=generator))
        out.append([1 + (start + i * (step % 5 + 1)) % (vocab - 1) for i in range(size)])
    return out


def pad(ids: Sequence[Sequence[int]], side: Literal["left", "right"] = "right", length: int | None = None
        ) -> list[Batch]:
    """Each prompt padded with :data:`PAD_ID` to ``length`` (default: the longest) on ``side``, with its mask.

    Example::

        >>> [row["input_ids"].tolist() for row in pad([[5, 6], [7]], side="left")]
        [[5, 6], [0, 7]]
    """
    length = max(map(len, ids)) if length is None else length
    rows = []
    for row in ids:
        padding, real = [PAD_ID] * (length - len(row)), [1] * len(row)
        tokens, mask = ([*row, *padding], [*real, *[0] * len(padding)]) if side == "right" else (
            [*padding, *row], [*[0] * len(padding), *real])
        rows.append({"input_ids": torch.tensor(tokens), "attention_mask": torch.tensor(mask)})
    return rows


def train(max_epochs: int = 3, side: Literal["left", "right"] = "left", root: str | Path = RUNS,
          verbose: bool = True) -> tuple[NextTokenLM, IntegratedGradientsMonitor]:
    """Fit the tiny GPT-2 on counting prompts padded on ``side``, explaining the next token of 8 of them."""
    seed(0)
    model = NextTokenLM()
    train_set, val_set = pad(prompts(512, seed=0), side, 10), pad(prompts(64, seed=1), side, 10)
    monitor = IntegratedGradientsMonitor(probe=8, layer=LAYER, target="prediction", baseline=PAD_ID,
                                         max_overhead=None)  # a run of seconds: check every epoch
    trainer = make_trainer("causal_lm", [monitor], max_epochs=max_epochs, root=root, verbose=verbose)
    trainer.fit(model, DataLoader(train_set, batch_size=32, shuffle=True), DataLoader(val_set, batch_size=32))
    return model, monitor


def main(argv: list[str] | None = None) -> tuple[NextTokenLM, IntegratedGradientsMonitor]:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--side", choices=("left", "right"), default="left")
    args = parser.parse_args(argv)
    model, monitor = train(args.epochs, args.side)
    print(f"ig/completeness_error {monitor.last_metrics.get('ig/completeness_error', float('nan')):.4f}; "
          f"logs under {Path(RUNS) / 'causal_lm'}: tensorboard --logdir {Path(RUNS) / 'causal_lm'}")
    return model, monitor


if __name__ == "__main__":
    main()
