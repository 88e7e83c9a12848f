"""Wall time of a full training run with the monitor at its defaults vs without it, as a ratio.

``python -m benchmarks.bench_overhead [--epochs 10] [--repeats 7]``: the digits CNN of
``examples/digits.py`` trained for ``--epochs`` on CPU, with and without
``IntegratedGradientsMonitor()`` (probe of 16, ``n_steps="auto"``, the deletion check, pictures to TensorBoard),
runs interleaved so that both see the same machine load; medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from examples.common import make_trainer, seed
from examples.digits import DigitsCNN, DigitsDataModule
from ig_lightning import IntegratedGradientsMonitor


VARIANTS: dict[str, dict | None] = {  # name: monitor arguments (None = no monitor)
    "without monitor": None,
    "monitor at defaults": {},
    "defaults, display.log_images=False": {"display": {"log_images": False}},
    "defaults, every_n_epochs=2": {"every_n_epochs": 2},
    "defaults, n_steps=32 (fixed rule)": {"n_steps": 32},
    "defaults, faithfulness.deletion=False": {"faithfulness": {"deletion": False}},
    "defaults, rule_extraction.test=False": {"rule_extraction": {"test": False}},
    "defaults, integration.warm_start=True": {"integration": {"warm_start": True}},
    "defaults, whole training batch per forward": {"integration": {"internal_batch_size": 64}},
}


def one_run(settings: dict | None, epochs: int, root: str) -> float:
    seed(0)
    monitor = None if settings is None else IntegratedGradientsMonitor(**settings)
    trainer = make_trainer("bench", [monitor] if monitor else [], max_epochs=epochs, root=root, verbose=False,
                           num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as root:
        one_run({}, 1, root)  # warm-up: imports, first-call allocations
        names = list(VARIANTS)
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order each round
                times[name].append(one_run(VARIANTS[name], args.epochs, root))
    medians = {name: statistics.median(t) for name, t in times.items()}
    plain = medians["without monitor"]
    defaults = IntegratedGradientsMonitor()
    print(f"digits CNN, {args.epochs} epochs on CPU ({args.threads} threads), median of {args.repeats} runs each; "
          f"monitor defaults: probe {defaults.probe_size}, {defaults.n_steps} steps, {defaults.integration.method}")
    for name, seconds in medians.items():
        print(f"  {name:<30} {seconds:7.2f} s   {seconds / plain:6.3f}x")
    print("  (target for the defaults: < 1.15x)")
    return {name: seconds / plain for name, seconds in medians.items()}


if __name__ == "__main__":
    main()
