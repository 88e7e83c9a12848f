"""BreachPolicy (what counts as a breach, when it acts, what it does, on every rank alike) and find_faults."""

import warnings
from types import SimpleNamespace

import pytest
import torch

from ig_lightning.monitor.policy import AttributionDriftError, BreachPolicy, find_faults
from ig_lightning.monitor.probe import ModelInputs

LIMITS = {"ig/drift": 0.3, "ig/completeness_error": None}
FAULT = "attributions are NaN or infinite at epoch 0"


class FakeStrategy:
    def __init__(self, decision=None) -> None:
        self.decision, self.asked = decision, []

    def reduce_boolean_decision(self, flag, all=True):  # noqa: A002  (Lightning's name)
        assert all is False  # any rank's breach decides, not all ranks'
        self.asked.append(flag)
        return flag if self.decision is None else self.decision


def fake_trainer(decision=None):
    return SimpleNamespace(strategy=FakeStrategy(decision), should_stop=False)


def test_none_limits_are_left_out_and_a_breach_is_described():
    policy = BreachPolicy(LIMITS, warmup=0, patience=1, on_breach="warn")
    assert policy.limits == {"ig/drift": 0.3}
    assert policy.find({"ig/drift": 0.25}, checks=1, epoch=0) == []
    assert policy.find({"ig/drift": 0.5}, checks=1, epoch=3) == [
        "ig/drift (drift from the reference check (alarm.metric, over the probe)) = 0.5 > alarm.threshold=0.3 "
        "at epoch 3"]
    assert policy.find({}, checks=1, epoch=0) == []  # a metric not logged this check never breaches


def test_warmup_ignores_threshold_breaches_but_not_faults():
    policy = BreachPolicy(LIMITS, warmup=2, patience=1, on_breach="warn")
    assert policy.find({"ig/drift": 9.0}, checks=1, epoch=0) == []
    assert policy.find({"ig/drift": 9.0}, checks=2, epoch=1) == []
    assert policy.find({"ig/drift": 9.0}, checks=1, epoch=0, faults=[FAULT]) == [FAULT]
    found = policy.find({"ig/drift": 9.0}, checks=3, epoch=2, faults=[FAULT])
    assert len(found) == 2 and found[0] == FAULT and found[1].startswith("ig/drift")


def _acted(policy, pattern):
    """For each check's breach flag, whether the policy acted (warned)."""
    acted = []
    for breached in pattern:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            policy.act(fake_trainer(), ["b"] if breached else [])
        acted.append(any("IntegratedGradientsMonitor" in str(w.message) for w in caught))
    return acted


def test_patience_in_a_row():
    policy = BreachPolicy(LIMITS, warmup=0, patience=2, on_breach="warn")
    assert policy.window == 2
    assert _acted(policy, [True, False, True, True, True]) == [False, False, False, True, True]


def test_patience_in_a_window():
    policy = BreachPolicy(LIMITS, warmup=0, patience=2, on_breach="warn", patience_window=3)
    # breaches at checks 1 and 3 (not in a row): 2 of the last 3 at check 3
    assert _acted(policy, [True, False, True]) == [False, False, True]
    assert policy.recent == [True, False, True] and policy.streak == 2


def test_act_warn_with_the_streak_in_the_message():
    policy = BreachPolicy(LIMITS, warmup=0, patience=2, on_breach="warn", patience_window=3)
    trainer = fake_trainer()
    policy.act(trainer, ["x"])
    with pytest.warns(UserWarning) as caught:
        policy.act(trainer, ["ig/drift too high"])
    assert [str(w.message) for w in caught] == [
        "IntegratedGradientsMonitor: ig/drift too high (2 checks of the last 3)"]
    assert trainer.should_stop is False


def test_act_stop_sets_should_stop():
    policy = BreachPolicy(LIMITS, warmup=0, patience=1, on_breach="stop")
    trainer = fake_trainer()
    with pytest.warns(UserWarning) as caught:
        policy.act(trainer, ["a", "b"])
    assert [str(w.message) for w in caught] == ["IntegratedGradientsMonitor: a; b: stopping the run"]
    assert trainer.should_stop is True and trainer.strategy.asked == [True]


def test_act_raise():
    policy = BreachPolicy(LIMITS, warmup=0, patience=2, on_breach="raise")
    trainer = fake_trainer()
    policy.act(trainer, ["a"])  # 1 of 2: nothing yet
    with pytest.raises(AttributionDriftError) as caught:
        policy.act(trainer, ["a"])
    assert str(caught.value) == "IntegratedGradientsMonitor: a (2 checks in a row)"


def test_nothing_found_nowhere_does_nothing():
    policy = BreachPolicy(LIMITS, warmup=0, patience=1, on_breach="raise")
    trainer = fake_trainer()
    policy.act(trainer, [])
    assert trainer.strategy.asked == [False] and trainer.should_stop is False and policy.streak == 0


@pytest.mark.parametrize("on_breach", ["warn", "stop", "raise"])
def test_another_ranks_breach_acts_here_too(on_breach):
    policy = BreachPolicy(LIMITS, warmup=0, patience=1, on_breach=on_breach)
    trainer = fake_trainer(decision=True)  # this rank found nothing; another rank breached
    message = "IntegratedGradientsMonitor: a threshold was breached on another rank"
    if on_breach == "raise":
        with pytest.raises(AttributionDriftError, match=message):
            policy.act(trainer, [])
    else:
        with pytest.warns(UserWarning) as caught:
            policy.act(trainer, [])
        expected = message + (": stopping the run" if on_breach == "stop" else "")
        assert [str(w.message) for w in caught] == [expected]
        assert trainer.should_stop is (on_breach == "stop")
    assert trainer.strategy.asked == [False]


def test_state_round_trip():
    policy = BreachPolicy(LIMITS, warmup=0, patience=2, on_breach="warn", patience_window=4)
    trainer = fake_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for breached in (True, False, True):
            policy.act(trainer, ["a"] if breached else [])
    state = policy.state_dict()
    assert state == {"breach_streak": 2, "recent_breaches": [True, False, True]}
    again = BreachPolicy(LIMITS, warmup=0, patience=2, on_breach="warn", patience_window=4)
    again.load_state_dict(state)
    assert again.recent == [True, False, True] and again.streak == 2


def test_a_longer_saved_window_keeps_the_last_checks():
    policy = BreachPolicy(LIMITS, warmup=0, patience=1, on_breach="warn", patience_window=2)
    policy.load_state_dict({"breach_streak": 1, "recent_breaches": [True, True, False, True]})
    assert policy.recent == [False, True]


def test_an_old_state_with_only_a_streak_loads():
    policy = BreachPolicy(LIMITS, warmup=0, patience=3, on_breach="warn")
    policy.load_state_dict({"breach_streak": 2})
    assert policy.recent == [True, True] and policy.streak == 2
    capped = BreachPolicy(LIMITS, warmup=0, patience=1, on_breach="warn")
    capped.load_state_dict({"breach_streak": 2})
    assert capped.recent == [True] and capped.streak == 1
    empty = BreachPolicy(LIMITS, warmup=0, patience=1, on_breach="warn")
    empty.load_state_dict({})
    assert empty.recent == [] and empty.streak == 0


IDS = torch.tensor([[3, 4, 0, 0], [5, 0, 6, 7]])


# --- find_faults ------------------------------------------------------------------------------------------


def test_find_faults_names_each_source():
    x = torch.randn(4, 2)
    x[0, 1] = float("nan")
    delta = torch.tensor([float("nan"), float("inf"), 1.0, 1.0])
    finite = torch.tensor([False, False, False, True])
    assert find_faults(ModelInputs((x,)), delta, finite, epoch=3) == [
        "attributions are NaN or infinite at epoch 3 for 1 of 4 probe examples [0]: the values come from the "
        "probe inputs",
        "attributions are NaN or infinite at epoch 3 for 1 of 4 probe examples [1]: the values come from the "
        "model's outputs F(x) or F(baseline)",
        "attributions are NaN or infinite at epoch 3 for 1 of 4 probe examples [2]: the values come from the "
        "model's gradients",
    ]


def test_find_faults_with_nothing_wrong_and_integer_inputs():
    assert find_faults(ModelInputs((torch.randn(2, 2),)), torch.ones(2), torch.tensor([True, True]), 0) == []
    found = find_faults(ModelInputs((IDS,)), torch.ones(2), torch.tensor([False, True]), 1)
    assert found == ["attributions are NaN or infinite at epoch 1 for 1 of 2 probe examples [0]: the values come "
                     "from the model's gradients"]
