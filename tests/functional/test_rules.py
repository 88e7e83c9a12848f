"""Tests for ig_lightning.functional.rules: per-class top features and their changes."""

from __future__ import annotations

import pytest
import torch

from ig_lightning.functional.rules import class_mean_maps, class_top_features, rule_changes


def planted() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0's evidence is key 7, class 1's is key 3; the rest is noise."""
    torch.manual_seed(0)
    n, t = 40, 6
    keys = torch.randint(10, 20, (n, t))
    scores = torch.randn(n, t) * 0.1
    targets = torch.arange(n) % 2
    positions = torch.randint(0, t, (n,))
    rows = torch.arange(n)
    keys[rows, positions] = torch.where(targets == 0, 7, 3)
    scores[rows, positions] = 1.0
    return keys, scores, targets


def test_planted_evidence_comes_first() -> None:
    keys, scores, targets = planted()
    rules = class_top_features(keys, scores, targets, k=3)
    assert set(rules) == {0, 1}
    assert rules[0][0] == (7, pytest.approx(20.0)) and rules[1][0] == (3, pytest.approx(20.0))
    assert all(len(top) == 3 for top in rules.values())
    pairs = [pair for top in rules.values() for pair in top]
    assert all(isinstance(key, int) and isinstance(score, float) for key, score in pairs)
    assert all(a[1] >= b[1] for top in rules.values() for a, b in zip(top, top[1:]))


def test_mean_versus_sum() -> None:
    # Key 1 occurs four times with 0.5, key 2 once with 1.5.
    keys = torch.tensor([[1, 1, 2], [1, 1, 0]])
    scores = torch.tensor([[0.5, 0.5, 1.5], [0.5, 0.5, 0.0]])
    targets = torch.tensor([0, 0])
    assert class_top_features(keys, scores, targets, reduce="sum")[0] == [(1, 2.0), (2, 1.5), (0, 0.0)]
    assert class_top_features(keys, scores, targets, reduce="mean")[0] == [(2, 1.5), (1, 0.5), (0, 0.0)]


def test_same_key_pools_over_examples_and_positions_per_class() -> None:
    keys = torch.tensor([[4, 4], [4, 5], [4, 5]])
    scores = torch.tensor([[1.0, 1.0], [1.0, 0.5], [-2.0, 0.25]])
    rules = class_top_features(keys, scores, torch.tensor([0, 0, 1]))
    assert rules == {0: [(4, 3.0), (5, 0.5)], 1: [(5, 0.25), (4, -2.0)]}


def test_ties_break_by_key() -> None:
    keys = torch.tensor([[9, 2, 5]])
    rules = class_top_features(keys, torch.ones(1, 3), torch.tensor([3]), k=2)
    assert rules == {3: [(2, 1.0), (5, 1.0)]}


def test_mask_excludes_keys() -> None:
    keys = torch.tensor([[0, 7, 8], [0, 7, 0]])  # 0 is padding
    scores = torch.tensor([[9.0, 1.0, 0.5], [9.0, 1.0, 9.0]])
    rules = class_top_features(keys, scores, torch.tensor([1, 1]), mask=keys != 0)
    assert rules == {1: [(7, 2.0), (8, 0.5)]}
    only_second = torch.tensor([[False] * 3, [True] * 3])
    all_masked = class_top_features(keys, scores, torch.tensor([0, 1]), mask=only_second)
    assert all_masked[0] == []


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"keys": torch.zeros(2, 3)}, TypeError, "keys"),
        ({"keys": torch.zeros(6, dtype=torch.long)}, ValueError, "keys"),
        ({"scores": torch.zeros(2, 4)}, ValueError, "scores"),
        ({"scores": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "scores"),
        ({"targets": torch.zeros(3, dtype=torch.long)}, ValueError, "targets"),
        ({"targets": torch.zeros(2)}, TypeError, "targets"),
        ({"mask": torch.ones(2, 3)}, TypeError, "mask"),
        ({"mask": torch.ones(2, 2, dtype=torch.bool)}, ValueError, "mask"),
        ({"k": 0}, ValueError, "`k`"),
        ({"k": 2.0}, TypeError, "`k`"),
        ({"reduce": "max"}, ValueError, "reduce"),
    ],
)
def test_class_top_features_validates(kwargs: dict, error: type, name: str) -> None:
    args = {
        "keys": torch.zeros(2, 3, dtype=torch.long),
        "scores": torch.zeros(2, 3),
        "targets": torch.zeros(2, dtype=torch.long),
    }
    args.update(kwargs)
    with pytest.raises(error, match=name):
        class_top_features(**args)


def test_rule_changes() -> None:
    previous = {0: [(1, 0.9), (2, 0.5), (3, 0.1)], 1: [(4, 0.3)]}
    current = {0: [(5, 1.0), (2, 0.6), (6, 0.2)], 1: [(4, 0.4)], 2: [(8, 0.1), (9, 0.0)]}
    changes = rule_changes(previous, current)
    assert changes[0] == {"entered": [5, 6], "left": [1, 3]}
    assert changes[1] == {"entered": [], "left": []}
    assert changes[2] == {"entered": [8, 9], "left": []}
    assert rule_changes(None, current)[0] == {"entered": [5, 2, 6], "left": []}
    with pytest.raises(TypeError, match="current"):
        rule_changes(None, [(1, 0.5)])


def test_class_mean_maps_exact() -> None:
    attributions = torch.arange(24, dtype=torch.float32).view(4, 2, 3)
    means = class_mean_maps(attributions, torch.tensor([2, 0, 2, 2]))
    assert set(means) == {0, 2}
    assert torch.equal(means[0], attributions[1])
    assert torch.equal(means[2], (attributions[0] + attributions[2] + attributions[3]) / 3)
    assert means[2].dtype == torch.float32 and means[2].shape == (2, 3)
    with pytest.raises(ValueError, match="targets"):
        class_mean_maps(attributions, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="attributions"):
        class_mean_maps(torch.ones(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_shared_keys_give_the_same_rules_as_per_row_keys(reduce):
    # One row of keys expanded over the probe (flat feature indices) takes a per-class path without (N, T) copies.
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, 12, generator=g, dtype=torch.float64)
    scores[3, 5] = float("nan")  # a non-finite example is left out on both paths
    targets = torch.randint(0, 3, (20,), generator=g)
    row = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 4, 5])  # repeated keys pool within an example
    shared = class_top_features(row.expand(20, -1), scores, targets, k=4, reduce=reduce)
    copied = class_top_features(row.expand(20, -1).clone(), scores, targets, k=4, reduce=reduce)
    assert shared.keys() == copied.keys()
    for c in copied:
        assert [k for k, _ in shared[c]] == [k for k, _ in copied[c]]
        assert [v for _, v in shared[c]] == pytest.approx([v for _, v in copied[c]], rel=1e-12)
