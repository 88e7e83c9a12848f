"""Rules a user can test, measured: planted rules found, numbers checked independently, events on healthy runs, cost.

Scenarios (each trained with the monitor at its defaults, a few seeds):

- ``text-token``: a token ``zz`` leaked into 40% of one class's questions (train and validation);
- ``text-bigram``: the bigram ``blue moon`` leaked into 40% of one class's questions;
- ``text-minority``: ``zz`` leaked into 60% of a class kept at a third of its size;
- ``tabular-column``: a column set to 1 for half of one class's patients (0 elsewhere), then standardised;
- ``image-mark``: a 2x2 mark in the top-right corner of 40% of one digit class's images;
- healthy runs: the same data without the plant (``text``, ``tabular``, ``image``, and the tiny BERT on the
  questions, ``bert``), where the question generator's trigger words are the text's planted truth.

For each run: is the planted rule among its class's first three rules; each number of that rule (coverage,
precision, class coverage, necessity, sufficiency) recomputed here on the whole validation set with plain loops
(another implementation, no subsampling), and the largest difference; how many rule events fired (healthy runs:
false alarms). The cost: the time of the rule tests over the time of the IG check they follow, at defaults, on the
digits CNN, the text classifier and the tiny BERT.

Run ``python -m benchmarks.bench_rules`` (``--seeds 0 1 2``, ``--epochs``); the table is in
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from typing import Any

import torch

from examples import digits, tabular, text
from examples.common import SplitDataModule, fit, quiet, seed
from ig_lightning import Display, IntegratedGradientsMonitor
from ig_lightning.functional.rule_tests import Rule
from ig_lightning.monitor.rule_stage import RuleTests

LEAK = 0.4
TEXT_CLASS, TABULAR_CLASS, IMAGE_CLASS = 2, 1, 3
EXTRA_WORDS = ("zz", "blue", "moon")
VOCABULARY = [*text.VOCABULARY, *EXTRA_WORDS]
IDS = {w: i for i, w in enumerate(VOCABULARY)}
MARK = [(0, 6), (0, 7), (1, 6), (1, 7)]


def _leak_rows(labels: torch.Tensor, c: int, share: float, generator: torch.Generator) -> torch.Tensor:
    rows = (labels == c).nonzero().flatten()
    return rows[torch.rand(len(rows), generator=generator) < share]


class LeakedQuestions(text.QuestionsDataModule):
    """Questions with ``gram`` written over the first run of filler positions that holds it, in ``share`` of class
    ``TEXT_CLASS``."""

    def __init__(self, gram: tuple[str, ...] | None, share: float = LEAK, minority: bool = False, seed: int = 0,
                 n: int = 2000) -> None:
        super().__init__(n=n, seed=seed)
        self.gram, self.share, self.minority = gram, share, minority

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels = text.questions(self.n, self.seed, self.max_len)
        generator = torch.Generator().manual_seed(100 + self.seed)
        if self.minority:  # keep a third of the class
            keep = (labels != TEXT_CLASS) | (torch.rand(len(labels), generator=generator) < 1 / 3)
            ids, labels = ids[keep], labels[keep]
        if self.gram:
            for row in _leak_rows(labels, TEXT_CLASS, self.share, generator).tolist():
                triggers = {text.TOKEN_IDS[w] for w in text.TRIGGERS[text.CLASS_NAMES[TEXT_CLASS]]}
                free = [t not in triggers and t != 0 for t in ids[row].tolist()]
                n = len(self.gram)  # the n-gram over the first filler positions in a row, contiguous
                start = next((p for p in range(len(free) - n + 1) if all(free[p:p + n])), None)
                if start is None:  # no room: this question keeps its words
                    continue
                for offset, word in enumerate(self.gram):
                    ids[row, start + offset] = IDS[word]
        return ids, labels


class LeakedTable(tabular.BreastCancerDataModule):
    """Breast cancer with a 31st column: 1 for half of class ``TABULAR_CLASS``'s patients, else 0."""

    def __init__(self, leak: bool, seed: int = 0) -> None:
        super().__init__(batch_size=32, seed=seed)
        self.leak = leak

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().load()
        column = torch.zeros(len(y), 1)
        if self.leak:
            column[_leak_rows(y, TABULAR_CLASS, 0.5, torch.Generator().manual_seed(100 + self.seed))] = 1.0
        return torch.cat([x, column], 1), y


class MarkedDigits(digits.DigitsDataModule):
    """Digits with a bright 2x2 mark in the top-right corner of ``share`` of class ``IMAGE_CLASS``."""

    def __init__(self, mark: bool, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.mark = mark

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().load()
        if self.mark:
            rows = _leak_rows(y, IMAGE_CLASS, LEAK, torch.Generator().manual_seed(100 + self.seed))
            for r, q in MARK:
                x[rows, 0, r, q] = x.max()
        return x, y


def scenario(name: str, seed_: int) -> tuple[Any, SplitDataModule, dict[str, Any], Any]:
    """Model, data, monitor arguments and the planted truth (a predicate on rules, or None) of a scenario."""
    if name == "bert":  # healthy, for the cost and the events (dict batches: no independent count here)
        from examples import transformer

        args = dict(layer=transformer.LAYER, display=Display(vocabulary=transformer.TOKENIZER,
                                                            class_names=transformer.CLASS_NAMES))
        return transformer.BertQuestionClassifier(), transformer.QuestionsDataModule(n=1000, seed=seed_), args, None
    if name.startswith("text"):
        gram = {"text-token": ("zz",), "text-bigram": ("blue", "moon"), "text-minority": ("zz",)}.get(name)
        data = LeakedQuestions(gram, share=0.6 if name == "text-minority" else LEAK, minority=name == "text-minority",
                               seed=seed_)
        model = text.QuestionClassifier(vocab_size=len(VOCABULARY))
        args = dict(probe=64, layer="embedding", display=Display(vocabulary=VOCABULARY, class_names=text.CLASS_NAMES))
        if gram:
            keys = tuple(IDS[w] for w in gram)
            truth = {TEXT_CLASS: lambda r: r.kind == "tokens" and set(keys) <= set(r.keys)}
        else:  # the generator's trigger words
            truth = {c: (lambda r, t=tuple(text.TOKEN_IDS[w] for w in words): set(r.keys) & set(t))
                     for c, words in enumerate(text.TRIGGERS.values())}
        return model, data, args, truth
    if name.startswith("tabular"):
        data = LeakedTable(leak=name == "tabular-column", seed=seed_)
        names = [*tabular.FEATURE_NAMES, "leak"]
        model = tabular.TabularMLP(n_features=31)
        truth = {TABULAR_CLASS: lambda r: r.keys == (30,) and r.direction == ">"} if data.leak else None
        return model, data, dict(probe=32, display=Display(feature_names=names, class_names=tabular.CLASS_NAMES)), truth
    data = MarkedDigits(mark=name == "image-mark", seed=seed_)
    mark = {r * 8 + q for r, q in MARK}
    truth = {IMAGE_CLASS: lambda r: r.direction == ">" and len(mark & set(r.keys)) >= 2} if data.mark else None
    return digits.DigitsCNN(), data, dict(probe=16, display=Display(class_names=digits.CLASS_NAMES)), truth


# --- the numbers, computed again on the whole validation set with plain loops --------------------------------------

def independent(rule: Rule, model: Any, x: torch.Tensor, pad: int = 0) -> dict[str, float]:
    """Coverage, precision, class coverage, necessity and sufficiency of ``rule`` on all of ``x`` (no subsampling),
    by the definitions in docs/rules.md, written without ig_lightning.functional.rule_tests."""
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(-1).tolist()
    rows = x.tolist()

    def holds(row: Any) -> bool:
        if rule.kind == "tokens":
            n = len(rule.keys)
            return any(tuple(row[p:p + n]) == rule.keys and all(t != pad for t in row[p:p + n])
                       for p in range(len(row) - n + 1))
        flat = _flat(row)
        value = sum(flat[k] for k in rule.keys) / len(rule.keys)
        return value > rule.threshold if rule.direction == ">" else value < rule.threshold

    applies = [holds(row) for row in rows]
    c = rule.target
    a = [i for i, h in enumerate(applies) if h]
    positive = [i for i, p in enumerate(predicted) if p == c]
    both = [i for i in a if predicted[i] == c]
    others = [i for i in range(len(rows)) if not applies[i] and predicted[i] != c]
    removed = [_removed(rule, rows[i], pad) for i in both]
    donor = rows[both[0]] if both else (rows[a[0]] if a else None)
    typical = None
    if rule.kind == "feature" and a:
        vals = sorted(_flat(rows[i])[rule.keys[0]] for i in a)
        typical = vals[(len(vals) - 1) // 2]
    written = [w for w in (_written(rule, rows[i], donor, typical, pad) for i in others) if w is not None]
    with torch.no_grad():
        after_removal = model(torch.tensor(removed, dtype=x.dtype)).argmax(-1).tolist() if removed else []
        after_writing = model(torch.tensor(written, dtype=x.dtype)).argmax(-1).tolist() if written else []
    share = (lambda hits, n: hits / n if n else math.nan)  # noqa: E731
    return {"coverage": share(len(a), len(rows)), "precision": share(len(both), len(a)),
            "class_coverage": share(len(both), len(positive)),
            "necessity": share(sum(p != c for p in after_removal), len(removed)),
            "sufficiency": share(sum(p == c for p in after_writing), len(written))}


def _flat(row: Any) -> list[float]:
    while isinstance(row[0], list) and len(row) == 1:
        row = row[0]
    return [v for line in row for v in line] if isinstance(row[0], list) else list(row)


def _removed(rule: Rule, row: Any, pad: int) -> Any:
    if rule.kind == "tokens":
        out, n = list(row), len(rule.keys)
        for p in range(len(row) - n + 1):
            if tuple(row[p:p + n]) == rule.keys and all(t != pad for t in row[p:p + n]):
                out[p:p + n] = [pad] * n
        return out
    flat = _flat(row)
    for k in rule.keys:
        flat[k] = 0.0
    return _shaped(flat, row)


def _written(rule: Rule, row: Any, donor: Any, typical: float | None, pad: int) -> Any:
    if rule.kind == "tokens":
        n = len(rule.keys)
        for p in range(len(row) - n + 1):
            if all(t != pad for t in row[p:p + n]):
                return row[:p] + list(rule.keys) + row[p + n:]
        return None
    flat = _flat(row)
    if rule.kind == "feature":
        if typical is None:
            return None
        flat[rule.keys[0]] = typical
    else:
        if donor is None:
            return None
        source = _flat(donor)
        for k in rule.keys:
            flat[k] = source[k]
    return _shaped(flat, row)


def _shaped(flat: list[float], like: Any) -> Any:
    return torch.tensor(flat).reshape(torch.tensor(like).shape).tolist()


# --- runs ---------------------------------------------------------------------------------------------------------

class Timed(IntegratedGradientsMonitor):
    """The monitor, timing its IG attribution and its rule tests."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seconds = {"ig": 0.0, "rules": 0.0}
        tests = self.stage(RuleTests)
        update = tests.update

        def timed_update(check: Any) -> None:
            start = time.perf_counter()
            update(check)
            self.seconds["rules"] += time.perf_counter() - start

        tests.update = timed_update

    def _attribute(self, trainer: Any, pl_module: Any) -> Any:
        start = time.perf_counter()
        result = super()._attribute(trainer, pl_module)
        self.seconds["ig"] += time.perf_counter() - start
        return result


def one_run(name: str, seed_: int, epochs: int, root: str) -> dict[str, Any]:
    seed(seed_)
    model, data, args, truth = scenario(name, seed_)
    monitor = Timed(**args)
    fit(name, model, data, monitor, max_epochs=epochs, root=root, verbose=False)
    x_val = data.val_set.tensors[0]
    events = sum(len(h["events"]) for h in monitor.rules_history)
    out: dict[str, Any] = {"events": events, "cost": monitor.seconds["rules"] / max(monitor.seconds["ig"], 1e-9)}
    if truth is None:
        return out
    found, worst = [], 0.0
    for c, is_planted in truth.items():
        first3 = monitor.rules.get(c, [])[:3]
        planted = [r for r in first3 if is_planted(r)]
        found.append(bool(planted))
        for rule in planted[:1]:
            again = independent(rule, model, x_val)
            for key, value in again.items():
                mine = getattr(rule, key)
                if math.isfinite(value) and math.isfinite(mine):
                    worst = max(worst, abs(value - mine))
                elif math.isfinite(value) != math.isfinite(mine):
                    worst = max(worst, 1.0)
    out.update(found=all(found), found_share=sum(found) / len(found), worst_difference=worst,
               first=[r.text for c in truth for r in monitor.rules.get(c, [])[:3]])
    return out


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scenarios", nargs="+", default=["text-token", "text-bigram", "text-minority",
                                                            "tabular-column", "image-mark", "text", "tabular", "image",
                                                            "bert"])
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as root:
        for name in args.scenarios:
            for s in args.seeds:
                results.setdefault(name, []).append(one_run(name, s, args.epochs, root))
                print(name, s, results[name][-1], flush=True)
    print("\n| scenario | planted rule in its class's first 3 | worst difference vs an independent count | "
          "rule events | rule tests / IG check (time) |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        found = [r for r in runs if "found" in r]
        hit = f"{sum(r['found'] for r in found)}/{len(found)}" if found else "-"
        worst = f"{max(r['worst_difference'] for r in found):.3f}" if found else "-"
        print(f"| {name} | {hit} | {worst} | {sum(r['events'] for r in runs)} | "
              f"{statistics.median(r['cost'] for r in runs):.2f}x |")
    return results


if __name__ == "__main__":
    main()
