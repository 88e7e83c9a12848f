"""Wall time of a full training run with the monitor at its defaults vs without it, as a ratio.

``python -m benchmarks.bench_overhead [--epochs 10] [--repeats 3]``: the digits CNN of
``examples/digits.py`` trained for ``--epochs`` on CPU, with and without
``IntegratedGradientsMonitor()`` (probe of 16, 32 Gauss-Legendre steps, pictures to TensorBoard),
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


def one_run(with_monitor: bool, epochs: int, root: str) -> tuple[float, IntegratedGradientsMonitor | None]:
    seed(0)
    monitor = IntegratedGradientsMonitor() if with_monitor else None
    trainer = make_trainer("bench", [monitor] if monitor else [], max_epochs=epochs, root=root, verbose=False,
                           num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule())
    return time.perf_counter() - start, monitor


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as root:
        one_run(True, 1, root)  # warm-up: imports, first-call allocations
        for i in range(args.repeats):
            for flag in ((False, True) if i % 2 == 0 else (True, False)):
                seconds, _ = one_run(flag, args.epochs, root)
                times[flag].append(seconds)
    plain, watched = statistics.median(times[False]), statistics.median(times[True])
    defaults = IntegratedGradientsMonitor()
    probe, steps = defaults.probe_size, defaults.n_steps
    print(f"digits CNN, {args.epochs} epochs on CPU ({args.threads} threads), median of {args.repeats} runs each")
    print(f"  without monitor            {plain:8.2f} s")
    print(f"  with monitor (probe {probe}, {steps} steps, gausslegendre)  {watched:8.2f} s")
    print(f"  overhead ratio             {watched / plain:8.3f}x   (target < 1.15x)")
    return {"plain_s": plain, "monitor_s": watched, "ratio": watched / plain}


if __name__ == "__main__":
    main()
