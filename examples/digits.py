"""The demo: a small CNN on scikit-learn's 8x8 digits, watched by Integrated Gradients every epoch.

Run ``python -m examples.digits`` (or ``make demo``), then ``tensorboard --logdir runs/digits``: the
IMAGES tab shows each probe digit with its signed attribution map, SCALARS the completeness error
(how exactly the attributions add up to the logit) and the drift of the attributions between epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

from examples.common import RUNS, Classifier, Run, Split, SplitDataModule, example_main, fit, monitor_with, seed
from ig_lightning import Alarm, Display, Faithfulness, IntegratedGradientsMonitor, RuleExtraction

SIDE = 8
CLASS_NAMES = [str(d) for d in range(10)]


def digits_tensors() -> Split:
    """All 1797 digits as ``(N, 1, 8, 8)`` float32 in ``[0, 1]`` and their labels."""
    images, labels = load_digits(return_X_y=True)
    inputs = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, SIDE, SIDE) / 16.0
    return inputs, torch.tensor(labels, dtype=torch.long)


def pixel_name(index: int) -> str:
    """A flat pixel index of an 8x8 image as ``"(row, col)"``: the rule keys of images."""
    return f"({index // SIDE},{index % SIDE})"


class DigitsDataModule(SplitDataModule):
    """``load_digits`` with a fixed train/validation split (20% held out)."""

    def load(self) -> Split:
        return digits_tensors()


class DigitsCNN(Classifier):
    """Two 3x3 convolutions, a 2x2 max-pool and a linear layer: about 99% validation accuracy.

    Args:
        channels: Channels of the first convolution (the second has twice as many).
        lr: Adam's learning rate.
    """

    def __init__(self, channels: int = 16, lr: float = 1e-2) -> None:
        super().__init__(lr)
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * channels * (SIDE // 2) ** 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_monitor(**overrides: Any) -> IntegratedGradientsMonitor:
    """The monitor as a user would set it for this model; ``overrides`` change any argument."""
    settings: dict[str, Any] = dict(
        probe=16,  # 16 validation digits spread over the classes, fixed for the whole run
        # Warn when attributions turn far more than this run's own usual drift, or stop adding up (the paper's 5%).
        alarm=Alarm(threshold="auto", completeness_threshold=0.05),
        rule_extraction=RuleExtraction(top_k=5),
        faithfulness=Faithfulness(top_k=5),
        display=Display(class_names=CLASS_NAMES),
    )
    return monitor_with(settings, overrides)


def train(max_epochs: int = 10, root: str | Path = RUNS, verbose: bool = True, name: str = "digits",
          monitor: dict[str, Any] | None = None, **trainer_kwargs: Any) -> Run:
    """Train the CNN with the monitor (``monitor``: argument overrides); logs go to ``root/<name>``."""
    seed(0)
    return fit(name, DigitsCNN(), DigitsDataModule(), make_monitor(**(monitor or {})), max_epochs=max_epochs,
               root=root, verbose=verbose, **trainer_kwargs)


def main(argv: list[str] | None = None) -> Run:
    """``python -m examples.digits [--epochs N]``."""
    return example_main(__doc__, train, epochs=10, argv=argv, key_names=pixel_name, class_names=CLASS_NAMES)


if __name__ == "__main__":
    main()
