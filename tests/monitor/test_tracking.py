"""The state a monitor keeps between checks: references, colour scales, rules, drift history."""

import math

import pytest
import torch

from ig_lightning.monitor.tracking import (
    MIN_HISTORY,
    RATIO_FLOOR,
    ColorScales,
    DriftHistory,
    DriftReferences,
    RuleTracker,
    class_drift,
)

NAN = float("nan")
T, F = True, False


def rows(*values):
    return torch.tensor(values, dtype=torch.float32)


def is_nan_row(t, i):
    return bool(torch.isnan(t[i]).all())


# --- DriftReferences ------------------------------------------------------------------------------------


def test_references_fix_first_at_the_first_finite_check_and_follow_previous():
    refs = DriftReferences()
    assert refs.reference("first") is None and refs.reference("previous") is None
    refs.update(rows([1.0, 0.0], [NAN, 1.0]), torch.tensor([T, F]))
    assert refs.first[0].tolist() == [1.0, 0.0] and is_nan_row(refs.first, 1)  # a NaN row is never a reference
    assert refs.previous[0].tolist() == [1.0, 0.0] and is_nan_row(refs.previous, 1)
    refs.update(rows([2.0, 2.0], [3.0, 4.0]), torch.tensor([T, T]))
    assert refs.first.tolist() == [[1.0, 0.0], [3.0, 4.0]]  # row 1 gets its first reference now
    assert refs.previous.tolist() == [[2.0, 2.0], [3.0, 4.0]]
    refs.update(rows([NAN, NAN], [5.0, 6.0]), torch.tensor([F, T]))
    assert refs.first.tolist() == [[1.0, 0.0], [3.0, 4.0]]
    assert refs.previous.tolist() == [[2.0, 2.0], [5.0, 6.0]]  # row 0 keeps its last finite check
    assert refs.reference("previous") is refs.previous and refs.reference("first") is refs.first


def test_references_are_float32():
    refs = DriftReferences()
    refs.update(torch.ones(2, 3, dtype=torch.float64), torch.tensor([T, T]))
    assert refs.first.dtype == refs.previous.dtype == torch.float32


def test_distances_only_over_comparable_examples():
    refs = DriftReferences()
    assert refs.distances(rows([1.0, 0.0]), torch.tensor([T]), "previous", k=1) is None
    refs.update(rows([1.0, 0.0], [NAN, NAN], [0.0, 1.0]), torch.tensor([T, F, T]))
    out = refs.distances(rows([0.0, 1.0], [1.0, 1.0], [0.0, 1.0]), torch.tensor([T, T, T]), "previous", k=1)
    distances, comparable = out
    assert comparable.tolist() == [True, False, True]
    torch.testing.assert_close(distances["cosine"].float(), torch.tensor([1.0, 0.0]))
    assert refs.distances(rows([1.0, 0.0], [1.0, 1.0], [1.0, 0.0]), torch.tensor([F, T, F]), "first", k=1) is None


def test_references_state_round_trip_and_old_shaped_tensors():
    refs = DriftReferences()
    refs.update(rows([1.0, 2.0], [NAN, NAN]), torch.tensor([T, F]))
    state = refs.state_dict()
    assert set(state) == {"first_scores", "previous_scores"}
    again = DriftReferences()
    again.load_state_dict(state)
    torch.testing.assert_close(again.first, refs.first, equal_nan=True)
    torch.testing.assert_close(again.previous, refs.previous, equal_nan=True)
    old = DriftReferences()  # older checkpoints kept the scores in the input's shape, maybe in float64
    old.load_state_dict({"first_scores": torch.arange(12, dtype=torch.float64).view(2, 1, 2, 3),
                         "previous_scores": None})
    assert old.first.shape == (2, 6) and old.first.dtype == torch.float32
    assert old.first[1].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0] and old.previous is None
    empty = DriftReferences()
    empty.load_state_dict({})
    assert empty.first is None and empty.previous is None


# --- ColorScales -----------------------------------------------------------------------------------------


def test_colour_scales_are_fixed_at_each_examples_first_finite_check_with_headroom():
    scales = ColorScales(headroom=2.0)
    scales.update(rows([1.0, -3.0], [NAN, 1.0], [0.0, 0.0]), torch.tensor([T, F, T]))
    assert scales.scales[0].item() == 6.0 and math.isnan(scales.scales[1].item())
    assert scales.scales[2].item() == pytest.approx(2e-12)  # an all-zero example: a tiny scale, not 0
    scales.update(rows([10.0, 0.0], [0.5, -4.0], [1.0, 1.0]), torch.tensor([T, T, T]))
    assert scales.scales[0].item() == 6.0 and scales.scales[1].item() == 8.0  # fixed; row 1 set now
    assert scales.scales[2].item() == pytest.approx(2e-12)
    again = ColorScales(headroom=2.0)
    again.load_state_dict(scales.state_dict())
    assert torch.equal(again.scales, scales.scales)
    again.load_state_dict({"scales": None})
    assert torch.equal(again.scales, scales.scales)


# --- RuleTracker -----------------------------------------------------------------------------------------


def test_rule_tracker_rules_changes_and_history():
    tracker = RuleTracker(k=1)
    keys = torch.arange(3).expand(2, 3)
    first = tracker.update(keys, rows([5.0, 1.0, 0.0], [0.0, 1.0, 7.0]), torch.tensor([0, 1]), None, epoch=0, step=10)
    assert first == {0: {"entered": [0], "left": []}, 1: {"entered": [2], "left": []}}  # every rule is new
    assert {c: [k for k, _ in r] for c, r in tracker.rules.items()} == {0: [0], 1: [2]}
    assert tracker.rules[0][0][1] == pytest.approx(5.0)
    changes = tracker.update(keys, rows([5.0, 1.0, 0.0], [0.0, 9.0, 7.0]), torch.tensor([0, 1]), None, 1, 20)
    assert changes == {0: {"entered": [], "left": []}, 1: {"entered": [1], "left": [2]}}
    assert [(h["epoch"], h["step"], h["changes"]) for h in tracker.history] == [(0, 10, first), (1, 20, changes)]
    state = tracker.state_dict()
    assert state == {"rules": {0: [[0, 5.0]], 1: [[1, 9.0]]}}
    again = RuleTracker(k=1)
    again.load_state_dict({"rules": {"0": [[0, 5.0]], "1": [[1, 9.0]]}})  # JSON-like keys become ints
    assert again.rules == {0: [(0, 5.0)], 1: [(1, 9.0)]} and again.history == []


def test_rule_tracker_without_targets_keeps_its_rules():
    tracker = RuleTracker(k=1)
    tracker.load_state_dict({"rules": {0: [[2, 1.0]]}})
    assert tracker.update(torch.zeros(1, 2, dtype=torch.long), rows([1.0, 2.0]), None, None, 0, 0) == {0: {"entered": [], "left": []}}
    assert tracker.rules == {0: [(2, 1.0)]}


# --- DriftHistory ----------------------------------------------------------------------------------------


def test_drift_ratio_needs_three_values_and_divides_by_the_median_of_the_window():
    assert MIN_HISTORY == 3 and RATIO_FLOOR == 1e-3
    history = DriftHistory(window=3)
    for drift in (0.02, 0.04):
        assert history.ratio("drift", 0.5) is None
        history.update({"drift": drift})
    assert history.ratio("drift", 0.5) is None  # 2 values
    history.update({"drift": 0.03})
    assert history.ratio("drift", 0.3) == pytest.approx(10.0)  # median(0.02, 0.04, 0.03) = 0.03
    history.update({"drift": 0.1})  # the window is now (0.04, 0.03, 0.1): median 0.04
    assert history.ratio("drift", 0.2) == pytest.approx(5.0)
    assert history.values["drift"] == [0.04, 0.03, 0.1]  # only the window is kept
    assert history.ratio("drift", NAN) is None
    assert history.ratio("other", 1.0) is None


def test_drift_ratio_floor_when_the_history_stands_still():
    history = DriftHistory(window=5)
    for _ in range(3):
        history.update({"drift": 0.0})
    assert history.ratio("drift", 0.01) == pytest.approx(10.0)  # 0.01 / 1e-3


def test_drift_history_skips_nonfinite_values_and_round_trips():
    history = DriftHistory(window=2)
    history.update({"drift": 0.1, "drift_class_max": NAN})
    history.update({"drift": math.inf, "drift_class_max": 0.2})
    history.update({"drift": 0.3})
    assert history.values == {"drift": [0.1, 0.3], "drift_class_max": [0.2]}
    state = history.state_dict()
    assert state == {"drift_history": {"drift": [0.1, 0.3], "drift_class_max": [0.2]}}
    again = DriftHistory(window=2)
    again.load_state_dict(state)
    assert again.values == history.values
    again.load_state_dict({})
    assert again.values == {}


def test_class_drift_is_the_mean_per_class_of_finite_distances():
    distances = torch.tensor([0.1, 0.3, 0.5, NAN, 0.2])
    targets = torch.tensor([0, 0, 2, 1, 2])
    out = class_drift(distances, targets)
    assert set(out) == {0, 2}  # class 1 has no finite distance
    assert out[0] == pytest.approx(0.2) and out[2] == pytest.approx(0.35)
    assert class_drift(distances, None) == {}
    assert class_drift(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == {}
