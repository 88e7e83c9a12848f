"""A diverged model (NaN / infinite scores) never breaks the rules or the drift: the engine side of the fault suite."""

from __future__ import annotations

import math

import pytest
import torch

from ig_lightning.functional.drift import DRIFT_METRICS, drift_distances
from ig_lightning.functional.rules import class_top_features, rule_changes

BAD = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("bad", BAD)
def test_class_top_features_leaves_nonfinite_examples_out(bad: float) -> None:
    keys = torch.tensor([[1, 2], [1, 3], [4, 5]])
    scores = torch.tensor([[1.0, 0.5], [bad, 2.0], [bad, 1.0]])
    targets = torch.tensor([0, 0, 1])
    rules = class_top_features(keys, scores, targets)
    assert rules == {0: [(1, 1.0), (2, 0.5)]}  # example 1 left out, class 1 has no finite example
    assert rules == class_top_features(keys[:1], scores[:1], targets[:1])
    assert rule_changes({0: [(3, 1.0)], 1: [(4, 1.0)]}, rules) == {0: {"entered": [1, 2], "left": [3]}}


def test_class_top_features_ignores_nonfinite_scores_at_masked_positions() -> None:
    keys, targets = torch.tensor([[7, 0, 0]]), torch.tensor([2])
    scores = torch.tensor([[0.5, math.nan, math.inf]])  # padding diverged, the real token did not
    assert class_top_features(keys, scores, targets, mask=keys != 0, reduce="mean") == {2: [(7, 0.5)]}


# --------------------------------------------------------------------------- drift


@pytest.mark.parametrize("side", ["current", "reference", "both"])
@pytest.mark.parametrize("bad", BAD)
def test_drift_is_nan_only_for_the_nonfinite_example(side: str, bad: float) -> None:
    torch.manual_seed(0)
    current, reference = torch.randn(3, 2, 6), torch.randn(3, 2, 6)
    clean = drift_distances(current, reference, k=3)
    if side in ("current", "both"):
        current[1, 0, 2] = bad
    if side in ("reference", "both"):
        reference[1] = bad
    distances = drift_distances(current, reference, k=3)
    assert set(distances) == set(DRIFT_METRICS)
    for name, d in distances.items():
        assert d.dtype == torch.float64 and d.isnan().tolist() == [False, True, False], name
        assert d[[0, 2]].tolist() == pytest.approx(clean[name][[0, 2]].tolist()), name
