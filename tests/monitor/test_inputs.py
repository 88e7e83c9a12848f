"""The monitor on models that take several inputs, keyword inputs and return structured outputs (issue 8)."""

import pytest
import torch
from conftest import TokenModel, token_loaders, trainer
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ig_lightning import IntegratedGradientsMonitor, integrated_gradients
from ig_lightning.monitor.stages import Drift


class TwoInputs(LightningModule):
    """An image and a vector, positional, returning a tuple (logits, aux)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 8))
        self.vec = nn.Linear(5, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, image, vector):
        return self.out(torch.tanh(self.conv(image) + self.vec(vector))), "aux"

    def training_step(self, batch, batch_idx):
        (image, vector), y = batch[:2], batch[2]
        return nn.functional.cross_entropy(self(image, vector)[0], y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def two_input_loader():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 1, 8, 8, generator=g), torch.randn(24, 5, generator=g),
                         torch.arange(24) % 3)
    return DataLoader(data, batch_size=8)


def unpack_two(batch):
    return (batch[0], batch[1]), batch[2]


def test_several_positional_inputs_are_attributed_together(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs()
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=16, inputs=dict(unpack=unpack_two))
    trainer(tmp_path, [monitor], max_epochs=1).fit(model, two_input_loader(), two_input_loader())
    res = monitor.last_result
    assert isinstance(res.attributions, tuple) and [tuple(a.shape) for a in res.attributions] == [(6, 1, 8, 8), (6, 5)]
    # the engine on the same model, inputs and targets gives the same numbers
    image, vector = monitor.probe.inputs.args
    model.eval()
    ref = integrated_gradients(model, (image, vector), target=monitor.targets, n_steps=16)
    for got, want in zip(res.attributions, ref.attributions):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert monitor.last_metrics["ig/completeness_error"] < 0.05  # completeness over both inputs together


def test_attribute_selects_inputs_the_rest_passes_unchanged(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs()
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=8, inputs=dict(unpack=unpack_two, attribute=1))
    trainer(tmp_path, [monitor], max_epochs=1).fit(model, two_input_loader(), two_input_loader())
    assert tuple(monitor.last_result.attributions.shape) == (6, 5)
    assert monitor.probe.inputs.args[0].shape == (6, 1, 8, 8)


def test_keyword_batches_reach_the_model_with_their_mask_at_every_point(tmp_path):
    torch.manual_seed(0)
    model = TokenModel()
    train, val = token_loaders()
    # Rule tests off: they forward the rule set's rows, each with its own mask (tested in test_rule_stage.py).
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=8, layer="embedding", rule_extraction=dict(test=False))
    t = trainer(tmp_path, [monitor], max_epochs=1)
    t.fit(model, train, val)
    assert monitor.probe.inputs.names == ["input_ids", "attention_mask"]
    mask = monitor.probe.inputs.kwargs["attention_mask"]
    model.masks_seen.clear()
    t.validate(model, val, verbose=False)
    check_forwards = [m for m in model.masks_seen if m.shape[0] % 4 == 0 and m.shape[0] != 8]
    assert check_forwards and all(torch.equal(m, mask.repeat(len(m) // 4, 1)) for m in check_forwards)
    scores = monitor.last_result.attributions.sum(-1)
    assert bool((scores[mask == 0] == 0).all())  # padding (id 0 = the baseline token) gets nothing
    for rules in monitor.top_features.values():
        assert all(token != 0 for token, _ in rules)


def test_output_transform_callable_receives_the_raw_output(tmp_path):
    seen = []

    def pick(out):
        seen.append(type(out))
        return out["logits"].log_softmax(-1)

    torch.manual_seed(0)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, layer="embedding", output_transform=pick)
    trainer(tmp_path, [monitor]).validate(TokenModel(), token_loaders()[1], verbose=False)
    assert set(seen) == {dict} and monitor.checks == 1


def test_a_model_output_without_logits_is_refused_before_training(tmp_path):
    class NoLogits(TokenModel):
        def forward(self, input_ids, attention_mask):
            return {"scores": super().forward(input_ids, attention_mask)["logits"]}

        def training_step(self, batch, batch_idx):
            raise AssertionError("training must not start")

        def validation_step(self, batch, batch_idx):
            pass

    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, layer="embedding")
    with pytest.raises(TypeError, match=r"returned dict with keys \['scores'\].*output_transform"):
        trainer(tmp_path, [monitor]).fit(NoLogits(), *token_loaders())


def test_keyword_probe_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(0)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, layer="embedding", alarm=dict(reference="first"))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [monitor, ckpt], max_epochs=1, enable_checkpointing=True).fit(TokenModel(), *token_loaders())
    saved = torch.load(ckpt.last_model_path, weights_only=True)["callbacks"][monitor.state_key]
    resumed = IntegratedGradientsMonitor(probe=4, n_steps=4, layer="embedding", alarm=dict(reference="first"))
    trainer(tmp_path, [resumed], max_epochs=2).fit(TokenModel(), *token_loaders(), ckpt_path=ckpt.last_model_path)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(resumed.probe.inputs.kwargs[key], saved["probe"]["inputs"]["kwargs"][key])
    assert torch.equal(resumed.stage(Drift).references.first, saved["first_scores"]) and resumed.checks == 2


def test_a_dict_probe_given_explicitly_splits_labels_off():
    batch = {"input_ids": torch.ones(3, 5, dtype=torch.long), "attention_mask": torch.ones(3, 5),
             "labels": torch.tensor([0, 1, 2])}
    monitor = IntegratedGradientsMonitor(probe=batch, layer="embedding")
    assert monitor.probe.inputs.names == ["input_ids", "attention_mask"] and monitor.probe.labels.tolist() == [0, 1, 2]
