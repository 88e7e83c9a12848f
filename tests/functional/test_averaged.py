"""IG averaged over baselines and noisy copies: against captum 0.9, completeness, exactness and errors.

captum references: the mean over ``k`` of ``IntegratedGradients.attribute(baselines=b_k)``, and
``NoiseTunnel(IntegratedGradients)`` with the same noise draws (captum draws them from torch's global RNG with
``torch.normal(0, std)`` in float32, one ``(B * J, ...)`` tensor per input with the ``J`` copies of an example
next to each other; we replay that draw under the same seed and pass it as ``noise=``, and check it against the
noisy inputs captum actually used). Tolerance 1e-6 relative L2: captum rounds its step sizes to float32 (see
``test_reference_captum.py``); ``riemann_trapezoid`` is not compared for the same reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients, NoiseTunnel
from torch import nn

from ig_lightning.functional.averaged import averaged_integrated_gradients, relative_stdevs
from ig_lightning.functional.baselines import blurred, data_draws, gaussian_draws, uniform_draws
from ig_lightning.functional.integrated_gradients import integrated_gradients
from ig_lightning.functional.quadrature import METHODS

F64 = torch.float64
B, N_CLASSES, VOCAB, SEQ = 3, 4, 20, 5
COMPARED = ("riemann_left", "riemann_right", "riemann_middle", "gausslegendre")
RTOL = 1e-6

pytestmark = pytest.mark.usefixtures("one_thread")


class MLP(nn.Module):
    def __init__(self, n_in: int = 6) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(3 * 4 * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TwoInputs(nn.Module):
    """``(a, b, scale)``: two attributed inputs and a per-example extra argument."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(2, 8)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        out = self.head(torch.tanh(self.a(a) + self.b(b)))
        return out if scale is None else out * scale.view(-1, 1)


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 6)
        self.head = nn.Linear(6, N_CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embedding(ids).mean(1)))


def make(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "mlp":
        return MLP().double().eval(), torch.randn(B, 6, dtype=F64)
    return CNN().double().eval(), torch.rand(B, 1, 8, 8, dtype=F64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel_l2(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).norm() / theirs.norm().clamp_min(1e-300)).item()


def assert_rel(ours: torch.Tensor, theirs: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    err = rel_l2(ours, theirs)
    assert err < rtol, f"{what}: relative L2 {err:.2e}"


def kinds_of_baselines(x: torch.Tensor) -> list:
    """A number, a per-example tensor, a broadcast tensor, a uniform draw and rows of data."""
    data = torch.rand(10, *x.shape[1:], dtype=F64, generator=gen(5))
    return [0.0, 0.5 * x, torch.full((1, *x.shape[1:]), 0.25, dtype=F64),
            *uniform_draws(x, 1, low=0.0, high=1.0, generator=gen(1)), *data_draws(data, B, 2, generator=gen(2))]


# --- captum: mean over baselines -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", COMPARED)
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_mean_over_baselines_matches_captum(model_name, method):
    model, x = make(model_name)
    target = torch.tensor([0, 3, 1])
    bases = kinds_of_baselines(x)
    n_steps = 12 if method == "gausslegendre" else 20
    ours = averaged_integrated_gradients(model, x, baselines=bases, target=target, n_steps=n_steps, method=method)
    ig = IntegratedGradients(model)
    attrs, deltas = zip(*(ig.attribute(x, baselines=b, target=target, n_steps=n_steps, method=method,
                                       return_convergence_delta=True) for b in bases))
    assert_rel(ours.attributions, torch.stack(attrs).mean(0), "attributions")
    torch.testing.assert_close(ours.completeness_error, torch.stack(deltas).mean(0), rtol=1e-6, atol=1e-7)
    fx = model(x).gather(1, target.view(-1, 1)).squeeze(1)
    f_bases = torch.stack([model(torch.as_tensor(b, dtype=F64).expand_as(x)).gather(1, target.view(-1, 1)).squeeze(1)
                           for b in bases])
    torch.testing.assert_close(ours.delta, fx - f_bases.mean(0), rtol=1e-12, atol=1e-12)
    assert ours.n_steps.tolist() == [n_steps] * B and ours.n_evaluations.tolist() == [n_steps * len(bases)] * B
    assert bool(torch.isnan(ours.attribution_error).all()) and ours.rounds == 0


def test_expected_gradients_match_captums_noise_tunnel_drawing_baselines_from_data():
    # NoiseTunnel(IG) with draw_baseline_from_distrib=True and no noise: one data row per copy, drawn by
    # np.random.choice(N, B * J): the copies of example b are rows b * J ... b * J + J - 1.
    model, x = make("mlp")
    data = torch.randn(7, 6, dtype=F64, generator=gen(3))
    n_copies = 4
    np.random.seed(11)
    theirs, delta = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_samples=n_copies, stdevs=0.0, draw_baseline_from_distrib=True, baselines=data, target=2,
        n_steps=16, return_convergence_delta=True)
    np.random.seed(11)
    idx = torch.as_tensor(np.random.choice(7, n_copies * B)).view(B, n_copies)
    ours = averaged_integrated_gradients(model, x, baselines=[data[idx[:, k]] for k in range(n_copies)], target=2,
                                         n_steps=16)
    assert_rel(ours.attributions, theirs, "attributions")
    torch.testing.assert_close(ours.completeness_error, delta.view(B, n_copies).mean(1), rtol=1e-6, atol=1e-7)


# --- captum: noise tunnel ----------------------------------------------------------------------------------------


def captum_noise(inputs: tuple[torch.Tensor, ...], stdevs: tuple[float, ...], n_copies: int, seed: int) -> tuple:
    """The draws captum 0.9's NoiseTunnel makes after ``torch.manual_seed(seed)``, as our ``(J, B, ...)`` noise."""
    torch.manual_seed(seed)
    out = []
    for x, s in zip(inputs, stdevs):
        rows = torch.normal(0, torch.tensor(s).repeat((x.shape[0] * n_copies, *x.shape[1:])))
        out.append(rows.view(x.shape[0], n_copies, *x.shape[1:]).transpose(0, 1).to(x.dtype))
    return tuple(out)


@pytest.fixture
def captum_noisy_inputs(monkeypatch):
    """The noisy inputs captum's NoiseTunnel builds, recorded."""
    seen = []
    original = NoiseTunnel._add_noise_to_input

    def record(input, stdev, n):
        out = original(input, stdev, n)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(record))
    return seen


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_noise_tunnel_matches_captum(model_name, nt_type, method, captum_noisy_inputs):
    model, x = make(model_name)
    n_copies, stdev, target = 5, 0.3, torch.tensor([1, 0, 2])
    torch.manual_seed(7)
    theirs, delta = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_type=nt_type, nt_samples=n_copies, stdevs=stdev, baselines=0.2 * x, target=target, n_steps=10,
        method=method, return_convergence_delta=True)
    (noise,) = captum_noise((x,), (stdev,), n_copies, 7)
    # The replayed draw is the noise captum added.
    assert torch.equal((x + noise).transpose(0, 1).reshape(-1, *x.shape[1:]), captum_noisy_inputs[0])
    ours = averaged_integrated_gradients(model, x, baselines=0.2 * x, nt_type=nt_type, noise=noise, target=target,
                                         n_steps=10, method=method)
    assert_rel(ours.attributions, theirs, f"{nt_type} attributions")
    torch.testing.assert_close(ours.completeness_error, delta.view(B, n_copies).mean(1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "vargrad"])
def test_noise_tunnel_with_two_inputs_and_stdevs_per_input_matches_captum(nt_type, captum_noisy_inputs):
    torch.manual_seed(0)
    model = TwoInputs().double().eval()
    a, b = torch.randn(B, 4, dtype=F64), torch.randn(B, 2, dtype=F64)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    stdevs = (0.2, 0.5)
    torch.manual_seed(3)
    theirs = NoiseTunnel(IntegratedGradients(model)).attribute(
        (a, b), nt_type=nt_type, nt_samples=3, stdevs=stdevs, baselines=(0.0, 0.1), target=1,
        additional_forward_args=(scale,), n_steps=8)
    noise = captum_noise((a, b), stdevs, 3, 3)
    assert torch.equal((b + noise[1]).transpose(0, 1).reshape(-1, 2), captum_noisy_inputs[1])
    ours = averaged_integrated_gradients(model, (a, b), baselines=(0.0, 0.1), nt_type=nt_type, noise=noise,
                                         target=1, additional_forward_args=(scale,), n_steps=8)
    for mine, ref, name in zip(ours.attributions, theirs, "ab"):
        assert_rel(mine, ref, f"input {name}")


# --- semantics ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_combines_the_baseline_averaged_attributions_of_each_copy(nt_type):
    model, x = make("mlp")
    bases = [0.0, 1.0, 0.3 * x]
    noise = 0.2 * torch.randn(3, *x.shape, dtype=F64, generator=gen(4))
    ours = averaged_integrated_gradients(model, x, baselines=bases, nt_type=nt_type, noise=noise, target=1,
                                         n_steps=6)
    per = torch.stack([torch.stack([integrated_gradients(model, x + n, baselines=b, target=1, n_steps=6).attributions
                                    for b in bases]).mean(0) for n in noise])  # (J, B, ...)
    expected = {"smoothgrad": per.mean(0), "smoothgrad_sq": (per**2).mean(0), "vargrad": per.var(0, unbiased=False)}
    torch.testing.assert_close(ours.attributions, expected[nt_type], rtol=1e-10, atol=1e-12)
    # Completeness always refers to the plain mean.
    runs = [integrated_gradients(model, x + n, baselines=b, target=1, n_steps=6) for n in noise for b in bases]
    torch.testing.assert_close(ours.delta, torch.stack([r.delta for r in runs]).mean(0))
    torch.testing.assert_close(ours.completeness_error, per.mean(0).sum(1) - ours.delta, rtol=1e-10, atol=1e-12)
    assert ours.n_evaluations.tolist() == [6 * 9] * B


@pytest.mark.parametrize("single", [0.0, None, "tensor", "list_of_one", "tuple_inputs"])
def test_one_path_per_example_equals_integrated_gradients_exactly(single):
    model, x = make("mlp")
    inputs, forward, kwargs = x, model, dict(target=torch.tensor([0, 1, 2]), n_steps="auto", tolerance=1e-3)
    baselines = {"tensor": 0.5 * x, "list_of_one": [0.5 * x]}.get(single, single)
    if single == "tuple_inputs":
        torch.manual_seed(1)
        forward = TwoInputs().double().eval()
        inputs, baselines = (torch.randn(B, 4, dtype=F64), torch.randn(B, 2, dtype=F64)), [(0.0, 0.5)]
    ours = averaged_integrated_gradients(forward, inputs, baselines=baselines, **kwargs)
    plain = integrated_gradients(forward, inputs, baselines=baselines[0] if isinstance(baselines, list) else baselines,
                                 **kwargs)
    for field in ("attributions", "delta", "completeness_error", "n_steps", "n_evaluations", "attribution_error"):
        a, b = getattr(ours, field), getattr(plain, field)
        for s, t in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(s, t) or (torch.isnan(s).all() and torch.isnan(t).all()), field
    assert ours.rounds == plain.rounds


def test_tuple_inputs_extra_args_and_multiply_by_inputs_false_equal_the_mean_of_separate_runs():
    torch.manual_seed(2)
    model = TwoInputs().double().eval()
    a, b = torch.randn(B, 4, dtype=F64), torch.randn(B, 2, dtype=F64)
    scale = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    bases = [(0.0, 0.0), (torch.ones(1, 4, dtype=F64), 0.5 * b)]
    for mult in (True, False):
        kw = dict(target=[0, 1, 3], additional_forward_args=(scale, ), n_steps=7, multiply_by_inputs=mult)
        ours = averaged_integrated_gradients(model, (a, b), baselines=bases, **kw)
        runs = [integrated_gradients(model, (a, b), baselines=base, **kw) for base in bases]
        for i in range(2):
            torch.testing.assert_close(ours.attributions[i], (runs[0].attributions[i] + runs[1].attributions[i]) / 2)
        torch.testing.assert_close(ours.completeness_error,
                                   (runs[0].completeness_error + runs[1].completeness_error) / 2)
        torch.testing.assert_close(ours.delta, (runs[0].delta + runs[1].delta) / 2)
    # Without the multiplication, completeness is still the true one (that of the multiplied attributions).
    ours_mult = averaged_integrated_gradients(model, (a, b), baselines=bases, target=[0, 1, 3],
                                              additional_forward_args=scale, n_steps=7)
    torch.testing.assert_close(ours.completeness_error, ours_mult.completeness_error)


def test_internal_batch_size_passes_through():
    model, x = make("cnn")
    kw = dict(baselines=[0.0, 1.0], nt_samples=2, stdevs=0.1, target=0, n_steps=8)
    full = averaged_integrated_gradients(model, x, generator=gen(), **kw)
    small = averaged_integrated_gradients(model, x, generator=gen(), internal_batch_size=5, **kw)
    torch.testing.assert_close(small.attributions, full.attributions, rtol=1e-12, atol=1e-14)


def test_noise_draws_use_only_the_generator():
    model, x = make("mlp")
    kw = dict(baselines=[0.0, 0.5], nt_samples=3, stdevs=relative_stdevs(x, 0.15), target=0, n_steps=4)
    state = torch.get_rng_state()
    first = averaged_integrated_gradients(model, x, generator=gen(5), **kw)
    default = averaged_integrated_gradients(model, x, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.attributions, averaged_integrated_gradients(model, x, generator=gen(5), **kw).attributions)
    assert not torch.equal(first.attributions, averaged_integrated_gradients(model, x, generator=gen(6),
                                                                             **kw).attributions)
    assert torch.equal(default.attributions, averaged_integrated_gradients(model, x, **kw).attributions)
    # Drawn noise equals the explicit draw from the same generator.
    g = gen(5)
    noise = gaussian_draws(x, 3, sigma=relative_stdevs(x, 0.15), generator=g) - x
    explicit = averaged_integrated_gradients(model, x, baselines=[0.0, 0.5], noise=noise, target=0, n_steps=4)
    torch.testing.assert_close(explicit.attributions, first.attributions, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode_on_tensors_made_there(mode):
    model, x = make("cnn")
    kw = dict(baselines=[0.0, 1.0], nt_samples=2, stdevs=0.1, target=0, n_steps=4)
    expected = averaged_integrated_gradients(model, x, generator=gen(), **kw)
    with mode():
        made_there = x.clone()
        res = averaged_integrated_gradients(model, made_there, generator=gen(), **kw)
    torch.testing.assert_close(res.attributions, expected.attributions, rtol=1e-12, atol=1e-14)


def test_relative_stdevs_is_sigma_times_each_examples_range():
    x = torch.tensor([[[0.0, 4.0]], [[-1.0, 1.0]]], dtype=F64)
    assert relative_stdevs(x, 0.25).tolist() == [1.0, 0.5]


# --- completeness ------------------------------------------------------------------------------------------------


def _scores(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[:, target]


BASELINE_KINDS = {
    "black_and_white": lambda x: ([0.0, 1.0], None),
    "uniform": lambda x: (list(uniform_draws(x, 3, low=0.0, high=1.0, generator=gen())), None),
    "gaussian": lambda x: (list(gaussian_draws(x, 3, sigma=0.3, generator=gen(), low=0.0, high=1.0)), None),
    "blurred": lambda x: ([blurred(x, 1.5), blurred(x, 4.0)], None),
    "data": lambda x: (list(data_draws(torch.rand(6, *x.shape[1:], dtype=F64, generator=gen()), B, 3,
                                       generator=gen(1))), None),
    "noise": lambda x: ([0.0, blurred(x, 2.0)], 0.1 * torch.randn(2, *x.shape, dtype=F64, generator=gen(2))),
}


@pytest.mark.parametrize("kind", list(BASELINE_KINDS))
def test_auto_steps_reach_completeness_against_the_mean_baseline_output(kind):
    model, x = make("cnn")
    bases, noise = BASELINE_KINDS[kind](x)
    tol = 1e-3
    res = averaged_integrated_gradients(model, x, baselines=bases, noise=noise, target=2, n_steps="auto",
                                        tolerance=tol)
    copies = [x] if noise is None else [x + n for n in noise]
    f_x = torch.stack([_scores(model, c, 2) for c in copies])  # (J, B)
    f_b = torch.stack([_scores(model, torch.as_tensor(b, dtype=F64).expand_as(x), 2) for b in bases])  # (K, B)
    torch.testing.assert_close(res.delta, f_x.mean(0) - f_b.mean(0), rtol=1e-12, atol=1e-12)
    # Each path meets tolerance * max(|delta_path|, floor), so their mean meets the mean of those bounds.
    path_deltas = (f_x[:, None] - f_b[None]).abs().clamp_min(1e-3)
    bound = tol * path_deltas.mean((0, 1))
    assert bool((res.completeness_error.abs() <= bound * (1 + 1e-9)).all()), (res.completeness_error, bound)
    assert bool(torch.isfinite(res.attribution_error).all()) and bool((res.attribution_error <= tol).all())
    assert res.rounds >= 1 and bool((res.n_evaluations >= res.n_steps).all())
    torch.testing.assert_close(res.completeness_error, res.attributions.flatten(1).sum(1) - res.delta)


@pytest.mark.parametrize("method", METHODS)
def test_exact_on_a_linear_model_for_every_method(method):
    w = torch.linspace(-1, 2, 6, dtype=F64)
    x = torch.randn(B, 6, dtype=F64, generator=gen())
    bases = [0.0, 1.0, *uniform_draws(x, 2, low=-1.0, high=1.0, generator=gen(1))]
    noise = 0.3 * torch.randn(4, B, 6, dtype=F64, generator=gen(2))
    res = averaged_integrated_gradients(lambda z: z @ w + 0.5, x, baselines=bases, noise=noise, n_steps=3,
                                        method=method)
    mean_base = torch.stack([torch.as_tensor(b, dtype=F64).expand_as(x) for b in bases]).mean(0)
    torch.testing.assert_close(res.attributions, (x + noise.mean(0) - mean_base) * w, rtol=0, atol=1e-13)
    torch.testing.assert_close(res.completeness_error, torch.zeros(B, dtype=F64), rtol=0, atol=1e-13)


# --- layer attributions on token ids ------------------------------------------------------------------------------


def test_layer_with_token_ids_and_two_integer_baselines():
    torch.manual_seed(0)
    model = Embedder().double().eval()
    ids = torch.randint(1, VOCAB, (B, SEQ))
    pad_words = ids.clone()
    pad_words[:, 1:-1] = 3
    bases = [0, pad_words]
    ours = averaged_integrated_gradients(model, ids, baselines=bases, target=1, layer=model.embedding, n_steps=12)
    lig = LayerIntegratedGradients(model, model.embedding)
    attrs, deltas = zip(*(lig.attribute(ids, baselines=b, target=1, n_steps=12, return_convergence_delta=True)
                          for b in bases))
    assert ours.attributions.shape == (B, SEQ, 6)
    assert_rel(ours.attributions, torch.stack(attrs).mean(0), "layer attributions")
    torch.testing.assert_close(ours.completeness_error, torch.stack(deltas).mean(0), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="`stdevs`.*token ids"):
        averaged_integrated_gradients(model, ids, baselines=bases, nt_samples=2, stdevs=0.1, target=1,
                                      layer=model.embedding)
    with pytest.raises(TypeError, match=r"`baselines\[1\]` must be an int"):
        averaged_integrated_gradients(model, ids, baselines=[0, 0.5], target=1, layer=model.embedding)
    with pytest.raises(TypeError, match=r"`baselines\[1\]` dtype"):
        averaged_integrated_gradients(model, ids, baselines=[0, pad_words.double()], target=1, layer=model.embedding)


# --- errors --------------------------------------------------------------------------------------------------------


_MODEL, _X = make("mlp")
_TWO = TwoInputs().double().eval()
_AB = (torch.zeros(B, 4, dtype=F64), torch.zeros(B, 2, dtype=F64))
BAD = [
    (dict(forward_func=3), TypeError, "`forward_func`"),
    (dict(inputs=[1.0]), TypeError, "`inputs`"),
    (dict(inputs=_X.long()), TypeError, "`inputs`"),
    (dict(baselines=[]), ValueError, "`baselines`"),
    (dict(baselines=[0.0, "white"]), TypeError, r"`baselines\[1\]`"),
    (dict(baselines=[0.0, torch.zeros(2, 6, dtype=F64)]), ValueError, r"`baselines\[1\]`"),
    (dict(baselines=[0.0, float("nan")]), ValueError, r"`baselines\[1\]`"),
    (dict(baselines=(0.0, 1.0)), ValueError, "`baselines`"),  # a tuple means one per input
    (dict(inputs=_AB, forward_func=_TWO, baselines=[(0.0, 1.0), (0.0, "x")]), TypeError, r"`baselines\[1\]\[1\]`"),
    (dict(inputs=_AB, forward_func=_TWO, baselines=[(0.0, 1.0), (0.0,)]), ValueError, r"`baselines\[1\]`"),
    (dict(nt_type="smooth"), ValueError, "`nt_type`"),
    (dict(nt_type="vargrad"), ValueError, "`nt_type`"),
    (dict(nt_samples=-1), ValueError, "`nt_samples`"),
    (dict(nt_samples=2.0), TypeError, "`nt_samples`"),
    (dict(nt_samples=True), TypeError, "`nt_samples`"),
    (dict(stdevs=0.5), ValueError, "`stdevs`"),  # no nt_samples
    (dict(nt_samples=2), ValueError, "`stdevs`"),  # stdevs left at 0
    (dict(nt_samples=2, stdevs=-0.5), ValueError, "`stdevs`"),
    (dict(nt_samples=2, stdevs="0.5"), TypeError, "`stdevs`"),
    (dict(nt_samples=2, stdevs=torch.ones(2, dtype=F64)), ValueError, "`stdevs`"),
    (dict(nt_samples=2, stdevs=torch.tensor([1.0, -1.0, 1.0])), ValueError, "`stdevs`"),
    (dict(nt_samples=2, stdevs=(0.1, 0.2)), ValueError, "`stdevs`"),
    (dict(inputs=_AB, forward_func=_TWO, nt_samples=2, stdevs=(0.1, "a")), TypeError, r"`stdevs\[1\]`"),
    (dict(nt_samples=2, stdevs=0.1, generator=3), TypeError, "`generator`"),
    (dict(noise=torch.zeros(2, B, 5, dtype=F64)), ValueError, "`noise`"),
    (dict(noise=torch.zeros(2, B, 6, dtype=torch.long)), TypeError, "`noise`"),
    (dict(noise=torch.full((2, B, 6), float("inf"), dtype=F64)), ValueError, "`noise`"),
    (dict(noise=[torch.zeros(2, B, 6, dtype=F64)]), TypeError, "`noise`"),
    (dict(noise=torch.zeros(2, B, 6, dtype=F64), nt_samples=3), ValueError, "`nt_samples`"),
    (dict(noise=torch.zeros(2, B, 6, dtype=F64), stdevs=0.1), ValueError, "`stdevs`"),
    (dict(inputs=_AB, forward_func=_TWO, noise=(torch.zeros(2, B, 4, dtype=F64),)), ValueError, "`noise`"),
    (dict(inputs=_AB, forward_func=_TWO, noise=(None, None)), ValueError, "`noise`"),
    (dict(inputs=_AB, forward_func=_TWO, noise=(torch.zeros(2, B, 4, dtype=F64), torch.zeros(3, B, 2, dtype=F64))),
     ValueError, r"`noise\[1\]`"),
    (dict(n_stpes=8), TypeError, "`n_stpes`"),
    (dict(target=[0, 1]), ValueError, "`target`"),
    (dict(n_steps=0), ValueError, "`n_steps`"),
    (dict(method="simpson"), ValueError, "`method`"),
]


@pytest.mark.parametrize("kwargs,error,name", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_arguments_are_named(kwargs, error, name):
    call = dict(forward_func=_MODEL, inputs=_X, baselines=[0.0, 1.0], target=0, n_steps=4)
    call.update(kwargs)
    with pytest.raises(error, match=name):
        averaged_integrated_gradients(call.pop("forward_func"), call.pop("inputs"), **call)
