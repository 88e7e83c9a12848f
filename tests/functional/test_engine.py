"""The engine against the paper's axioms, closed-form answers, and the safety contract."""

import warnings

import pytest
import torch
from torch import nn

from ig_lightning import METHODS, NonFiniteAttributionWarning, integrated_gradients

F64 = torch.float64


def mlp(seed: int = 0, act: type[nn.Module] = nn.Tanh, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), act(), nn.Linear(16, out)).double().eval()


# --- closed forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [2, 3, 17])
def test_exact_on_an_affine_model_for_every_method(method, n_steps):
    torch.manual_seed(0)
    w, b = torch.randn(3, 6, dtype=F64), torch.randn(3, dtype=F64)
    x, base = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    res = integrated_gradients(lambda z: z @ w.T + b, x, target=1, baselines=base, n_steps=n_steps, method=method)
    torch.testing.assert_close(res.attributions, (x - base) * w[1], rtol=0, atol=1e-13)
    torch.testing.assert_close(res.completeness_error, torch.zeros(4, dtype=F64), rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_identity_gives_input_minus_baseline(method):
    x, base = torch.randn(3, 4, dtype=F64), torch.randn(1, 4, dtype=F64)
    res = integrated_gradients(lambda z: z.sum(1), x, baselines=base, n_steps=5, method=method)
    torch.testing.assert_close(res.attributions, x - base, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.delta, (x - base).sum(1))


@pytest.mark.parametrize("method", METHODS)
def test_sensitivity_on_the_papers_relu_example(method):
    # f(x) = 1 - ReLU(1 - x) at x = 2, baseline 0: the gradient at x is 0, yet f changes by 1.
    x = torch.tensor([[2.0]], dtype=F64)
    f = lambda z: 1 - torch.relu(1 - z[:, 0])  # noqa: E731
    at_x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(at_x).sum(), at_x)
    assert float(grad) == 0.0
    res = integrated_gradients(f, x, n_steps=64, method=method)
    assert float(res.delta) == 1.0
    assert float(res.attributions) == pytest.approx(1.0, abs=2 / 64)


@pytest.mark.parametrize("method", METHODS)
def test_a_dummy_variable_gets_exactly_zero(method):
    torch.manual_seed(1)
    net = mlp()
    f = lambda z: net(z * torch.tensor([1, 1, 0, 1, 1], dtype=F64))  # noqa: E731  feature 2 is ignored
    res = integrated_gradients(f, torch.randn(4, 5, dtype=F64), target=0, n_steps=9, method=method)
    assert bool((res.attributions[:, 2] == 0).all())
    assert bool((res.attributions[:, [0, 1, 3, 4]] != 0).all())


@pytest.mark.parametrize("method", METHODS)
def test_symmetric_variables_get_equal_attributions(method):
    f = lambda z: torch.sigmoid(z[:, 0] + z[:, 1]) * torch.tanh(z[:, 2])  # noqa: E731  swap(0, 1) leaves f as is
    x = torch.tensor([[0.7, 0.7, 1.3], [-2.0, -2.0, 0.4]], dtype=F64)
    res = integrated_gradients(f, x, n_steps=11, method=method)
    torch.testing.assert_close(res.attributions[:, 0], res.attributions[:, 1], rtol=0, atol=1e-15)


def test_implementation_invariance_on_functionally_equal_networks():
    # Permuting hidden units and rescaling them by c > 0 (ReLU is positively homogeneous) changes every
    # weight but not the function: attributions must be identical.
    net = mlp(act=nn.ReLU)
    twin = mlp(seed=5, act=nn.ReLU)
    perm, scale = torch.randperm(16), torch.rand(16, dtype=F64) + 0.5
    with torch.no_grad():
        twin[0].weight.copy_(net[0].weight[perm] * scale[:, None])
        twin[0].bias.copy_(net[0].bias[perm] * scale)
        twin[2].weight.copy_(net[2].weight[:, perm] / scale)
        twin[2].bias.copy_(net[2].bias)
    x = torch.randn(6, 5, dtype=F64)
    torch.testing.assert_close(net(x), twin(x))
    a = integrated_gradients(net, x, target=2, n_steps=32)
    b = integrated_gradients(twin, x, target=2, n_steps=32)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "order"),
    [("riemann_left", 1), ("riemann_right", 1), ("riemann_middle", 2), ("riemann_trapezoid", 2)],
)
def test_completeness_error_shrinks_at_the_rules_rate(method, order):
    net, x = mlp(), torch.randn(4, 5, dtype=F64) * 2
    errors = [integrated_gradients(net, x, target=0, n_steps=n, method=method).completeness_error.abs().max()
              for n in (32, 64, 128)]
    for coarse, fine in zip(errors, errors[1:]):
        assert float(coarse / fine) == pytest.approx(2.0**order, rel=0.15)


def test_gauss_legendre_converges_faster_than_any_power_on_a_smooth_model():
    net, x = mlp(), torch.randn(4, 5, dtype=F64) * 2
    errors = [integrated_gradients(net, x, target=0, n_steps=n).completeness_error.abs().max() for n in (4, 8, 16)]
    assert float(errors[0] / errors[1]) > 16 and float(errors[2]) < 1e-9


# --- arguments, dtypes, contexts ------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 7, 40, 10_000])
def test_internal_batch_size_never_changes_the_result(batch):
    net, x = mlp(), torch.randn(8, 5, dtype=F64)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    full = integrated_gradients(net, x, target=target, n_steps=10)
    part = integrated_gradients(net, x, target=target, n_steps=10, internal_batch_size=batch)
    torch.testing.assert_close(part.attributions, full.attributions, rtol=0, atol=1e-14)
    torch.testing.assert_close(part.completeness_error, full.completeness_error, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_are_preserved(dtype):
    net = mlp().to(dtype)
    x = torch.randn(2, 5, dtype=dtype)
    res = integrated_gradients(net, x, target=1, n_steps=4)
    for t in (res.attributions, res.delta, res.completeness_error):
        assert t.dtype == dtype and t.device == x.device
    assert res.attributions.shape == x.shape and res.n_steps.dtype == torch.long


def test_target_forms_agree():
    net, x = mlp(), torch.randn(3, 5, dtype=F64)
    ref = integrated_gradients(net, x, target=torch.tensor([2, 2, 2]), n_steps=6).attributions
    for target in (2, [2, 2, 2], torch.tensor(2), (2, 2, 2)):
        torch.testing.assert_close(integrated_gradients(net, x, target=target, n_steps=6).attributions, ref)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_works_under_no_grad_and_inference_mode(context):
    net = mlp()
    x = torch.randn(3, 5, dtype=F64)
    expected = integrated_gradients(net, x, target=1, n_steps=8)
    ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with ctx:
        x_made_here = x.clone()  # an inference tensor under inference_mode
        base = torch.zeros(5, dtype=F64)
        res = integrated_gradients(net, x_made_here, target=torch.tensor([1, 1, 1]), baselines=base, n_steps=8)
    torch.testing.assert_close(res.attributions, expected.attributions)


def test_leaves_grads_flags_mode_and_hooks_untouched():
    net = mlp()
    net.train()
    net[0].bias.requires_grad_(False)
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = [(p.requires_grad, p.grad.clone()) for p in net.parameters()]
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    integrated_gradients(net, x, target=0, n_steps=4, layer=net[1])
    assert net.training
    assert x.grad is None
    for p, (flag, grad) in zip(net.parameters(), before):
        assert p.requires_grad == flag
        assert torch.equal(p.grad, grad)
    assert not any(m._forward_hooks for m in net.modules())


def test_cleans_up_when_the_forward_raises():
    net = mlp()

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.calls = 0

        def forward(self, z):
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("boom")
            return self.net(z)

    boom = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        integrated_gradients(boom, torch.randn(2, 5, dtype=F64), target=0, layer=net[1])
    assert all(p.requires_grad for p in net.parameters())
    assert not any(m._forward_hooks for m in net.modules())


def test_non_finite_attributions_are_reported():
    f = lambda z: torch.sqrt(z).sum(1)  # noqa: E731  infinite gradient at the zero baseline
    with pytest.warns(NonFiniteAttributionWarning, match=r"1 example\(s\)"):
        res = integrated_gradients(f, torch.tensor([[1.0, 4.0]]), n_steps=4, method="riemann_left")
    assert not bool(torch.isfinite(res.attributions).all())


# --- n_steps="auto" -----------------------------------------------------------------------------


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("method", METHODS)
def test_auto_reaches_the_tolerance_for_every_example(method, act):
    # tolerance is the relative L2 error of each example's attributions against the exact integral
    net, x = mlp(act=act), torch.randn(6, 5, dtype=F64) * 2
    tol = 1e-3
    res = integrated_gradients(net, x, target=1, n_steps="auto", tolerance=tol, method=method)
    ref = integrated_gradients(net, x, target=1, n_steps=2048).attributions
    error = (res.attributions - ref).norm(dim=1) / ref.norm(dim=1)
    assert bool((error <= 2 * tol).all()), error  # the estimate is an estimate: within 2x of the target
    assert bool((res.attribution_error <= tol).all()) and bool((error <= 2 * res.attribution_error + 1e-12).all())
    assert bool((res.completeness_error.abs() <= tol * res.delta.abs().clamp_min(1e-3)).all())
    torch.testing.assert_close(res.n_evaluations, res.n_steps)  # nested: no gradient is computed twice


def test_fixed_rules_give_no_error_estimate():
    res = integrated_gradients(mlp(), torch.randn(2, 5, dtype=F64), target=0, n_steps=8)
    assert res.attribution_error.dtype == F64 and bool(torch.isnan(res.attribution_error).all())


@pytest.mark.parametrize("x", [3.0, 1.7, 7.0])
def test_adaptive_trapezoid_finds_the_kink(x):
    # f = 1 - ReLU(1 - x): the path's derivative jumps at a = 1/x. Bisecting the interval whose own
    # completeness error is largest homes in on the jump; a uniform grid would need ~1/tolerance points.
    f = lambda z: 1 - torch.relu(1 - z[:, 0])  # noqa: E731
    res = integrated_gradients(f, torch.tensor([[x]], dtype=F64), n_steps="auto", tolerance=1e-4,
                               method="riemann_trapezoid")
    assert float(res.attributions) == pytest.approx(1.0, abs=1e-4)
    assert int(res.n_steps) <= 20 and int(res.n_evaluations) == int(res.n_steps)
    uniform = integrated_gradients(f, torch.tensor([[x]], dtype=F64), n_steps=int(res.n_steps),
                                   method="riemann_trapezoid")
    assert abs(float(uniform.completeness_error)) > 10 * abs(float(res.completeness_error))


def test_auto_refines_only_the_examples_that_need_it():
    net = mlp()
    x = torch.cat([torch.full((1, 5), 1e-3, dtype=F64), torch.randn(1, 5, dtype=F64) * 3])
    res = integrated_gradients(net, x, target=1, n_steps="auto", tolerance=1e-6, method="riemann_middle")
    assert int(res.n_steps[0]) < int(res.n_steps[1])


def test_auto_reports_the_cap_honestly():
    net = mlp(act=nn.ReLU)
    x = torch.randn(4, 5, dtype=F64) * 3
    with pytest.warns(RuntimeWarning, match="did not reach tolerance"):
        res = integrated_gradients(net, x, target=0, n_steps="auto", tolerance=1e-12, max_steps=40,
                                   method="riemann_trapezoid")
    assert int(res.n_steps.max()) == 40  # adaptive: one node at a time, up to the cap


def test_auto_caps_some_examples_and_finishes_the_others():
    net = mlp(act=nn.ReLU)
    x = torch.cat([torch.full((1, 5), 1e-2, dtype=F64), torch.randn(3, 5, dtype=F64) * 3])
    with pytest.warns(RuntimeWarning, match=r"did not reach tolerance=1e-09 within max_steps=24"):
        res = integrated_gradients(net, x, target=0, n_steps="auto", tolerance=1e-9, max_steps=24)
    assert int(res.n_steps.max()) <= 24
    assert int(res.n_steps[0]) < 24 and float(res.attribution_error[0]) <= 1e-9  # the tiny step is ~linear
    assert bool((res.attribution_error[res.n_steps >= 24] > 1e-9).all())  # the capped ones say so


def test_auto_with_a_degenerate_baseline_terminates_and_warns():
    net, x = mlp(), torch.randn(3, 5, dtype=F64)
    with pytest.warns(RuntimeWarning, match="delta_floor"):
        res = integrated_gradients(net, x, target=0, baselines=x, n_steps="auto")
    assert float(res.attributions.abs().max()) < 1e-12 and float(res.delta.abs().max()) < 1e-12


# --- layer attribution ----------------------------------------------------------------------------


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(20, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(torch.tanh(self.embedding(ids)).mean(1))


def test_layer_attribution_on_token_ids_is_complete_at_the_layer():
    model = TokenModel().double()
    ids = torch.tensor([[3, 5, 7, 0], [1, 1, 2, 9]])
    res = integrated_gradients(model, ids, target=1, layer=model.embedding, n_steps=32)
    assert res.attributions.shape == (2, 4, 4) and res.attributions.dtype == F64
    expected_delta = model(ids)[:, 1] - model(torch.zeros_like(ids))[:, 1]
    torch.testing.assert_close(res.delta, expected_delta.detach())
    assert float(res.completeness_error.abs().max()) < 1e-10
    assert bool((res.attributions[0, 3] == 0).all())  # token 0 equals the baseline token: no attribution


def test_layer_that_runs_twice_is_refused():
    model = TokenModel().double()
    twice = lambda ids: model(ids) + model(ids)  # noqa: E731
    with pytest.raises(ValueError, match="more than once"):
        integrated_gradients(twice, torch.tensor([[1, 2]]), target=0, layer=model.embedding)
    assert not model.embedding._forward_hooks


# --- bad input ----------------------------------------------------------------------------------

X = torch.randn(2, 5, dtype=F64, generator=torch.Generator().manual_seed(3))  # not the global stream: import order


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "simpson"}, ValueError, "`method`.*'simpson'"),
        ({"n_steps": 0}, ValueError, "`n_steps` must be >= 1.*0"),
        ({"n_steps": 1, "method": "riemann_trapezoid"}, ValueError, "`n_steps` must be >= 2"),
        ({"n_steps": "many"}, ValueError, "`n_steps`.*'many'"),
        ({"n_steps": 3.0}, TypeError, "`n_steps`"),
        ({"baselines": torch.zeros(3)}, ValueError, r"`baselines` of shape \(3,\)"),
        ({"baselines": "zero"}, TypeError, "`baselines`"),
        ({"target": 3}, ValueError, r"`target` must be in \[0, 2\], got \[3\]"),
        ({"target": -1}, ValueError, "`target` must be in"),
        ({"target": torch.tensor([0, 1, 2])}, ValueError, r"`target` must have shape \(2,\), got \(3,\)"),
        ({"target": torch.tensor([0.0, 1.0])}, TypeError, "`target`.*dtype"),
        ({"target": None}, ValueError, "`target` is None but `forward_func` returns 3 outputs"),
        ({"internal_batch_size": 0}, ValueError, "`internal_batch_size` must be >= 1, got 0"),
        ({"tolerance": -0.1}, ValueError, "`tolerance`.*-0.1"),
        ({"max_steps": 0}, ValueError, "`max_steps` must be >= 1"),
        ({"layer": "embedding"}, TypeError, "`layer` must be an nn.Module"),
        ({"layer": nn.Linear(2, 2)}, ValueError, "`layer` .* is not a submodule"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    kwargs = {"target": 0, **kwargs}
    with pytest.raises(error, match=match):
        integrated_gradients(mlp(), X, **kwargs)


def test_bad_inputs_and_outputs_are_named():
    with pytest.raises(TypeError, match="`inputs` must be floating point"):
        integrated_gradients(mlp(), torch.ones(2, 5, dtype=torch.long), target=0)
    with pytest.raises(TypeError, match="`inputs` must be a Tensor"):
        integrated_gradients(mlp(), [[1.0] * 5], target=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        integrated_gradients(mlp(), torch.ones(0, 5), target=0)
    with pytest.raises(ValueError, match=r"`forward_func` must return outputs of shape \(4,\) or \(4, C\)"):
        integrated_gradients(lambda z: z.view(-1, 5, 1), X, target=0)
    with pytest.raises(ValueError, match="`target` must be None when `forward_func` returns shape"):
        integrated_gradients(lambda z: z.sum(1), X, target=0)
    with pytest.raises(TypeError, match="`forward_func` must be callable"):
        integrated_gradients("model", X)


def test_outputs_that_ignore_or_detach_the_inputs():
    const = integrated_gradients(lambda z: 0 * z.sum(1) + 1, X, n_steps=3)
    assert bool((const.attributions == 0).all())
    with pytest.raises(ValueError, match="does not depend differentiably"):
        integrated_gradients(lambda z: z.detach().sum(1), X, n_steps=3)


def test_no_warning_on_the_happy_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        integrated_gradients(mlp(), X, target=0, n_steps="auto")


def test_no_forward_sees_more_than_internal_batch_size_rows():
    model = TokenModel().double()
    sizes = []
    model.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    ids = torch.randint(1, 20, (9, 4))
    integrated_gradients(model, ids, target=1, layer=model.embedding, n_steps=4, internal_batch_size=3)
    net = mlp()
    net.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    integrated_gradients(net, torch.randn(9, 5, dtype=F64), target=0, n_steps="auto", internal_batch_size=3,
                         method="riemann_trapezoid")
    assert max(sizes) <= 3


def test_adaptive_trapezoid_needs_three_points():
    with pytest.raises(ValueError, match="`max_steps` must be >= 3 for n_steps='auto'"):
        integrated_gradients(mlp(), X, target=0, n_steps="auto", method="riemann_trapezoid", max_steps=2)


def test_a_cache_made_under_inference_mode_is_explained():
    class Cached(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.scale = mlp(), None

        def forward(self, x):
            if self.scale is None:
                self.scale = torch.ones(5, dtype=F64)  # built lazily: under inference_mode on first use
            return self.net(x * self.scale)

    model = Cached()
    with torch.inference_mode():
        model(X)
        with pytest.raises(RuntimeError, match="created under torch.inference_mode"):
            integrated_gradients(model, X, target=0, n_steps=4)
