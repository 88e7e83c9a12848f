"""Baselines and noise, measured on trust: which ``baseline``/noise setting gives maps that pass the randomisation
sanity check, are faithful on the deletion/insertion curves, add up, and at what cost (issue 22 item 6).

Model families (each from the examples, trained a few epochs):

- ``digits``: the digits CNN of ``examples/digits.py`` (8x8 grey images in ``[0, 1]``);
- ``resnet``: ``benchmarks.bench_memory.small_resnet`` (probe of 8) on generated 32x32 RGB images: 10 classes, each a
  blob of
  its own colour at a random place on a dim noisy background (``BlobsDataModule`` below);
- ``text``: the bag-of-embeddings question classifier of ``examples/text.py``, IG at its ``nn.Embedding``;
- ``bert``: the tiny BERT of ``examples/transformer.py`` (1000 questions), IG at its word embeddings;
- ``tabular``: the MLP on the standardised breast cancer table of ``examples/tabular.py``.

Settings per input kind (``*_SETTINGS``): images: zero (``None``), ``"blur"``, ``"uniform"``, ``"gaussian"``,
``"data"``, black+white (``[min, max]`` of the data: averaged over both), zero + noise (``noise_samples=8``);
token ids at an embedding layer: the example's default (token 0, the pad token), ``"data"`` (and, for BERT,
``"special_tokens"``); blur, uniform, gaussian and noise do not apply to ids (the monitor refuses them: ids are not
floating point). Tabular: zero (the average patient), ``"uniform"``, ``"gaussian"``, ``"data"``, zero + noise.
Draws use ``integration.baseline_samples=8`` and ``integration.seed=<seed>``.

How. The monitor never changes training (it restores the random state and the model bit-exactly), so each
(model, seed) is trained once, with one monitor per setting in the same trainer, each with its own ``name``
(keys ``ig/<name>/...``). Every monitor starts from its example's ``make_monitor`` (its probe size, names,
``faithfulness.top_k``), with ``display={"log_images": False}``, the rule tests off (not the subject here), the
deletion/insertion curves on (8 points) and ``faithfulness.sanity_every_n_checks=1`` so that the last check holds
the sanity values (``sanity_steps=1``: only the fully randomised model, the one ``sanity_spearman`` reports). The
monitors check once, after the last epoch (``every_n_epochs=epochs``; ``--every N`` checks
more often), after an unreported warm-up monitor (probe of 4) has taken the process's first-call costs. The curves
of images fill removed pixels from their neighbours (``fill="neighbours"``, ROAD), the same for every setting, so
the images' AUCs compare maps only; ids and table rows can only be filled with the (first) baseline, so there each
setting's curves also remove units differently (SRG cancels much of that). From the last check: ``sanity_spearman``
(rank correlation of
``|attribution|`` between the trained and the fully randomised model: lower is better), ``sanity_spearman_signed``,
``deletion_auc`` (lower is better), ``insertion_auc`` and ``srg`` (higher is better), ``completeness_error`` (mean
relative), ``baseline_confidence`` (the model's top-class probability at the first baseline; not logged for
``"data"``), and the gradient evaluations per example (``last_result.n_evaluations``, summed over the example's
paths: baseline draws x noise copies). Times: each monitor's own hooks are timed (wrapped on the instance): the
IG attribution of a check, and the whole check (attribution, curves, sanity check, deletion, rules), both as means
per check. Values are means over the seeds.

Run ``python -m benchmarks.bench_trust --seeds 0 1 --epochs 3`` (``--families digits resnet text bert tabular``,
``--bert-epochs``); the table is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from examples import digits, tabular, text
from examples.common import Split, SplitDataModule, make_trainer, quiet, seed
from ig_lightning import Display, IntegratedGradientsMonitor
from ig_lightning.monitor import trust

METRICS = ("sanity_spearman", "sanity_spearman_signed", "deletion_auc", "insertion_auc", "srg",
           "completeness_error", "baseline_confidence")
# Settings a kind of input gets: label -> monitor arguments (``"<min>"``/``"<max>"``: the data's extremes).
ZERO_NOISE = {"baseline": None, "integration": {"noise_samples": 8}}
IMAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "zero": {"baseline": None},
    "blur": {"baseline": "blur"},
    "uniform": {"baseline": "uniform"},
    "gaussian": {"baseline": "gaussian"},
    "data": {"baseline": "data"},
    "black+white": {"baseline": ["<min>", "<max>"]},
    "zero+noise": ZERO_NOISE,
}
IMAGE_FAMILIES = ("digits", "resnet")
WARM_UP = "(warm-up)"
TOKEN_SETTINGS: dict[str, dict[str, Any]] = {"pad (default)": {"baseline": None}, "data": {"baseline": "data"}}
BERT_SETTINGS = {**TOKEN_SETTINGS, "special_tokens": {"baseline": "special_tokens"}}
TABULAR_SETTINGS: dict[str, dict[str, Any]] = {
    "zero (default)": {"baseline": None},
    "uniform": {"baseline": "uniform"},
    "gaussian": {"baseline": "gaussian"},
    "data": {"baseline": "data"},
    "zero+noise": ZERO_NOISE,
}


# --- the generated images of the ResNet ---------------------------------------------------------------------------

PALETTE = torch.tensor([
    [1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1], [1.0, 0.1, 1.0],
    [0.1, 1.0, 1.0], [1.0, 0.55, 0.1], [0.55, 0.1, 1.0], [0.1, 0.55, 0.3], [0.95, 0.95, 0.95],
])


def blobs(n: int, seed_: int = 0, side: int = 32) -> Split:
    """``n`` RGB images ``(n, 3, side, side)`` in ``[0, 1]``: a dim noisy background with one soft round blob of
    the class's colour (``PALETTE``), radius 3-6 pixels, at a random place; and the class."""
    generator = torch.Generator().manual_seed(seed_)
    labels = torch.randint(len(PALETTE), (n,), generator=generator)
    images = 0.3 * torch.rand(n, 3, side, side, generator=generator)
    centre = torch.randint(6, side - 6, (n, 2), generator=generator).float()
    radius = 3 + 3 * torch.rand(n, generator=generator)
    grid = torch.arange(side).float()
    d2 = (grid.view(1, side, 1) - centre[:, 0].view(n, 1, 1)) ** 2 + \
        (grid.view(1, 1, side) - centre[:, 1].view(n, 1, 1)) ** 2
    mask = torch.sigmoid(2.0 * (radius.view(n, 1, 1) - d2.sqrt())).unsqueeze(1)  # soft edge
    images = images * (1 - mask) + PALETTE[labels].view(n, 3, 1, 1) * mask
    return images.clamp(0, 1), labels


class BlobsDataModule(SplitDataModule):
    """:func:`blobs`, split 80/20."""

    def __init__(self, n: int = 2000, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.n = n

    def load(self) -> Split:
        return blobs(self.n, self.seed)


# --- the families -------------------------------------------------------------------------------------------------

def family(name: str, seed_: int) -> tuple[Any, SplitDataModule, Callable[..., IntegratedGradientsMonitor],
                                           dict[str, dict[str, Any]]]:
    """Model, data, the example's ``make_monitor`` and the settings of a family (its key ``IMAGE_FAMILIES``: whose
    curves fill removed pixels from their neighbours)."""
    if name == "digits":
        return digits.DigitsCNN(), digits.DigitsDataModule(seed=seed_), digits.make_monitor, IMAGE_SETTINGS
    if name == "resnet":
        from benchmarks.bench_memory import small_resnet
        from examples.common import monitor_with

        def make_monitor(**overrides: Any) -> IntegratedGradientsMonitor:
            return monitor_with({"probe": 8, "faithfulness": {"top_k": 16},
                                 "display": Display(class_names=[str(c) for c in range(10)])}, overrides)

        return small_resnet(), BlobsDataModule(seed=seed_), make_monitor, IMAGE_SETTINGS
    if name == "text":
        return text.QuestionClassifier(), text.QuestionsDataModule(seed=seed_), text.make_monitor, TOKEN_SETTINGS
    if name == "bert":
        from examples import transformer

        return (transformer.BertQuestionClassifier(), transformer.QuestionsDataModule(n=1000, seed=seed_),
                transformer.make_monitor, BERT_SETTINGS)
    if name == "tabular":
        return (tabular.TabularMLP(), tabular.BreastCancerDataModule(batch_size=32, seed=seed_), tabular.make_monitor,
                TABULAR_SETTINGS)
    raise ValueError(f"unknown family {name!r}")


def timed(monitor: IntegratedGradientsMonitor, label: str, errors: dict[str, str]) -> IntegratedGradientsMonitor:
    """``monitor`` with its hooks (the whole check), its IG attribution and its sanity stage timed, in
    ``monitor.seconds``; a hook that raises records its traceback in ``errors[label]`` and turns the monitor off
    (the other settings' monitors train on)."""
    monitor.seconds = {"check": 0.0, "ig": 0.0, "sanity": 0.0}
    monitor.failed = False

    def clocked(fn: Callable[..., Any], key: str, guard: bool) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            if guard and monitor.failed:
                return None
            start = time.perf_counter()
            try:
                return fn(*args)
            except Exception:
                if not guard:
                    raise
                monitor.failed = True
                errors[label] = traceback.format_exc()
                return None
            finally:
                monitor.seconds[key] += time.perf_counter() - start
        return run

    monitor.on_train_start = clocked(monitor.on_train_start, "check", True)
    monitor.on_validation_epoch_end = clocked(monitor.on_validation_epoch_end, "check", True)
    monitor._attribute = clocked(monitor._attribute, "ig", False)
    sanity = monitor.stage(trust.Sanity)
    if sanity is not None:
        sanity.update = clocked(sanity.update, "sanity", False)
    return monitor


def resolve(value: Any, low: float, high: float) -> Any:
    if isinstance(value, list):
        return [resolve(v, low, high) for v in value]
    return {"<min>": low, "<max>": high}.get(value, value) if isinstance(value, str) else value


def make_monitors(make_monitor: Callable[..., IntegratedGradientsMonitor], settings: dict[str, dict[str, Any]],
                  seed_: int, low: float, high: float, fill: str, every: int, errors: dict[str, str]) -> dict[str, Any]:
    """One named monitor per setting (a setting whose monitor cannot be built is left out, its error kept), after
    an unreported warm-up monitor (probe of 4) that takes the first-call costs of the process and the model."""
    monitors = {}
    common: dict[str, Any] = {
        "rule_extraction": {"test": False}, "every_n_epochs": every, "display": {"log_images": False},
        "faithfulness": {"curves": True, "curve_points": 8, "fill": fill, "sanity_every_n_checks": 1,
                         "sanity_steps": 1},
    }
    monitors[WARM_UP] = timed(make_monitor(name="warmup", probe=4, **common), WARM_UP, errors)
    for i, (label, setting) in enumerate(settings.items()):
        integration = {"baseline_samples": 8, "seed": seed_, **setting.get("integration", {})}
        try:
            monitor = make_monitor(name=f"s{i}", baseline=resolve(setting["baseline"], low, high),
                                   integration=integration, **common)
            monitors[label] = timed(monitor, label, errors)
        except Exception:  # noqa: BLE001 - reported, the cell left out
            errors[label] = traceback.format_exc()
    return monitors


def one_run(name: str, seed_: int, epochs: int, root: str, every: int | None = None) -> dict[str, Any]:
    """Train ``name`` once with every setting's monitor (checking every ``every`` epochs, default: once, after the
    last epoch); each setting's numbers, the accuracy and the errors."""
    seed(seed_)
    model, data, make_monitor, settings = family(name, seed_)
    data.setup("fit")
    x_val = data.val_set.tensors[0]
    low, high = float(x_val.min()), float(x_val.max())
    errors: dict[str, str] = {}
    fill = "neighbours" if name in IMAGE_FAMILIES else "baseline"
    monitors = make_monitors(make_monitor, settings, seed_, low, high, fill, every or epochs, errors)
    trainer = make_trainer(f"trust-{name}", list(monitors.values()), max_epochs=epochs, root=root, verbose=False)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    total = time.perf_counter() - start
    out: dict[str, Any] = {"acc": float(trainer.callback_metrics.get("val/acc", math.nan)), "seconds": total,
                           "settings": {}, "errors": errors}
    for label, monitor in monitors.items():
        if label == WARM_UP:
            continue
        prefix = monitor.config.prefix + "/"
        metrics = {k[len(prefix):]: v for k, v in monitor.last_metrics.items() if k.startswith(prefix)}
        if monitor.failed or monitor.last_result is None:
            errors.setdefault(label, "no check ran")
            continue
        checks = max(monitor.checks, 1)
        row = {m: float(metrics.get(m, math.nan)) for m in METRICS}
        row.update(evals=float(monitor.last_result.n_evaluations.float().mean()),
                   ig_s=monitor.seconds["ig"] / checks, check_s=monitor.seconds["check"] / checks,
                   sanity_s=monitor.seconds["sanity"] / checks, checks=monitor.checks)
        out["settings"][label] = row
    out["check_seconds"] = sum(m.seconds["check"] for m in monitors.values())
    out["fill"] = fill
    return out


def mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def fmt(value: float, digits_: int = 3) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits_}f}"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    header = ("| model (val acc) | setting | sanity ρ abs (↓) | sanity ρ signed | deletion AUC (↓) | insertion AUC (↑) "
              "| SRG (↑) | completeness err | baseline conf. | grad evals / example | IG s / check "
              "| check s / check (all stages) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        acc = mean([r["acc"] for r in runs])
        labels = list(dict.fromkeys(label for r in runs for label in r["settings"]))
        for i, label in enumerate(labels):
            rows = [r["settings"][label] for r in runs if label in r["settings"]]
            def cell(key: str, rows: list[dict[str, Any]] = rows) -> float:
                return mean([row[key] for row in rows])

            model = f"{name} ({acc:.2f})" if i == 0 else ""
            lines.append(f"| {model} | {label} | {fmt(cell('sanity_spearman'))} "
                         f"| {fmt(cell('sanity_spearman_signed'))} "
                         f"| {fmt(cell('deletion_auc'))} | {fmt(cell('insertion_auc'))} | {fmt(cell('srg'))} "
                         f"| {fmt(cell('completeness_error'), 4)} | {fmt(cell('baseline_confidence'), 2)} "
                         f"| {fmt(cell('evals'), 0)} | {fmt(cell('ig_s'), 2)} | {fmt(cell('check_s'), 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bert-epochs", type=int, default=None, help="epochs of the tiny BERT (default: --epochs)")
    parser.add_argument("--every", type=int, default=None,
                        help="check every N epochs (default: once, after the last epoch)")
    parser.add_argument("--families", nargs="+", default=["digits", "resnet", "text", "bert", "tabular"])
    args = parser.parse_args(argv)
    quiet()
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as root:
        for name in args.families:
            epochs = args.bert_epochs if name == "bert" and args.bert_epochs else args.epochs
            for s in args.seeds:
                run = one_run(name, s, epochs, root, args.every)
                results.setdefault(name, []).append(run)
                print(f"{name} seed {s} ({epochs} epochs, curves fill {run['fill']!r}): val acc {run['acc']:.3f}, "
                      f"fit {run['seconds']:.0f} s "
                      f"(monitors {run['check_seconds']:.0f} s)", flush=True)
                for label, row in run["settings"].items():
                    print(f"  {label}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
                for label, error in run["errors"].items():
                    print(f"  {label}: FAILED\n{error}", flush=True)
    print()
    print(table(results))
    return results


if __name__ == "__main__":
    main()
