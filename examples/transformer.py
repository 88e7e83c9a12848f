"""A Hugging Face transformer, explained with nothing but ``IntegratedGradientsMonitor(layer=...)``.

The questions of ``examples/text.py`` ("how many" -> number, "who" -> person, "where" -> place, "when"
-> time, among shared filler words), tokenized by a tiny word-level tokenizer into ``[CLS] ... [SEP]``
and padded per batch with ``[PAD]``, train a tiny randomly initialised ``BertForSequenceClassification``
(no download). Batches are Hugging Face dicts (``input_ids``, ``attention_mask``, ``labels``); the monitor
calls the model with the probe's ``input_ids`` and ``attention_mask``, attributes at the word embeddings
and names the trigger words in each class's rules. Run ``python -m examples.transformer``, then
``tensorboard --logdir runs/transformer`` (TEXT and IMAGES tabs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from examples.common import RUNS, Classifier, Run, Split, SplitDataModule, example_main, fit, monitor_with, seed
from examples.text import CLASS_NAMES, FILLERS, TRIGGERS
from ig_lightning import Display, IntegratedGradientsMonitor

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
WORDS = [*dict.fromkeys(word for phrase in TRIGGERS.values() for word in phrase), *FILLERS]
LAYER = "model.bert.embeddings.word_embeddings"  # the name of the word embeddings in `named_modules()`
Batch = dict[str, torch.Tensor]


class WordTokenizer:
    """A word-level tokenizer with the parts of a Hugging Face tokenizer that these examples use.

    Example::

        >>> tokenizer = WordTokenizer(["who", "is"])
        >>> batch = tokenizer([["who", "is"], ["who"]])
        >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
        ([[1, 4, 5, 2], [1, 4, 2, 0]], [[1, 1, 1, 1], [1, 1, 1, 0]])
        >>> tokenizer.convert_ids_to_tokens([1, 4, 2, 0])
        ['[CLS]', 'who', '[SEP]', '[PAD]']

    Args:
        words: The vocabulary after the special tokens ``[PAD]`` (id 0), ``[CLS]``, ``[SEP]``, ``[UNK]``.
    """

    def __init__(self, words: Iterable[str]) -> None:
        self.vocab = {token: i for i, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
        self.ids_to_tokens = list(self.vocab)
        self.pad_token_id, self.cls_token_id, self.sep_token_id, self.unk_token_id = range(4)
        self.all_special_ids = list(range(len(SPECIAL_TOKENS)))  # as a Hugging Face tokenizer has them

    def __len__(self) -> int:
        return len(self.vocab)

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(token, self.unk_token_id) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | torch.Tensor) -> str | list[str]:
        """A token id's word, or the words of a list of ids (as Hugging Face tokenizers do)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if isinstance(ids, int):
            return self.ids_to_tokens[ids] if 0 <= ids < len(self.ids_to_tokens) else "[UNK]"
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    def encode(self, words: Sequence[str]) -> list[int]:
        """``[CLS] words [SEP]`` as ids."""
        return [self.cls_token_id, *self.convert_tokens_to_ids(words), self.sep_token_id]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> Batch:
        """``input_ids`` padded with ``[PAD]`` to ``length`` (default: the longest) and their ``attention_mask``."""
        length = max(map(len, ids)) if length is None else length
        input_ids = torch.tensor([[*row, *[self.pad_token_id] * (length - len(row))] for row in ids])
        return {"input_ids": input_ids, "attention_mask": (input_ids != self.pad_token_id).long()}

    def __call__(self, questions: Sequence[Sequence[str]]) -> Batch:
        return self.pad([self.encode(words) for words in questions])


TOKENIZER = WordTokenizer(WORDS)


def make_question(label: int, generator: torch.Generator) -> list[str]:
    """The words of one question: the class's trigger phrase at a random place among 2-6 fillers."""
    n_fillers = int(torch.randint(2, 7, (1,), generator=generator))
    words = [FILLERS[i] for i in torch.randint(len(FILLERS), (n_fillers,), generator=generator).tolist()]
    at = int(torch.randint(n_fillers + 1, (1,), generator=generator))
    words[at:at] = TRIGGERS[CLASS_NAMES[label]]
    return words


def questions(n: int, seed: int = 0, max_len: int = 12) -> Split:
    """``n`` tokenized questions as ``(n, max_len)`` ids padded with ``[PAD]``, with their class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(CLASS_NAMES), (n,), generator=generator)
    ids = [TOKENIZER.encode(make_question(int(label), generator)) for label in labels]
    return TOKENIZER.pad(ids, max_len)["input_ids"], labels


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
    """A Hugging Face batch: ``input_ids`` cut to the batch's longest question, ``attention_mask``, ``labels``."""
    ids, labels = torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])
    length = int((ids != TOKENIZER.pad_token_id).sum(1).max())
    return {**TOKENIZER.pad(ids[:, :length].tolist()), "labels": labels}


class QuestionsDataModule(SplitDataModule):
    """Generated questions, split 80/20, batched as Hugging Face dicts padded per batch.

    Args:
        n: Number of questions.
        batch_size: Examples per batch.
        val_fraction: Share of the examples held out for validation.
        seed: Seed of the generator and of the split.
    """

    def __init__(self, n: int = 2000, batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__(batch_size, val_fraction, seed)
        self.n = n

    def load(self) -> Split:
        return questions(self.n, self.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=collate)


def tiny_bert(vocab_size: int = len(TOKENIZER), n_classes: int = len(CLASS_NAMES)) -> BertForSequenceClassification:
    """A randomly initialised two-layer BERT (hidden size 32): built from a config, nothing downloaded."""
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=n_classes, pad_token_id=TOKENIZER.pad_token_id,
    )
    return BertForSequenceClassification(config)


class BertQuestionClassifier(Classifier):
    """``BertForSequenceClassification`` in Lightning: dict batches in, the Hugging Face output out.

    Args:
        lr: Adam's learning rate.
    """

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__(lr)
        self.save_hyperparameters()
        self.model = tiny_bert()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SequenceClassifierOutput:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = self(**inputs).logits
        loss = F.cross_entropy(logits, batch["labels"])
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=len(logits))
        self.log(f"{stage}/acc", (logits.argmax(-1) == batch["labels"]).float().mean(), prog_bar=True,
                 batch_size=len(logits))
        return loss


def make_monitor(**overrides: Any) -> IntegratedGradientsMonitor:
    """IG at the word embeddings (baseline: all ``[PAD]``), tokens named by the tokenizer; all else default."""
    settings: dict[str, Any] = dict(layer=LAYER, display=Display(vocabulary=TOKENIZER, class_names=CLASS_NAMES))
    return monitor_with(settings, overrides)


def train(max_epochs: int = 6, root: str | Path = RUNS, verbose: bool = True, n: int = 2000,
          monitor: IntegratedGradientsMonitor | None = None, **trainer_kwargs: Any) -> Run:
    """Fine-tune the tiny BERT on ``n`` questions with the monitor; logs go to ``root/transformer``."""
    seed(0)
    return fit("transformer", BertQuestionClassifier(), QuestionsDataModule(n=n), monitor or make_monitor(),
               max_epochs=max_epochs, root=root, verbose=verbose, **trainer_kwargs)


def rule_words(monitor: IntegratedGradientsMonitor, top: int = 3) -> dict[str, list[str]]:
    """The words of each class's first ``top`` rules (an n-gram gives its words in order), by class name."""
    return {CLASS_NAMES[c]: TOKENIZER.convert_ids_to_tokens([k for r in rules[:top] for k in r.keys])
            for c, rules in monitor.rules.items()}


def main(argv: list[str] | None = None) -> Run:
    """``python -m examples.transformer [--epochs N]``."""
    return example_main(__doc__, train, epochs=6, argv=argv, key_names=TOKENIZER.convert_ids_to_tokens,
                        class_names=CLASS_NAMES)


if __name__ == "__main__":
    main()
