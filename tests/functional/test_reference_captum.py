"""Reference test: our engine against captum on the same models, rules, targets and baselines.

One parametrized tester (torchmetrics style): every case builds a small float64 model with a fixed
seed, runs ``integrated_gradients`` and captum's ``IntegratedGradients`` (or
``LayerIntegratedGradients`` for token ids) with the same arguments, and compares both the
attributions and the signed completeness error.

Tolerances: both libraries compute in float64, but captum casts its step sizes (and, for some
rules, its alphas) to float32 before using them, so the two results differ by float32 rounding of
the quadrature weights (~6e-8 relative), not by float64 rounding. In practice the differences are
~5e-9 absolute; ``rtol=1e-6, atol=1e-7`` leaves margin for that and is still far below any real
disagreement (a wrong weight or point changes results at the 1e-2 level).

Sign convention: captum's ``return_convergence_delta=True`` returns ``sum(attributions) - (F(x) - F(x'))``,
the same sign as our ``completeness_error`` (and not our ``delta``, which is ``F(x) - F(x')``).

``riemann_trapezoid`` is not compared: captum's trapezoid step sizes sum to ``1 - 1/n`` instead of 1,
so its attributions are scaled down by that factor. The rule is checked by its own property instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from torch import nn

from ig_lightning import integrated_gradients

RTOL, ATOL = 1e-6, 1e-7  # float32-rounded step sizes in captum, see the module docstring
BATCH = 4
N_CLASSES = 5
VOCAB, SEQ_LEN = 30, 6
COMPARED_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "gausslegendre")


class MLP(nn.Module):
    """Two hidden ReLU layers on flat features."""

    def __init__(self, n_in: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv + ReLU + max-pool + linear on ``(B, 1, 8, 8)`` images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 4 * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class EmbeddingModel(nn.Module):
    """Token ids ``(B, T)`` -> embedding -> mean over tokens -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embedding(ids).mean(1)))


@dataclass
class Case:
    """A model with its inputs and a non-zero baseline of the right kind."""

    model: nn.Module
    inputs: torch.Tensor
    other_baselines: torch.Tensor
    is_layer: bool = False


def _make_case(name: str) -> Case:
    """A float64 model in eval mode and its inputs, the same for every call (fixed seed)."""
    torch.manual_seed(0)
    if name == "mlp":
        model, x = MLP(), torch.randn(BATCH, 10)
        base = 0.3 * torch.randn(BATCH, 10)
    elif name == "cnn":
        model, x = SmallCNN(), torch.rand(BATCH, 1, 8, 8)
        base = 0.2 * torch.rand(BATCH, 1, 8, 8)
    else:
        model = EmbeddingModel()
        x = torch.randint(1, VOCAB, (BATCH, SEQ_LEN))
        base = torch.randint(1, VOCAB, (BATCH, SEQ_LEN))
        return Case(model.double().eval(), x, base, is_layer=True)
    return Case(model.double().eval(), x.double(), base.double())


# Each config says which target, baselines and internal batch size to use.
CONFIGS = {
    "int_target": dict(target=2, baselines=None, internal_batch_size=None),
    "tensor_target": dict(target="per_example", baselines=None, internal_batch_size=None),
    "tensor_baselines": dict(target="per_example", baselines="tensor", internal_batch_size=None),
    "internal_batch": dict(target="per_example", baselines="tensor", internal_batch_size=2 * BATCH + 1),
    # Fewer points per batch than examples: captum refuses that (it warns and uses BATCH), we slice examples.
    "internal_batch_lt_batch": dict(target="per_example", baselines="tensor", internal_batch_size=BATCH - 1),
}


def _resolve(case: Case, config: dict) -> tuple[int | torch.Tensor, torch.Tensor | int, int | None]:
    """``(target, baselines, internal_batch_size)`` for one case and config."""
    target = config["target"]
    if target == "per_example":
        target = torch.arange(BATCH, dtype=torch.long) % N_CLASSES
    if config["baselines"] == "tensor":
        baselines = case.other_baselines
    else:  # zeros for inputs, token id 0 for token ids
        baselines = 0 if case.is_layer else torch.zeros_like(case.inputs)
    return target, baselines, config["internal_batch_size"]


def _captum_attribute(
    case: Case,
    method: str,
    n_steps: int,
    target: int | torch.Tensor,
    baselines: torch.Tensor | int,
    batch: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """captum's attributions and its convergence delta, ``sum(attributions) - (F(x) - F(x'))``."""
    explainer = (
        LayerIntegratedGradients(case.model, case.model.embedding)
        if case.is_layer
        else IntegratedGradients(case.model)
    )
    return explainer.attribute(
        case.inputs,
        baselines=baselines,
        target=target,
        n_steps=n_steps,
        method=method,
        internal_batch_size=batch,
        return_convergence_delta=True,
    )


def _assert_close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Assert closeness; the message gives the max abs difference and both values."""
    diff = (ours - theirs).abs().max().item()
    assert torch.allclose(ours, theirs, rtol=RTOL, atol=ATOL), (
        f"{name}: max abs difference {diff:.3e}\nours:   {ours.flatten()[:12].tolist()}\n"
        f"captum: {theirs.flatten()[:12].tolist()}"
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("method", COMPARED_METHODS)
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "embedding"])
def test_matches_captum(model_name: str, method: str, config_name: str) -> None:
    case = _make_case(model_name)
    target, baselines, batch = _resolve(case, CONFIGS[config_name])
    n_steps = 16 if method == "gausslegendre" else 24
    ours = integrated_gradients(
        case.model,
        case.inputs,
        target=target,
        baselines=baselines,
        n_steps=n_steps,
        method=method,
        internal_batch_size=batch,
        layer=case.model.embedding if case.is_layer else None,
    )
    captum_batch = None if batch is None else max(batch, BATCH)
    attr, delta = _captum_attribute(case, method, n_steps, target, baselines, captum_batch)
    _assert_close("attributions", ours.attributions, attr)
    # Same sign on both sides: sum(attributions) - (F(x) - F(x')).
    _assert_close("completeness error", ours.completeness_error, delta)


def _affine(x: torch.Tensor) -> torch.Tensor:
    """``w . x + b``: its gradient is the same everywhere."""
    w = torch.linspace(-1.0, 2.0, x.shape[1], dtype=x.dtype)
    return x @ w + 0.5


def _quadratic(x: torch.Tensor) -> torch.Tensor:
    """A quadratic form: its gradient is affine in x, hence linear in alpha along the path."""
    return (x**2).sum(1) + x[:, 0] * x[:, 1]


@pytest.mark.parametrize("forward_func", [_affine, _quadratic], ids=["affine", "quadratic"])
@pytest.mark.parametrize("n_steps", [2, 3, 9])
def test_trapezoid_is_exact_on_linear_integrands(forward_func: Callable, n_steps: int) -> None:
    # Not compared to captum (its trapezoid weights sum to 1 - 1/n). The trapezoid rule integrates
    # polynomials of degree <= 1 in alpha exactly. Along the straight path the gradient of an affine
    # model is constant and that of a quadratic is linear in alpha, so IG must then be exact for any
    # n_steps >= 2: completeness holds to rounding and the attributions equal the closed forms.
    torch.manual_seed(0)
    x, base = torch.randn(BATCH, 6, dtype=torch.float64), torch.randn(BATCH, 6, dtype=torch.float64)
    res = integrated_gradients(forward_func, x, baselines=base, n_steps=n_steps, method="riemann_trapezoid")
    assert res.completeness_error.abs().max().item() < 1e-12
    # Closed form: (x - x') * gradient at the path's midpoint (exact for a gradient linear in alpha).
    mid = ((x + base) / 2).requires_grad_(True)
    (grad,) = torch.autograd.grad(forward_func(mid).sum(), mid)
    torch.testing.assert_close(res.attributions, (x - base) * grad, rtol=0, atol=1e-12)
