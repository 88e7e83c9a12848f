"""Warm starts of n_steps="auto" (ig_lightning.functional.warm): the same error target as a cold call, fewer rounds,
meshes that coarsen when the integrand smooths, and clear errors for a warm start that does not fit."""

import pytest
import torch
from torch import nn

from lockstep_worker import CountingPath, mlp
from ig_lightning import integrated_gradients
from ig_lightning.functional._mesh import leaves_of, prune
from ig_lightning.functional.adaptive import integrate_auto
from ig_lightning.functional.warm import WarmStart


def run(f, x, warm=None, tolerance=1e-3, max_steps=512):
    path = CountingPath(f, torch.zeros_like(x), x)
    with torch.no_grad():
        delta = f(x) - f(torch.zeros_like(x))
    return integrate_auto(path, delta, tolerance=tolerance, max_steps=max_steps, delta_floor=1e-3,
                          warm_start=True if warm is None else warm), path


def reference(f, x, points=4097):
    alphas = torch.linspace(0, 1, points, dtype=torch.float64)
    w = torch.full((points,), 1.0 / (points - 1), dtype=torch.float64)
    w[[0, -1]] /= 2
    out = []
    for row in x:
        z = (alphas[:, None] * row).requires_grad_(True)
        (g,) = torch.autograd.grad(f(z).sum(), z)
        out.append(row * (w[:, None] * g).sum(0))
    return torch.stack(out)


def inputs(n=6, seed=0, scale=2.0):
    return torch.randn(n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_a_warm_call_meets_the_cold_calls_target_on_a_moved_model_in_fewer_rounds(activation):
    x = inputs()
    cold, cold_path = run(mlp(activation, scale=4.0), x)
    moved = mlp(activation, scale=4.2)  # the next check: the model moved a little
    again, again_path = run(moved, x)
    warm, warm_path = run(moved, x, cold.warm_start)
    ref = reference(moved, x)
    for res, path in ((again, again_path), (warm, warm_path)):
        err = (path.diff * res.avg_grad - ref).norm(dim=1) / ref.norm(dim=1)
        assert bool((res.attribution_error <= 1e-3).all()), res.attribution_error
        assert bool((err <= 2e-3).all()), err  # the estimate is honest, within its usual factor
    assert len(warm_path.calls) < len(again_path.calls), (warm_path.calls, again_path.calls)
    assert warm.rounds == len(warm_path.calls)
    assert warm.n_evaluations.tolist() == warm.n_steps.tolist()  # every point evaluated is a node of the rule


def test_the_same_model_warm_is_done_in_one_round_on_the_kept_mesh():
    f, x = mlp(nn.ReLU, scale=4.0), inputs()
    cold, _ = run(f, x)
    warm, path = run(f, x, cold.warm_start)
    # The kept mesh was coarsened only as far as this very model allowed: one round is enough.
    assert len(path.calls) == 1 and warm.rounds == 1
    assert bool((warm.attribution_error <= 1e-3).all())
    assert bool((warm.n_evaluations <= cold.n_evaluations).all())
    assert warm.n_evaluations.tolist() == cold.warm_start.mesh_size().tolist()


def test_the_mesh_coarsens_when_the_integrand_becomes_smooth():
    x = inputs()
    cold, _ = run(mlp(nn.ReLU, scale=4.0), x)
    w = torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0, 4.0], dtype=torch.float64)
    linear = lambda z: z @ w  # noqa: E731  the model became linear: five points are exact
    sizes = []
    warm = cold.warm_start
    for _ in range(4):
        res, path = run(linear, x, warm)
        torch.testing.assert_close(path.diff * res.avg_grad, x * w)
        warm = res.warm_start
        sizes.append(float(warm.mesh_size().double().mean()))
    assert sizes[-1] < sizes[0] < float(cold.warm_start.mesh_size().double().mean())
    assert all(b <= a for a, b in zip(sizes, sizes[1:])), sizes


def test_warm_start_through_integrated_gradients_and_a_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64) * 3
    cold = integrated_gradients(net, x, target=1, n_steps="auto", tolerance=1e-3, layer=net[0], warm_start=True)
    plain = integrated_gradients(net, x, target=1, n_steps="auto", tolerance=1e-3, layer=net[0])
    assert plain.warm_start is None and plain.rounds == cold.rounds  # no warm start asked: none is made
    torch.testing.assert_close(plain.attributions, cold.attributions, rtol=0, atol=0)
    warm = integrated_gradients(net, x, target=1, n_steps="auto", tolerance=1e-3, layer=net[0],
                                warm_start=cold.warm_start)
    assert warm.rounds < cold.rounds
    torch.testing.assert_close(warm.attributions, cold.attributions, atol=5e-3 * cold.attributions.abs().max(),
                               rtol=0)
    fixed = integrated_gradients(net, x, target=1, n_steps=16)
    assert fixed.rounds == 0 and fixed.warm_start is None
    moved = warm.to("cpu")
    assert moved.rounds == warm.rounds and moved.warm_start is not None


def test_non_finite_gradients_stop_a_warm_example_like_a_cold_one():
    f, x = mlp(nn.ReLU, scale=4.0), inputs(3)
    cold, _ = run(f, x)
    bad = lambda z: f(z) * torch.where(z[:, 0:1].abs() > 1e9, 0.0, 1.0)[:, 0] / (z[:, 1] != z[:, 1]).double()  # noqa
    res, _ = run(bad, x, cold.warm_start)
    assert bool(torch.isnan(res.attribution_error).all())
    assert res.unconverged == 0


def test_a_warm_start_that_does_not_fit_is_refused_by_name():
    f, x = mlp(nn.ReLU), inputs(3)
    cold, _ = run(f, x)
    with pytest.raises(ValueError, match="`warm_start` is for 3 examples; this call has 2"):
        run(f, x[:2], cold.warm_start)
    with pytest.raises(TypeError, match="`warm_start` must be a WarmStart"):
        run(f, x, {"owner": 1})
    with pytest.raises(ValueError, match="`warm_start` needs n_steps='auto'"):
        integrated_gradients(nn.Linear(6, 1).double(), x, n_steps=8, warm_start=cold.warm_start)
    with pytest.raises(TypeError, match="`warm_start` must be a WarmStart"):
        integrated_gradients(nn.Linear(6, 1).double(), x, n_steps="auto", warm_start=[0.0, 1.0])
    big = int(cold.warm_start.mesh_size().max())
    with pytest.raises(ValueError, match="`warm_start` has meshes of up to"):
        run(f, x, cold.warm_start, max_steps=big - 1)


@pytest.mark.parametrize("owner, alpha, message", [
    ([0, 0, 0], [0.0, 0.5, 0.75], "from alpha 0 to alpha 1"),
    ([0, 0, 0], [0.0, 0.75, 0.5], "sorted"),
    ([0, 0, 0, 0], [0.0, 0.5, 0.625, 1.0], "parent node is missing"),
    ([0, 0], [0.0, 1.0], "at least 3 nodes"),
    ([0, 0, 0], [0.0, 0.5, 1.5], r"\[0, 1\]"),
])
def test_a_mesh_the_bisection_cannot_make_is_refused(owner, alpha, message):
    warm = WarmStart(torch.tensor(owner), torch.tensor(alpha, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match=message):
        warm.validate(1)


def test_state_dict_round_trip_and_select():
    f, x = mlp(nn.ReLU, scale=4.0), inputs(4)
    warm = run(f, x)[0].warm_start
    back = WarmStart.from_state_dict(warm.state_dict())
    assert torch.equal(back.owner, warm.owner) and torch.equal(back.alpha, warm.alpha) and back.n == 4
    two = warm.select(torch.tensor([2, 0]))
    assert two.n == 2 and two.mesh_size().tolist() == warm.mesh_size()[[2, 0]].tolist()
    two.validate(2)
    with pytest.raises(ValueError, match="holds 'owner', 'alpha' and 'n'"):
        WarmStart.from_state_dict({"owner": warm.owner})


def test_prune_merges_only_sibling_leaves_and_keeps_the_grid():
    alpha = torch.tensor([0, 0.125, 0.25, 0.375, 0.5, 0.75, 0.875, 1.0], dtype=torch.float64)
    owner = torch.zeros(len(alpha), dtype=torch.long)
    keep = prune(owner, alpha, 1)
    assert alpha[keep].tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    leaves_of(owner[keep], alpha[keep])  # still a mesh the bisection makes
    assert prune(owner[keep], alpha[keep], 3).all()  # the grid never goes


def test_short_chunks_go_through_the_model_at_power_of_two_sizes():
    from ig_lightning.functional._paths import _padded

    assert [_padded(k, 32) for k in (1, 2, 3, 5, 17, 31, 32)] == [1, 2, 4, 8, 32, 32, 32]
    assert _padded(7, None) == 7 and _padded(5, 6) == 6
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1)).double()
    sizes = []
    net.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    x = torch.randn(3, 5, dtype=torch.float64) * 3
    batched = integrated_gradients(net, x, n_steps="auto", tolerance=1e-4, internal_batch_size=16)
    sizes_seen = set(sizes[1:])  # after the forward that gives delta
    assert sizes_seen <= {1, 2, 4, 8, 16}, sizes_seen
    whole = integrated_gradients(net, x, n_steps="auto", tolerance=1e-4)
    torch.testing.assert_close(batched.attributions, whole.attributions)  # padding rows never leak into results
    assert batched.n_evaluations.tolist() == whole.n_evaluations.tolist()
