"""What a check costs, in training steps, part by part; and the overhead of whole runs (issue 23, items 2 and 4).

``python -m benchmarks.bench_cost [--parts steps runs demo] [--epochs 4] [--run-epochs 3] [--long-epochs 20]
[--repeats 3] [--threads 1]``

**steps** (item 2). Real training with the monitor at its defaults but checking at every epoch
(``max_overhead=None``, so that every check is timed; pictures on, a ``TensorBoardLogger`` to a temporary directory,
so the pictures are really drawn, on the monitor's worker thread) of

- the digits CNN of ``examples/digits.py`` (``IntegratedGradientsMonitor(max_overhead=None)``),
- the small ResNet of ``benchmarks/bench_memory.py`` on generated 32x32 RGB images (10 classes, each a smooth
  colour pattern under noise: learnable in an epoch; batch 32),
- the tiny BERT of ``examples/transformer.py`` (its ``make_monitor()``: the defaults, plus the layer to attribute
  at and the names of its tokens and classes; the examples check at every epoch).

Every training step is timed (``on_train_batch_start`` to ``on_train_batch_end``: forward, backward, optimizer
step), and so is every check (the monitor's ``on_validation_epoch_end``, on the training thread), with its parts
from ``monitor.last_timings``; the worker's drawing is timed by wrapping the reporter's ``draw_and_write``. Each part
is printed in *steps*: its time over the run's median training step. The first check (which runs the randomisation
sanity check) and the later ones (median of each part over them) are separate rows.

**runs** (item 4). Whole ``fit`` wall times of the small ResNet with 300 training steps per epoch (batch 16) for
``--run-epochs`` epochs: without the monitor, with it at its defaults (``max_overhead=0.05``), and checking at every
epoch (``max_overhead=None``); then ``--long-epochs`` epochs without the monitor and at its defaults. Interleaved, in
a rotating order, ``--repeats`` times; medians. Also the monitor's own account (``budget.share()``, checks run).

**sanity** (not run by default). The sanity stage's ``ig/sanity_spearman`` and time at the first check with
``faithfulness.sanity_tolerance`` 0.01 and 0.1, for each model and 2-3 seeds (one epoch each).

**demo**. The digits demo (``examples.digits.train``, the ``make demo`` settings, 10 epochs, checking at every
epoch), without the monitor (``bench_overhead.one_run``), with it (pictures on the worker thread), with
``display={"background": False}`` (pictures drawn in line) and with the library's default budget
``max_overhead=0.05``, interleaved the same way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.bench_memory import small_resnet
from benchmarks.bench_overhead import one_run as digits_run_without_monitor
from examples import digits, transformer
from examples.common import Split, SplitDataModule, make_trainer, seed
from ig_lightning import IntegratedGradientsMonitor

RULE_TESTS, SANITY, CURVES = ("RuleTests",), ("Sanity",), ("Curves", "Deletion")
COLUMNS = ("IG", "rule tests", "sanity", "curves+deletion", "other stages", "pictures (training thread)",
           "drawing (worker)", "rest")


# --- the small ResNet's data ---------------------------------------------------------------------


class PatternImages(SplitDataModule):
    """``n`` generated 3x32x32 images in ``[0, 1]``, 10 classes: each class a fixed smooth colour pattern (random 4x4
    colours, upsampled), shown at a random contrast under Gaussian noise. 20% held out.

    Args:
        n: Number of images.
        batch_size: Examples per batch.
        seed: Seed of the images and of the split.
    """

    def __init__(self, n: int = 2500, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__(batch_size, 0.2, seed)
        self.n = n

    def load(self) -> Split:
        g = torch.Generator().manual_seed(self.seed)
        patterns = torch.nn.functional.interpolate(torch.rand(10, 3, 4, 4, generator=g) * 2 - 1, size=(32, 32),
                                                   mode="bilinear", align_corners=False)
        labels = torch.randint(0, 10, (self.n,), generator=g)
        contrast = 0.2 + 0.2 * torch.rand(self.n, 1, 1, 1, generator=g)
        noise = 0.15 * torch.randn(self.n, 3, 32, 32, generator=g)
        return (0.5 + contrast * patterns[labels] + noise).clamp(0, 1), labels


# --- measuring a run -----------------------------------------------------------------------------


class StepClock(Callback):
    """Every training step's start and end (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.spans.append((self._start, time.perf_counter()))

    def median_step(self) -> float:
        return statistics.median(end - start for start, end in self.spans)


class CheckClock:
    """Wraps a monitor instance (its hooks, as instance attributes): the wall time of every check on the training
    thread with a copy of ``last_timings``, and the time of every ``draw_and_write`` of its reporter (on the
    worker thread, or in line with ``display.background=False``). Library code is not changed."""

    def __init__(self, monitor: IntegratedGradientsMonitor) -> None:
        self.monitor = monitor
        self.checks: list[dict[str, float]] = []  # one per check that ran: {"total": s, **last_timings}
        self.drawings: list[tuple[float, float]] = []  # (start, end) of each draw_and_write, in order
        self._wrapped: Any = None
        prepare, epoch_end = monitor._prepare, monitor.on_validation_epoch_end

        def timed_prepare(trainer: Any, pl_module: Any) -> None:
            prepare(trainer, pl_module)
            self._wrap(monitor._reporter)

        def timed_epoch_end(trainer: Any, pl_module: Any) -> None:
            before = monitor.checks
            start = time.perf_counter()
            epoch_end(trainer, pl_module)
            total = time.perf_counter() - start
            if monitor.checks > before:  # a check ran (not the sanity validation, not skipped by a budget)
                self.checks.append({"total": total, "start": start, **monitor.last_timings})

        monitor._prepare = timed_prepare
        monitor.on_validation_epoch_end = timed_epoch_end

    def _wrap(self, reporter: Any) -> None:
        if reporter is None or reporter is self._wrapped:
            return
        self._wrapped = reporter
        draw = reporter.draw_and_write

        def timed_draw(record: Any) -> None:
            start = time.perf_counter()
            try:
                draw(record)
            finally:
                self.drawings.append((start, time.perf_counter()))

        reporter.draw_and_write = timed_draw


def parts(check: dict[str, float], drawing: float) -> dict[str, float]:
    """A check's seconds by column."""
    stages = {k: v for k, v in check.items() if k not in ("total", "start", "attribution", "pictures")}
    found = {"IG": check.get("attribution", 0.0),
             "rule tests": sum(stages.pop(k, 0.0) for k in RULE_TESTS),
             "sanity": sum(stages.pop(k, 0.0) for k in SANITY),
             "curves+deletion": sum(stages.pop(k, 0.0) for k in CURVES),
             "other stages": sum(stages.values()),
             "pictures (training thread)": check.get("pictures", 0.0)}
    found["rest"] = check["total"] - sum(found.values())  # targets (first check), logging, policy: untimed
    found["drawing (worker)"] = drawing
    return found


def model_run(name: str, epochs: int, root: str) -> dict[str, Any]:
    """One ``fit`` of ``name`` with the monitor at its defaults; steps, checks and drawings timed."""
    seed(0)
    if name == "digits CNN":
        model, data, monitor = digits.DigitsCNN(), digits.DigitsDataModule(), \
            IntegratedGradientsMonitor(max_overhead=None)
    elif name == "small ResNet":
        model, data, monitor = small_resnet(), PatternImages(n=2500, batch_size=32), \
            IntegratedGradientsMonitor(max_overhead=None)
    elif name == "tiny BERT":
        model, data, monitor = transformer.BertQuestionClassifier(), transformer.QuestionsDataModule(), \
            transformer.make_monitor()
    else:
        raise ValueError(name)
    steps, clock = StepClock(), CheckClock(monitor)
    trainer = make_trainer(name.replace(" ", "_"), [steps, monitor], max_epochs=epochs, root=root, verbose=False,
                           num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    drawings = [end - begin for begin, end in clock.drawings]
    if len(drawings) != len(clock.checks):
        print(f"  NOTE {name}: {len(clock.checks)} checks but {len(drawings)} drawings")
    step = steps.median_step()
    # Training steps that overlapped the worker's drawing, against the others: what drawing costs training.
    busy = [e - s for s, e in steps.spans if any(s < de and e > ds for ds, de in clock.drawings)]
    idle = [e - s for s, e in steps.spans if not any(s < de and e > ds for ds, de in clock.drawings)]
    first = clock.checks[0]["start"] if clock.checks else float("inf")
    before = [e - s for s, e in steps.spans if e <= first]  # epoch 0: before any check or drawing
    after = [e - s for s, e in steps.spans if s > first]
    val_acc = float(trainer.callback_metrics.get("val/acc", float("nan")))
    return {"name": name, "step": step, "n_steps": len(steps.spans), "fit": fit_seconds, "val_acc": val_acc,
            "checks": [parts(c, d) | {"total": c["total"]} for c, d in zip(clock.checks, drawings + [0.0] * 99)],
            "busy": statistics.median(busy) if busy else float("nan"), "n_busy": len(busy),
            "idle": statistics.median(idle) if idle else float("nan"),
            "before": statistics.median(before) if before else float("nan"),
            "after": statistics.median(after) if after else float("nan"),
            "steps_per_epoch": trainer.num_training_batches}


def row(label: str, step: float, check: dict[str, float]) -> str:
    cells = [label, f"{step * 1000:.1f}", f"{check['total'] * 1000:.0f}", f"**{check['total'] / step:.1f}**"]
    cells += [f"{check[c] / step:.1f}" for c in COLUMNS]
    return "| " + " | ".join(cells) + " |"


def steps_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory() as root:
        model_run("digits CNN", 1, root)  # warm-up: imports, fonts, first-call allocations
        for name in args.models:
            t = time.perf_counter()
            runs.append(model_run(name, args.epochs, root))
            print(f"  ({name}: {runs[-1]['n_steps']} steps, {len(runs[-1]['checks'])} checks, fit "
                  f"{runs[-1]['fit']:.1f} s, val/acc {runs[-1]['val_acc']:.3f}; {time.perf_counter() - t:.0f} s)",
                  flush=True)
    print(f"\nA check in training steps ({args.epochs} epochs each, monitor at its defaults, pictures to TensorBoard "
          f"on the worker thread; torch threads {torch.get_num_threads()}, load average {load()}); every part is "
          "its time / the median training step\n")
    header = ("model | median step ms | check ms | check / step | " + " | ".join(COLUMNS)).split(" | ")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for run in runs:
        first, later = run["checks"][0], run["checks"][1:]
        print(row(f"{run['name']}, first check (with sanity)", run["step"], first))
        if later:
            median = {key: statistics.median(c[key] for c in later) for key in first}
            print(row(f"{run['name']}, later checks (median of {len(later)})", run["step"], median))
    print("\n*rest*: the check's time not in `last_timings` (targets at the first check, logging, the alarm policy). "
          "Later rows: each column's median over the later checks (columns need not add up to the total).")
    for run in runs:
        print(f"- {run['name']}: {run['steps_per_epoch']} steps/epoch, val/acc {run['val_acc']:.3f}; median step "
              f"while the worker drew {run['busy'] * 1000:.1f} ms ({run['n_busy']} steps) vs "
              f"{run['idle'] * 1000:.1f} ms otherwise; median step before the first check "
              f"{run['before'] * 1000:.1f} ms, "
              f"after it {run['after'] * 1000:.1f} ms")
    return runs


# --- the sanity check's tolerance ----------------------------------------------------------------


def sanity_run(name: str, run_seed: int, tolerance: float, root: str) -> dict[str, float]:
    """One epoch of ``name`` with the monitor checking at every epoch and ``faithfulness.sanity_tolerance``: the
    first check's ``ig/sanity_spearman`` and the seconds of its sanity stage and of its IG."""
    seed(run_seed)
    settings = {"faithfulness": {"sanity_tolerance": tolerance}, "max_overhead": None}
    if name == "digits CNN":
        model, data, monitor = digits.DigitsCNN(), digits.DigitsDataModule(), IntegratedGradientsMonitor(**settings)
    elif name == "small ResNet":
        model, data = small_resnet(), PatternImages(n=2500, batch_size=32, seed=run_seed)
        monitor = IntegratedGradientsMonitor(**settings)
    else:
        model, data, monitor = transformer.BertQuestionClassifier(), transformer.QuestionsDataModule(), \
            transformer.make_monitor(**settings)
    trainer = make_trainer("sanity", [monitor], max_epochs=1, root=root, verbose=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    return {"rho": monitor.last_metrics["ig/sanity_spearman"], "sanity": monitor.last_timings["Sanity"],
            "ig": monitor.last_timings["attribution"]}


def sanity_table(args: argparse.Namespace) -> None:
    print("\nThe sanity check at faithfulness.sanity_tolerance 0.01 and 0.1 (the first check, after one epoch)\n")
    print("| model | seed | ig/sanity_spearman 0.01 / 0.1 | sanity stage s 0.01 / 0.1 | IG s |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as root:
        for name in args.models:
            for run_seed in (0, 1, 2) if name == "digits CNN" else (0, 1):
                a, b = (sanity_run(name, run_seed, t, root) for t in (0.01, 0.1))
                print(f"| {name} | {run_seed} | {a['rho']:.3f} / {b['rho']:.3f} | {a['sanity']:.2f} / "
                      f"{b['sanity']:.2f} | {b['ig']:.2f} |", flush=True)


# --- whole runs ----------------------------------------------------------------------------------


def resnet_run(settings: dict | None, epochs: int, root: str) -> dict[str, float]:
    """One ``fit`` of the small ResNet, 300 steps per epoch at batch 16, with the monitor of ``settings``."""
    seed(0)
    data = PatternImages(n=6000, batch_size=16)  # 4800 training images: 300 steps per epoch
    monitor = None if settings is None else IntegratedGradientsMonitor(**settings)
    trainer = make_trainer("resnet300", [monitor] if monitor else [], max_epochs=epochs, root=root, verbose=False,
                           num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(small_resnet(), datamodule=data)
    found = {"fit": time.perf_counter() - start, "steps_per_epoch": trainer.num_training_batches}
    if monitor is not None:
        budget = monitor.budget
        found |= {"checks": monitor.checks, "share": budget.share(), "spent": budget.spent, "limit": budget.limit,
                  "last": budget.last or 0.0, "elapsed": budget.elapsed(),
                  "logged": monitor.last_metrics.get("ig/overhead", float("nan"))}
    return found


def demo_run(settings: dict | None, epochs: int, root: str) -> dict[str, float]:
    """One ``fit`` of the digits demo (its ``make demo`` monitor with ``settings`` as overrides)."""
    if settings is None:
        return {"fit": digits_run_without_monitor(None, epochs, root)}
    start = time.perf_counter()
    run = digits.train(max_epochs=epochs, root=root, verbose=False, monitor=settings, num_sanity_val_steps=0)
    budget = run.monitor.budget
    return {"fit": time.perf_counter() - start, "checks": run.monitor.checks, "share": budget.share(),
            "limit": budget.limit, "last": budget.last or 0.0, "elapsed": budget.elapsed()}


def interleaved(variants: dict[str, dict | None], run: Callable[..., dict], epochs: int,
                repeats: int) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    with tempfile.TemporaryDirectory() as root:
        for i in range(repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order each round
                found[name].append(run(variants[name], epochs, root))
                print(f"  ({name}, round {i + 1}: {found[name][-1]['fit']:.1f} s)", flush=True)
    return found


def runs_table(title: str, found: dict[str, list[dict]]) -> None:
    plain = statistics.median(r["fit"] for r in found["without monitor"])
    print(f"\n{title}\n")
    print("| run | fit s (median) | runs | / without | checks | monitor's share (budget.share) | budget + one check |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, results in found.items():
        fit = statistics.median(r["fit"] for r in results)
        checks = "-" if "checks" not in results[0] else "/".join(str(r["checks"]) for r in results)
        share = "-" if "share" not in results[0] else "/".join(f"{r['share']:.1%}" for r in results)
        bound = "-" if "limit" not in results[0] or results[0]["limit"] is None else \
            "/".join(f"{r['limit'] + r['last'] / r['elapsed']:.1%}" for r in results)
        each = ", ".join(f"{r['fit']:.1f}" for r in results)
        print(f"| {name} | {fit:.1f} | {each} | **{fit / plain:.2f}x** | {checks} | {share} | {bound} |")


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["steps", "runs", "demo"],
                        choices=["steps", "runs", "demo", "sanity"])
    parser.add_argument("--models", nargs="+", default=["digits CNN", "small ResNet", "tiny BERT"])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each model in the steps table")
    parser.add_argument("--run-epochs", type=int, default=3, help="epochs of the 300-steps ResNet runs")
    parser.add_argument("--long-epochs", type=int, default=20, help="epochs of the long 300-steps ResNet runs")
    parser.add_argument("--demo-epochs", type=int, default=10, help="epochs of the digits demo runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads that lose a core "
                             "to another process spin in barriers, and a step can take 10x longer at random)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load()}",
          flush=True)
    if "steps" in args.parts:
        steps_table(args)
    if "sanity" in args.parts:
        sanity_table(args)
    if "runs" in args.parts:
        found = interleaved({"without monitor": None, "monitor at defaults (max_overhead=0.05)": {},
                             "max_overhead=None (every epoch)": {"max_overhead": None}}, resnet_run,
                            args.run_epochs, args.repeats)
        per_epoch = found["without monitor"][0]["steps_per_epoch"]
        runs_table(f"Small ResNet, {per_epoch} training steps/epoch (batch 16), {args.run_epochs} epochs, "
                   f"{args.repeats} interleaved runs each (load average {load()}); goal at defaults <= 1.05x", found)
        if args.long_epochs:
            found = interleaved({"without monitor": None, "monitor at defaults (max_overhead=0.05)": {}},
                                resnet_run, args.long_epochs, args.repeats)
            runs_table(f"Small ResNet, {per_epoch} training steps/epoch (batch 16), {args.long_epochs} epochs, "
                       f"{args.repeats} interleaved runs each (load average {load()})", found)
    if "demo" in args.parts:
        found = interleaved({"without monitor": None, "demo monitor, worker thread": {},
                             'demo monitor, display={"background": False}': {"display": {"background": False}},
                             "demo monitor, max_overhead=0.05 (the library's default)": {"max_overhead": 0.05}},
                            demo_run, args.demo_epochs, args.repeats)
        runs_table(f"Digits demo (examples.digits, make demo settings), {args.demo_epochs} epochs, {args.repeats} "
                   f"interleaved runs each (load average {load()})", found)
    print(f"\n(total {time.perf_counter() - started:.0f} s, load average {load()})")


if __name__ == "__main__":
    main()
