"""``n_steps="auto"`` (ig_lightning.functional.adaptive): the per-feature error estimate, its accounting, and rank lockstep."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import free_port
from lockstep_worker import CountingPath, mlp
from torch import nn

from ig_lightning.functional.adaptive import integrate_auto

WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lockstep_worker.py")


def exact(f, x, points=20001):
    """The path integral by a fine trapezoid rule (float64): the reference attributions."""
    alphas = torch.linspace(0, 1, points, dtype=torch.float64)
    ref = []
    for row in x:
        z = (alphas[:, None] * row).requires_grad_(True)
        (g,) = torch.autograd.grad(f(z).sum(), z)
        w = torch.full((points,), 1.0 / (points - 1), dtype=torch.float64)
        w[[0, -1]] /= 2
        ref.append(row * (w[:, None] * g).sum(0))
    return torch.stack(ref)


def run(f, x, tolerance=0.01, max_steps=512, sync=None, batch=None):
    path = CountingPath(f, torch.zeros_like(x), x, batch)
    with torch.no_grad():
        delta = f(x) - f(torch.zeros_like(x))
    res = integrate_auto(path, delta, tolerance=tolerance, max_steps=max_steps, delta_floor=1e-3, sync=sync)
    return res, path


def relative_l2(attr, ref):
    return (attr - ref).norm(dim=1) / ref.norm(dim=1)


def test_exact_on_an_affine_model_at_the_first_round():
    w = torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0, 4.0], dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res, path = run(lambda z: z @ w + 1.0, x)
    torch.testing.assert_close(path.diff * res.avg_grad, x * w)
    assert bool((res.attribution_error < 1e-12).all()), res.attribution_error
    assert path.calls == [5 * 4]  # one round: the first 5 points of every example
    assert res.unconverged == 0


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("tolerance", [1e-2, 1e-3])
def test_converges_within_tolerance_and_the_estimate_is_honest(activation, tolerance):
    f = mlp(activation)
    x = torch.randn(12, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res, _ = run(f, x, tolerance)
    true = relative_l2(x * res.avg_grad, exact(f, x))
    est = res.attribution_error
    assert res.unconverged == 0
    assert bool((est <= tolerance).all()), est
    assert float((true <= 1.5 * tolerance).double().mean()) >= 0.9, (true, est)
    # Kinks: within 2x. Smooth stretches converge faster than the kinks the estimate is tuned for, so there it
    # is conservative (up to ~4x); never optimistic by more than 2x.
    over = 2.0 if activation is nn.ReLU else 4.0
    within = (est <= over * true) & (true <= 2 * est)
    assert float(within.double().mean()) >= 0.7, (true, est)
    assert bool((true <= 2 * est + 1e-9).all()), (true, est)


def test_evaluations_are_counted_per_example():
    f = mlp(nn.ReLU)
    x = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[0] = 0.0  # nothing to integrate: converged at once
    res, path = run(f, x, 1e-3)
    assert int(res.n_evaluations.sum()) == sum(path.calls)
    assert bool((res.n_evaluations >= res.n_steps).all())
    assert torch.equal(res.n_evaluations, res.n_steps)  # nested: every point reused
    assert int(res.n_evaluations[0]) == int(res.n_evaluations.min()) < int(res.n_evaluations.max())


def test_max_steps_caps_and_counts_the_unconverged():
    f = mlp(nn.ReLU, scale=8.0)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    res, _ = run(f, x, tolerance=1e-9, max_steps=9)
    assert bool((res.n_steps <= 9).all()) and bool((res.n_evaluations <= 9).all())
    assert res.unconverged == 5
    assert bool((res.attribution_error > 1e-9).all())


def test_non_finite_gradients_stop_that_example_with_a_nan_estimate():
    f = mlp(nn.ReLU)

    def g(z):  # example rows with z[:, 0] > 1 have an infinite gradient along feature 1
        scale = (z[:, 0] > 1).to(z.dtype) * math.inf  # 0 elsewhere: no NaN leaks into the other rows
        return f(z) + z[:, 1] * scale.nan_to_num(posinf=math.inf)

    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 0.3
    x[2, 0], x[2, 1] = 3.0, 1.0
    res, _ = run(g, x, 1e-3)
    assert math.isnan(res.attribution_error[2])
    assert int(res.n_evaluations[2]) <= int(res.n_evaluations.max())
    others = [0, 1, 3]
    assert bool((res.attribution_error[others] <= 1e-3).all())
    assert res.unconverged == 0


def test_sync_pads_every_round_to_the_agreed_number_of_points():
    f = mlp(nn.ReLU)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    alone, alone_path = run(f, x, 1e-3)
    agreed, extra = [], [3, 0, 11, 1]  # the other ranks want a few more points in some rounds

    def sync(k):
        agreed.append(k + extra[len(agreed) % len(extra)] if k or len(agreed) < 20 else 0)
        return agreed[-1]

    res, path = run(f, x, 1e-3, sync=sync)
    assert path.calls == [k for k in agreed if k]  # exactly the agreed number of points in every round
    assert len(agreed) >= len(alone_path.calls) + 1 and agreed[-1] == 0  # ends when every rank has nothing
    for got, want in zip((res.avg_grad, res.n_steps, res.n_evaluations, res.attribution_error),
                         (alone.avg_grad, alone.n_steps, alone.n_evaluations, alone.attribution_error)):
        torch.testing.assert_close(got, want)  # padding changes nothing


def test_the_bisection_is_deterministic():
    # integrate_auto takes no quadrature rule (the rule only matters for a fixed n_steps): the same call twice
    # evaluates the same points and gives the same result, bit for bit.
    f = mlp(nn.ReLU)
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    first, first_path = run(f, x, 1e-3)
    res, path = run(f, x, 1e-3)
    assert torch.equal(res.avg_grad, first.avg_grad) and torch.equal(res.n_steps, first.n_steps)
    assert path.calls == first_path.calls


def test_two_gloo_ranks_run_the_same_forwards_whatever_their_shards(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, WORKER, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=env, cwd=os.path.dirname(WORKER))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ("forwards", "points"):
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]["alone_rounds"] != ranks[1]["alone_rounds"]  # the shards really differ in difficulty
    for r in ranks:
        for got, want in zip(r["synced"], r["alone"]):
            torch.testing.assert_close(got, want)
