"""Model shapes and probe forms beyond one input and one label (issue 15): multi-label models, one-hot labels,
two positional inputs, several monitors in one trainer, layer maps over images, and the errors for what does
not fit."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyCNN, loaders, make_data, trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ig_lightning import IntegratedGradientsMonitor, integrated_gradients
from ig_lightning.monitor.explainer import ProbeMismatchError
from ig_lightning.monitor.stages import Pictures


class MultiLabel(TinyCNN):
    """4 independent labels (sigmoid), multi-hot targets."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self(x), y.float())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.binary_cross_entropy_with_logits(self(x), y.float()))


def multi_hot_loaders():
    x, y = make_data()[:]
    hot = nn.functional.one_hot(y, 4)
    rows = torch.arange(0, len(y), 3)
    hot[rows, (y[rows] + 1) % 4] = 1  # every third example has a second positive label
    data = TensorDataset(x, hot)
    return DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=16)


def test_multi_label_explains_every_positive_pair(tmp_path):
    torch.manual_seed(0)
    monitor = IntegratedGradientsMonitor(probe=6, target="positive_labels", output_transform="sigmoid", baseline=None)
    logger = TensorBoardLogger(tmp_path)
    trainer(tmp_path, [monitor], logger=logger).fit(MultiLabel(), *multi_hot_loaders())
    _, val = multi_hot_loaders()
    hot = torch.stack([val.dataset[i][1] for i in range(6)])
    pairs = hot.nonzero()
    assert len(monitor.probe) == len(pairs) == 8  # 6 examples, 2 of them (0 and 3) with a second positive label
    assert monitor.probe.indices == pairs[:, 0].tolist() and torch.equal(monitor.targets, pairs[:, 1])
    # completeness per pair: each row explains its own label's sigmoid
    result = monitor.last_result
    assert result.delta.shape == (8,) and float(result.relative_error().max()) < 0.05
    x = torch.stack([val.dataset[i][0] for i in pairs[:, 0].tolist()])
    model = monitor._model_ref()
    with torch.no_grad():
        model.eval()
        at_x = torch.sigmoid(model(x)).gather(1, pairs[:, 1:2]).flatten()
        at_baseline = torch.sigmoid(model(torch.zeros_like(x))).gather(1, pairs[:, 1:2]).flatten()
    assert torch.allclose(result.delta, at_x - at_baseline, atol=1e-5)
    assert set(monitor.top_features) == set(pairs[:, 1].tolist())  # rules per label
    rules = [json.loads(line) for line in open(f"{logger.log_dir}/ig_rules.jsonl")]
    assert len(rules) == 2 and set(rules[-1]["rules"]) == {str(c) for c in pairs[:, 1].tolist()}


def test_multi_label_needs_multi_hot_labels(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, target="positive_labels")
    with pytest.raises(ValueError, match="`target`='positive_labels' needs multi-hot labels"):
        trainer(tmp_path, [monitor]).validate(TinyCNN(), loaders()[1], verbose=False)


def test_one_hot_labels_are_read_through_their_argmax(tmp_path):
    x, y = make_data()[:8]
    monitor = IntegratedGradientsMonitor(probe=(x, nn.functional.one_hot(y, 4)), n_steps=4)
    trainer(tmp_path, [monitor]).validate(TinyCNN(), loaders()[1], verbose=False)
    assert torch.equal(monitor.targets, y)


class TwoInputs(TinyCNN):
    def forward(self, x, z):
        return self.net(x) + z.sum(1, keepdim=True)

    def validation_step(self, batch, batch_idx):
        pass


def test_a_pair_of_inputs_read_as_inputs_and_labels_is_refused_with_the_fix(tmp_path):
    x, z = torch.randn(4, 1, 8, 8), torch.randn(4, 3)
    monitor = IntegratedGradientsMonitor(probe=(x, z), n_steps=4)
    with pytest.raises(ValueError, match=r"read as \(inputs, labels\): pass probe=\(\(x1, x2\), None\)"):
        trainer(tmp_path, [monitor]).validate(TwoInputs(), loaders()[1], verbose=False)
    fixed = IntegratedGradientsMonitor(probe=((x, z), None), n_steps=4)
    trainer(tmp_path, [fixed]).validate(TwoInputs(), loaders()[1], verbose=False)
    assert fixed.checks == 1 and len(fixed.last_result.attributions) == 2


def test_a_probe_of_the_wrong_shape_names_the_probe_and_its_shapes(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=torch.randn(4, 1, 5, 5), n_steps=4)
    with pytest.raises(ProbeMismatchError, match=r"the model fails on the `probe` \(inputs \{0: \(4, 1, 5, 5\)\}\)"):
        trainer(tmp_path, [monitor]).validate(TinyCNN(), loaders()[1], verbose=False)
    assert issubclass(ProbeMismatchError, ValueError)


def test_bad_baselines_are_named():
    with pytest.raises(TypeError, match=r"`baseline\[0\]` as a list must be nested lists of numbers"):
        IntegratedGradientsMonitor(baseline=[["a", "b"]])
    with pytest.raises(TypeError, match=r"`baseline\[1\]` must be None, a number or a Tensor, got the name 'b'"):
        IntegratedGradientsMonitor(baseline=[0.0, "b"])
    with pytest.raises(ValueError, match="`baselines` must be finite, got nan"):
        integrated_gradients(lambda v: v.sum(1), torch.ones(2, 3), baselines=math.nan, n_steps=4)
    with pytest.raises(ValueError, match=r"`baselines` holds NaN"):
        integrated_gradients(lambda v: v.sum(1), torch.ones(2, 3), baselines=torch.full((3,), math.nan), n_steps=4)


def test_two_monitors_with_one_name_fail_before_training(tmp_path):
    model = TinyCNN()
    with pytest.raises(ValueError, match="2 IntegratedGradientsMonitor callbacks share `name`=None"):
        trainer(tmp_path, [IntegratedGradientsMonitor(n_steps=4), IntegratedGradientsMonitor(n_steps=8)]).fit(
            model, *loaders())
    # With identical settings their checkpoint keys collide too, which Lightning refuses first, also before training
    with pytest.raises(RuntimeError, match="state_key"):
        trainer(tmp_path, [IntegratedGradientsMonitor(n_steps=4), IntegratedGradientsMonitor(n_steps=4)]).fit(
            model, *loaders())
    assert model.global_step == 0


def test_named_monitors_log_apart(tmp_path):
    torch.manual_seed(0)
    plain = IntegratedGradientsMonitor(probe=4, n_steps=4)
    named = IntegratedGradientsMonitor(probe=4, n_steps=4, name="label_1", target=1)
    logger = TensorBoardLogger(tmp_path)
    t = trainer(tmp_path, [plain, named], logger=logger)
    t.fit(TinyCNN(), *loaders())
    assert "ig/completeness_error" in plain.last_metrics and "ig/label_1/completeness_error" in named.last_metrics
    assert "ig/label_1/drift" in t.callback_metrics and "ig/drift" in t.callback_metrics
    assert plain.state_key != named.state_key and "label_1" in named.state_key
    assert (tmp_path / logger.log_dir.split(str(tmp_path))[-1].lstrip("/") / "ig_rules_label_1.jsonl").exists()
    assert torch.equal(named.targets, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="`name` must be letters"):
        IntegratedGradientsMonitor(name="a b")


class ConvLayerModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 4 * 4, 4)

    def forward(self, x):
        return self.head(torch.relu(self.pool(self.conv(x))).flatten(1))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_a_conv_layer_is_a_map_over_the_image_and_completeness_stays_at_the_layer(tmp_path):
    torch.manual_seed(0)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps="auto", layer="pool")
    trainer(tmp_path, [monitor]).fit(ConvLayerModel(), *loaders())
    assert monitor._kind == "image"
    assert monitor.last_result.attributions.shape == (4, 4, 4, 4)  # the layer's own shape
    assert float(monitor.last_result.relative_error().max()) < 0.02
    assert monitor.stage(Pictures).scales.scales.shape == (4,)
    assert all(k < 16 for r in monitor.top_features.values() for k, _ in r)
    assert "ig/deletion_ratio" in monitor.last_metrics  # a map cell is a block of pixels for the deletion check
