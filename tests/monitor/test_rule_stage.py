"""The rule tests inside real fits: a rule the data decides, guards, events, the checkpoint, hostile names."""

import glob
import json
import math
import os

import pytest
import torch
from conftest import Classifier, make_trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ig_lightning import AttributionDriftError, IntegratedGradientsMonitor, RuleExtraction
from ig_lightning.functional.rule_tests import Rule
from ig_lightning.monitor.rule_stage import RuleTests, rule_changes

HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_FEATURE = "<img src=x onerror=alert(1)>"


class Threshold(Classifier):
    """Class 1 exactly when feature 0 is above 0 (a fixed model: what its rules are is known)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), self.scale * x[:, 0]], 1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def table(n=200, seed=0):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, (x[:, 0] > 0).long())


def fit(tmp_path, monitor, epochs=2, logger=False, data=None):
    data = data or table()
    t = make_trainer(tmp_path, [monitor], max_epochs=epochs, logger=logger, limit_train_batches=2)
    t.fit(Threshold(), DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=50))
    return t


def test_the_rule_of_a_known_model_is_stated_with_its_numbers(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, display=dict(feature_names=["a", "b", "c", "d"],
                                                                          class_names=["no", "yes"]))
    fit(tmp_path, monitor)
    first = monitor.rules[1][0]
    assert (first.kind, first.keys, first.direction) == ("feature", (0,), ">")
    assert abs(first.threshold) < 0.2 and first.text == f"a > {first.threshold:.4g} -> yes"
    x = table().tensors[0]
    rule_set = monitor.stage(RuleTests).rule_set
    assert len(rule_set) == 200  # fewer validation examples than rule_extraction.rule_set: all of them
    hand = (x[:, 0] > first.threshold).float().mean().item()
    assert first.coverage == pytest.approx(hand)
    assert first.precision > 0.97 and first.class_coverage > 0.97
    assert first.necessity == 1.0  # feature 0 set to the baseline 0: the logit 0 ties, argmax picks class 0
    assert first.sufficiency == 1.0
    assert first.support["necessity"] == first.support["sufficiency"] == 32
    assert monitor.last_metrics["ig/rule_events"] == 0


def test_a_guard_on_the_deciding_feature_breaches_naming_it(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, display=dict(feature_names=["a", "b", "c", "d"]),
                                         rule_extraction=RuleExtraction(guards=["a"]), alarm=dict(on_breach="raise"))
    with pytest.raises(AttributionDriftError, match=r"ig/guard_breaches \(guarded features the model relies on: .*"
                                                    r"a > \S+ -> 1 \(among the class's first 10 rules, necessity "
                                                    r"1\.00 > 0\.2, sufficiency 1\.00 > 0\.2"):
        fit(tmp_path, monitor)


def test_a_guard_on_a_feature_the_model_ignores_stays_silent(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, rule_extraction=RuleExtraction(guards=[3]),
                                         alarm=dict(on_breach="raise"))
    fit(tmp_path, monitor)
    assert monitor.last_metrics["ig/guard_breaches"] == 0


def test_a_guard_that_names_an_unknown_feature_is_refused_before_training(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, rule_extraction=RuleExtraction(guards=["nope"]),
                                         display=dict(feature_names=["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="`rule_extraction.guards` names feature 'nope'"):
        fit(tmp_path, monitor)


def test_rule_set_and_rules_survive_a_checkpoint(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, rule_extraction=RuleExtraction(rule_set=40))
    fit(tmp_path, monitor)
    state = monitor.state_dict()
    assert len(state["rule_set"]["inputs"]["args"][0]) == 40 and state["rules_tested"] == 2
    torch.save(state, tmp_path / "state.pt")
    again = IntegratedGradientsMonitor(probe=8, n_steps=8, rule_extraction=RuleExtraction(rule_set=40))
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # a checkpoint's safe loading
    tests = again.stage(RuleTests)
    assert torch.equal(tests.rule_set.inputs.args[0], monitor.stage(RuleTests).rule_set.inputs.args[0])
    assert [r.text for r in again.rules[1]] == [r.text for r in monitor.rules[1]] and tests.tested == 2
    fit(tmp_path, again, epochs=1)  # the kept rule set is used, not taken anew
    assert torch.equal(again.stage(RuleTests).rule_set.inputs.args[0], tests.rule_set.inputs.args[0])


def test_rule_tests_off_keep_the_top_features_as_untested_rules(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, rule_extraction=RuleExtraction(test=False))
    fit(tmp_path, monitor)
    assert monitor.stage(RuleTests) is None and "ig/rule_events" not in monitor.last_metrics
    rules = monitor.rules
    assert all(math.isnan(r.coverage) for rs in rules.values() for r in rs)
    assert [r.keys[0] for r in rules[1]] == [k for k, _ in monitor.top_features[1]]


def test_hostile_names_stay_text_in_every_file_and_key(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, display=dict(
        feature_names=[HOSTILE_FEATURE, "b|c", "c", "d"], class_names=["no", HOSTILE_CLASS]))
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    t = fit(tmp_path, monitor, logger=loggers)
    keys = list(t.callback_metrics)
    assert "ig/drift_class/_script_alert_1___script_" in keys and not any("<" in k for k in keys)
    written = [p for p in glob.glob(os.path.join(tmp_path, "**", "*"), recursive=True)
               if p.endswith((".md", ".csv", ".jsonl")) and os.path.isfile(p)]
    markdown = [open(p, encoding="utf-8").read() for p in written if p.endswith(".md")]
    assert markdown and not any("<script" in m or "<img" in m for m in markdown)
    assert any("&lt;script&gt;" in m for m in markdown)
    rules_file = [p for p in written if p.endswith("ig_rules.jsonl")]
    line = json.loads(open(rules_file[0], encoding="utf-8").read().splitlines()[-1])
    assert any(r["text"].endswith(f"-> {HOSTILE_CLASS}") for r in line["rules"]["1"])  # JSON keeps the text exact


def test_events_fire_when_a_sufficient_rule_enters_and_when_sufficiency_rises():
    from ig_lightning.monitor.config import MetricNames, MonitorConfig

    tests = RuleTests(MonitorConfig(), MetricNames())
    first = Rule(0, "tokens", (1,), text='"a" -> 0', sufficiency=0.1, score=0.5)
    cue = Rule(0, "tokens", (2,), text='"zz" -> 0', sufficiency=0.9, score=0.6)
    back = Rule(0, "tokens", (3,), text='"b" -> 0', sufficiency=0.9, score=0.4)
    tests.rules = {0: [first, back]}
    assert tests._events() == []  # the first checks (event_warmup=2): the model is still finding its rules
    tests.tested, tests.rules = 2, {0: [first]}
    assert tests._events() == []  # the first check after the warmup: the reference
    tests.tested, tests.rules = 3, {0: [back]}
    assert tests._events() == []  # a rule coming back is no event, however sufficient
    tests.tested = 4
    cue = Rule(0, "tokens", (2,), text='"zz" -> 0', sufficiency=0.9, score=0.6)
    risen = Rule(0, "tokens", (1,), text='"a" -> 0', sufficiency=0.5, score=0.5)
    previous, tests.rules = tests.rules, {0: [cue, risen]}
    events = tests._events()
    assert events == ['"zz" -> 0 entered the first 3 of its class with sufficiency 0.90',
                      '"a" -> 0: sufficiency rose from 0.10 to 0.50']
    assert tests._events() == []  # said once
    changes = rule_changes(previous, tests.rules)
    assert changes[0]["entered"] == ['"zz" -> 0', '"a" -> 0'] and changes[0]["left"] == ['"b" -> 0']
