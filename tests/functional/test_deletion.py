"""Tests for ig_lightning.functional.deletion: faithfulness by deleting the top-scored units."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ig_lightning.functional.deletion import DeletionResult, deletion_drop, rule_deletion_drop

D64 = torch.float64


def linear_problem(b: int = 4, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=D64), torch.randn(d, generator=g, dtype=D64), 0.5


@pytest.mark.parametrize("k", [1, 2, 5, 6])
def test_linear_top_k_matches_hand_computation(k: int) -> None:
    x, w, bias = linear_problem()
    contrib = x * w  # IG of a linear model from a zero baseline
    res = deletion_drop(lambda v: v @ w + bias, x, 0.0, contrib, k=k)
    for i in range(x.shape[0]):
        order = sorted(range(x.shape[1]), key=lambda j: -float(contrib[i, j]))[:k]
        assert res.top_units[i].tolist() == order
        expected = float(contrib[i, order].sum()) / max(abs(float(x[i] @ w)), 1e-3)
        assert float(res.drop[i]) == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(res.output, x @ w + bias) and torch.allclose(res.baseline_output, torch.full((4,), bias, dtype=D64))
    assert all(t.dtype == D64 and t.device.type == "cpu" for t in (res.output, res.deleted, res.randomized))


@pytest.mark.parametrize("seed", [0, 7])
def test_random_units_follow_the_generator(seed: int) -> None:
    x, w, bias = linear_problem()
    k = 3
    res = deletion_drop(lambda v: v @ w + bias, x, 0.0, x * w, k=k, generator=torch.Generator().manual_seed(seed))
    # The draw: one uniform number per unit, the k largest are deleted.
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(res.random_units, noise.topk(k, dim=1).indices)
    rows = torch.arange(x.shape[0]).unsqueeze(1)
    removed = x.clone()
    removed[rows, res.random_units] = 0.0
    assert torch.allclose(res.randomized, removed @ w + bias)
    expected = (x * w)[rows, res.random_units].sum(1) / (x @ w).abs().clamp_min(1e-3)
    assert torch.allclose(res.random_drop, expected)
    again = deletion_drop(lambda v: v @ w + bias, x, 0.0, x * w, k=k, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again.random_units, res.random_units)
    default = deletion_drop(lambda v: v @ w + bias, x, 0.0, x * w, k=k)
    assert torch.equal(default.random_units, torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
                       .topk(k, dim=1).indices)


def test_k_larger_than_units_is_clipped_and_padded() -> None:
    x, w, bias = linear_problem(b=2, d=3)
    res = deletion_drop(lambda v: v @ w + bias, x, 0.0, x * w, k=5)
    assert res.top_units.shape == (2, 5) and (res.top_units[:, 3:] == -1).all()
    assert torch.allclose(res.deleted, torch.full((2,), bias, dtype=D64)) and torch.allclose(res.drop, torch.ones(2, dtype=D64))


def test_token_ids_with_padding_never_chosen() -> None:
    vocab, pad = 10, 9
    table = torch.linspace(0.0, 1.0, vocab, dtype=D64)
    table[0], table[pad] = 0.0, 100.0  # id 0 is the baseline; padding would dominate if chosen

    def model(ids: torch.Tensor) -> torch.Tensor:
        assert ids.dtype == torch.long
        return table[ids].sum(1)

    ids = torch.tensor([[3, 5, 1, pad, pad], [8, pad, pad, pad, pad], [2, 7, 4, 6, 1]])
    eligible = ids != pad
    scores = table[ids].clone()  # padding gets the largest scores
    res = deletion_drop(model, ids, 0, scores, k=2, eligible=eligible)
    assert res.top_units.tolist() == [[1, 0], [0, -1], [1, 3]]
    expected = torch.tensor([table[5] + table[3], table[8], table[7] + table[6]], dtype=D64)
    assert torch.allclose(res.output - res.deleted, expected)
    assert torch.allclose(res.drop, expected / model(ids).abs())
    for seed in range(20):
        r = deletion_drop(model, ids, 0, scores, k=2, eligible=eligible, generator=torch.Generator().manual_seed(seed))
        chosen = r.random_units
        assert all(bool(eligible[i, j]) for i in range(3) for j in chosen[i].tolist() if j >= 0)
        assert chosen[1].tolist()[1] == -1 and (chosen[[0, 2]] >= 0).all()
    base = torch.zeros_like(ids)
    assert torch.equal(deletion_drop(model, ids, base, scores, k=2, eligible=eligible).deleted, res.deleted)


@pytest.mark.parametrize("channels_last", [False, True])
def test_units_group_the_channels_of_a_pixel(channels_last: bool) -> None:
    shape = (2, 4, 4, 3) if channels_last else (2, 3, 4, 4)
    x = torch.randn(shape, dtype=D64, generator=torch.Generator().manual_seed(1))
    pixels = torch.arange(16).view(4, 4)
    units = pixels.unsqueeze(-1).expand(4, 4, 3) if channels_last else pixels.expand(3, 4, 4)
    seen: list[torch.Tensor] = []

    def model(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.movedim(-1, 1) if channels_last else v)  # as (B, 3, H, W)
        return v.sum((1, 2, 3))

    scores = torch.zeros(2, 16, dtype=D64)
    scores[0, 5], scores[1, 10] = 1.0, 1.0
    res = deletion_drop(model, x, -7.0, scores, k=1, units=units)
    assert res.top_units.tolist() == [[5], [10]]
    deleted, original = seen[2], seen[0]  # calls: F(x), F(baseline), F(x_del), F(x_rand)
    for i, (h, w) in enumerate([(1, 1), (2, 2)]):
        assert (deleted[i, :, h, w] == -7.0).all()
        keep = torch.ones(4, 4, dtype=torch.bool)
        keep[h, w] = False
        assert torch.equal(deleted[i][:, keep], original[i][:, keep])
        assert float(res.output[i] - res.deleted[i]) == pytest.approx(float(original[i, :, h, w].sum() + 21.0))


def test_scores_shaped_like_inputs_are_flattened() -> None:
    x = torch.randn(2, 2, 3, dtype=D64)
    scores = x.clone()
    a = deletion_drop(lambda v: v.sum((1, 2)), x, 0.0, scores, k=2)
    b = deletion_drop(lambda v: v.sum((1, 2)), x, 0.0, scores.reshape(2, 6), k=2)
    assert torch.equal(a.top_units, b.top_units) and torch.equal(a.deleted, b.deleted)


def test_target_and_model_outputs() -> None:
    x, _, _ = linear_problem(b=3, d=4)
    w = torch.randn(4, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([2, 0, 1])
    plain = deletion_drop(lambda v: v @ w, x, 0.0, x, k=1, target=target)
    assert torch.allclose(plain.output, (x @ w)[torch.arange(3), target])
    for wrapped in (lambda v: {"logits": v @ w}, lambda v: (v @ w, None)):
        other = deletion_drop(wrapped, x, 0.0, x, k=1, target=target)
        assert torch.equal(other.deleted, plain.deleted)
    column = deletion_drop(lambda v: (v @ w)[:, :1], x, 0.0, x, k=1)  # (B, 1): no target needed
    assert torch.allclose(column.output, (x @ w)[:, 0])


def test_non_finite_examples_are_left_out() -> None:
    x, w, bias = linear_problem(b=4)
    scores = x * w
    x[1, 2] = math.nan
    scores[3, 0] = math.nan
    res = deletion_drop(lambda v: v @ w + bias, x, 0.0, scores, k=2)
    assert res.drop[[1, 3]].isnan().all() and res.random_drop[[1, 3]].isnan().all()
    assert res.drop[[0, 2]].isfinite().all() and (res.top_units[3] == -1).all()
    clean = deletion_drop(lambda v: v @ w + bias, x[[0, 2]], 0.0, scores[[0, 2]], k=2)
    s = res.summary()
    assert s["deletion_drop"] == pytest.approx(float(clean.drop.mean()))
    assert s["deletion_drop"] == pytest.approx(float(res.drop[[0, 2]].mean()))
    assert s["deletion_ratio"] == pytest.approx(s["deletion_drop"] / max(s["deletion_random_drop"], 0.01))


def test_non_finite_outputs_and_all_nan() -> None:
    x, w, _ = linear_problem(b=3)

    def exploding(v: torch.Tensor) -> torch.Tensor:
        out = v @ w
        out[0] = math.inf
        return out

    res = deletion_drop(exploding, x, 0.0, x * w, k=1)
    assert res.drop[0].isnan() and res.drop[1:].isfinite().all()
    assert res.summary()["deletion_drop"] == pytest.approx(float(res.drop[1:].mean()))
    nan_x = torch.full_like(x, math.nan)
    everything = deletion_drop(lambda v: v @ w, nan_x, 0.0, x * w, k=1).summary()
    assert set(everything) == {"deletion_drop", "deletion_random_drop", "deletion_ratio"}
    assert all(math.isnan(v) for v in everything.values())


def test_ratio_is_floored_when_random_removes_nothing_or_raises_the_output() -> None:
    one, zero = torch.ones(2, dtype=D64), torch.zeros(2, dtype=D64)
    units = torch.zeros(2, 1, dtype=torch.long)
    s = DeletionResult(one, zero, zero, one, units, units).summary()  # random deletion changed nothing
    assert s["deletion_drop"] == 1.0 and s["deletion_random_drop"] == 0.0 and s["deletion_ratio"] == 100.0
    s = DeletionResult(one, zero, zero, 2 * one, units, units).summary()  # random deletion raised the output
    assert s["deletion_random_drop"] == -1.0 and s["deletion_ratio"] == 100.0


@pytest.mark.parametrize("training", [True, False])
def test_model_state_untouched(training: bool) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.0), nn.Linear(8, 3)).to(D64)
    model.train(training)
    grad_modes: list[bool] = []

    def forward(v: torch.Tensor) -> torch.Tensor:
        grad_modes.append(torch.is_grad_enabled())
        return model(v)

    x = torch.randn(4, 5, dtype=D64)
    keys = torch.arange(5).expand(4, 5)
    rng = torch.get_rng_state()
    deletion_drop(forward, x, 0.0, x, k=2, target=torch.tensor([0, 1, 2, 0]))
    rule_deletion_drop(forward, x, 0.0, keys, {0: [1], 1: [2, 3]}, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert model.training is training and grad_modes and not any(grad_modes)


def test_rules_on_a_linear_model_match_hand_computation() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 5, generator=g, dtype=D64)
    w, bias = torch.randn(5, 3, generator=g, dtype=D64), torch.randn(3, generator=g, dtype=D64)
    targets = torch.tensor([0, 1, 0, 1, 0, 4, 1])  # class 2 absent, class 4 has no rule
    rules = {0: [1, 3], 1: [0], 2: [4]}
    keys = torch.arange(5).unsqueeze(0)  # tabular: the key is the feature index
    out = rule_deletion_drop(lambda v: v @ w + bias, x, 0.0, keys, rules, targets)
    assert list(out) == [0, 1]
    for c in (0, 1):
        drops = [float(sum(x[i, j] * w[j, c] for j in rules[c])) / max(abs(float(x[i] @ w[:, c])), 1e-3)
                 for i in range(7) if targets[i] == c]
        assert out[c] == pytest.approx(sum(drops) / len(drops), rel=1e-12)
    pairs = rule_deletion_drop(lambda v: v @ w + bias, x, 0.0, keys, {0: [(1, 0.9), (3, 0.2)]}, targets)
    assert pairs[0] == pytest.approx(out[0])


def test_rules_on_tokens_and_single_output() -> None:
    table = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=D64)
    ids = torch.tensor([[1, 2, 2, 0], [3, 4, 1, 0], [4, 4, 4, 4]])
    x = ids
    out = rule_deletion_drop(lambda v: table[v].sum(1), x, 0, ids, {0: [2], 1: [4, 3], 7: [1]}, torch.tensor([0, 1, 1]))
    # Class 0: example 0 loses both 2s (4 of 5). Class 1: example 1 loses 3+4 of 8, example 2 everything.
    assert out == {0: pytest.approx(4 / 5), 1: pytest.approx((7 / 8 + 1.0) / 2)}


def test_rules_nan_safe() -> None:
    x = torch.ones(3, 2, dtype=D64)
    x[0, 0] = math.nan
    out = rule_deletion_drop(lambda v: v.sum(1), x, 0.0, torch.arange(2), {0: [0], 1: [1]}, torch.tensor([0, 0, 1]))
    assert out == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}
    x[2, 1] = math.nan
    out = rule_deletion_drop(lambda v: v.sum(1), x, 0.0, torch.arange(2), {0: [0], 1: [1]}, torch.tensor([0, 0, 1]))
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1])


def _call(**change: object) -> None:
    x = torch.randn(4, 3, 2, dtype=D64)
    args: dict = {"forward": lambda v: v.reshape(4, -1)[:, :3], "inputs": x, "baselines": 0.0, "k": 1,
                  "scores": torch.randn(4, 2), "units": torch.tensor([[0, 1]] * 3),
                  "target": torch.zeros(4, dtype=torch.long)}
    args.update(change)
    deletion_drop(**args)


@pytest.mark.parametrize("change, error, name", [
    ({"k": 0}, ValueError, "`k`"),
    ({"k": True}, TypeError, "`k`"),
    ({"k": 1.0}, TypeError, "`k`"),
    ({"scores": torch.randn(3, 2)}, ValueError, "`scores`"),
    ({"scores": torch.ones(4, 2, dtype=torch.bool)}, TypeError, "`scores`"),
    ({"units": None}, ValueError, "`scores`"),
    ({"units": torch.tensor([0, 1, 1])}, ValueError, "`units`"),
    ({"units": torch.tensor([[0.0, 1.0]] * 3)}, TypeError, "`units`"),
    ({"units": torch.tensor([[0, 2]] * 3)}, ValueError, "`units`"),
    ({"units": torch.tensor([[-1, 1]] * 3)}, ValueError, "`units`"),
    ({"eligible": torch.ones(4, 3, dtype=torch.bool)}, ValueError, "`eligible`"),
    ({"eligible": torch.ones(4, 2)}, TypeError, "`eligible`"),
    ({"target": None}, ValueError, "`target`"),
    ({"target": torch.full((4,), 3)}, ValueError, "`target`"),
    ({"target": torch.zeros(3, dtype=torch.long)}, ValueError, "`target`"),
    ({"delta_floor": 0.0}, ValueError, "`delta_floor`"),
    ({"batch_size": 0}, ValueError, "`batch_size`"),
    ({"generator": 5}, TypeError, "`generator`"),
    ({"inputs": torch.randn(4)}, ValueError, "`inputs`"),
])
def test_bad_arguments_name_themselves(change: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        _call(**change)


def test_missing_target_error_shows_shape() -> None:
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        _call(target=None)


@pytest.mark.parametrize("change, error, name", [
    ({"keys": torch.zeros(4, 3)}, TypeError, "`keys`"),
    ({"keys": torch.zeros(4, 5, dtype=torch.long)}, ValueError, "`keys`"),
    ({"rules": [1, 2]}, TypeError, "`rules`"),
    ({"rules": {0: [1.5]}}, TypeError, "`rules`"),
    ({"rules": {9: [1]}, "targets": torch.full((4,), 9)}, ValueError, "`rules`"),
    ({"targets": None}, TypeError, "`targets`"),
])
def test_rule_bad_arguments(change: dict, error: type, name: str) -> None:
    args: dict = {"forward": lambda v: v, "inputs": torch.randn(4, 3, dtype=D64), "baselines": 0.0,
                  "keys": torch.arange(3), "rules": {0: [1]}, "targets": torch.zeros(4, dtype=torch.long)}
    args.update(change)
    with pytest.raises(error, match=name):
        rule_deletion_drop(**args)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_batch_size_gives_identical_results(batch_size: int) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 6, generator=g, dtype=D64)
    w = torch.randn(6, 3, generator=g, dtype=D64)
    target = torch.tensor([0, 1, 2, 1, 0])
    calls: list[int] = []

    def model(v: torch.Tensor) -> torch.Tensor:
        calls.append(v.shape[0])
        return torch.tanh(v @ w)

    full = deletion_drop(model, x, 0.0, x, k=2, target=target)
    calls.clear()
    chunked = deletion_drop(model, x, 0.0, x, k=2, target=target, batch_size=batch_size)
    assert max(calls) <= batch_size
    for name in ("output", "baseline_output", "deleted", "randomized", "top_units", "random_units"):
        assert torch.equal(getattr(full, name), getattr(chunked, name))
    keys = torch.arange(6)
    rules = {0: [1, 2], 1: [0], 2: [5, 4]}
    assert rule_deletion_drop(model, x, 0.0, keys, rules, target) == \
        rule_deletion_drop(model, x, 0.0, keys, rules, target, batch_size=batch_size)
