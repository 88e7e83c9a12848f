"""Tests for ig_lightning.functional.curves: MoRF/LeRF deletion and insertion curves, their areas and SRG."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ig_lightning.functional.baselines import blurred
from ig_lightning.functional.curves import CurveResult, _neighbours, faithfulness_curves

D64 = torch.float64


def linear_problem(b: int = 4, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=D64), torch.randn(d, generator=g, dtype=D64), 0.5


def hand_curves(x: torch.Tensor, w: torch.Tensor, bias: float, scores: torch.Tensor, steps: list[int]):
    """Raw MoRF, LeRF and insertion outputs of ``x @ w + bias`` with baseline 0, counted in units per point."""
    contrib = (x * w).tolist()
    morf, lerf, ins = [], [], []
    for i in range(x.shape[0]):
        s = scores[i].tolist()
        down = sorted(range(len(s)), key=lambda u: (-s[u], u))
        up = sorted(range(len(s)), key=lambda u: (s[u], u))
        total = sum(contrib[i])
        morf.append([bias + total - sum(contrib[i][u] for u in down[:k]) for k in steps])
        lerf.append([bias + total - sum(contrib[i][u] for u in up[:k]) for k in steps])
        ins.append([bias + sum(contrib[i][u] for u in down[:k]) for k in steps])
    return [torch.tensor(c, dtype=D64) for c in (morf, lerf, ins)]


def trapezoid(values: list[float]) -> float:
    h = 1.0 / (len(values) - 1)
    return sum((a + b) * h / 2 for a, b in zip(values[:-1], values[1:]))


class Counter:
    """A forward function that counts its calls and rows and keeps every input it saw."""

    def __init__(self, f) -> None:
        self.f, self.calls, self.rows, self.seen = f, 0, [], []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows.append(x.shape[0])
        self.seen.append(x.clone())
        return self.f(x)


# --- exact values on a linear model ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_linear_curves_match_hand_computation(seed: int) -> None:
    x, w, bias = linear_problem(b=4, d=6, seed=seed)
    scores = x * w  # IG of a linear model from a zero baseline: the exact contributions
    res = faithfulness_curves(lambda v: v @ w + bias, x, scores, points=6)
    steps = list(range(7))  # points == units: one unit per step
    morf, lerf, ins = hand_curves(x, w, bias, scores, steps)
    for got, want in ((res.morf_output, morf), (res.lerf_output, lerf), (res.insertion_output, ins)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    out, fill_out = x @ w + bias, torch.full((4,), bias, dtype=D64)
    torch.testing.assert_close(res.output, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.fill_output, fill_out, rtol=0, atol=0)
    denom = (out - fill_out).abs().clamp_min(1e-3).unsqueeze(1)
    for got, raw in ((res.morf, morf), (res.lerf, lerf), (res.insertion, ins)):
        torch.testing.assert_close(got, (raw - bias) / denom, rtol=1e-12, atol=1e-12)
    for i in range(4):
        assert float(res.auc_morf[i]) == pytest.approx(trapezoid(res.morf[i].tolist()), rel=1e-12)
        assert float(res.srg[i]) == pytest.approx(
            trapezoid(res.lerf[i].tolist()) - trapezoid(res.morf[i].tolist()), rel=1e-12, abs=1e-12)
    assert res.fractions.tolist() == [j / 6 for j in range(7)] and res.counts.tolist() == [steps] * 4
    assert res.forwards == 3 * 6 - 1 and res.calls == res.forwards
    assert all(t.dtype == D64 and t.device.type == "cpu" for t in (res.morf, res.lerf_output, res.output))
    # The normalised curves start at the prediction's sign (1 where F(x) > F(x_fill)) and end at 0.
    assert torch.equal(res.morf[:, 0], torch.sign(out - bias)) and (res.morf[:, -1] == 0).all()
    assert (res.insertion[:, 0] == 0).all() and torch.equal(res.insertion[:, -1], torch.sign(out - bias))
    # Perfect attributions of a linear model: MoRF below LeRF everywhere, so a positive SRG.
    assert (res.srg > 0).all()
    summary = res.summary()
    assert set(summary) == {"deletion_auc", "lerf_auc", "insertion_auc", "srg"}
    assert summary["srg"] == pytest.approx(float(res.srg.mean()), rel=1e-12)


def test_coarse_points_round_the_unit_counts() -> None:
    x, w, bias = linear_problem(b=2, d=5)
    res = faithfulness_curves(lambda v: v @ w + bias, x, x * w, points=2)
    assert res.counts.tolist() == [[0, 3, 5]] * 2  # round(2.5) = 3: halves up
    morf, lerf, ins = hand_curves(x, w, bias, x * w, [0, 3, 5])
    torch.testing.assert_close(res.morf_output, morf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.lerf_output, lerf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.insertion_output, ins, rtol=1e-12, atol=1e-12)


def test_baseline_tensor_and_target_column() -> None:
    x, w, _ = linear_problem(b=3, d=4)
    base = torch.full((1, 4), 0.25, dtype=D64)
    weights = torch.stack([w, -w], 1)  # two outputs; explain column 1

    res = faithfulness_curves(lambda v: v @ weights, x, (x - base) * -w, baseline=base, target=1, points=4)
    scores = (x - base) * -w
    expected = faithfulness_curves(lambda v: (v - base) @ -w, x - base, scores, points=4)  # shift to baseline 0
    torch.testing.assert_close(res.morf, expected.morf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.fill_output, base.expand(3, 4) @ -w, rtol=1e-12, atol=1e-12)


def test_insertion_is_lerf_read_backwards_with_the_same_fill() -> None:
    x, w, bias = linear_problem(b=3, d=8)
    res = faithfulness_curves(lambda v: v @ w + bias, x, x * w, points=4)  # no ties, 4 divides 8
    torch.testing.assert_close(res.insertion, res.lerf.flip(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.auc_insertion, res.auc_lerf, rtol=1e-12, atol=1e-12)


# --- ordering ----------------------------------------------------------------------------------------------


def test_reversed_scores_swap_morf_and_lerf_even_with_ties() -> None:
    x, w, bias = linear_problem(b=3, d=7)
    scores = torch.tensor([[1, 1, 0, 2, 2, -1, 0], [0] * 7, [3, -3, 1, 1, 1, 0, 2]], dtype=D64)  # many ties
    f = lambda v: torch.tanh(v @ w + bias)  # noqa: E731
    res, rev = (faithfulness_curves(f, x, s, points=7) for s in (scores, -scores))
    assert torch.equal(rev.morf, res.lerf) and torch.equal(rev.lerf, res.morf)
    assert torch.equal(rev.srg, -res.srg)


def test_ties_are_broken_by_unit_index() -> None:
    w = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=D64)
    x = torch.ones(1, 4, dtype=D64)
    scores = torch.tensor([[0.0, 5.0, 5.0, 0.0]], dtype=D64)
    res = faithfulness_curves(lambda v: v @ w, x, scores, points=4)
    # MoRF: 1, 2 (the tied fives, lower index first), then 0, 3; LeRF: 0, 3, then 1, 2.
    assert res.morf_output[0].tolist() == [1111.0, 1101.0, 1001.0, 1000.0, 0.0]
    assert res.lerf_output[0].tolist() == [1111.0, 1110.0, 110.0, 100.0, 0.0]
    assert res.insertion_output[0].tolist() == [0.0, 10.0, 110.0, 111.0, 1111.0]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(6 * 8 * 8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("fill", ["baseline", "blur", "neighbours"])
def test_ig_beats_random_scores_on_a_cnn(fill: str) -> None:
    from ig_lightning.functional import integrated_gradients

    model = SmallCNN().double().eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=D64)
    target = model(x).argmax(1)
    ig = integrated_gradients(model, x, target=target, n_steps=32).attributions
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=D64)
    good = faithfulness_curves(model, x, ig, target=target, fill=fill, points=8)
    rand = faithfulness_curves(model, x, noise, target=target, fill=fill, points=8)
    assert good.summary()["srg"] > rand.summary()["srg"] + 0.1
    if fill == "baseline":  # IG's own baseline; with another fill MoRF alone can mislead, SRG still ranks them
        assert good.summary()["deletion_auc"] < rand.summary()["deletion_auc"]
        assert good.summary()["insertion_auc"] > rand.summary()["insertion_auc"]
    assert good.srg.isfinite().all()


# --- cost --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("points", [1, 3, 10])
@pytest.mark.parametrize("batch_size", [None, 1, 5, 12, 1000])
def test_forward_count_is_bounded_and_as_documented(points: int, batch_size: int | None) -> None:
    x, w, bias = linear_problem(b=4, d=12)
    counter = Counter(lambda v: v @ w + bias)
    res = faithfulness_curves(counter, x, x * w, points=points, batch_size=batch_size)
    n_states = 3 * points - 1  # 3 * (points + 1) values, 4 end points shared: x and x_fill
    assert res.forwards == n_states and sum(counter.rows) == n_states * 4
    if batch_size is None:
        assert counter.calls == n_states and set(counter.rows) == {4}
    else:
        assert counter.calls == math.ceil(n_states * 4 / batch_size) and max(counter.rows) <= batch_size
    assert res.calls == counter.calls
    reference = faithfulness_curves(lambda v: v @ w + bias, x, x * w, points=points)
    torch.testing.assert_close(res.morf, reference.morf, rtol=1e-12, atol=1e-12)  # BLAS rounding may differ
    torch.testing.assert_close(res.insertion, reference.insertion, rtol=1e-12, atol=1e-12)


# --- fills -------------------------------------------------------------------------------------------------


def test_neighbours_fill_of_a_constant_image_is_constant() -> None:
    img = torch.full((2, 3, 6, 5), 0.7, dtype=D64)
    removed = torch.rand(img.shape, generator=torch.Generator().manual_seed(0)) < 0.6
    removed[0] = True  # everything removed: the image's own mean
    torch.testing.assert_close(_neighbours(img, removed), img, rtol=0, atol=1e-15)
    counter = Counter(lambda v: v.flatten(1).sum(1))
    res = faithfulness_curves(counter, img, torch.rand(2, 3, 6, 5, dtype=D64), fill="neighbours", points=4)
    assert all(torch.allclose(seen, img) for seen in counter.seen)
    assert torch.allclose(res.morf_output, res.output.unsqueeze(1).expand(2, 5))


def test_neighbours_fill_by_hand_on_3x3() -> None:
    img = torch.arange(1.0, 10.0, dtype=D64).view(1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    centre = torch.zeros(1, 3, 3, dtype=torch.bool)
    centre[0, 1, 1] = True
    out = _neighbours(img, centre)
    # Edge neighbours weigh 1/6, corners 1/12.
    assert float(out[0, 1, 1]) == pytest.approx((2 * (2 + 4 + 6 + 8) + (1 + 3 + 7 + 9)) / 12)
    assert torch.equal(out.masked_fill(centre, 0), img.masked_fill(centre, 0))

    corner = torch.zeros(1, 3, 3, dtype=torch.bool)
    corner[0, 0, 0] = corner[0, 0, 1] = True
    out = _neighbours(img, corner)
    # (0,0) touches 4 (edge) and 5 (corner); (0,1) touches 3, 5 (edges) and 4, 6 (corners): removed ones excluded.
    assert float(out[0, 0, 0]) == pytest.approx((2 * 4 + 5) / 3)
    assert float(out[0, 0, 1]) == pytest.approx((2 * 3 + 2 * 5 + 4 + 6) / 6)
    assert torch.equal(out[0, 1:], img[0, 1:]) and float(out[0, 0, 2]) == 3.0


def test_neighbours_fill_reaches_the_interior_from_outside() -> None:
    img = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(0), dtype=D64)
    removed = torch.zeros_like(img, dtype=torch.bool)
    removed[..., 1:4, 1:4] = True  # a 3x3 hole: its centre touches no kept pixel
    out = _neighbours(img, removed)
    torch.testing.assert_close(out.masked_fill(removed, 0), img.masked_fill(removed, 0), rtol=0, atol=0)
    ring = removed.clone()
    ring[..., 2, 2] = False
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 0.0, 2.0], [1.0, 2.0, 1.0]], dtype=D64)
    # The centre is the weighted mean of the ring, which was filled first.
    assert float(out[0, 0, 2, 2]) == pytest.approx(float((out[0, 0, 1:4, 1:4] * kernel).sum() / 12))
    # Each ring pixel is the weighted mean of its kept neighbours, e.g. the top-left one of the hole.
    weights = torch.tensor([[1.0, 2.0, 1.0], [2.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=D64)
    expected = float((img[0, 0, 0:3, 0:3] * weights).sum() / weights.sum())
    assert float(out[0, 0, 1, 1]) == pytest.approx(expected)
    # Channels are imputed from their own channel.
    two = torch.cat([img, 10 + img], 1)
    out2 = _neighbours(two, removed.expand_as(two))
    torch.testing.assert_close(out2[:, 1], 10 + out[:, 0], rtol=1e-12, atol=1e-12)


def test_blur_fill() -> None:
    const = torch.full((2, 3, 7, 9), -1.25, dtype=D64)
    counter = Counter(lambda v: v.flatten(1).mean(1))
    faithfulness_curves(counter, const, torch.rand(2, 3, 7, 9, dtype=D64), fill="blur", points=2)
    assert all(torch.allclose(seen, const) for seen in counter.seen)

    img = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(0), dtype=D64)
    scores = torch.rand(2, 7, 9, dtype=D64)
    counter = Counter(lambda v: v.flatten(1).mean(1))
    res = faithfulness_curves(counter, img, scores, fill="blur", blur_sigma=1.5, points=2)
    torch.testing.assert_close(counter.seen[1], blurred(img, 1.5))  # the second input is x_fill
    half = counter.seen[2]  # MoRF, half of the pixels removed: those hold the blurred image, the rest the input
    top = (-scores.flatten(1)).sort(dim=1, stable=True).indices[:, :32]
    removed = torch.zeros(2, 63, dtype=torch.bool).scatter_(1, top, True).view(2, 7, 9)
    torch.testing.assert_close(half, torch.where(removed, blurred(img, 1.5), img), rtol=0, atol=0)
    assert res.counts[0].tolist() == [0, 32, 63]
    default = Counter(lambda v: v.flatten(1).mean(1))
    faithfulness_curves(default, img, scores, fill="blur", points=1)
    torch.testing.assert_close(default.seen[1], blurred(img, 1.0))  # sigma max(1, min(H, W) / 32)


# --- units, eligibility, non-finite ------------------------------------------------------------------------


def test_eligible_mask_respected_padding_never_removed() -> None:
    lengths = [5, 3, 0]
    x = torch.arange(1.0, 25.0, dtype=D64).view(3, 8)
    eligible = torch.arange(8) < torch.tensor(lengths).unsqueeze(1)
    scores = torch.full((3, 8), 100.0, dtype=D64).where(~eligible, torch.rand(3, 8, dtype=D64))  # padding "best"
    counter = Counter(lambda v: v.sum(1))
    res = faithfulness_curves(counter, x, scores, baseline=-1.0, eligible=eligible, points=4)
    for seen in counter.seen:
        assert torch.equal(seen[~eligible], x[~eligible])
    assert res.counts.tolist() == [[0, 1, 3, 4, 5], [0, 1, 2, 2, 3], [0] * 5]  # round(j * n / 4), halves up
    torch.testing.assert_close(res.fill_output[:2], torch.where(eligible, -1.0, x).sum(1)[:2])
    assert res.morf[2].isnan().all() and res.morf[:2].isfinite().all()  # nothing to remove: left out
    assert math.isfinite(res.summary()["srg"])


def test_units_group_channels() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 2, 2, generator=g, dtype=D64), torch.randn(3, 2, 2, generator=g, dtype=D64)
    pixel_units = torch.arange(4).view(2, 2).expand(3, 2, 2)
    pixel_scores = (x * w).sum(1).flatten(1)  # (B, 4)
    counter = Counter(lambda v: (v * w).flatten(1).sum(1))
    res = faithfulness_curves(counter, x, pixel_scores, units=pixel_units, points=4)
    for seen in counter.seen:
        zero = seen == 0
        assert torch.equal(zero, zero[:, :1].expand_as(zero))  # a pixel's channels go together
    contrib = pixel_scores  # a pixel's contribution: the sum over its channels
    morf, lerf, ins = hand_curves(contrib, torch.ones(4, dtype=D64), 0.0, pixel_scores, [0, 1, 2, 3, 4])
    torch.testing.assert_close(res.morf_output, morf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.lerf_output, lerf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.insertion_output, ins, rtol=1e-12, atol=1e-12)


def test_input_shaped_scores_and_eligible() -> None:
    x, w, bias = linear_problem(b=2, d=6)
    eligible = torch.tensor([[True, True, False, True, True, True], [True] * 6])
    f = lambda v: v.flatten(1) @ w + bias  # noqa: E731
    res = faithfulness_curves(f, x.view(2, 2, 3), (x * w).view(2, 2, 3), eligible=eligible.view(2, 2, 3), points=3)
    flat = faithfulness_curves(f, x, x * w, eligible=eligible, points=3)
    torch.testing.assert_close(res.morf, flat.morf, rtol=0, atol=0)


def test_non_finite_examples_are_isolated() -> None:
    x, w, bias = linear_problem(b=4, d=5)
    scores = x * w
    x[1, 2] = math.nan
    scores[2, 0] = math.inf
    x[3, 4] = 7.0  # a marker

    def f(v: torch.Tensor) -> torch.Tensor:
        out = v @ w + bias
        # Example 3's output blows up when its feature 0 is removed and feature 4 is not.
        return out.masked_fill((v[:, 4] == 7.0) & (v[:, 0] == 0), math.inf)

    res = faithfulness_curves(f, x, scores, points=5, batch_size=3)
    for curve in (res.morf, res.lerf, res.insertion, res.auc_morf.unsqueeze(1), res.srg.unsqueeze(1)):
        assert curve[1:].isnan().all() and curve[0].isfinite().all()
    assert res.morf_output[1:3].isnan().all()
    alone = faithfulness_curves(lambda v: v @ w + bias, x[:1], scores[:1], points=5)
    torch.testing.assert_close(res.morf[:1], alone.morf, rtol=1e-12, atol=1e-12)
    assert res.morf_output[3].isinf().any()  # raw outputs are kept as the model gave them
    summary = res.summary()
    assert summary["srg"] == pytest.approx(float(alone.srg[0]), rel=1e-12)
    every_bad = faithfulness_curves(f, x[1:3], scores[1:3], points=2).summary()
    assert all(math.isnan(v) for v in every_bad.values())


def test_tiny_prediction_uses_the_floor() -> None:
    w = torch.tensor([1.0, -1.0], dtype=D64)
    x = torch.tensor([[1.0, 1.0 - 1e-5]], dtype=D64)  # F(x) - F(0) = 1e-5 < delta_floor
    res = faithfulness_curves(lambda v: v @ w, x, x * w, points=2)
    assert float(res.morf[0, 0]) == pytest.approx(1e-5 / 1e-3) and res.morf.isfinite().all()
    assert float(res.morf[0, 1]) == pytest.approx((-(1.0 - 1e-5)) / 1e-3)


def test_integer_token_ids_with_a_baseline_id() -> None:
    emb = torch.randn(20, generator=torch.Generator().manual_seed(0), dtype=D64)
    ids = torch.tensor([[3, 7, 9, 0], [5, 5, 2, 1]])
    res = faithfulness_curves(lambda t: emb[t].sum(1), ids, emb[ids] - emb[0], baseline=0, points=4)
    assert res.morf.isfinite().all() and torch.allclose(res.fill_output, 4 * emb[0].expand(2))
    assert isinstance(res, CurveResult)


# --- arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"points": 0}, ValueError, "`points`"),
        ({"points": 2.5}, TypeError, "`points`"),
        ({"fill": "zeros"}, ValueError, "`fill`"),
        ({"scores": torch.zeros(2, 5)}, ValueError, "`scores`"),
        ({"fill": "blur"}, ValueError, "`fill`"),  # 2-D inputs are not images
        ({"fill": "neighbours"}, ValueError, "`fill`"),
        ({"blur_sigma": 1.0}, ValueError, "`blur_sigma`"),
        ({"fill": "blur", "baseline": 0.5}, ValueError, "`baseline`"),
        ({"baseline": torch.zeros(3)}, ValueError, "`baselines`"),
        ({"eligible": torch.ones(2, 5, dtype=torch.bool)}, ValueError, "`eligible`"),
        ({"eligible": torch.ones(2, 6)}, TypeError, "`eligible`"),
        ({"target": [0, 1, 2]}, ValueError, "`target`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"delta_floor": 0.0}, ValueError, "`delta_floor`"),
        ({"units": torch.zeros(5, dtype=torch.long)}, ValueError, "`units`"),
        ({"inputs": torch.zeros(6)}, ValueError, "`inputs`"),
        ({"inputs": [1.0]}, TypeError, "`inputs`"),
        ({"forward_func": 3}, TypeError, "`forward_func`"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, error: type, name: str) -> None:
    x, w, _ = linear_problem(b=2, d=6)
    args = {"forward_func": lambda v: v @ w, "inputs": x, "scores": x * w, **kwargs}
    with pytest.raises(error, match=name):
        faithfulness_curves(args.pop("forward_func"), args.pop("inputs"), args.pop("scores"), **args)


def test_blur_sigma_must_be_positive_and_images_need_floats() -> None:
    img = torch.rand(1, 1, 4, 4, dtype=D64)
    with pytest.raises(ValueError, match="`blur_sigma`"):
        faithfulness_curves(lambda v: v.sum((1, 2, 3)), img, img, fill="blur", blur_sigma=0.0)
    with pytest.raises(TypeError, match="`fill`"):
        faithfulness_curves(lambda v: v.sum((1, 2, 3)), torch.ones(1, 1, 4, 4, dtype=torch.long), img, fill="blur")


# --- cross-check -------------------------------------------------------------------------------------------


def test_morf_matches_quantus_pixel_flipping() -> None:
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # distinct scores: no ties
    y = torch.tensor([0, 1, 2])
    metric = quantus.PixelFlipping(features_in_step=1, perturb_baseline=0.0, normalise=False, disable_warnings=True)
    theirs = torch.tensor(metric(model, x.numpy(), y.numpy(), a_batch=a.numpy(), softmax=False, device="cpu"),
                          dtype=D64)  # (B, 16): the output after each pixel removed, most relevant first
    ours = faithfulness_curves(model, x, a, target=y, points=16)
    torch.testing.assert_close(ours.morf_output[:, 1:], theirs, rtol=1e-5, atol=1e-5)
