"""Throughput of ``integrated_gradients`` next to captum and a plain batched forward+backward.

Run from the repository root::

    python -m benchmarks.bench_engine [--threads N] [--rounds R] [--quick] [--device cpu|cuda]

Every candidate computes the same thing: 50-point Gauss-Legendre IG of a probe of 16 examples,
one target per example, float32, model in eval mode. ``raw`` is the floor: one batched
forward+backward over all 16*50 interpolated points, nothing else. The candidates are timed
in interleaved rounds (rotating order) so that drifting machine load hits them alike, and the
median time per call is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
from captum.attr import IntegratedGradients
from torch import nn

from ig_lightning import integrated_gradients, quadrature_rule

PROBE, N_STEPS, N_CLASSES = 16, 50, 10
METHOD = "gausslegendre"


def digits_cnn() -> nn.Module:
    """A small CNN for 1x8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 4 * 4, N_CLASSES),
    )  # fmt: skip


def mlp() -> nn.Module:
    """A 64 -> 256 -> 256 -> 10 ReLU MLP."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, N_CLASSES))


def raw_ig(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, alphas: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The floor: all interpolated points in one forward+backward, weighted sum of the gradients.

    The rule's points and weights are computed once, outside the timed call.
    """
    shape = (-1,) + (1,) * x.ndim
    points = (alphas.view(shape) * x.unsqueeze(0)).reshape(-1, *x.shape[1:])  # zero baseline
    points.requires_grad_(True)
    out = model(points)
    sel = out.gather(1, target.repeat(N_STEPS).view(-1, 1))
    (grad,) = torch.autograd.grad(sel.sum(), points)
    avg = (grad.view(N_STEPS, *x.shape) * weights.view(shape)).sum(0)
    return x * avg


def frozen(fn: Callable[[], object], model: nn.Module) -> Callable[[], object]:
    """``fn`` run with the model's parameters not requiring grad (what the engine does internally)."""

    def run() -> object:
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            return fn()
        finally:
            for p in model.parameters():
                p.requires_grad_(True)

    return run


def candidates(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The callables to time, by name."""
    captum_ig = IntegratedGradients(model)
    rule = quadrature_rule(METHOD, N_STEPS, dtype=x.dtype, device=x.device)
    return {
        "ours": lambda: integrated_gradients(model, x, target=target, n_steps=N_STEPS, method=METHOD),
        "captum": lambda: captum_ig.attribute(x, target=target, n_steps=N_STEPS, method=METHOD),
        "raw": frozen(lambda: raw_ig(model, x, target, *rule), model),
        "raw_params_grad": lambda: raw_ig(model, x, target, *rule),
    }


def time_rounds(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed once per round in rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def spread(times: list[float]) -> float:
    """Interquartile range relative to the median: how noisy the machine was."""
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / statistics.median(times)


def bench_model(
    model: nn.Module, x: torch.Tensor, args: argparse.Namespace, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Times of every candidate on one model."""
    model = model.to(args.device).eval()
    x = x.to(args.device)
    target = torch.randint(0, N_CLASSES, (PROBE,), generator=torch.Generator().manual_seed(1)).to(args.device)
    check_agreement(model, x, target)
    return time_rounds(candidates(model, x, target), args.rounds, args.warmup, sync)


def check_agreement(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    """Refuse to time candidates that do not compute the same attributions."""
    ours = integrated_gradients(model, x, target=target, n_steps=N_STEPS, method=METHOD).attributions
    theirs = IntegratedGradients(model).attribute(x, target=target, n_steps=N_STEPS, method=METHOD)
    raw = raw_ig(model, x, target, *quadrature_rule(METHOD, N_STEPS, dtype=x.dtype, device=x.device))
    scale = ours.abs().max().item()
    for label, other in (("captum", theirs), ("raw", raw)):
        diff = (ours - other).abs().max().item()
        if diff > 1e-4 * scale + 1e-6:
            raise RuntimeError(f"ours and {label} disagree: max abs difference {diff:.3e} (scale {scale:.3e})")


def print_table(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    """One row per model: median ms per call, the ratios, and the largest relative IQR (noise)."""
    print(
        f"\ndevice={args.device} threads={torch.get_num_threads()} rounds={args.rounds} "
        f"probe={PROBE} n_steps={N_STEPS} method={METHOD} float32 torch={torch.__version__}"
    )
    header = (
        f"{'model':<6} {'ours ms':>8} {'captum ms':>9} {'raw ms':>7} {'raw+pgrad ms':>12}"
        f" {'ours/raw':>8} {'ours/raw+pgrad':>14} {'ours/captum':>11} {'noise':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, times in results.items():
        t = {k: statistics.median(v) for k, v in times.items()}
        ms = {k: 1e3 * v for k, v in t.items()}
        noise = max(spread(v) for v in times.values())
        print(
            f"{name:<6} {ms['ours']:>8.2f} {ms['captum']:>9.2f} {ms['raw']:>7.2f} {ms['raw_params_grad']:>12.2f}"
            f" {t['ours'] / t['raw']:>8.2f} {t['ours'] / t['raw_params_grad']:>14.2f}"
            f" {t['ours'] / t['captum']:>11.2f} {noise:>6.0%}"
        )
    print("noise: the largest interquartile range / median among the candidates (machine load)")


def parse_args() -> argparse.Namespace:
    """Command line options; ``--quick`` overrides the rounds and warm-ups."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads (default: all cores)"
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per candidate first")
    parser.add_argument("--quick", action="store_true", help="5 rounds, 1 warm-up")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup = 5, 1
    return args


def main() -> None:
    """Time both models and print the table."""
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here; nothing measured.")
        return
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    models = {
        "cnn": (digits_cnn(), torch.rand(PROBE, 1, 8, 8)),
        "mlp": (mlp(), torch.rand(PROBE, 64)),
    }
    results = {name: bench_model(model, x, args, sync) for name, (model, x) in models.items()}
    print_table(results, args)


if __name__ == "__main__":
    main()
