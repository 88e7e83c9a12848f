"""The engine inside a Lightning Fabric loop (issue 15, item 7).

``integrated_gradients`` is called on the module ``fabric.setup`` returns (a ``_FabricModule``) between
training steps: it gives the attributions of the original module, adds up to ``F(x) - F(baseline)``,
leaves parameters' ``.grad`` alone and does not change training (bit-identical weights with and without).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ig_lightning import integrated_gradients

Fabric = pytest.importorskip("lightning.fabric").Fabric

STEPS, IG_EVERY, N_STEPS = 6, 2, 16


def make_model() -> nn.Module:
    """BatchNorm and Dropout: a careless IG call in training mode would change both."""
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))


def tiny_data(n: int = 48, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64).float()
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def relative_completeness(res) -> torch.Tensor:
    return res.completeness_error.abs() / res.delta.abs().clamp_min(1e-3)


def grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def assert_same_grads(before: list[torch.Tensor | None], model: nn.Module) -> None:
    after = list(model.parameters())
    assert len(before) == len(after)
    for b, p in zip(before, after):
        assert (b is None) == (p.grad is None)
        if b is not None:
            assert torch.equal(b, p.grad)


def fabric_run(with_ig: bool, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train ``STEPS`` SGD steps under Fabric; with ``with_ig`` explain a batch every ``IG_EVERY`` steps."""
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.seed_everything(seed, verbose=False)
    module = make_model()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = fabric.setup(module, optimizer)
    x, y = tiny_data()
    probe_x, probe_y = x[:8], y[:8]
    records = []
    for step in range(STEPS):
        model.train()
        batch = slice((step * 8) % len(x), (step * 8) % len(x) + 8)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        fabric.backward(loss)
        if with_ig and step % IG_EVERY == 0:
            # Between backward and step: the IG call must leave the gradients the optimizer is about to use.
            before = grads(model)
            model.eval()
            res = integrated_gradients(model, probe_x, target=probe_y, n_steps=N_STEPS)
            with torch.no_grad():
                res_no_grad = integrated_gradients(model, probe_x, target=probe_y, n_steps=N_STEPS)
            reference = integrated_gradients(module, probe_x, target=probe_y, n_steps=N_STEPS)
            model.train()
            assert_same_grads(before, model)
            records.append({"res": res, "no_grad": res_no_grad, "reference": reference,
                            "logits": module.eval()(probe_x).detach(), "baseline_logits":
                            module(torch.zeros_like(probe_x)).detach()})
            module.train()
        optimizer.step()
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, records


@pytest.fixture(scope="module")
def runs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield fabric_run(with_ig=True), fabric_run(with_ig=False)
    finally:
        torch.set_num_threads(threads)


def test_fabric_module_gives_the_original_modules_attributions(runs) -> None:
    (_, records), _ = runs
    assert len(records) == STEPS // IG_EVERY
    for record in records:
        res, reference, no_grad = record["res"], record["reference"], record["no_grad"]
        assert res.attributions.shape == (8, 5)
        torch.testing.assert_close(res.attributions, reference.attributions, rtol=0, atol=1e-6)
        torch.testing.assert_close(res.delta, reference.delta, rtol=0, atol=1e-6)
        # Under torch.no_grad() the engine still differentiates and gives the same numbers.
        torch.testing.assert_close(no_grad.attributions, res.attributions, rtol=0, atol=1e-6)


def test_fabric_attributions_are_complete_and_explain_the_target(runs) -> None:
    (_, records), _ = runs
    for record in records:
        res = record["res"]
        assert torch.isfinite(res.attributions).all()
        assert float(relative_completeness(res).max()) < 0.02
        # delta is F(x) - F(0) of the target logit, in eval mode.
        target = tiny_data()[1][:8]
        rows = torch.arange(8)
        expected = record["logits"][rows, target] - record["baseline_logits"][rows, target]
        torch.testing.assert_close(res.delta.to(expected.dtype), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res.attributions.sum(1).to(expected.dtype), expected, rtol=0.02, atol=1e-3)


def test_fabric_training_is_bit_identical_with_and_without_ig(runs) -> None:
    (with_ig, _), (without_ig, _) = runs
    assert with_ig.keys() == without_ig.keys()
    for name in with_ig:
        assert torch.equal(with_ig[name], without_ig[name]), name
    # The run trained (the weights moved from a fresh seeded init).
    torch.manual_seed(0)
    fresh = make_model().state_dict()
    assert not torch.equal(fresh["0.weight"], with_ig["0.weight"])
