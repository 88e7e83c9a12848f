"""The drift alarm on a suite of real training runs: false alarms on healthy runs, detection of changes of reasons.

``python -m benchmarks.bench_alarm [--seeds 3] [--epochs 18] [--quick]``. Each scenario is trained once
(18 epochs, one check per epoch) with ``IntegratedGradientsMonitor(drift_threshold=None)``, recording
``ig/drift`` and ``ig/drift_class_max`` after every check. Each alarm setting is then evaluated by replaying
those series through the project's own ``DriftHistory`` (the ratio of ``drift_threshold="auto"``) and the
counting of ``BreachPolicy`` (warmup, patience over patience_window), so every setting sees the same runs.

Scenarios: scikit-learn's digits (small CNN on 1x8x8), breast cancer and wine (MLPs on standardized features).
- healthy: Adam at lr 1e-3, 3e-3, 1e-2, and 3e-3 with a cosine schedule; any alarm is a false alarm.
- changes (Adam 3e-3), injected into the TRAINING data from epoch ``CHANGE`` (0-based) on; the first check
  after the change is check ``CHANGE + 1`` (checks count from 1, check k ends epoch k-1). Alarms at earlier
  checks are false alarms; detection delay = first alarm check - (CHANGE + 1).
  * shortcut: a mark (digits: 2x2 bright patch in the top-left corner; tabular: the last feature set to +4
    std) on every training example of class 0, and on 30% of the other classes' examples with their label
    flipped to 0 (poisoned). The validation examples of class 0 carry the mark from the start, so the
    (fixed) probe holds marked class-0 examples whose reasons can move to the mark.
  * swap: 40% of the training labels of two classes (digits 3/8, tabular 0/1) are swapped.
  * gradual: the shortcut with mark strength and poisoned share ramping linearly over epochs 8-14.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import statistics
import sys
import time
import warnings

import torch
from torch import nn

CHANGE = 8  # 0-based epoch from which the training data change
HEALTHY = {"lr1e-3": (1e-3, False), "lr3e-3": (3e-3, False), "lr1e-2": (1e-2, False), "lr3e-3cos": (3e-3, True)}
CHANGES = ("shortcut", "swap", "gradual")
DATASETS = ("digits", "cancer", "wine")
PROBE, N_STEPS, BATCH = 32, 16, 32


# --- scenario definitions --------------------------------------------------------------------------


def load(name: str, seed: int):
    """Train/validation tensors (split by ``seed``; tabular standardized with the training statistics)."""
    from sklearn import datasets
    loader = {"digits": datasets.load_digits, "cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}
    x, y = loader[name](return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = len(x) // 4
    val, train = order[:n_val], order[n_val:]
    if name == "digits":
        x = (x / 16.0).reshape(-1, 1, 8, 8)
    else:
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        x = (x - mean) / std
    return x[train], y[train], x[val], y[val]


def add_mark(x: torch.Tensor, strength: float) -> torch.Tensor:
    x = x.clone()
    if x.dim() == 3:  # 1x8x8 image
        x[:, :2, :2] = strength
    else:
        x[-1] = 4.0 * strength
    return x


class ChangingDataset(torch.utils.data.Dataset):
    """The training set, whose examples depend on ``self.epoch`` (set at every training epoch's start)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, change: str | None, seed: int) -> None:
        self.x, self.y, self.change, self.epoch = x, y, change, 0
        g = torch.Generator().manual_seed(1000 + seed)
        u = torch.rand(len(y), generator=g)
        self.pair = (3, 8) if int(y.max()) > 2 else (0, 1)
        self.swapped = ((y == self.pair[0]) | (y == self.pair[1])) & (u < 0.4)
        self.u = u  # the poisoned share of non-target examples: those with u < share

    def strength(self) -> float:
        if self.change is None or self.epoch < CHANGE:
            return 0.0
        return min(1.0, (self.epoch - CHANGE + 1) / 7) if self.change == "gradual" else 1.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x, y, s = self.x[i], self.y[i], self.strength()
        if s == 0.0:
            return x, y
        if self.change == "swap":
            if self.swapped[i]:
                y = torch.tensor(self.pair[1] if int(y) == self.pair[0] else self.pair[0])
            return x, y
        if int(y) == 0:
            return add_mark(x, s), y
        if self.u[i] < 0.3 * s:
            return add_mark(x, s), torch.tensor(0)
        return x, y


def make_model(name: str) -> nn.Module:
    if name == "digits":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10))
    features, classes = {"cancer": (30, 2), "wine": (13, 3)}[name]
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, classes))


def scenarios(seeds: int) -> list[dict]:
    out = []
    for data in DATASETS:
        for seed in range(seeds):
            for variant, (lr, cosine) in HEALTHY.items():
                out.append({"data": data, "seed": seed, "variant": variant, "lr": lr, "cosine": cosine, "change": None})
            for change in CHANGES:
                out.append({"data": data, "seed": seed, "variant": change, "lr": 3e-3, "cosine": False,
                            "change": change})
    return out


# --- one training run ------------------------------------------------------------------------------


def run_scenario(sc: dict, epochs: int) -> dict:
    """Train one scenario; return the recorded series per check (``None`` drift at check 1)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    from ig_lightning import IntegratedGradientsMonitor

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    pl.seed_everything(sc["seed"], verbose=False)
    xt, yt, xv, yv = load(sc["data"], sc["seed"])
    if sc["change"] in ("shortcut", "gradual"):  # the probe can show the new reason on class 0
        xv = torch.stack([add_mark(x, 1.0) if int(y) == 0 else x for x, y in zip(xv, yv)])
    train_set = ChangingDataset(xt, yt, sc["change"], sc["seed"])
    train = torch.utils.data.DataLoader(train_set, batch_size=BATCH, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=128)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.correct, self.seen, self.acc = make_model(sc["data"]), 0, 0, []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.correct += int((self(batch[0]).argmax(1) == batch[1]).sum())
            self.seen += len(batch[1])

        def on_validation_epoch_end(self):
            self.acc.append(self.correct / max(self.seen, 1))
            self.correct = self.seen = 0

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=sc["lr"])
            if not sc["cosine"]:
                return opt
            return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)]

    monitor = IntegratedGradientsMonitor(probe=PROBE, n_steps=N_STEPS,
                                         alarm=dict(metric="cosine", reference="previous", threshold=None),
                                         faithfulness=dict(deletion=False), display=dict(log_images=False))
    records: list[dict] = []

    class Recorder(Callback):  # after the monitor: copies its metrics; drives the data's epoch
        def on_train_epoch_start(self, trainer, pl_module):
            train_set.epoch = trainer.current_epoch

        def on_validation_epoch_end(self, trainer, pl_module):
            m = monitor.last_metrics
            records.append({"drift": m.get("ig/drift"), "drift_class_max": m.get("ig/drift_class_max")})

    module = Module()
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[monitor, Recorder()], num_sanity_val_steps=0,
                         enable_progress_bar=False, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    start = time.perf_counter()
    trainer.fit(module, train, val)
    return {**sc, "records": records, "acc": module.acc, "seconds": time.perf_counter() - start}


# --- replay ----------------------------------------------------------------------------------------


SETTINGS = {  # name: (series, "fixed" or "auto", threshold or factor, window, warmup, patience)
    "README recipe: 0.3, warmup 2, patience 2": ("drift", "fixed", 0.3, None, 2, 2),
    "fixed 0.3, warmup 2, patience 1": ("drift", "fixed", 0.3, None, 2, 1),
    "fixed 0.1, warmup 2, patience 1": ("drift", "fixed", 0.1, None, 2, 1),
    **{f"auto, probe, factor {f}, window 5": ("drift", "auto", f, 5, 0, 1) for f in (3, 4, 5, 6)},
    **{f"auto, class, factor {f}, window 5": ("drift_class_max", "auto", f, 5, 0, 1) for f in (3, 4, 5, 6)},
    **{f"auto, class, factor 4, window {w}": ("drift_class_max", "auto", 4, w, 0, 1) for w in (3, 8)},
    **{f"auto, probe, factor 4, window {w}": ("drift", "auto", 4, w, 0, 1) for w in (3, 8)},
}


def ratios(records: list[dict], series: str, window: int) -> list[float | None]:
    """The drift ratio per check, exactly as ``measure._drift`` computes it (ratio, then update)."""
    from ig_lightning.monitor.tracking import DriftHistory
    history, out = DriftHistory(window), []
    for m in records:
        value = m[series]
        if value is None:  # check 1: no reference yet, nothing is computed or remembered
            out.append(None)
            continue
        out.append(history.ratio(series, value))
        history.update({series: value})
    return out


def replay(setting: tuple, records: list[dict]) -> list[int]:
    """The checks (from 1) at which the alarm acts, mirroring ``BreachPolicy.find`` / ``act``."""
    series, kind, limit, window, warmup, patience = setting
    values = ratios(records, series, window) if kind == "auto" else [m[series] for m in records]
    recent, alarms = [], []
    for check, value in enumerate(values, 1):
        breached = check > warmup and value is not None and value > limit
        recent = (recent + [breached])[-patience:]  # patience_window = patience
        if breached and sum(recent) >= patience:
            alarms.append(check)
    return alarms


# --- tables ----------------------------------------------------------------------------------------


def peak(values, start: int = 1, stop: int | None = None) -> float:
    found = [v for v in values[start - 1:stop] if v is not None]
    return max(found) if found else float("nan")


def print_tables(runs: list[dict]) -> None:
    first = CHANGE + 1  # the first check after the change
    healthy = [r for r in runs if r["change"] is None]
    changed = [r for r in runs if r["change"] is not None]
    print("\n| setting | healthy runs with an alarm | change runs alarmed before the change | "
          + " | ".join(f"{c} caught (by 2nd check after)" for c in CHANGES) + " | delay median / max (shortcut, swap) |")
    print("| --- " * (4 + len(CHANGES)) + "|")
    for name, setting in SETTINGS.items():
        fa = sum(bool(replay(setting, r["records"])) for r in healthy)
        pre = sum(any(c < first for c in replay(setting, r["records"])) for r in changed)
        cells, delays = [], []
        for change in CHANGES:
            group = [r for r in changed if r["change"] == change]
            d = [next((c - first for c in replay(setting, r["records"]) if c >= first), None) for r in group]
            caught = [x for x in d if x is not None]
            cells.append(f"{len(caught)}/{len(group)} ({sum(x <= 1 for x in caught)})")
            if change != "gradual":
                delays += caught
        delay = f"{statistics.median(delays):g} / {max(delays)}" if delays else "-"
        print(f"| {name} | {fa}/{len(healthy)} | {pre}/{len(changed)} | " + " | ".join(cells) + f" | {delay} |")

    print("\nHealthy ranges (drift over checks >= 3, i.e. after warmup 2; ratios from check 5, window 5):")
    print("| dataset | max ig/drift | max ig/drift_class_max | max ratio, probe | max ratio, class |")
    print("| --- | --- | --- | --- | --- |")
    for data in DATASETS + ("all",):
        group = [r for r in healthy if data in ("all", r["data"])]
        if not group:
            continue
        cols = [max(peak([m["drift"] for m in r["records"]], 3) for r in group),
                max(peak([m["drift_class_max"] for m in r["records"]], 3) for r in group),
                max(peak(ratios(r["records"], "drift", 5)) for r in group),
                max(peak(ratios(r["records"], "drift_class_max", 5)) for r in group)]
        print(f"| {data} | " + " | ".join(f"{v:.3f}" for v in cols) + " |")

    print(f"\nChange runs: ratio (window 5) at the first two checks after the change ({first}, {first + 1}), "
          "min / median over runs:")
    print("| change | probe ratio | class ratio | drift at check 9-10 (max), min over runs |")
    print("| --- | --- | --- | --- |")
    for change in CHANGES:
        group = [r for r in changed if r["change"] == change]
        p = [peak(ratios(r["records"], "drift", 5), first, first + 1) for r in group]
        c = [peak(ratios(r["records"], "drift_class_max", 5), first, first + 1) for r in group]
        d = [peak([m["drift"] for m in r["records"]], first, first + 1) for r in group]
        print(f"| {change} | {min(p):.2f} / {statistics.median(p):.2f} | {min(c):.2f} / {statistics.median(c):.2f} "
              f"| {min(d):.3f} |")

    print("\nPer scenario: max drift (checks>=3) probe/class, max ratio w5 probe/class over all checks, "
          f"ratio at checks {first}-{first + 1} probe/class, val acc before change/final, seconds")
    for r in runs:
        rec = r["records"]
        rp, rc = ratios(rec, "drift", 5), ratios(rec, "drift_class_max", 5)
        print(f"  {r['data']:<6} s{r['seed']} {r['variant']:<10} "
              f"drift {peak([m['drift'] for m in rec], 3):.3f}/{peak([m['drift_class_max'] for m in rec], 3):.3f}  "
              f"ratio {peak(rp):5.2f}/{peak(rc):5.2f}  after {peak(rp, first, first + 1):5.2f}/"
              f"{peak(rc, first, first + 1):5.2f}  acc {r['acc'][min(CHANGE, len(r['acc'])) - 1]:.3f}/"
              f"{r['acc'][-1]:.3f}  {r['seconds']:.1f}s")


def _work(job):
    return run_scenario(*job)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed (a smoke run)")
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    print(f"bench_alarm, {datetime.date.today()}: python -m benchmarks.bench_alarm {' '.join(sys.argv[1:])}")
    print(f"probe {PROBE} (stratified), n_steps {N_STEPS} gausslegendre, cosine drift vs previous check, "
          f"{args.epochs} epochs, batch {BATCH}, {seeds} seeds, change from epoch {CHANGE} (first check after: "
          f"{CHANGE + 1}); 'caught a/b (c)': a of b runs alarmed after the change, c of them by check {CHANGE + 2}")
    jobs = [(sc, args.epochs) for sc in scenarios(seeds)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        runs = pool.map(_work, jobs, chunksize=1)
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s")
    print_tables(runs)
    return runs


if __name__ == "__main__":
    main()
