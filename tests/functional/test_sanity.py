"""Tests for ig_lightning.functional.sanity: layer order, bit-exact restore, the cascade, Spearman with a mask."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from ig_lightning.functional import randomization
from ig_lightning.functional.integrated_gradients import integrated_gradients
from ig_lightning.functional.sanity import (
    SanityResult,
    cascade,
    cascade_points,
    informative_mask,
    mean_similarity,
    parameter_randomization,
    randomizable_layers,
    randomized,
    rank_correlation,
)

# ----------------------------------------------------------------------------------------------- models


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm(4 * 6 * 6)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.ln(x.flatten(1)))


def trained_cnn() -> CNN:
    """A CNN whose BatchNorm statistics moved away from their initial values."""
    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 1, 6, 6)).square().mean().backward()
        opt.step()
    return model.eval()


class TextModel(nn.Module):
    """Layers registered out of forward order: fc, then lstm, then emb."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.emb = nn.Embedding(10, 4, padding_idx=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.emb(ids))
        return self.fc(out[:, -1])


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 5)
        self.mid = nn.Linear(5, 5)
        self.out = nn.Linear(5, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(ids)))).sum(1)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k


def names(layers: list[tuple[str, nn.Module]]) -> list[str]:
    return [n for n, _ in layers]


# --------------------------------------------------------------------------------------------- layer order


def test_mlp_layers_top_down() -> None:
    model = mlp()
    assert names(randomizable_layers(model)) == ["4", "2", "0"]
    assert names(randomizable_layers(model, order_by=torch.zeros(1, 5))) == ["4", "2", "0"]


def test_cnn_never_lists_norm_layers() -> None:
    model = trained_cnn()
    for order_by in (None, torch.zeros(2, 1, 6, 6)):
        layers = randomizable_layers(model, order_by=order_by)
        assert names(layers) == ["fc", "conv2", "conv1"]
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for _, m in layers)


def test_hf_style_norms_are_excluded() -> None:
    class LlamaRMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def reset_parameters(self) -> None:
            nn.init.ones_(self.weight)

    model = nn.Sequential(nn.Linear(3, 3), LlamaRMSNorm(), nn.GroupNorm(1, 3), nn.RMSNorm(3), nn.Linear(3, 1))
    assert names(randomizable_layers(model)) == ["4", "0"]
    with pytest.raises(ValueError, match="`layers`.*normalisation"):
        cascade(model, ["1"], lambda: None)


def test_text_model_order_follows_the_forward_pass() -> None:
    model = TextModel().train()
    assert names(randomizable_layers(model)) == ["emb", "lstm", "fc"]  # reverse registration
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    assert names(randomizable_layers(model, order_by=ids)) == ["fc", "lstm", "emb"]
    assert names(randomizable_layers(model, order_by=lambda: model(ids))) == ["fc", "lstm", "emb"]
    assert all(m.training for m in model.modules())  # the ordering pass ran in eval mode, then restored it


def test_uncalled_layers_come_last_and_bn_stats_survive_the_ordering_pass() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
    model.extra = nn.Linear(2, 2)  # registered, never called
    model.forward = lambda x: model[2](model[1](model[0](x)))  # type: ignore[method-assign]
    model.train()
    before = state(model)
    assert names(randomizable_layers(model, order_by=torch.randn(4, 2))) == ["2", "0", "extra"]
    assert_same_state(model, before)
    assert model.training and model[1].training


def test_layer_without_reset_parameters_is_skipped() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.s

    class NotCallable(Scale):
        reset_parameters = None

    model = nn.Sequential(nn.Linear(3, 3), Scale(), NotCallable(), nn.ReLU(), nn.Linear(3, 1))
    assert names(randomizable_layers(model)) == ["4", "0"]
    with pytest.raises(ValueError, match="`layers`.*reset_parameters"):
        cascade(model, ["1"], lambda: None)


# ------------------------------------------------------------------------------------------ bit-exact restore


def assert_cascade_restores(model: nn.Module, inputs: torch.Tensor, order_by: bool) -> None:
    layers = randomizable_layers(model, order_by=inputs if order_by else None)
    model(inputs).float().square().sum().backward()  # grads to keep
    grads = {n: (p.grad, p.grad.clone()) for n, p in model.named_parameters() if p.grad is not None}
    assert grads
    params = {n: p for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in params.items()}
    modes = [m.training for m in model.modules()]
    before = state(model)
    with torch.no_grad():
        reference = model(inputs).clone()
    rng = torch.get_rng_state()

    runs = cascade(model, layers, lambda: model(inputs).detach().clone(), seed=3)

    assert [k for k, _, _ in runs] == list(range(1, len(layers) + 1))
    assert all(not torch.equal(out, reference) for _, _, out in runs)  # the randomisation reached the output
    assert_same_state(model, before)
    assert {n: p for n, p in model.named_parameters()} == params and all(
        model.get_parameter(n) is p for n, p in params.items()
    )
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, (g, values) in grads.items():
        assert params[n].grad is g and torch.equal(g, values)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.no_grad():
        assert torch.equal(model(inputs), reference)


def test_mlp_cascade_restores_everything() -> None:
    model = mlp()
    model[2].weight.requires_grad_(False)
    model[2].train(False)
    assert_cascade_restores(model, torch.randn(4, 5), order_by=False)


def test_cnn_cascade_keeps_batchnorm_buffers() -> None:
    model = trained_cnn()
    bn = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("bn")}
    assert int(bn["bn1.num_batches_tracked"]) == 3 and not torch.equal(bn["bn1.running_mean"], torch.zeros(4))
    assert_cascade_restores(model, torch.randn(3, 1, 6, 6), order_by=True)
    for k, v in bn.items():
        assert torch.equal(model.state_dict()[k], v)


def test_text_model_cascade_restores_everything() -> None:
    torch.manual_seed(1)
    model = TextModel().eval()
    assert_cascade_restores(model, torch.tensor([[1, 2, 3], [4, 5, 0]]), order_by=True)


def test_tied_weights_stay_tied() -> None:
    torch.manual_seed(2)
    model = Tied()
    ids = torch.tensor([[1, 2], [3, 4]])
    layers = randomizable_layers(model, order_by=ids)
    assert names(layers) == ["out", "mid", "emb"]
    tied = model.emb.weight
    seen: list[bool] = []
    cascade(model, layers, lambda: seen.append(model.out.weight is model.emb.weight), seed=0)
    assert seen == [True, True, True]
    assert model.out.weight is model.emb.weight is tied
    assert_cascade_restores(model, ids, order_by=True)
    assert model.out.weight is model.emb.weight is tied


def test_restore_when_attribute_fn_raises() -> None:
    model = mlp()
    before, rng = state(model), torch.get_rng_state()
    calls = []

    def boom() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cascade(model, randomizable_layers(model), boom)
    assert_same_state(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(KeyError):
        with randomized(model, randomizable_layers(model), seed=0):
            assert not torch.equal(model[0].weight, before["0.weight"])
            raise KeyError("inside")
    assert_same_state(model, before)


def test_a_reset_that_replaces_the_parameter_is_undone() -> None:
    class Rebind(nn.Linear):
        def reset_parameters(self) -> None:
            self.weight = nn.Parameter(torch.randn(self.out_features, self.in_features))

    torch.manual_seed(0)
    model = nn.Sequential(Rebind(3, 3))
    weight, before = model[0].weight, state(model)
    with randomized(model, ["0"], seed=0):
        assert model[0].weight is not weight
    assert model[0].weight is weight
    assert_same_state(model, before)


def test_restore_when_a_reset_raises_half_way() -> None:
    class Broken(nn.Linear):
        armed = False

        def reset_parameters(self) -> None:
            super().reset_parameters()
            if self.armed:
                nn.init.zeros_(self.weight)
                raise RuntimeError("half reset")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), Broken(3, 3))
    model[1].armed = True
    before = state(model)
    with pytest.raises(RuntimeError, match="half reset"):
        cascade(model, ["0", "1"], lambda: None)
    assert_same_state(model, before)


# ------------------------------------------------------------------------------------ determinism, points


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_and_points_do_not_matter() -> None:
    model = mlp()
    layers = randomizable_layers(model)
    full = cascade(model, layers, lambda: weights(model), seed=5)
    again = cascade(model, layers, lambda: weights(model), points=[2], seed=5)
    last = cascade(model, layers, lambda: weights(model), points=[0, 3], seed=5)
    other = cascade(model, layers, lambda: weights(model), points=[3], seed=6)
    for k, v in full[1][2].items():
        assert torch.equal(again[0][2][k], v)
    for k, v in full[2][2].items():
        assert torch.equal(last[1][2][k], v)
    assert last[0][:2] == (0, "") and all(torch.equal(v, model.state_dict()[k]) for k, v in last[0][2].items())
    assert not torch.equal(other[0][2]["0.weight"], full[2][2]["0.weight"])
    with randomized(model, layers[:2], seed=5):  # the same weights as the cascade's second point
        assert all(torch.equal(v, full[1][2][k]) for k, v in model.state_dict().items())
    # only the first k layers move; deeper ones keep the trained weights
    assert torch.equal(full[0][2]["0.weight"], model[0].weight)
    assert not torch.equal(full[0][2]["4.weight"], model[4].weight)


def test_global_rng_stream_is_not_consumed() -> None:
    model = mlp()
    torch.manual_seed(123)
    cascade(model, randomizable_layers(model), lambda: None, seed=0)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)


def test_cascade_points() -> None:
    assert cascade_points(10, 3) == [1, 5, 10]
    assert cascade_points(10, 10) == list(range(1, 11)) == cascade_points(10, 50)
    assert cascade_points(3, 1) == [3] and cascade_points(1, 4) == [1]
    for n_layers in range(1, 20):
        for n in range(1, 8):
            pts = cascade_points(n_layers, n)
            assert pts[-1] == n_layers and len(pts) == min(n, n_layers) and pts == sorted(set(pts))


# ------------------------------------------------------------------------------------------ memory, copies


def test_copies_are_on_cpu_and_saved_one_layer_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    model = Tied()
    layers = randomizable_layers(model)
    events: list[tuple[str, object]] = []
    real = randomization._to_host

    def recording(t: torch.Tensor) -> torch.Tensor:
        copy = real(t)
        assert copy.device.type == "cpu" and copy.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
        events.append(("save", id(t)))
        return copy

    monkeypatch.setattr(randomization, "_to_host", recording)
    for name, module in layers:
        reset = module.reset_parameters
        monkeypatch.setattr(module, "reset_parameters", lambda n=name, r=reset: (events.append(("reset", n)), r()))
    cascade(model, layers, lambda: events.append(("attribute", None)), seed=0)
    # out: its weight (shared with emb); then mid: weight, bias; then emb: nothing new (the tie is saved once)
    expected = [("save", id(model.out.weight)), ("reset", "out"), ("attribute", None)]
    expected += [("save", id(model.mid.weight)), ("save", id(model.mid.bias)), ("reset", "mid"), ("attribute", None)]
    expected += [("reset", "emb"), ("attribute", None)]
    assert events == expected


def test_meta_model_needs_no_copies() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    runs = cascade(model, randomizable_layers(model), lambda: model[0].weight.device.type)
    assert [r for _, _, r in runs] == ["meta", "meta"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_and_peak_memory() -> None:
    device = torch.device("cuda")
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 10))
    model = model.to(device)
    x = torch.randn(4, 512, device=device)
    before = state(model)
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(device)
    largest = max(sum(p.numel() * p.element_size() for p in m.parameters()) for _, m in randomizable_layers(model))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    cascade(model, randomizable_layers(model), lambda: None, seed=0)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated(device) - base <= largest
    assert_same_state(model, before)
    assert torch.equal(torch.get_rng_state(), cpu_rng) and torch.equal(torch.cuda.get_rng_state(device), cuda_rng)
    outs = cascade(model, randomizable_layers(model), lambda: model(x).detach().cpu(), seed=0)
    again = cascade(model, randomizable_layers(model), lambda: model(x).detach().cpu(), seed=0)
    assert all(torch.equal(a[2], b[2]) for a, b in zip(outs, again))


# ------------------------------------------------------------------------------------------ bad arguments


def test_bad_arguments_are_named() -> None:
    model = mlp()
    layers = randomizable_layers(model)
    with pytest.raises(TypeError, match="`model`"):
        randomizable_layers("net")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`order_by`"):
        randomizable_layers(model, order_by=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`layers`"):
        cascade(model, model[0], lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`layers`.*'nope'"):
        cascade(model, ["nope"], lambda: None)
    with pytest.raises(ValueError, match="`layers`.*not part of `model`"):
        cascade(model, [nn.Linear(2, 2)], lambda: None)
    with pytest.raises(ValueError, match="`layers`.*twice"):
        cascade(model, [model[0], "0"], lambda: None)
    with pytest.raises(ValueError, match="`layers` must not be empty"):
        cascade(model, [], lambda: None)
    with pytest.raises(TypeError, match="`attribute_fn`"):
        cascade(model, layers, None)  # type: ignore[arg-type]
    for points, err in (([], ValueError), ([4], ValueError), ([2, 1], ValueError), ([1, 1], ValueError),
                        ([1.5], TypeError), ("12", TypeError)):
        with pytest.raises(err, match="`points`"):
            cascade(model, layers, lambda: None, points=points)  # type: ignore[arg-type]
    for seed in ("1", True, 1.0):
        with pytest.raises(TypeError, match="`seed`"):
            cascade(model, layers, lambda: None, seed=seed)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="`seed`"):
            with randomized(model, layers, seed=seed):  # type: ignore[arg-type]
                pass
    with pytest.raises(ValueError, match="`n_layers`"):
        cascade_points(0, 3)
    with pytest.raises(ValueError, match="`n`"):
        cascade_points(3, 0)
    a = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="`a` and `b`"):
        rank_correlation(a, torch.zeros(2, 5))
    with pytest.raises(TypeError, match="`mask`"):
        rank_correlation(a, a, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="`mask`"):
        rank_correlation(a, a, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="`absolute`"):
        rank_correlation(a, a, absolute=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`a`"):
        rank_correlation([[1.0]], a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`baseline`"):
        informative_mask(a, torch.zeros(3))
    with pytest.raises(ValueError, match="`baseline`"):
        informative_mask(a, [])
    with pytest.raises(TypeError, match="`x`"):
        informative_mask([1.0], 0.0)  # type: ignore[arg-type]
    assert_same_state(model, state(mlp()))


# --------------------------------------------------------------------------------------------- similarity


def test_spearman_hand_computation_with_ties() -> None:
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 3.0, 2.0, 2.0]])
    # ranks a: 1, 2.5, 2.5, 4; b: 1, 4, 2.5, 2.5; centred: (-1.5, 0, 0, 1.5), (-1.5, 1.5, 0, 0) -> 2.25 / 4.5
    assert rank_correlation(a, b).tolist() == [0.5]
    assert rank_correlation(a, -b).tolist() == [0.5]  # magnitudes
    assert rank_correlation(a, -b, absolute=False).tolist() == [-0.5]
    assert rank_correlation(a, a).tolist() == [1.0]


@pytest.mark.parametrize("absolute", [True, False])
def test_spearman_matches_scipy(absolute: bool) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-4, 5, (16, 3, 5), generator=g).double()  # many ties, signs
    b = a + torch.randint(-3, 4, (16, 3, 5), generator=g).double()
    mask = torch.rand(16, 3, 5, generator=g) < 0.7
    for m in (None, mask):
        got = rank_correlation(a, b, m, absolute=absolute)
        assert got.dtype == torch.float64 and got.shape == (16,)
        for i in range(16):
            sel = torch.ones(15, dtype=torch.bool) if m is None else m[i].reshape(-1)
            x, y = a[i].reshape(-1)[sel], b[i].reshape(-1)[sel]
            if absolute:
                x, y = x.abs(), y.abs()
            want = spearmanr(x.numpy(), y.numpy()).statistic
            if math.isnan(want):
                assert math.isnan(got[i])
            else:
                assert float(got[i]) == pytest.approx(want, abs=1e-12)


def test_mask_removes_the_shared_zeros() -> None:
    """The digits case: half the units equal the baseline, so both IG maps are 0 there whatever the model."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=g)
    x[:, :, :, :4] = 0.0  # background at the (zero) baseline
    mask = informative_mask(x, 0.0)
    assert int(mask.sum()) == 64 * 32
    # maps unrelated wherever they can be non-zero
    trained = torch.randn(64, 1, 8, 8, generator=g) * mask
    random_model = torch.randn(64, 1, 8, 8, generator=g) * mask
    unmasked = mean_similarity(rank_correlation(trained, random_model))
    masked = mean_similarity(rank_correlation(trained, random_model, mask))
    assert unmasked > 0.6 and abs(masked) < 0.05
    # a mask broadcast over channels works too
    broadcast = rank_correlation(trained, random_model, mask[:, :1])
    assert torch.equal(broadcast, rank_correlation(trained, random_model, mask))
    # IG-like maps x * gradient with unrelated gradients: the shared zeros inflate |.| Spearman to ~0.9; what is
    # left over the informative units (~0.37) is the input's structure that x carries into both maps
    trained, random_model = x * torch.randn(x.shape, generator=g), x * torch.randn(x.shape, generator=g)
    unmasked = mean_similarity(rank_correlation(trained, random_model))
    masked = mean_similarity(rank_correlation(trained, random_model, mask))
    signed = mean_similarity(rank_correlation(trained, random_model, mask, absolute=False))
    assert unmasked > 0.85 and 0.2 < masked < 0.5 and abs(signed) < 0.1


def test_nan_cases_and_mean() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 4)
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [1.0, float("nan"), 2.0, 3.0], [4.0, 3.0, 2.0, 1.0]])
    mask = torch.tensor([[True, True, False, False], [True] * 4, [True] * 4, [True] * 4])
    got = rank_correlation(a, b, mask)
    assert math.isnan(got[0]) and math.isnan(got[1]) and math.isnan(got[2]) and got[3] == -1.0
    assert mean_similarity(got) == -1.0
    assert math.isnan(mean_similarity(torch.full((3,), math.nan)))
    assert mean_similarity([0.5, math.nan, 0.0]) == 0.25


def test_informative_mask_several_baselines_and_tuples() -> None:
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert informative_mask(x, 0.0).tolist() == [[False, True, True, True]]
    draws = [torch.tensor([0.0, 1.0, 5.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 4.0])]
    assert informative_mask(x, draws).tolist() == [[False, False, True, True]]  # differs from at least one
    masks = informative_mask((x, torch.ones(1, 2)), (None, torch.tensor([1.0, 0.0])))
    assert [m.tolist() for m in masks] == [[[False, True, True, True]], [[False, True]]]
    a = (torch.randn(3, 4), torch.randn(3, 2))
    assert torch.equal(rank_correlation(a, a, (masks[0].expand(3, 4), masks[1].expand(3, 2))),
                       torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ whole test


def test_parameter_randomization_with_integrated_gradients() -> None:
    model = trained_cnn()
    x = torch.rand(6, 1, 6, 6)
    x[:, :, :2] = 0.0
    before = state(model)
    attribute = lambda: integrated_gradients(model, x, target=0, n_steps=8)  # noqa: E731
    res = parameter_randomization(model, attribute, layers=randomizable_layers(model, order_by=x), n_points=2,
                                  mask=informative_mask(x, 0.0), seed=0)
    assert isinstance(res, SanityResult)
    assert res.points == [1, 3] and res.layers == ["fc", "conv1"]
    assert all(-1.0 <= v <= 1.0 for v in res.spearman_abs + res.spearman_signed)
    assert res.final == res.spearman_abs[-1] and res.final_signed == res.spearman_signed[-1]
    d = res.to_dict()
    assert d["points"] == [1, 3] and d["final"] == res.final and set(d) >= {"spearman_abs", "spearman_signed"}
    assert_same_state(model, before)
    # the same model against itself (no layer randomised) is a perfect match
    same = parameter_randomization(model, attribute, points=[0], seed=0)
    assert same.spearman_abs == [1.0] and same.spearman_signed == [1.0]
