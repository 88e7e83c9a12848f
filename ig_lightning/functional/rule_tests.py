"""Rules a user can test: candidates read off attributions, each stated as a condition and tested on data.

A *rule* of class ``c`` is a statement "when this is present, the model predicts ``c``":

- tokens: a token or a contiguous n-gram (token ids in order) occurs among an example's real tokens;
- a feature: a column (a flat feature index) is above (``">"``) or below (``"<"``) a threshold read from the data;
- a region: the mean of an image region's pixels (over its channels) is above or below a threshold.

Candidates come from attributions: each example's attributions are turned into *shares* (divided by the
example's total ``|attribution|``), averaged over the examples explained as ``c``; the n-grams, features or
windows with the largest mean share are the candidates. Each candidate is then tested with forward passes only on
a fixed *rule set* of examples and the model's predictions on it:

- ``coverage``: the share of the rule set where the rule applies;
- ``precision``: among those, the share predicted as ``c``;
- ``class_coverage``: among the examples predicted as ``c``, the share where the rule applies;
- ``necessity``: among those predicted as ``c``, the share that leave ``c`` when the rule's features are set to the
  baseline (every occurrence of the n-gram, the feature, the region's pixels);
- ``sufficiency``: among the examples predicted as another class where the rule does not apply, the share predicted
  as ``c`` once the rule is written in (the n-gram over the first real positions it fits in; the feature set to its
  median where the rule applies; the region's pixels copied from an example predicted ``c`` where it applies);
- ``support``: how many examples each number rests on.

A number with no example to rest on is NaN (a rule that applies nowhere has coverage 0 and no precision or
necessity). Rules are ranked by ``score = precision x class_coverage x max(necessity, sufficiency)``: a rule must
hold when present, speak for much of the class, and decide the prediction, whether the model needs it or it is
enough on its own (a shortcut). Among a class's rules, an n-gram that overlaps a better-ranked one is left out
(``"how many"`` makes ``"how"`` and ``"a how many"`` redundant).

Candidates come from ``ig_lightning.functional.rule_candidates``.

Example::

    >>> import torch
    >>> rule = Rule(1, "tokens", (5, 6))
    >>> ids = torch.tensor([[5, 6, 1], [1, 2, 3]])
    >>> applies(rule, ids).tolist(), remove(rule, ids, 0)[0].tolist()
    ([True, False], [0, 0, 1])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: Thresholds tried when a feature's or region's threshold is read from the data.
MAX_THRESHOLDS = 64
#: A longer n-gram that applies to the same examples replaces a shorter one inside it when its score is at most this
#: much lower (the two differ by the sampling of the tests only).
SAME_SCORE = 0.05


@dataclass
class Rule:
    """One rule of one class, with what the tests found (NaN until tested).

    Attributes:
        target: The class.
        kind: ``"tokens"``, ``"feature"`` or ``"region"``.
        keys: Token ids in order, a feature index, or the region's flat pixel indices.
        share: The mean attribution share of its features over the class's explained examples.
        direction: ``">"`` or ``"<"`` for a feature or region, else ``None``.
        threshold: The threshold of a feature or region, read from the data.
        typical: What a feature is set to when written in (its median where the rule applies).
        text: The readable statement (filled by the monitor, with names).
        score: ``precision x class_coverage x max(necessity, sufficiency)`` (NaN read as 0), how rules are ranked.
        coverage: Share of the rule set where it applies.
        precision: Among those, the share predicted as ``target``.
        class_coverage: Among the examples predicted as ``target``, the share where it applies.
        necessity: Among those predicted as ``target``, the share that leave it once the rule is removed.
        sufficiency: Among the others, the share predicted as ``target`` once the rule is written in.
        support: How many examples each number rests on.
        guard: A feature the user named as one the model must not rely on.
    """

    target: int
    kind: str
    keys: tuple[int, ...]
    share: float = math.nan
    direction: str | None = None
    threshold: float | None = None
    typical: float | None = None
    text: str = ""
    score: float = math.nan
    coverage: float = math.nan
    precision: float = math.nan
    class_coverage: float = math.nan
    necessity: float = math.nan
    sufficiency: float = math.nan
    support: dict[str, int] = field(default_factory=dict)
    guard: bool = False

    @property
    def identity(self) -> tuple[Any, ...]:
        """What makes two rules the same rule at two checks (the threshold may move)."""
        return self.target, self.kind, self.keys, self.direction

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN as ``None``)."""
        def num(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(float(v), 6)

        return {"class": self.target, "kind": self.kind, "keys": list(self.keys), "text": self.text,
                "score": num(self.score), "share": num(self.share), "coverage": num(self.coverage),
                "precision": num(self.precision), "class_coverage": num(self.class_coverage),
                "necessity": num(self.necessity),
                "sufficiency": num(self.sufficiency), "support": dict(self.support), "direction": self.direction,
                "threshold": num(self.threshold), "guard": self.guard}

    def summary(self) -> str:
        """The statement and its numbers on one line (``-`` where a number rests on no example)."""
        def f(v: float) -> str:
            return f"{v:.2f}" if math.isfinite(v) else "-"

        s = self.support
        return (f"{self.text or self.keys}  score {f(self.score)}  coverage {f(self.coverage)}  precision "
                f"{f(self.precision)}  class coverage {f(self.class_coverage)}  necessity {f(self.necessity)}  "
                f"sufficiency {f(self.sufficiency)}"
                + (f"  (on {s.get('rule_set', 0)} examples)" if s else ""))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        def num(v: Any) -> float:
            return math.nan if v is None else float(v)

        return cls(int(d["class"]), str(d["kind"]), tuple(int(k) for k in d["keys"]), num(d.get("share")),
                   d.get("direction"), None if d.get("threshold") is None else float(d["threshold"]), None,
                   str(d.get("text", "")), num(d.get("score")), num(d.get("coverage")), num(d.get("precision")),
                   num(d.get("class_coverage")), num(d.get("necessity")), num(d.get("sufficiency")),
                   dict(d.get("support", {})), bool(d.get("guard", False)))


def units(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x`` as ``(N, C, P)``: ``P`` units (features, or pixels ``H * W``) with ``C`` channels each."""
    if kind == "region" and x.ndim == 4:
        return x.flatten(2)
    return x.flatten(1).unsqueeze(1)


def values(rule: Rule, x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` the value a feature or region rule compares with its threshold: the feature, or the region's mean."""
    return units(x, rule.kind)[:, :, list(rule.keys)].double().mean((1, 2))


def fit_condition(value: torch.Tensor, positive: torch.Tensor, share: float) -> tuple[str, float]:
    """The direction and threshold of a feature or region rule, read from the data (``fit_conditions`` for one)."""
    (direction,), (threshold,) = fit_conditions(value.view(-1, 1), positive.view(-1, 1), torch.tensor([share]))
    return direction, threshold


def fit_conditions(value: torch.Tensor, positive: torch.Tensor, share: torch.Tensor) -> tuple[list[str], list[float]]:
    """Directions and thresholds of ``R`` feature or region rules at once, from their values ``(N, R)`` on the rule
    set and ``(N, R)`` whether each example is predicted as the rule's class: the direction in which those examples
    lie (by their mean, else the attribution share's sign), and the threshold among the midpoints between
    neighbouring values (at most ``MAX_THRESHOLDS``, spread over them) that best separates them (F1 of "applies"
    against "predicted as the class")."""
    value, positive = value.double(), positive.bool()
    n_pos = positive.sum(0)
    mean_pos = (value * positive).sum(0) / n_pos.clamp_min(1)
    mean_neg = (value * ~positive).sum(0) / (len(value) - n_pos).clamp_min(1)
    both = (n_pos > 0) & (n_pos < len(value))
    above = torch.where(both, mean_pos >= mean_neg, share.double() >= 0)
    ordered = value.sort(0).values
    if len(value) < 2:
        return [">" if a else "<" for a in above.tolist()], (value[0] - torch.where(above, 0.5, -0.5)).tolist()
    at = torch.linspace(0, len(value) - 2, min(len(value) - 1, MAX_THRESHOLDS)).round().long()
    mids = (ordered[at] + ordered[at + 1]) / 2  # (T, R)
    applies = torch.where(above.view(1, 1, -1), value.unsqueeze(0) > mids.unsqueeze(1),
                          value.unsqueeze(0) < mids.unsqueeze(1))  # (T, N, R)
    hits = (applies & positive.unsqueeze(0)).sum(1).double()
    f1 = 2 * hits / (applies.sum(1).double() + n_pos.double()).clamp_min(1)
    flat = ordered[0] == ordered[-1]  # one value only: a threshold half a unit below (or above) it
    best = mids.gather(0, f1.argmax(0, keepdim=True))[0]
    thresholds = torch.where(flat, ordered[0] - torch.where(above, 0.5, -0.5), best)
    return [">" if a else "<" for a in above.tolist()], thresholds.tolist()


def ngram_positions(ids: torch.Tensor, mask: torch.Tensor, gram: Sequence[int]) -> torch.Tensor:
    """``(N, T)`` bool: the positions covered by an occurrence of ``gram`` among real tokens."""
    n, length = len(gram), ids.shape[1]
    covered = torch.zeros_like(ids, dtype=torch.bool)
    if n > length:
        return covered
    g = torch.tensor(list(gram), dtype=ids.dtype)
    hit = (ids.unfold(1, n, 1) == g).all(-1) & mask.unfold(1, n, 1).all(-1)  # (N, T - n + 1)
    for offset in range(n):
        covered[:, offset:offset + hit.shape[1]] |= hit
    return covered


def applies(rule: Rule, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)`` bool: where the rule applies."""
    if rule.kind == "tokens":
        return ngram_positions(x, mask if mask is not None else torch.ones_like(x, dtype=torch.bool),
                               rule.keys).any(1)
    value = values(rule, x)
    return value > rule.threshold if rule.direction == ">" else value < rule.threshold


def remove(rule: Rule, x: torch.Tensor, base: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` with the rule's features set to the baseline ``base`` (``x``'s shape, or broadcastable to it)."""
    base = torch.as_tensor(base, dtype=x.dtype, device=x.device).expand_as(x)
    if rule.kind == "tokens":
        where = ngram_positions(x, mask if mask is not None else torch.ones_like(x, dtype=torch.bool), rule.keys)
        return torch.where(where, base, x)
    out, b = units(x, rule.kind).clone(), units(base, rule.kind)
    out[:, :, list(rule.keys)] = b[:, :, list(rule.keys)]
    return out.reshape(x.shape)


def write(rule: Rule, x: torch.Tensor, donor: torch.Tensor | None, mask: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with the rule written in, and ``(N,)`` bool: the rows it could be written into. Tokens go over the first
    real positions they fit in; a feature takes ``rule.typical``; a region's pixels are copied from ``donor``
    (one example, ``x``'s shape without the first dimension)."""
    out = x.clone()
    if rule.kind == "tokens":
        n = len(rule.keys)
        real = mask if mask is not None else torch.ones_like(x, dtype=torch.bool)
        ok = torch.zeros(len(x), dtype=torch.bool)
        if n <= x.shape[1]:
            fits = real.unfold(1, n, 1).all(-1)  # (N, T - n + 1)
            ok = fits.any(1)
            first = torch.argmax(fits.int(), 1)
            g = torch.tensor(list(rule.keys), dtype=x.dtype, device=x.device)
            for offset in range(n):
                rows = ok.nonzero().flatten()
                out[rows, first[rows] + offset] = g[offset]
        return out, ok
    flat = units(out, rule.kind)
    keys = list(rule.keys)
    if rule.kind == "feature":
        if rule.typical is None or not math.isfinite(rule.typical):
            return x, torch.zeros(len(x), dtype=torch.bool)
        flat[:, :, keys] = rule.typical
    else:
        if donor is None:
            return x, torch.zeros(len(x), dtype=torch.bool)
        flat[:, :, keys] = units(donor.unsqueeze(0), rule.kind)[:, :, keys].to(flat.dtype)
    return flat.reshape(x.shape), torch.ones(len(x), dtype=torch.bool)


def evaluate_rules(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rules: list[Rule], x: torch.Tensor,
                   predictions: torch.Tensor, base: Any, *, mask: torch.Tensor | None = None,
                   max_tests: int = 64, decisive: int | None = None) -> None:
    """Fill in every rule's numbers on the rule set ``x`` (forward passes only, through ``predict(xs, rows)``, which
    maps changed examples and the rule-set rows they come from to predicted classes, batching as it likes);
    ``predictions`` are the model's on ``x``.

    Coverage, precision and class coverage need no forward pass. Necessity and sufficiency rest on at most
    ``max_tests`` examples each, evenly spread over the eligible ones by index (deterministic); with ``decisive``,
    only each class's ``decisive`` rules that hold best (precision to one decimal, then class coverage) and every
    guard get them, the others keep NaN (and a score of 0). Feature rules take their ``typical`` value here when it
    is not set.
    """
    hits = [applies(rule, x, mask) for rule in rules]
    for rule, hit in zip(rules, hits):
        positive = predictions == rule.target
        n_hit, n_positive, both = int(hit.sum()), int(positive.sum()), int((hit & positive).sum())
        rule.coverage = n_hit / max(len(x), 1)
        rule.precision = both / n_hit if n_hit else math.nan
        rule.class_coverage = both / n_positive if n_positive else math.nan
        rule.support = {"rule_set": len(x), "applies": n_hit, "predicted": n_positive, "applies_predicted": both,
                        "necessity": 0, "sufficiency": 0}
    chosen = _decisive(rules, decisive)
    pieces, rows, owners = [], [], []
    for r, rule in enumerate(rules):
        if r not in chosen:
            rule.necessity = rule.sufficiency = math.nan
            continue
        hit, positive = hits[r], predictions == rule.target
        n_hit = int(hit.sum())
        if rule.kind == "feature" and rule.typical is None and n_hit:
            rule.typical = float(values(rule, x[hit]).median())
        necessary = _spread((hit & positive).nonzero().flatten(), max_tests)
        others = _spread((~hit & ~positive).nonzero().flatten(), max_tests)
        donors = (hit & positive).nonzero().flatten()
        donor = x[donors[0]] if len(donors) else (x[hit.nonzero().flatten()[0]] if n_hit else None)
        written, ok = write(rule, x[others], donor, None if mask is None else mask[others])
        others, written = others[ok], written[ok]
        rule.support.update(necessity=len(necessary), sufficiency=len(others))
        removed = remove(rule, x[necessary], _rows(base, necessary, x), None if mask is None else mask[necessary])
        pieces += [removed, written]
        rows += [necessary, others]
        owners += [(r, "necessity", len(necessary)), (r, "sufficiency", len(others))]
    joined = torch.cat(pieces) if pieces else x[:0]
    predicted = predict(joined, torch.cat(rows)) if len(joined) else torch.zeros(0, dtype=torch.long)
    start = 0
    for r, what, n in owners:
        got = predicted[start:start + n]
        start += n
        rule = rules[r]
        if what == "necessity":
            rule.necessity = float((got != rule.target).double().mean()) if n else math.nan
        else:
            rule.sufficiency = float((got == rule.target).double().mean()) if n else math.nan
    for rule in rules:
        rule.score = _zero(rule.precision) * _zero(rule.class_coverage) * max(_zero(rule.necessity),
                                                                              _zero(rule.sufficiency))


def _spread(rows: torch.Tensor, k: int) -> torch.Tensor:
    """At most ``k`` of ``rows``, evenly spread over them (deterministic, not biased towards the first ones)."""
    if len(rows) <= k:
        return rows
    return rows[torch.linspace(0, len(rows) - 1, k).round().long()]


def _decisive(rules: list[Rule], per_class: int | None) -> set[int]:
    """The rules whose necessity and sufficiency are tested: every guard, and each class's ``per_class`` that hold
    best (all with ``None``)."""
    if per_class is None:
        return set(range(len(rules)))
    chosen = {i for i, r in enumerate(rules) if r.guard}
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(rules):
        if not r.guard:
            by_class.setdefault(r.target, []).append(i)
    for members in by_class.values():
        # Rules that hold first (precision to one decimal), the more general among them first.
        # (a longer n-gram before a shorter one that holds as well: it is the more specific statement)
        members.sort(key=lambda i: (-round(_zero(rules[i].precision), 1), -_zero(rules[i].class_coverage),
                                    -len(rules[i].keys) if rules[i].kind == "tokens" else 0, i))
        chosen.update(members[:per_class])
    return chosen


def _rows(base: Any, rows: torch.Tensor, x: torch.Tensor) -> Any:
    """A per-example baseline (first dimension = the rule set's) restricted to ``rows``; else as it is."""
    if isinstance(base, torch.Tensor) and base.ndim == x.ndim and base.shape[0] == len(x) and len(x) > 1:
        return base[rows]
    return base


def _zero(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def rank(rules: list[Rule]) -> list[Rule]:
    """Rules by score, then attribution share (stable); a token rule that overlaps a better-ranked one of its class
    (one n-gram inside the other) is left out, unless it is the longer one and applies to the same examples with
    about the same score (``blue moon`` planted together: the bigram is stated, not ``blue``)."""
    kept: list[Rule] = []
    for rule in sorted(rules, key=lambda r: (-_zero(r.score), -_zero(r.share), r.keys)):
        overlap = [i for i, k in enumerate(kept) if rule.kind == "tokens" == k.kind and k.target == rule.target and
                   (_inside(k.keys, rule.keys) or _inside(rule.keys, k.keys))]
        if not overlap:
            kept.append(rule)
            continue
        k = kept[overlap[0]]
        if len(overlap) == 1 and _inside(k.keys, rule.keys) and rule.support.get("applies") == \
                k.support.get("applies") and _zero(rule.score) >= _zero(k.score) - SAME_SCORE:
            kept[overlap[0]] = rule  # the longer n-gram says the same on the same examples: state it whole
    return kept


def _inside(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    return any(big[p:p + len(small)] == small for p in range(len(big) - len(small) + 1))
