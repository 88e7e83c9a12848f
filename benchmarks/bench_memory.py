"""Peak memory of one monitor check next to the model's own training step, as ratios (issue 9).

Run from the repository root::

    python -m benchmarks.bench_memory [--probes 16 64] [--no-auto] [--threads 1] [--jobs 2] [--device cpu|cuda]

For each model (the digits CNN of ``examples/digits.py``, training batch 64, and a small ResNet-like
net on random 3x64x64 images, training batch 32) it measures the extra memory needed by

- ``train step``: one training step (forward, cross-entropy, backward, Adam step, ``zero_grad``) at
  the training batch size, after a first, unmeasured step (so Adam's state already exists);
- ``fixed 32``: one check of ``IntegratedGradientsMonitor(probe=P, n_steps=32)`` (32 Gauss-Legendre
  points, points per forward chosen by the monitor: half the training batch size);
- ``all at once``: the same check with ``internal_batch_size=P * 32``, the behaviour before issue 9
  (every path point of the probe in one forward/backward);
- ``auto``: the check at the monitor's defaults (``n_steps="auto"``; leave out with ``--no-auto``).

The check is run by a real ``Trainer(logger=False).validate(model, val_loader)`` (no TensorBoard, so no
pictures: only the attribution work is measured). The validation loader has the training batch size, so
the monitor picks the same points per forward as it would in ``fit`` (where it reads the training
loader). Only the monitor's own hooks are measured (``on_validation_start``, which takes the probe and
runs it through the model once, and ``on_validation_epoch_end``, the check; the larger of the two is
reported): a subclass brackets them, so the validation loop's own batches are not counted, and nothing
needs to be subtracted.

How peak memory is measured. Every measurement runs in its own fresh Python process (``--jobs`` of them
at a time: memory is per process, so neighbours do not change it), after model and data setup and a
warm-up of everything else (imports, Lightning's loops, a tiny check with a probe of 2 at the
measured settings; for the training step, a first step). Then:

- CPU: the kernel's peak-RSS mark is reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0, which
  also resets ``getrusage(...).ru_maxrss``), the current RSS is the baseline, and the result is the
  peak RSS (``VmHWM``) reached during the measured call minus that baseline. The workers run with
  glibc's dynamic mmap threshold turned off (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` =
  64 KiB), so every tensor-sized buffer is mapped when allocated and returned to the system when freed:
  RSS follows the memory really in use instead of being served from pages that an earlier free kept
  in the heap. Where ``clear_refs`` cannot be written, the growth of ``ru_maxrss`` over its value at
  the baseline is used (a lower bound if setup had already peaked higher), and the table says so.
- CUDA (``--device cuda``): ``torch.cuda.reset_peak_memory_stats()`` then
  ``max_memory_allocated() - memory_allocated()`` at the start (tensors only; the caching
  allocator's reserve and the CUDA context are not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_STEPS = 32  # the fixed rule measured (the monitor's default before n_steps="auto")
MiB = 2**20
ROOT = Path(__file__).resolve().parents[1]
WARN_INEXACT = ("\nNOT EXACT: /proc/self/clear_refs could not be written, so the peaks are growths of ru_maxrss "
                "over its value after setup (lower bounds)")
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


# --- the models (Lightning is imported in the workers only: the parent process stays light) -------


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, and a (projected) skip connection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.skip = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def small_resnet(width: int = 16) -> Any:
    """A ResNet-like classifier for 3x64x64 images: a stride-2 stem, then 32x32, 16x16 and 8x8 stages."""
    from examples.common import Classifier

    class SmallResNet(Classifier):
        def __init__(self) -> None:
            super().__init__(lr=1e-3)
            w = width
            self.net = nn.Sequential(
                nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                BasicBlock(w, w, 1), BasicBlock(w, w, 1),
                BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1),
                BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return SmallResNet()


def build(name: str) -> tuple[Any, DataLoader, DataLoader]:
    """``(model, train_loader, val_loader)``; both loaders have the training batch size."""
    from examples.common import seed
    from examples.digits import DigitsCNN, DigitsDataModule

    seed(0)
    if name == "digits-cnn":
        data = DigitsDataModule()  # batch size 64
        data.setup("fit")
        return DigitsCNN(), data.train_dataloader(), data.val_dataloader()
    if name == "small-resnet":
        images = torch.rand(256, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        labels = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(1))
        train, val = TensorDataset(images[:128], labels[:128]), TensorDataset(images[128:], labels[128:])
        return small_resnet(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=32)
    raise ValueError(f"`model` can be 'digits-cnn' or 'small-resnet', got {name!r}")


MODELS = ("digits-cnn", "small-resnet")


# --- measuring ----------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMeter:
    """The largest extra memory (bytes) used inside any :meth:`measure` block, over its start."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self.exact = device, 0, True

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        elif _reset_peak_rss():
            base = _status_kib("VmRSS") * 1024
        else:
            self.exact = False
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                top = torch.cuda.max_memory_allocated(self.device)
            elif self.exact:
                top = _status_kib("VmHWM") * 1024
            else:
                top = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.peak = max(self.peak, top - base)


def measure_train_step(model: Any, loader: DataLoader, device: torch.device, meter: PeakMeter) -> dict:
    """The second of two training steps on the first training batch (already on the device)."""
    model.to(device).train()
    optimizer = model.configure_optimizers()
    x, y = (t.to(device) for t in next(iter(loader)))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up: Adam's state, first-call allocations
    start = time.perf_counter()
    with meter.measure():
        step()
    return {"points": len(x), "seconds": time.perf_counter() - start}


def measure_check(model: Any, loader: DataLoader, device: torch.device, meter: PeakMeter, probe: int,
                  settings: dict[str, Any]) -> dict:
    """One check by ``Trainer.validate``, after a tiny warm-up check; only the monitor's hooks are metered."""
    from lightning.pytorch import Trainer

    from ig_lightning import IntegratedGradientsMonitor

    class MeteredMonitor(IntegratedGradientsMonitor):
        """The monitor, with its validation hooks bracketed by the meter."""

        def on_validation_start(self, trainer: Trainer, pl_module: Any) -> None:
            with meter.measure():
                super().on_validation_start(trainer, pl_module)

        def on_validation_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
            with meter.measure():
                super().on_validation_epoch_end(trainer, pl_module)

    def validate(monitor: IntegratedGradientsMonitor) -> None:
        trainer = Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                          callbacks=[monitor], limit_val_batches=1, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False)
        trainer.validate(model, loader, verbose=False)

    # Warm-up with the measured settings on a probe of 2: one-time costs (first calls, the heap's growth) are
    # not the check's.
    validate(IntegratedGradientsMonitor(probe=2, **{**settings, "integration": {"internal_batch_size": 2}}))
    monitor = MeteredMonitor(probe=probe, **settings)
    start = time.perf_counter()
    validate(monitor)
    seconds = time.perf_counter() - start
    steps = monitor.last_metrics.get("ig/n_steps_mean", N_STEPS)
    return {"points": monitor._batch, "seconds": seconds, "n_steps": steps}


def variants(probe: int, auto: bool) -> dict[str, dict[str, Any]]:
    """Monitor arguments of each measured check, by name."""
    found = {"fixed 32": {"n_steps": N_STEPS},
             "all at once": {"n_steps": N_STEPS, "integration": {"internal_batch_size": probe * N_STEPS}}}
    if auto:
        found["auto"] = {}  # the monitor's defaults
    return found


def worker(spec: dict) -> dict:
    """One measurement, in this (fresh) process."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model, train_loader, val_loader = build(spec["model"])
    meter = PeakMeter(device)
    if spec["what"] == "train step":
        result = measure_train_step(model, train_loader, device, meter)
    else:
        result = measure_check(model, val_loader, device, meter, spec["probe"], spec["settings"])
    return {**result, "peak": meter.peak, "exact": meter.exact}


def run_worker(spec: dict) -> dict:
    """:func:`worker` in a fresh process."""
    env = {**os.environ, **WORKER_ENV}
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--worker", json.dumps(spec)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the table ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[tuple[str, int, str], float]:
    """Measure every model, probe and check, print the table; returns check/step by (model, probe, check)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, nargs="+", default=[16, 64], help="probe sizes (default: 16 64)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--no-auto", dest="auto", action="store_false", help="leave out the n_steps='auto' check")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the workers (default 1: memory barely depends on it, and one thread "
                             "keeps the run short on a busy machine)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--jobs", type=int, default=2, help="measurements run at once, each in its own process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here; nothing measured.")
        return {}
    base = {"threads": args.threads, "device": args.device}
    method = "tensors allocated (CUDA)" if args.device == "cuda" else "peak RSS growth, one fresh process each"
    print(f"device={args.device} threads={args.threads} n_steps={N_STEPS} gausslegendre float32 "
          f"torch={torch.__version__}; {method}", flush=True)
    header = (f"{'model':<13} {'probe':>5} {'check':<17} {'points/fwd':>10} {'step MiB':>9} {'check MiB':>10}"
              f" {'check/step':>10} {'check s':>8}")
    print(header, flush=True)
    print("-" * len(header))
    specs = {(name, 0, "train step"): {**base, "model": name, "what": "train step"} for name in args.models}
    for name in args.models:
        for probe in args.probes:
            for label, settings in variants(probe, args.auto).items():
                specs[name, probe, label] = {**base, "model": name, "what": "check", "probe": probe,
                                             "settings": settings}
    ratios: dict[tuple[str, int, str], float] = {}
    exact = True
    # Each measurement is its own process, so running two at once changes none of them (RSS and CUDA
    # allocator statistics are per process); it only halves the time spent importing Lightning.
    with ThreadPoolExecutor(args.jobs) as pool:
        pending = {key: pool.submit(run_worker, spec) for key, spec in specs.items()}
        for name in args.models:
            step = pending[name, 0, "train step"].result()
            exact &= step["exact"]
            step_mib = step["peak"] / MiB
            for probe in args.probes:
                for label in variants(probe, args.auto):
                    check = pending[name, probe, label].result()
                    exact &= check["exact"]
                    check_mib = check["peak"] / MiB
                    ratios[name, probe, label] = check_mib / step_mib
                    shown = label if check["n_steps"] == N_STEPS else f"{label} ({check['n_steps']:.0f} pts)"
                    print(f"{name:<13} {probe:>5} {shown:<17} {check['points']:>10} {step_mib:>9.1f}"
                          f" {check_mib:>10.1f} {ratios[name, probe, label]:>10.2f} {check['seconds']:>8.1f}",
                          flush=True)
    print(f"step MiB: one training step at the training batch size; check MiB: one check (the monitor's hooks "
          f"only); check s: wall time of that validate, one run, indicative only{'' if exact else WARN_INEXACT}")
    print("Target (issue 9): check/step <= 1 by default. Before (all at once) / after (points per forward chosen):")
    for name in args.models:
        for probe in args.probes:
            before = ratios[name, probe, "all at once"]
            after = [f"{before / ratios[name, probe, label]:.1f}x less with {label}"
                     for label in ("fixed 32", "auto") if (name, probe, label) in ratios]
            print(f"  {name}, probe {probe}: " + ", ".join(after))
    return ratios


if __name__ == "__main__":
    main()
