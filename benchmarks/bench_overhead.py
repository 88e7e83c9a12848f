"""Wall time of a full training run with the monitor at its defaults vs without it, as a ratio.

``python -m benchmarks.bench_overhead [--epochs 10] [--repeats 7]``: the digits CNN of
``examples/digits.py`` trained for ``--epochs`` on CPU, with and without
``IntegratedGradientsMonitor()`` (probe of 16, ``n_steps="auto"``, the deletion check, pictures to TensorBoard),
runs interleaved so that both see the same machine load; medians are compared.

``python -m benchmarks.bench_overhead --check-time [--epochs 4] [--repeats 3]``: the time the training loop spends
in each check (the monitor's ``on_validation_epoch_end``, measured around it on the training thread) with pictures
off (``display.log_images=False``), with pictures drawn on the worker thread (the default) and drawn in line, side
by side in one run (interleaved), and the time ``fit`` waits for the worker at its end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from lightning.pytorch.callbacks import Callback

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


CHECK_VARIANTS: dict[str, tuple[dict, bool]] = {  # name: (monitor arguments, draw in background)
    "pictures off": ({"display": {"log_images": False}}, True),
    "pictures on, worker thread": ({}, True),
    "pictures on, in line": ({}, False),
}


class _Timed(Callback):
    """Around the monitor (one instance before it, one after): the time of its ``on_validation_epoch_end`` and of
    the end of ``fit`` (``on_fit_end`` and ``teardown``, where it waits for its worker)."""

    def __init__(self, clock: dict[str, list[float]], first: bool) -> None:
        self.clock, self.first = clock, first

    def _mark(self, key: str) -> None:
        now = time.perf_counter(), time.thread_time()  # wall, and the training thread's own CPU time
        if self.first:
            self.clock.setdefault("_start", []).append(now)
        else:
            start = self.clock["_start"].pop()
            self.clock.setdefault(key, []).append(now[0] - start[0])
            self.clock.setdefault(key + "_cpu", []).append(now[1] - start[1])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._mark("check")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._mark("end")

    def teardown(self, trainer, pl_module, stage) -> None:
        self._mark("end")


def check_run(settings: dict, background: bool, epochs: int, root: str) -> dict[str, list[float]]:
    seed(0)
    monitor = IntegratedGradientsMonitor(**settings)
    monitor.draw_in_background = background
    clock: dict[str, list[float]] = {}
    trainer = make_trainer("bench", [_Timed(clock, True), monitor, _Timed(clock, False)], max_epochs=epochs,
                           root=root, verbose=False, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule())
    clock["fit"] = [time.perf_counter() - start]
    return clock


def check_time(args: argparse.Namespace) -> dict[str, float]:
    """The median time of a check on the training thread per variant, side by side in one run."""
    found: dict[str, dict[str, list]] = {name: {"check": [], "check_cpu": [], "end": [], "fit": []}
                                         for name in CHECK_VARIANTS}
    with tempfile.TemporaryDirectory() as root:
        check_run({}, True, 1, root)  # warm-up: imports, fonts, first-call allocations
        names = list(CHECK_VARIANTS)
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order each round
                clock = check_run(*CHECK_VARIANTS[name], args.epochs, root)
                found[name]["check"] += clock["check"]
                found[name]["check_cpu"] += clock["check_cpu"]
                found[name]["end"].append(sum(clock["end"]))
                found[name]["fit"].append(clock["fit"][0])
    off = {key: statistics.median(found["pictures off"][key]) for key in ("check", "check_cpu")}
    print(f"digits CNN, {args.epochs} epochs on CPU ({args.threads} threads), {args.repeats} runs each: the time the "
          "training loop spends in a check (median over checks: wall, and the training thread's CPU time), the "
          "wait for the worker at the end of fit, the whole fit")
    ratios = {}
    for name, times in found.items():
        wall, cpu = statistics.median(times["check"]), statistics.median(times["check_cpu"])
        ratios[name] = wall / off["check"]
        print(f"  {name:<28} check {wall * 1000:7.1f} ms {wall / off['check']:5.2f}x   training-thread CPU "
              f"{cpu * 1000:7.1f} ms {cpu / off['check_cpu']:5.2f}x   end of fit "
              f"{statistics.median(times['end']) * 1000:6.1f} ms   fit {statistics.median(times['fit']):6.2f} s")
    print("  (goal: pictures on, worker thread <= 1.10x pictures off)")
    return ratios


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--check-time", action="store_true", help="time a check with pictures on and off")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.check_time:
        return check_time(args)
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
