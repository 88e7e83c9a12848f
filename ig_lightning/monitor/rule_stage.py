"""The rule tests of a check: candidate rules read off the attributions, tested on a fixed rule set of validation
examples with forward passes, ranked, watched for events and guards (``ig_lightning.functional.rule_tests``).

At each check, for every class the model explains:

1. candidates come from the probe's attributions and from a one-point attribution (the midpoint rule of
   ``integrated_gradients``) of every rule-set example, explained as its predicted class, so that a class with few
   probe examples still gets its rules;
2. each candidate is stated as a condition (an n-gram, a feature or region above or below a threshold read from the
   rule set) and tested on the rule set: coverage, precision, necessity, sufficiency, support;
3. rules are ranked by ``score`` and the first ``top_k`` kept; what entered or left a class's list is recorded;
4. events (a rule entering a class's first three with high sufficiency, or whose sufficiency rose sharply) and
   guards (features the model must never rely on) become metrics, and breaches when asked.

The rule set is taken once (stratified, the same on every rank) and kept in the checkpoint. Every rank runs the
same tests on the same data, so the numbers equal a single process's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lightning.pytorch.utilities import rank_zero_info

from ig_lightning.functional._inputs import make_baselines
from ig_lightning.functional.rule_candidates import (
    attribution_shares,
    feature_candidates,
    region_candidates,
    token_candidates,
)
from ig_lightning.functional.rule_tests import Rule, evaluate_rules, fit_conditions, rank, values
from ig_lightning.monitor._isolation import eval_mode
from ig_lightning.monitor.config import MetricNames, MonitorConfig
from ig_lightning.monitor.explainer import Explainer
from ig_lightning.monitor.probe import Probe
from ig_lightning.monitor.stages import Check, Stage
from ig_lightning.output.markdown import name_lookup

#: The first this many rules of a class are watched for rules entering with high sufficiency.
EVENT_TOP = 3


class RuleTests(Stage):
    """Rules stated, tested on the rule set, ranked and watched (settings: ``rule_extraction``)."""

    def __init__(self, config: MonitorConfig, names: MetricNames) -> None:
        self.config, self.settings, self.names = config, config.rule_extraction, names
        self.rule_set: Probe | None = None
        self.rules: dict[int, list[Rule]] = {}
        self.first_sufficiency: dict[str, float] = {}
        self.risen: set[str] = set()
        self.seen: set[str] = set()  # "class:key" of every rule listed so far (events are about new evidence)
        self.tested = 0
        self.pooled: torch.Tensor | None = None  # the rule set's attribution shares, pooled over checks (per run)
        self.history: list[dict[str, Any]] = []  # per run, not saved
        self._explainer: Explainer | None = None
        self._kind, self._batch, self._forward_rows = "tabular", 1, 2

    # --- before the first check -------------------------------------------------------------------

    def prepare(self, trainer: Any, model: Any, probe: Probe, explainer: Explainer, kind: str, batch: int,
                layer: Any) -> None:
        """Take the rule set (once; the probe itself when there is no validation data) and its explainer."""
        from ig_lightning.monitor import preflight  # preflight imports the stages' settings

        config = self.config
        per_example = isinstance(config.baseline, torch.Tensor) and config.baseline.ndim >= 1 and \
            len(probe) > 1 and config.baseline.shape[0] == len(probe)
        if self.rule_set is None:  # a baseline per probe example fits no other examples: test on the probe
            self.rule_set = probe if per_example else preflight.take_rule_set(trainer, config) or probe
            if not self.rule_set.inputs.same_layout(probe.inputs):
                rank_zero_info("IntegratedGradientsMonitor: the validation batches are read as other inputs than the "
                               "probe's; the rules are tested on the probe")
                self.rule_set = probe
        self._kind, self._batch = kind, batch
        # Forward passes without gradients hold no activations for a backward pass: a training batch of rows (two
        # IG forwards' worth) needs less memory than the training step itself.
        self._forward_rows = 2 * batch
        self._explainer = Explainer(self.rule_set.inputs, config.inputs.attribute, layer, config.layer,
                                    config.output_transform, preflight.resolve_baseline(config, self.rule_set))
        self._key_name = name_lookup(config.display.vocabulary if kind == "text" else config.display.feature_names,
                                     str)
        self._class_name = name_lookup(config.display.class_names, str)

    # --- a check ------------------------------------------------------------------------------------

    def update(self, check: Check) -> None:
        if check.targets is None or self._explainer is None:
            return  # one output per example: no classes to state rules for
        explainer, rule_set, model = self._explainer, self.rule_set, check.model
        x = rule_set.inputs[explainer.names[0]]
        mask = self._mask(rule_set, x)
        predictions = explainer.outputs(model, rule_set.inputs, self._forward_rows)[0].argmax(-1)
        found = self._candidate_shares(check, x, mask, predictions)
        if found is None:
            return  # the attributions map onto no input unit (a hidden layer of a tabular model)
        candidates = self._candidates(*found, x, predictions)
        guards = self._guards(x, predictions)
        base = make_baselines(explainer.baselines_for(torch.device("cpu")), (x,))[0]
        evaluate_rules(lambda xs, rows: self._predict(model, xs, rows), candidates + guards, x, predictions, base,
                       mask=mask, max_tests=self.settings.max_tests, decisive=self.settings.decisive)
        previous = self.rules
        self.rules = {}
        for c in sorted({r.target for r in candidates}):
            self.rules[c] = rank([r for r in candidates if r.target == c])[:self.settings.top_k]
        for rule in candidates + guards:
            rule.text = self.statement(rule)
        changes = rule_changes(previous, self.rules) if self.tested else None
        events = self._events()
        breaches = self._guard_breaches(guards)
        self.tested += 1
        names = self.names
        check.metrics[names["rule_events"]] = float(len(events))
        if self.settings.events_breach:
            check.add_limit(names["rule_events"], 0.0, "rules entering with high sufficiency or rising: "
                            + "; ".join(events)[:2000])
        if guards:
            check.metrics[names["guard_breaches"]] = float(len(breaches))
            check.add_limit(names["guard_breaches"], 0.0, "guarded features the model relies on: "
                            + "; ".join(breaches)[:2000])
        check.record.update(tested_rules=self.rules, rule_changes=changes, rule_events=events,
                            guard_rules=guards)
        self.history.append({"epoch": check.epoch, "step": check.trainer.global_step,
                             "rules": {c: [r.to_dict() for r in rs] for c, rs in self.rules.items()},
                             "changes": changes, "events": events, "guards": [g.to_dict() for g in guards]})

    def _mask(self, rule_set: Probe, x: torch.Tensor) -> torch.Tensor | None:
        """Real tokens of a text rule set: not padding or the baseline token, not a tokenizer's special tokens."""
        if self._kind != "text":
            return None
        _, mask = self._explainer.rule_keys(rule_set.inputs, x.float(), "text")
        return self._real(x, mask.reshape(x.shape))

    def _real(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` without a tokenizer's special tokens ([CLS], [SEP], ...): they are never rules."""
        special = getattr(self.config.display.vocabulary, "all_special_ids", None)
        if special:
            mask = mask & ~torch.isin(ids, torch.tensor(list(special), dtype=ids.dtype))
        return mask

    def _candidate_shares(self, check: Check, x: torch.Tensor, mask: torch.Tensor | None, predictions: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """Attribution shares of the probe's finite examples and of the rule set (one point) over the rule set's
        units (pixels of a layer map upsampled onto the image), the class each row explains, and for text the rows'
        token ids and real tokens."""
        explainer, rule_set, model = self._explainer, self.rule_set, check.model
        n, size = len(rule_set), min(self.settings.attribution_sample, len(rule_set))
        window = (torch.arange(size) + self.tested * size) % n  # a different window at each check
        sample = rule_set.inputs.map(lambda t: t[window])
        with eval_mode(model), torch.autocast(model.device.type, enabled=False):
            coarse = explainer.attribute(check.trainer, model, sample, predictions[window], n_steps=1,
                                         method="riemann_middle", internal_batch_size=self._batch)
        finite = check.finite
        probe_units = self._on_units(check.scores[finite], x)
        sample_units = self._on_units(explainer.scores(coarse, sample)[0], x)
        if probe_units is None or sample_units is None:
            return None
        if self.pooled is None or self.pooled.shape[1:] != sample_units.shape[1:]:
            self.pooled = torch.full((n, *sample_units.shape[1:]), math.nan, dtype=torch.float64)
        self.pooled = self.pooled.clone()  # a tensor made under trainer.validate's inference mode is read-only later
        self.pooled[window] = attribution_shares(sample_units)  # pooled with the last checks' windows
        seen = torch.isfinite(self.pooled.flatten(1)).all(1)
        targets = torch.cat([check.targets[finite], predictions[seen]])
        if self._kind != "text":
            return torch.cat([attribution_shares(probe_units), self.pooled[seen]]), targets, x, None
        probe_ids = check.probe.inputs[check.explainer.names[0]][finite]
        probe_mask = self._real(probe_ids, check.mask.reshape(check.scores.shape)[finite])
        length = max(probe_ids.shape[1], x.shape[1])  # the probe may be padded to another length
        shares = torch.cat([_pad(attribution_shares(probe_units), length), _pad(self.pooled[seen], length)])
        return (shares, targets, torch.cat([_pad(probe_ids, length), _pad(x[seen], length)]),
                torch.cat([_pad(probe_mask, length), _pad(mask[seen], length)]))

    def _on_units(self, scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Scores per unit of ``x``: token, feature, or pixel ``(B, H, W)``; ``None`` when they map onto none."""
        if len(scores) == 0:  # no finite example
            shape = {"text": tuple(x.shape[1:]), "image": tuple(x.shape[-2:])}.get(self._kind, (x[0].numel(),))
            return torch.zeros(0, *shape)
        if self._kind == "text":  # per token; the probe may be padded to another length than the rule set
            return scores.reshape(len(scores), -1)
        if self._kind == "image":
            height, width = x.shape[-2:]
            maps = scores if scores.ndim == 3 else scores.sum(1)  # (B, H, W) or a layer's (B, h, w)
            if tuple(maps.shape[1:]) != (height, width):
                maps = F.interpolate(maps[:, None].float(), size=(height, width), mode="nearest")[:, 0]
            return maps
        flat = scores.flatten(1)
        return flat if flat.shape[1] == x[0].numel() else None

    def _candidates(self, shares: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor, real: torch.Tensor | None,
                    x: torch.Tensor, predictions: torch.Tensor) -> list[Rule]:
        s = self.settings
        if self._kind == "text":
            found = token_candidates(ids, shares.reshape(ids.shape), targets, real, s.max_ngram, s.candidates)
            return [Rule(c, "tokens", gram, share) for c, grams in found.items() for gram, share in grams]
        if self._kind == "image":
            size = s.region_size or max(2, min(x.shape[-2:]) // 4)
            found = region_candidates(shares, targets, size, s.candidates)
            kind = "region"
        else:
            found = {c: [((k,), v) for k, v in kv] for c, kv in feature_candidates(shares, targets,
                                                                                   s.candidates).items()}
            kind = "feature"
        rules = [Rule(c, kind, tuple(keys), share) for c, items in found.items() for keys, share in items]
        self._fit(rules, x, predictions)
        return rules

    @staticmethod
    def _fit(rules: list[Rule], x: torch.Tensor, predictions: torch.Tensor) -> None:
        """Every feature or region rule's direction and threshold, read from the rule set in one batch."""
        if not rules:
            return
        value = torch.stack([values(r, x) for r in rules], 1)
        positive = torch.stack([predictions == r.target for r in rules], 1)
        directions, thresholds = fit_conditions(value, positive, torch.tensor([r.share for r in rules]))
        for rule, direction, threshold in zip(rules, directions, thresholds):
            rule.direction, rule.threshold = direction, threshold

    def _guards(self, x: torch.Tensor, predictions: torch.Tensor) -> list[Rule]:
        """Every guarded feature as a rule of every class the model predicts on the rule set."""
        out = []
        for guard in self.settings.guards or []:
            keys, kind = self._guard_keys(guard, x)
            out += [Rule(c, kind, keys, share=1.0, guard=True) for c in sorted(set(predictions.tolist()))]
        self._fit([r for r in out if r.kind != "tokens"], x, predictions)
        return out

    def _guard_keys(self, guard: Any, x: torch.Tensor) -> tuple[tuple[int, ...], str]:
        if isinstance(guard, torch.Tensor):
            return tuple(guard.reshape(-1).nonzero().flatten().tolist()), "region"
        if self._kind == "text":
            if isinstance(guard, int):
                return (guard,), "tokens"
            vocab = self.config.display.vocabulary
            convert = getattr(vocab, "convert_tokens_to_ids", None)
            words = guard.split()
            if callable(convert):
                return tuple(int(i) for i in convert(words)), "tokens"
            known = {self._key_name(i): i for i in range(int(x.max()) + 1)} if vocab is not None else {}
            missing = [w for w in words if w not in known]
            if missing:
                raise ValueError(f"`rule_extraction.guards` names token(s) {missing} that are not in "
                                 "`display.vocabulary` (among the rule set's ids)")
            return tuple(known[w] for w in words), "tokens"
        if isinstance(guard, int):
            return (guard,), "feature"
        names = self.config.display.feature_names or []
        if guard not in names:
            raise ValueError(f"`rule_extraction.guards` names feature {guard!r}, which is not in "
                             f"`display.feature_names`")
        return (names.index(guard),), "feature"

    def _predict(self, model: Any, xs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The predicted class of each changed example (the rule set's other inputs of its row unchanged)."""
        inputs = self.rule_set.inputs.map(lambda t: t[rows]).replace({self._explainer.names[0]: xs})
        return self._explainer.outputs(model, inputs, self._forward_rows)[0].argmax(-1)

    def _events(self) -> list[str]:
        """This check's rule events (new evidence entering a class's first three, or a sufficiency that rose)."""
        s, events = self.settings, []
        listed = {f"{c}:{k}" for c, rs in self.rules.items() for r in rs for k in r.keys}
        if self.tested < max(s.event_warmup, 1):  # the model is still finding its rules (and check 0 has no before)
            self.seen |= listed
            return events
        for c, rules in self.rules.items():
            for rule in rules[:EVENT_TOP]:  # new evidence: no token, feature or pixel of it listed for c before
                new = not any(f"{c}:{k}" in self.seen for k in rule.keys)
                if s.event_sufficiency is not None and new and rule.sufficiency >= s.event_sufficiency:
                    events.append(f"{rule.text} entered the first {EVENT_TOP} of its class with sufficiency "
                                  f"{rule.sufficiency:.2f}")
            for rule in rules:
                key = repr(rule.identity)
                if not math.isfinite(rule.sufficiency):
                    continue
                first = self.first_sufficiency.setdefault(key, rule.sufficiency)
                if rule.sufficiency - first >= s.event_rise and key not in self.risen:
                    self.risen.add(key)
                    events.append(f"{rule.text}: sufficiency rose from {first:.2f} to {rule.sufficiency:.2f}")
        self.seen |= listed
        return events

    def _guard_breaches(self, guards: list[Rule]) -> list[str]:
        s, out = self.settings, []
        for g in guards:
            ranked = {r.identity for r in self.rules.get(g.target, [])}
            why = []
            if g.identity in ranked:
                why.append(f"among the class's first {s.top_k} rules")
            if g.necessity > s.guard_necessity:
                why.append(f"necessity {g.necessity:.2f} > {s.guard_necessity:g}")
            if g.sufficiency > s.guard_sufficiency:
                why.append(f"sufficiency {g.sufficiency:.2f} > {s.guard_sufficiency:g}")
            if why:
                out.append(f"{g.text} ({', '.join(why)}; precision {g.precision:.2f}, coverage {g.coverage:.2f})")
        return out

    def statement(self, rule: Rule) -> str:
        """The rule as a readable statement, e.g. ``"how many" -> number`` or ``worst radius > 16.8 -> benign``."""
        target = self._class_name(rule.target)
        if rule.kind == "tokens":
            return f'"{" ".join(self._key_name(k) for k in rule.keys)}" -> {target}'
        if rule.kind == "feature":
            return f"{self._key_name(rule.keys[0])} {rule.direction} {rule.threshold:.4g} -> {target}"
        width = self.rule_set.inputs[self._explainer.names[0]].shape[-1]
        rows = [k // width for k in rule.keys]
        cols = [k % width for k in rule.keys]
        return (f"pixels [{min(rows)}:{max(rows) + 1}, {min(cols)}:{max(cols) + 1}] {rule.direction} "
                f"{rule.threshold:.4g} -> {target}")

    # --- checkpoint ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"rule_set": None if self.rule_set is None else self.rule_set.state(),
                "tested_rules": {int(c): [r.to_dict() for r in rs] for c, rs in self.rules.items()},
                "rule_first_sufficiency": dict(self.first_sufficiency), "rule_risen": sorted(self.risen),
                "rules_seen": sorted(self.seen),
                "rules_tested": self.tested}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rule_set") is not None:
            self.rule_set = Probe.from_state(state["rule_set"])
        self.rules = {int(c): [Rule.from_dict(d) for d in rs] for c, rs in state.get("tested_rules", {}).items()}
        self.first_sufficiency = {str(k): float(v) for k, v in state.get("rule_first_sufficiency", {}).items()}
        self.risen = set(state.get("rule_risen", []))
        self.seen = set(state.get("rules_seen", []))
        self.tested = int(state.get("rules_tested", 0))


def rule_changes(previous: dict[int, list[Rule]], current: dict[int, list[Rule]]) -> dict[int, dict[str, list[str]]]:
    """Per class, the statements that entered or left its rules since the previous check, and the previous scores."""
    out = {}
    for c in sorted(set(previous) | set(current)):
        before = {r.identity: r.text for r in previous.get(c, [])}
        now = {r.identity: r.text for r in current.get(c, [])}
        out[c] = {"entered": [t for k, t in now.items() if k not in before],
                  "left": [t for k, t in before.items() if k not in now],
                  "scores": {r.text: r.score for r in previous.get(c, []) if math.isfinite(r.score)}}
    return out


def untested_rules(features: dict[int, list[tuple[int, float]]], kind: str | None) -> dict[int, list[Rule]]:
    """Top features as (untested) rules: a token, a feature, or a pixel (flat index)."""
    what = {"text": "tokens", "image": "region"}.get(kind or "", "feature")
    return {c: [Rule(c, what, (k,), v) for k, v in kv] for c, kv in features.items()}


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, T)`` padded with zeros (no share, token id 0, not a real token) to ``(B, length)``."""
    return torch.cat([t, t.new_zeros((len(t), length - t.shape[1]))], 1)
