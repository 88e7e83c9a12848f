"""Warm-started checks against cold ones, side by side, check after check (issue 16).

Run from the repository root::

    python -m benchmarks.bench_warm [--checks 8] [--probe 64]

For the digits CNN, the text classifier and the tiny BERT of ``examples/`` (random init, trained here for one
epoch between checks, plain PyTorch loops), every check explains the probe as the monitor does (float32,
``n_steps="auto"``, tolerance 0.01, ``max_steps`` 256, the label as target; at the embedding layer for the token
models) twice on the same snapshot: cold, and warm from the previous warm check's meshes. A float64
1,024-point Gauss-Legendre reference of the same snapshot gives the accuracy: the share of examples within 1%
relative L2. Printed per check: evaluations per example and rounds of both, their ratio, and both accuracies;
then, from the second check on, the means against the issue's goals (at most 0.6x the evaluations, at most 2
rounds, at least 95% within 1%).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from ig_lightning import integrated_gradients

REFERENCE_STEPS = 1024
TOLERANCE, MAX_STEPS = 0.01, 256


def epochs(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int, batch: int,
           loss_of: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    """One epoch of training on ``n`` examples in shuffled batches; ``loss_of(rows)`` is a batch's loss."""

    def epoch() -> None:
        model.train()
        order = torch.randperm(n)
        for i in range(0, n, batch):
            loss = loss_of(order[i:i + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()

    return epoch


def digits(probe: int) -> tuple[torch.nn.Module, Callable, Callable]:
    from examples.digits import DigitsCNN, digits_tensors

    x, y = digits_tensors()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    train_x, train_y, px, py = x[:1400], y[:1400], x[1400:1400 + probe], y[1400:1400 + probe]

    epoch = epochs(model, opt, len(train_x), 64, lambda b: F.cross_entropy(model(train_x[b]), train_y[b]))

    def explain(m: torch.nn.Module, n_steps, **kw):
        dtype = next(m.parameters()).dtype
        return integrated_gradients(m, px.to(dtype), target=py, n_steps=n_steps, **kw)

    return model, epoch, explain


def text(probe: int) -> tuple[torch.nn.Module, Callable, Callable]:
    from examples.text import QuestionClassifier, questions

    x, y = questions(2000)
    model = QuestionClassifier()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    train_x, train_y, px, py = x[:1600], y[:1600], x[1600:1600 + probe], y[1600:1600 + probe]

    epoch = epochs(model, opt, len(train_x), 64, lambda b: F.cross_entropy(model(train_x[b]), train_y[b]))

    def explain(m: torch.nn.Module, n_steps, **kw):
        return integrated_gradients(m, px, target=py, layer=m.embedding, baselines=0, n_steps=n_steps, **kw)

    return model, epoch, explain


def bert(probe: int) -> tuple[torch.nn.Module, Callable, Callable]:
    from examples.transformer import TOKENIZER, BertQuestionClassifier, questions

    x, y = questions(2000)
    mask = (x != TOKENIZER.pad_token_id).long()
    model = BertQuestionClassifier()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    train = x[:1600], y[:1600], mask[:1600]
    px, py, pm = x[1600:1600 + probe], y[1600:1600 + probe], mask[1600:1600 + probe]

    epoch = epochs(model, opt, 1600, 32, lambda b: F.cross_entropy(model(train[0][b], train[2][b]).logits, train[1][b]))

    def explain(m: torch.nn.Module, n_steps, **kw):
        return integrated_gradients(lambda ids, am: m(ids, am).logits, px, target=py, n_steps=n_steps,
                                    layer=m.model.bert.embeddings.word_embeddings, baselines=TOKENIZER.pad_token_id,
                                    additional_forward_args=(pm,), **kw)

    return model, epoch, explain


MODELS = {"digits CNN": digits, "text classifier": text, "tiny BERT": bert}


def within(result, reference: torch.Tensor) -> float:
    attr = result.attributions.double().reshape(len(reference), -1)
    err = (attr - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)
    return float((err <= 0.01).double().mean())


def table(name: str, checks: int, probe: int) -> dict[str, float]:
    torch.manual_seed(0)
    model, epoch, explain = MODELS[name](probe)
    print(f"\n{name}: probe {probe}, {checks} checks, one epoch apart")
    print(f"{'check':>5} {'cold evals':>10} {'warm evals':>10} {'ratio':>6} {'cold rounds':>11} {'warm rounds':>11} "
          f"{'cold <=1%':>9} {'warm <=1%':>9} {'cold s':>7} {'warm s':>7}")
    warm_start, rows = None, []
    for check in range(checks):
        epoch()
        snapshot = copy.deepcopy(model).eval()
        reference = explain(copy.deepcopy(snapshot).double(), REFERENCE_STEPS, internal_batch_size=8192)
        reference = reference.attributions.double().reshape(probe, -1)
        kw = dict(tolerance=TOLERANCE, max_steps=MAX_STEPS)
        start = time.perf_counter()
        cold = explain(snapshot, "auto", **kw)
        mid = time.perf_counter()
        warm = explain(snapshot, "auto", warm_start=warm_start or True, **kw)
        end = time.perf_counter()
        warm_start = warm.warm_start
        row = dict(cold_evals=float(cold.n_evaluations.double().mean()),
                   warm_evals=float(warm.n_evaluations.double().mean()),
                   cold_rounds=cold.rounds, warm_rounds=warm.rounds, cold_acc=within(cold, reference),
                   warm_acc=within(warm, reference), cold_s=mid - start, warm_s=end - mid)
        rows.append(row)
        print(f"{check + 1:>5} {row['cold_evals']:>10.1f} {row['warm_evals']:>10.1f} "
              f"{row['warm_evals'] / row['cold_evals']:>6.2f} {row['cold_rounds']:>11} {row['warm_rounds']:>11} "
              f"{row['cold_acc']:>9.1%} {row['warm_acc']:>9.1%} {row['cold_s']:>7.2f} {row['warm_s']:>7.2f}")
    later = rows[1:]
    mean = lambda key: sum(r[key] for r in later) / len(later)  # noqa: E731
    summary = dict(ratio=mean("warm_evals") / mean("cold_evals"), warm_rounds=mean("warm_rounds"),
                   cold_rounds=mean("cold_rounds"), worst_warm_rounds=max(r["warm_rounds"] for r in later),
                   warm_acc=min(r["warm_acc"] for r in later), cold_acc=min(r["cold_acc"] for r in later),
                   time=sum(r["warm_s"] for r in later) / sum(r["cold_s"] for r in later))
    print(f"from check 2 on: warm/cold evaluations {summary['ratio']:.2f}x (goal <= 0.6x); rounds warm "
          f"{summary['warm_rounds']:.1f} (worst {summary['worst_warm_rounds']}; goal <= 2), cold "
          f"{summary['cold_rounds']:.1f}; worst check within 1%: warm {summary['warm_acc']:.1%}, cold "
          f"{summary['cold_acc']:.1%} (goal >= 95%); time warm/cold {summary['time']:.2f}x")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=8)
    parser.add_argument("--probe", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in args.models:
        table(name, args.checks, args.probe)


if __name__ == "__main__":
    main()
