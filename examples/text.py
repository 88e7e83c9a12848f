"""Rule extraction, as in the IG paper's question classification: which words make a question a class?

Generated questions are labelled by a trigger phrase ("how many" -> number, "who" -> person, "where"
-> place, "when" -> time) among filler words that every class shares. A bag-of-embeddings classifier
is attributed at its ``nn.Embedding`` (``layer="embedding"``), and the monitor's per-class rules name
the trigger words. Run ``python -m examples.text``, then ``tensorboard --logdir runs/text`` (TEXT tab).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from examples.common import RUNS, Classifier, Run, Split, SplitDataModule, example_main, fit, monitor_with, seed
from ig_lightning import Display, Faithfulness, IntegratedGradientsMonitor, RuleExtraction

PAD = "<pad>"
TRIGGERS: dict[str, tuple[str, ...]] = {
    "number": ("how", "many"),
    "person": ("who",),
    "place": ("where",),
    "time": ("when",),
}
FILLERS = (
    "the", "a", "is", "was", "did", "does", "of", "in", "on", "to", "first", "city", "river", "king",
    "film", "war", "team", "people", "live", "born", "win", "build", "old", "big", "there", "this",
)
CLASS_NAMES = list(TRIGGERS)
VOCABULARY = [PAD, *dict.fromkeys(word for phrase in TRIGGERS.values() for word in phrase), *FILLERS]
TOKEN_IDS = {word: i for i, word in enumerate(VOCABULARY)}


def token_name(token_id: int) -> str:
    """The word of a token id (the monitor's ``vocabulary`` as a callable, e.g. from a YAML config)."""
    return VOCABULARY[token_id] if 0 <= token_id < len(VOCABULARY) else f"<{token_id}>"


def make_question(label: int, generator: torch.Generator, max_len: int) -> list[int]:
    """Token ids of one question: the class's trigger phrase at a random place among 2-6 fillers, padded."""
    n_fillers = int(torch.randint(2, 7, (1,), generator=generator))
    fillers = torch.randint(len(FILLERS), (n_fillers,), generator=generator).tolist()
    words = [FILLERS[i] for i in fillers]
    at = int(torch.randint(n_fillers + 1, (1,), generator=generator))
    words[at:at] = TRIGGERS[CLASS_NAMES[label]]
    ids = [TOKEN_IDS[w] for w in words]
    return ids + [TOKEN_IDS[PAD]] * (max_len - len(ids))


def questions(n: int, seed: int = 0, max_len: int = 10) -> Split:
    """``n`` generated questions as ``(n, max_len)`` token ids, with their class (balanced, shuffled)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(CLASS_NAMES), (n,), generator=generator)
    ids = [make_question(int(label), generator, max_len) for label in labels]
    return torch.tensor(ids, dtype=torch.long), labels


class QuestionsDataModule(SplitDataModule):
    """Generated questions, split 80/20.

    Args:
        n: Number of questions.
        max_len: Tokens per question, padding included.
        batch_size: Examples per batch.
        val_fraction: Share of the examples held out for validation.
        seed: Seed of the generator and of the split.
    """

    def __init__(self, n: int = 2000, max_len: int = 10, batch_size: int = 64, val_fraction: float = 0.2,
                 seed: int = 0) -> None:
        super().__init__(batch_size, val_fraction, seed)
        self.n, self.max_len = n, max_len

    def load(self) -> Split:
        return questions(self.n, self.seed, self.max_len)


class QuestionClassifier(Classifier):
    """Embeddings averaged over the positions (padding embeds to zero), then a small MLP.

    Args:
        vocab_size: Number of token ids.
        embedding_dim: Size of a token's embedding.
        hidden: Width of the MLP's hidden layer.
        n_classes: Number of classes.
        lr: Adam's learning rate.
    """

    def __init__(self, vocab_size: int = len(VOCABULARY), embedding_dim: int = 16, hidden: int = 32,
                 n_classes: int = len(CLASS_NAMES), lr: float = 1e-2) -> None:
        super().__init__(lr)
        self.save_hyperparameters()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(token_ids).mean(1))


def make_monitor(**overrides: Any) -> IntegratedGradientsMonitor:
    """IG at the embedding layer (baseline: all ``<pad>``), rules named by word."""
    settings: dict[str, Any] = dict(
        probe=64,  # enough questions of every class for the rules
        layer="embedding",  # token ids are not differentiable: attribute at the embeddings
        display=Display(vocabulary=VOCABULARY, class_names=CLASS_NAMES),
        rule_extraction=RuleExtraction(top_k=5),
        faithfulness=Faithfulness(top_k=5),
    )
    return monitor_with(settings, overrides)


def train(max_epochs: int = 5, root: str | Path = RUNS, verbose: bool = True, n: int = 2000,
          **trainer_kwargs: Any) -> Run:
    """Train the question classifier on ``n`` questions with the monitor; logs go to ``root/text``."""
    seed(0)
    return fit("text", QuestionClassifier(), QuestionsDataModule(n=n), make_monitor(), max_epochs=max_epochs,
               root=root, verbose=verbose, **trainer_kwargs)


def rule_words(monitor: IntegratedGradientsMonitor, top: int = 3) -> dict[str, list[str]]:
    """The words of each class's first ``top`` rules (an n-gram gives its words in order), by class name."""
    return {CLASS_NAMES[c]: [token_name(k) for r in rules[:top] for k in r.keys] for c, rules in monitor.rules.items()}


def main(argv: list[str] | None = None) -> Run:
    """``python -m examples.text [--epochs N]``."""
    return example_main(__doc__, train, epochs=5, argv=argv, key_names=token_name, class_names=CLASS_NAMES)


if __name__ == "__main__":
    main()
