"""``n_steps="auto"`` on the token models of the examples: the text classifier and the tiny BERT.

Run from the repository root::

    python -m benchmarks.bench_auto_models [--epochs 3]

Trains ``examples/text.py`` and ``examples/transformer.py`` (with their monitors), then explains the trained
model's probe at the embedding layer, as the monitor does, with the default ``n_steps="auto"`` and with fixed
Gauss-Legendre rules, against a float64 reference of 1,024 Gauss-Legendre points. Columns as in
``benchmarks.bench_auto``: share of probe examples within 1% (relative L2 of the token-by-hidden-unit
attributions), median and worst error, evaluations per example, and how often auto's estimate is within a
factor 2 of the true error.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings

import torch

from examples import text, transformer
from examples.common import Run, make_trainer
from ig_lightning import IntegratedGradientsMonitor

REFERENCE_STEPS = 1024
CANDIDATES = (("auto", "auto"), ("gl32", 32), ("gl64", 64))


def attributions(run: Run, n_steps: int | str, dtype: torch.dtype = torch.float32):
    """The monitor's attributions on the run's probe with ``n_steps`` (a trainer.validate of the trained model)."""
    model = copy.deepcopy(run.model).to(dtype)
    monitor = IntegratedGradientsMonitor(probe=run.monitor.probe_size, layer=run.monitor.layer, n_steps=n_steps,
                                         display=dict(vocabulary=run.monitor.display.vocabulary, log_images=False),
                                         integration=dict(internal_batch_size=4096 if dtype == torch.float64 else None))
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer("bench", [monitor], max_epochs=1, root=root, verbose=False)
        trainer.validate(model, datamodule=run.datamodule, verbose=False)
    return monitor.last_result


def table(name: str, run: Run) -> None:
    """One table: every candidate against the reference, on the run's probe."""
    ref = attributions(run, REFERENCE_STEPS, torch.float64).attributions
    flat_ref = ref.reshape(len(ref), -1)
    print(f"\n{name}: probe of {len(ref)}, reference float64 Gauss-Legendre {REFERENCE_STEPS}")
    print(f"{'candidate':<10} {'within 1%':>9} {'err median':>10} {'err max':>8} {'evals/ex':>8} {'max evals':>9} "
          f"{'est within 2x':>13}")
    for label, n_steps in CANDIDATES:
        res = attributions(run, n_steps)
        err = (res.attributions.double().reshape(len(ref), -1) - flat_ref).norm(dim=1) / flat_ref.norm(dim=1)
        agree = "-"
        if n_steps == "auto":
            ratio = res.attribution_error / err
            agree = f"{float(((ratio >= 0.5) & (ratio <= 2)).double().mean()):.1%}"
        print(f"{label:<10} {float((err <= 0.01).double().mean()):>9.1%} {float(err.median()):>10.2e} "
              f"{float(err.max()):>8.2e} {float(res.n_evaluations.double().mean()):>8.1f} "
              f"{int(res.n_evaluations.max()):>9d} {agree:>13}")


def main() -> None:
    """Train both examples, then print a table for each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        table("text classifier (examples/text.py)", text.train(max_epochs=args.epochs, root=root, verbose=False))
        table("tiny BERT (examples/transformer.py)",
              transformer.train(max_epochs=args.epochs, root=root, verbose=False))


if __name__ == "__main__":
    main()
