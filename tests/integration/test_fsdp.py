"""The monitor under Lightning's FSDP strategy on one CUDA device (issue 15).

A small model is fitted for 2 epochs with ``strategy="fsdp"`` and ``IntegratedGradientsMonitor(probe=8,
n_steps="auto")``; its last check's attributions must add up, and equal the engine's on a plain (unsharded)
copy of the fitted weights. Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Classifier, trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ig_lightning import IntegratedGradientsMonitor, integrated_gradients

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA device"),
    pytest.mark.skipif(not torch.distributed.is_available(), reason="FSDP needs torch.distributed"),
]

PROBE, EPOCHS, TOLERANCE, MAX_STEPS = 8, 2, 0.01, 256


class Mlp(Classifier):
    lr = 0.1

    def __init__(self, features: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.Tanh(), nn.Linear(32, 32), nn.GELU(),
                                 nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


def plain_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full state dict with any wrapper prefix left by FSDP removed."""
    out = {}
    for key, value in state.items():
        for prefix in ("_forward_module.", "_fsdp_wrapped_module.", "module."):
            key = key.replace(prefix, "")
        out[key] = value.detach().cpu().clone()
    return out


def test_monitor_under_fsdp_matches_an_unsharded_model(tmp_path) -> None:
    torch.manual_seed(0)
    model, dataset = Mlp(), data()
    monitor = IntegratedGradientsMonitor(probe=PROBE, n_steps="auto",
                                         integration=dict(tolerance=TOLERANCE, max_steps=MAX_STEPS),
                                         display=dict(log_images=False))
    t = trainer(tmp_path, [monitor], max_epochs=EPOCHS, accelerator="cuda", devices=1, strategy="fsdp",
                num_sanity_val_steps=0)
    t.fit(model, DataLoader(dataset, batch_size=16, shuffle=True), DataLoader(dataset, batch_size=16))

    assert monitor.checks == EPOCHS
    result = monitor.last_result
    assert result.attributions.shape == (PROBE, 6) and torch.isfinite(result.attributions).all()
    relative = result.completeness_error.abs() / result.delta.abs().clamp_min(1e-3)
    assert float(relative.max()) < 2 * TOLERANCE
    assert monitor.last_metrics["ig/completeness_error"] < 2 * TOLERANCE

    # The same weights, unsharded, explained by the engine on the same probe and targets.
    state = plain_state_dict(t.strategy.lightning_module_state_dict())
    plain = Mlp()
    plain.load_state_dict(state, strict=True)
    plain = plain.cuda().eval()
    x, y = dataset[list(monitor.probe.indices)]
    assert torch.equal(monitor.targets.cpu(), y)  # "auto" with labels: the labels
    reference = integrated_gradients(plain, x.cuda(), target=y.cuda(), n_steps="auto", tolerance=TOLERANCE,
                                     max_steps=MAX_STEPS)
    ours, theirs = result.attributions.double().cpu(), reference.attributions.double().cpu()
    torch.testing.assert_close(result.delta.double().cpu(), reference.delta.double().cpu(), rtol=1e-4, atol=1e-5)
    error = (ours - theirs).norm(dim=1) / theirs.norm(dim=1).clamp_min(1e-6)
    assert float(error.max()) < 2 * TOLERANCE, error
