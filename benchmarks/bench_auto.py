"""Accuracy per cost of ``n_steps="auto"`` against captum's fixed 50-point default.

Run from the repository root::

    python -m benchmarks.bench_auto [--examples 200] [--threads N]

Trains a small CNN on scikit-learn's bundled digits (8x8, plain PyTorch, fixed seed), then
explains the predicted class of test images against a zero baseline, on the logits and on the
softmax probabilities. For every quadrature rule with ``n_steps="auto"`` it reports the mean
gradient evaluations per example, how many examples with ``|delta| >= 0.05`` meet the 1%
completeness target, and the worst relative completeness error among them; captum's default
(50 Gauss-Legendre points for every example) is measured the same way.

Completeness is what ``"auto"`` stops on, so it is also reported how far the attributions
themselves are from a reference computed with many points (``attr err``: relative L1 distance,
median and worst over the examples considered). The issue's target: >= 4x fewer evaluations than
captum's 50 with every example whose ``|delta| >= 0.05`` within tolerance.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from collections import Counter
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
MIN_DELTA = 0.05  # examples with a smaller |F(x) - F(x')| are not held to the relative target
CAPTUM_STEPS = 50
# Gauss-Legendre points of the float64 reference attributions. With ReLU kinks the rule converges
# slowly; 512 points were measured within 0.2% (relative L1) of 1024, enough for errors of 1% and up.
REFERENCE_STEPS = 512
METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left")
SPEEDUP_TARGET = 4.0

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
    rel_error: torch.Tensor  # |completeness error| / |delta| per example
    attr_error: torch.Tensor  # relative L1 distance to the reference attributions per example
    seconds: float
    n_steps: torch.Tensor | None = None  # rule size reached per example (auto only)


def relative_l1(attr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||attr - reference||_1 / ||reference||_1`` per example."""
    n = attr.shape[0]
    return (attr - reference).reshape(n, -1).abs().sum(1) / reference.reshape(n, -1).abs().sum(1)


def run_ours(f: ForwardFunc, x: torch.Tensor, target: torch.Tensor, method: str, reference: torch.Tensor) -> Row:
    """``n_steps="auto"`` with one rule; warnings (unconverged, tiny delta) are counted in the table instead."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = integrated_gradients(f, x, target=target, n_steps="auto", tolerance=TOLERANCE, method=method)
    seconds = time.perf_counter() - start
    rel = res.completeness_error.abs() / res.delta.abs()
    return Row(method, res.n_evaluations, rel, relative_l1(res.attributions, reference), seconds, res.n_steps)


def run_captum(
    f: ForwardFunc, x: torch.Tensor, target: torch.Tensor, delta: torch.Tensor, reference: torch.Tensor
) -> Row:
    """captum's default: 50 Gauss-Legendre points for every example."""
    start = time.perf_counter()
    attr, error = IntegratedGradients(f).attribute(
        x, target=target, n_steps=CAPTUM_STEPS, method="gausslegendre", return_convergence_delta=True
    )
    seconds = time.perf_counter() - start
    evals = torch.full((x.shape[0],), CAPTUM_STEPS)
    # captum's delta is sum(attr) - (F(x) - F(x')), the signed completeness error.
    return Row(f"captum gl{CAPTUM_STEPS}", evals, error.abs() / delta.abs(), relative_l1(attr, reference), seconds)


def forward_func(model: nn.Module, outputs: str) -> ForwardFunc:
    """The model's logits, or its softmax probabilities."""
    return model if outputs == "logits" else (lambda inp: model(inp).softmax(-1))


def reference(
    model: nn.Module, outputs: str, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributions with many points, in float64, and ``delta``, to measure the candidates against."""
    f = forward_func(copy.deepcopy(model).double(), outputs)
    res = integrated_gradients(
        f, x.double(), target=target, n_steps=REFERENCE_STEPS, method="gausslegendre", internal_batch_size=8192
    )
    return res.attributions.float(), res.delta.float()


def print_rows(title: str, rows: list[Row], delta: torch.Tensor) -> None:
    """The table for one output kind, then the n_steps reached per rule."""
    held = delta.abs() >= MIN_DELTA
    print(
        f"\n{title}: {int(held.sum())} of {len(delta)} examples with |delta| >= {MIN_DELTA} "
        f"(|delta| median {delta.abs().median():.3g}, min {delta.abs().min():.2g})"
    )
    header = (
        f"{'candidate':<18} {'evals/ex':>8} {'max evals':>9} {'captum/ours':>11} {'within 1%':>11}"
        f" {'max rel err':>11} {'attr err med':>12} {'attr err max':>12} {'sec':>6} {'target':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        mean_evals = float(row.evals.float().mean())
        ratio = CAPTUM_STEPS / mean_evals
        ok = row.rel_error[held] <= TOLERANCE
        met = bool(ok.all()) and ratio >= SPEEDUP_TARGET
        verdict = "-" if row.n_steps is None else ("met" if met else "MISSED")
        print(
            f"{row.name:<18} {mean_evals:>8.1f} {int(row.evals.max()):>9d} {ratio:>11.2f}"
            f" {f'{int(ok.sum())}/{int(held.sum())}':>11} {float(row.rel_error[held].max()):>11.2e}"
            f" {float(row.attr_error[held].median()):>12.2e} {float(row.attr_error[held].max()):>12.2e}"
            f" {row.seconds:>6.2f} {verdict:>6}"
        )
    for row in rows:
        if row.n_steps is not None:
            hist = sorted(Counter(row.n_steps.tolist()).items())
            print(f"  n_steps reached, {row.name:<17}: " + ", ".join(f"{k}: {v}" for k, v in hist))


def evaluate(model: nn.Module, outputs: str, x: torch.Tensor, target: torch.Tensor) -> None:
    """Every candidate on one output kind (``"logits"`` or ``"softmax"``), printed as a table."""
    f = forward_func(model, outputs)
    ref_attr, delta = reference(model, outputs, x, target)
    rows = [run_ours(f, x, target, method, ref_attr) for method in METHODS]
    rows.append(run_captum(f, x, target, delta, ref_attr))
    print_rows(outputs, rows, delta)


def parse_args() -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="test images to explain")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
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
        f"target = predicted class, {len(x_test[: args.examples])} test images"
    )
    x = x_test[: args.examples]
    with torch.no_grad():
        target = model(x).argmax(1)
    for outputs in ("logits", "softmax"):
        evaluate(model, outputs, x, target)


if __name__ == "__main__":
    main()
