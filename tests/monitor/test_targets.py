"""resolve_targets: the output explained per probe example."""

import pytest
import torch

from ig_lightning.monitor.targets import resolve_targets

# --- resolve_targets --------------------------------------------------------------------------------------


OUT = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.7]])


def test_resolve_targets():
    labels = torch.tensor([2, 0, 1])
    assert resolve_targets("auto", torch.randn(3), labels) is None  # one output: nothing to choose
    assert resolve_targets("auto", torch.randn(3, 1), labels) is None
    assert resolve_targets("auto", OUT, labels).tolist() == [2, 0, 1]
    assert resolve_targets("auto", OUT, None).tolist() == [1, 0, 2]
    assert resolve_targets("auto", OUT, torch.rand(3)).tolist() == [1, 0, 2]  # float labels: the prediction
    assert resolve_targets("label", OUT, labels).tolist() == [2, 0, 1]
    assert resolve_targets("prediction", OUT, labels).tolist() == [1, 0, 2]
    assert resolve_targets(2, OUT, labels).tolist() == [2, 2, 2]
    assert resolve_targets(lambda out, y: (y + 1) % 3, OUT, labels).tolist() == [0, 1, 2]


def test_resolve_targets_errors():
    with pytest.raises(ValueError, match=r"`target`='label' needs integer class labels of shape \(B,\)"):
        resolve_targets("label", OUT, None)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\] .* got \[3\]"):
        resolve_targets("label", OUT, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"`target` must be class indices in \[0, 2\]"):
        resolve_targets(5, OUT, None)
    with pytest.raises(ValueError, match=r"must be \(B,\) or \(B, C\) to be explained, got \(3, 2, 2\)"):
        resolve_targets("auto", torch.randn(3, 2, 2), None)


