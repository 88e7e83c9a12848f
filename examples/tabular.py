"""Tabular data: an MLP on scikit-learn's breast cancer table, with each class's most telling features.

Features are standardised with the training split's statistics, so the monitor's default baseline
(all zeros) is the "average patient" and an attribution says how far a feature's deviation from the
average moves the logit. Run ``python -m examples.tabular``, then ``tensorboard --logdir runs/tabular``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from examples.common import RUNS, Classifier, Run, Split, SplitDataModule, example_main, fit, monitor_with, seed
from ig_lightning import Alarm, Display, Faithfulness, IntegratedGradientsMonitor, RuleExtraction

_DATASET = load_breast_cancer()
FEATURE_NAMES: list[str] = [str(name) for name in _DATASET.feature_names]
CLASS_NAMES: list[str] = [str(name) for name in _DATASET.target_names]


def standardise(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both splits scaled to zero mean and unit variance with the training split's statistics."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return (train - mean) / std, (val - mean) / std


class BreastCancerDataModule(SplitDataModule):
    """``load_breast_cancer`` (569 examples, 30 features), split 80/20 and standardised."""

    def load(self) -> Split:
        return (torch.tensor(_DATASET.data, dtype=torch.float32),
                torch.tensor(_DATASET.target, dtype=torch.long))

    def transform(self, train: Split, val: Split) -> tuple[Split, Split]:
        train_x, val_x = standardise(train[0], val[0])
        return (train_x, train[1]), (val_x, val[1])


class TabularMLP(Classifier):
    """A two-layer perceptron.

    Args:
        n_features: Input features.
        hidden: Width of the hidden layer.
        n_classes: Number of classes.
        lr: Adam's learning rate.
    """

    def __init__(self, n_features: int = len(FEATURE_NAMES), hidden: int = 32, n_classes: int = len(CLASS_NAMES),
                 lr: float = 1e-2) -> None:
        super().__init__(lr)
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_monitor(**overrides: Any) -> IntegratedGradientsMonitor:
    """The monitor with the table's feature and class names (rules are flat feature indices)."""
    settings: dict[str, Any] = dict(
        probe=32,
        display=Display(feature_names=FEATURE_NAMES, class_names=CLASS_NAMES),
        rule_extraction=RuleExtraction(top_k=5),
        faithfulness=Faithfulness(top_k=5),
        alarm=Alarm(metric="topk_jaccard", top_k=5),  # does the set of the top-5 features change?
    )
    return monitor_with(settings, overrides)


def train(max_epochs: int = 10, root: str | Path = RUNS, verbose: bool = True, **trainer_kwargs: Any) -> Run:
    """Train the MLP with the monitor; logs go to ``root/tabular``."""
    seed(0)
    return fit("tabular", TabularMLP(), BreastCancerDataModule(batch_size=32), make_monitor(),
               max_epochs=max_epochs, root=root, verbose=verbose, **trainer_kwargs)


def main(argv: list[str] | None = None) -> Run:
    """``python -m examples.tabular [--epochs N]``."""
    return example_main(__doc__, train, epochs=10, argv=argv, key_names=FEATURE_NAMES, class_names=CLASS_NAMES)


if __name__ == "__main__":
    main()
