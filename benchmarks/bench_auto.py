"""Accuracy per cost of ``n_steps="auto"`` against fixed rules and captum's 50-point default.

Run from the repository root::

    python -m benchmarks.bench_auto [--examples 128] [--reference-steps 1024] [--threads N]

Trains a small CNN on scikit-learn's bundled digits (8x8, plain PyTorch, fixed seed), then explains the
predicted class of test images against a zero baseline, on the logits and on the softmax probabilities.
Every candidate is measured against float64 reference attributions (Gauss-Legendre, ``--reference-steps``
points) by the relative L2 error per example, ``||attr - ref|| / ||ref||``, which is what ``tolerance`` means
for ``n_steps="auto"``. Columns: share of examples within 1%, median and worst error, mean and max gradient
evaluations per example, for auto the share whose estimate (``attribution_error``) is within a factor 2 of
the true error, and the time of each candidate (median of interleaved rounds) with the ratio of auto's time to
the fastest fixed rule that is at least as accurate. Auto does the same for every rule, so it is run once.
The issue's target: >= 95% within 1%
at <= 25 evaluations per example on average, estimate within 2x on >= 90%.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from captum.attr import IntegratedGradients
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from ig_lightning import integrated_gradients

SEED = 0
TOLERANCE = 0.01
CAPTUM_STEPS = 50
FIXED = (("gausslegendre", 16), ("gausslegendre", 32), ("gausslegendre", 64), ("riemann_trapezoid", 33),
         ("riemann_trapezoid", 65))

ForwardFunc = Callable[[torch.Tensor], torch.Tensor]


def digits_cnn(activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """A small CNN for 1x8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), activation(),
        nn.Conv2d(16, 32, 3, padding=1), activation(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as ``(N, 1, 8, 8)`` floats in [0, 1], split into train and test with a fixed seed."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=SEED, stratify=y)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 15, batch: int = 64) -> nn.Module:
    """Plain Adam on cross-entropy; returns the model in eval mode."""
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@dataclass
class Row:
    """What one candidate achieved on one output kind."""

    name: str
    evals: torch.Tensor  # gradient evaluations per example
    error: torch.Tensor  # true relative L2 error per example
    seconds: float
    estimate: torch.Tensor | None = None  # auto's attribution_error


def relative_l2(attr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||attr - reference||_2 / ||reference||_2`` per example, in float64."""
    n = attr.shape[0]
    diff = (attr.double() - reference.double()).reshape(n, -1)
    return diff.norm(dim=1) / reference.double().reshape(n, -1).norm(dim=1)


def forward_func(model: nn.Module, outputs: str) -> ForwardFunc:
    """The model's logits, or its softmax probabilities."""
    return model if outputs == "logits" else (lambda inp: model(inp).softmax(-1))


def run_ours(f: ForwardFunc, x: torch.Tensor, target: torch.Tensor, reference: torch.Tensor,
             n_steps: int | str = "auto", method: str = "gausslegendre") -> Row:
    """One candidate through the public engine; auto's warnings (unconverged, tiny delta) are not the point here."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = integrated_gradients(f, x, target=target, n_steps=n_steps, method=method, tolerance=TOLERANCE)
    seconds = time.perf_counter() - start
    name = "auto" if n_steps == "auto" else f"{'gl' if method == 'gausslegendre' else 'trap'}{n_steps}"
    estimate = res.attribution_error if n_steps == "auto" else None
    return Row(name, res.n_evaluations, relative_l2(res.attributions, reference), seconds, estimate)


def run_captum(f: ForwardFunc, x: torch.Tensor, target: torch.Tensor, reference: torch.Tensor) -> Row:
    """captum's default: 50 Gauss-Legendre points for every example."""
    start = time.perf_counter()
    attr = IntegratedGradients(f).attribute(x, target=target, n_steps=CAPTUM_STEPS, method="gausslegendre")
    seconds = time.perf_counter() - start
    evals = torch.full((x.shape[0],), CAPTUM_STEPS)
    return Row(f"captum gl{CAPTUM_STEPS}", evals, relative_l2(attr, reference), seconds)


def reference(model: nn.Module, outputs: str, x: torch.Tensor, target: torch.Tensor, steps: int) -> torch.Tensor:
    """Attributions with many Gauss-Legendre points, in float64, to measure the candidates against."""
    f = forward_func(copy.deepcopy(model).double(), outputs)
    res = integrated_gradients(f, x.double(), target=target, n_steps=steps, method="gausslegendre",
                               internal_batch_size=8192)
    return res.attributions


def print_rows(title: str, rows: list[Row]) -> None:
    """The table for one output kind."""
    print(f"\n{title}")
    header = (f"{'candidate':<12} {'within 1%':>9} {'err median':>10} {'err max':>8} {'evals/ex':>8} {'max evals':>9}"
              f" {'est within 2x':>13} {'est/true median':>15} {'sec':>6}")
    print(header)
    print("-" * len(header))
    for row in rows:
        within = float((row.error <= TOLERANCE).double().mean())
        agree, ratio = "-", "-"
        if row.estimate is not None:
            r = row.estimate.double() / row.error
            agree = f"{float(((r >= 0.5) & (r <= 2)).double().mean()):.1%}"
            ratio = f"{float(r.median()):.2f}"
        print(f"{row.name:<12} {within:>9.1%} {float(row.error.median()):>10.2e} {float(row.error.max()):>8.2e}"
              f" {float(row.evals.double().mean()):>8.1f} {int(row.evals.max()):>9d} {agree:>13} {ratio:>15}"
              f" {row.seconds:>6.2f}")


def evaluate(model: nn.Module, outputs: str, x: torch.Tensor, target: torch.Tensor, reference_steps: int,
             repeats: int) -> None:
    """Every candidate on one output kind (``"logits"`` or ``"softmax"``), printed as a table.

    Times are medians of ``repeats`` interleaved rounds (every candidate once per round), after a warm-up
    round, so that all candidates see the same machine load.
    """
    f = forward_func(model, outputs)
    ref = reference(model, outputs, x, target, reference_steps)
    runs: list[Callable[[], Row]] = [lambda: run_ours(f, x, target, ref)]
    runs += [lambda m=method, n=n: run_ours(f, x, target, ref, n, m) for method, n in FIXED]
    runs.append(lambda: run_captum(f, x, target, ref))
    rows = [run() for run in runs]  # warm-up round; its results are the accuracy columns
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            times[i].append(run().seconds)
    for row, t in zip(rows, times):
        row.seconds = float(np.median(t)) if t else row.seconds
    print_rows(outputs, rows)
    auto, within = rows[0], lambda row: float((row.error <= TOLERANCE).double().mean())
    equal = [row for row in rows[1:] if within(row) >= within(auto)]
    best = min(equal, key=lambda row: row.seconds) if equal else max(rows[1:], key=within)
    what = "the fastest rule at least as accurate" if equal else "the most accurate rule (none is as accurate)"
    print(f"time, auto / {what} ({best.name}): {auto.seconds / best.seconds:.2f}")


def parse_args() -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=128, help="test images to explain")
    parser.add_argument("--reference-steps", type=int, default=1024,
                        help="Gauss-Legendre points of the float64 reference (1024 agrees with 4097 trapezoid "
                             "points within 0.1%%; 256 is 0.3%% off 1024, too coarse to judge 1%%)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (medians are printed)")
    return parser.parse_args()


def main(activation: type[nn.Module] = nn.ReLU) -> None:
    """Train, then measure every candidate on logits and on softmax outputs."""
    args = parse_args()
    torch.manual_seed(SEED)
    x_train, y_train, x_test, y_test = load_data()
    start = time.perf_counter()
    # Trained on one thread: the reduction order (hence the model, hence every number below) then
    # does not depend on --threads or on the machine's core count.
    torch.set_num_threads(1)
    model = train(digits_cnn(activation), x_train, y_train)
    torch.set_num_threads(args.threads)
    print(
        f"digits CNN ({activation.__name__}): test accuracy {accuracy(model, x_test, y_test):.3f}, "
        f"trained in {time.perf_counter() - start:.1f} s; tolerance={TOLERANCE}, baseline zeros, "
        f"target = predicted class, {len(x_test[: args.examples])} test images, reference: float64 "
        f"Gauss-Legendre {args.reference_steps}"
    )
    x = x_test[: args.examples]
    with torch.no_grad():
        target = model(x).argmax(1)
    for outputs in ("logits", "softmax"):
        evaluate(model, outputs, x, target, args.reference_steps, args.repeats)


if __name__ == "__main__":
    main()
