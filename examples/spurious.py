"""Debugging with attributions: catch a model that reads a planted cue instead of the digit.

The digits get a bright 2x2 mark in the top-left corner. In the "cue" data the mark sits on exactly
the even digits, in training and validation alike (a leak, like a watermark from one source), so the
validation accuracy looks excellent. The monitor watches ``region=`` the corner: its probe is 16
validation digits *all* carrying the mark, and ``ig/region_mass`` is the share of the attribution that
falls in those 4 of 64 pixels. The cue model puts far more than its share there, the monitor breaches
``region_threshold`` and stops the run (``on_breach="stop"``).

For contrast the "clean" data carries the same mark on a random half of the digits, whatever their
label: the mark tells nothing, the model learns to give it about its fair share (4/64) and trains on.
(A model that never saw the mark at all reacts to it as to anything unfamiliar, which blurs the contrast.)

Run ``python -m examples.spurious`` (both models) or ``--mode cue``/``--mode clean``, then
``tensorboard --logdir runs/spurious``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from examples.common import RUNS, Run, Split, fit, monitor_with, seed
from examples.digits import CLASS_NAMES, DigitsCNN, DigitsDataModule
from ig_lightning import Alarm, Display, IntegratedGradientsMonitor

MARK = 2  # side of the square mark, in pixels
CUE_CLASSES = (0, 2, 4, 6, 8)
CUE_REGION = torch.zeros(1, 8, 8, dtype=torch.bool)
CUE_REGION[:, :MARK, :MARK] = True
REGION_THRESHOLD = 0.2  # the mark is 6% of the pixels: a third of that is a clear sign of reading it
MODES = ("cue", "clean")


def stamp(inputs: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """A copy of ``(N, 1, 8, 8)`` ``inputs`` with the mark (full brightness) on the examples ``where`` is True."""
    marked = inputs.clone()
    marked[where] = marked[where].masked_fill(CUE_REGION, 1.0)
    return marked


def carries_mark(labels: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Which examples get the mark: the cue classes (``"cue"``) or a random half (``"clean"``)."""
    if mode == "cue":
        return torch.isin(labels, torch.tensor(CUE_CLASSES))
    if mode == "clean":
        return torch.rand(len(labels), generator=generator) < 0.5
    raise ValueError(f"`mode` can be {MODES}, got {mode!r}")


class SpuriousDigitsDataModule(DigitsDataModule):
    """Digits with the corner mark planted in both splits.

    Args:
        mode: ``"cue"``: the mark is on exactly the digits of ``CUE_CLASSES``; ``"clean"``: on a random half.
        batch_size: Examples per batch.
        val_fraction: Share of the examples held out for validation.
        seed: Seed of the split and of the random marks.
    """

    def __init__(self, mode: str = "cue", batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__(batch_size, val_fraction, seed)
        if mode not in MODES:
            raise ValueError(f"`mode` can be {MODES}, got {mode!r}")
        self.mode = mode

    def transform(self, train: Split, val: Split) -> tuple[Split, Split]:
        generator = torch.Generator().manual_seed(self.seed + 1)
        return tuple((stamp(x, carries_mark(y, self.mode, generator)), y) for x, y in (train, val))


def marked_probe(datamodule: SpuriousDigitsDataModule, n: int = 16) -> Split:
    """The first ``n`` validation digits, every one with the mark: does the mark move the model's output?"""
    datamodule.setup("fit")
    inputs, labels = datamodule.val_set.tensors
    return stamp(inputs[:n], torch.ones(n, dtype=torch.bool)), labels[:n]


def make_monitor(probe: Split, **overrides: Any) -> IntegratedGradientsMonitor:
    """Watch the corner: stop the run as soon as it holds more than ``REGION_THRESHOLD`` of the attribution."""
    settings: dict[str, Any] = dict(
        probe=probe,
        # The mark is white, the data's largest value: from black and white (baseline="auto") its white path would
        # give it no attribution at all. From black, every bit of the mark is attributed.
        baseline=None,
        alarm=Alarm(region=CUE_REGION, region_threshold=REGION_THRESHOLD, on_breach="stop"),
        # The run stops at an early check: little room is needed for attributions to grow.
        display=Display(class_names=CLASS_NAMES, color_headroom=1.5),
    )
    return monitor_with(settings, overrides)


def train(mode: str = "cue", max_epochs: int = 10, root: str | Path = RUNS, verbose: bool = True,
          **trainer_kwargs: Any) -> Run:
    """Train the digits CNN on the ``mode`` data with the corner watched; logs go to ``root/spurious/<mode>``."""
    seed(0)
    datamodule = SpuriousDigitsDataModule(mode)
    return fit(f"spurious/{mode}", DigitsCNN(), datamodule, make_monitor(marked_probe(datamodule)),
               max_epochs=max_epochs, root=root, verbose=verbose, **trainer_kwargs)


def was_stopped(run: Run) -> bool:
    """Whether the run ended before ``max_epochs`` (here: the monitor's ``on_breach="stop"``)."""
    return run.trainer.current_epoch < run.trainer.max_epochs


def classes_reading_the_mark(run: Run, top: int = 5) -> list[int]:
    """The classes with a rule among their first ``top`` that says "the mark present -> the class": a region holding
    a pixel of the mark, whose mean is above its threshold."""
    mark = set(CUE_REGION.reshape(-1).nonzero().flatten().tolist())
    return [c for c, rules in sorted(run.monitor.rules.items())
            if any(mark & set(r.keys) and r.direction == ">" for r in rules[:top])]


def report(mode: str, run: Run) -> str:
    """One line: the model's region mass and whether the monitor stopped its run."""
    mass = run.monitor.last_metrics["ig/region_mass"]
    if was_stopped(run):
        verdict = f"> {REGION_THRESHOLD}: stopped by the monitor after {run.trainer.current_epoch} epoch(s)"
    else:
        verdict = f"<= {REGION_THRESHOLD}: trained all {run.trainer.current_epoch} epochs"
    line = (f"{mode:>5} model: ig/region_mass {mass:.3f} ({CUE_REGION.sum()} of 64 pixels) {verdict}; "
            f"classes whose top-5 rules hold a mark pixel: {classes_reading_the_mark(run) or 'none'}")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> dict[str, Run]:
    """``python -m examples.spurious [--mode cue|clean|both] [--epochs N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    runs = {mode: train(mode, max_epochs=args.epochs) for mode in modes}
    print()
    for mode, run in runs.items():
        report(mode, run)
    print(f"next: tensorboard --logdir {RUNS / 'spurious'}")
    return runs


if __name__ == "__main__":
    main()
