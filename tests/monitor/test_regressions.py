"""Regressions from a red-team review on real and misused models: each once crashed a run mid-fit or misled."""

import warnings

import pytest
import torch
from conftest import TinyCNN, TokenModel, loaders, token_loaders, trainer
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from ig_lightning import IntegratedGradientsMonitor, integrated_gradients


class Counting(TinyCNN):
    steps = 0

    def training_step(self, batch, batch_idx):
        Counting.steps += 1
        return super().training_step(batch, batch_idx)


def test_a_per_example_baseline_follows_its_examples_through_groups(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN()
    _, val = loaders()
    x = val.dataset.tensors[0][:12]
    baseline = x.roll(1, dims=-1) * 0.5  # one baseline per probe example
    monitor = IntegratedGradientsMonitor(probe=12, n_steps=8, baseline=baseline,
                                         integration=dict(internal_batch_size=4))
    trainer(tmp_path, [monitor]).validate(model, val, verbose=False)  # 12 examples in groups of 4
    model.eval()
    ref = integrated_gradients(model, x, baselines=baseline, target=monitor.targets, n_steps=8)
    torch.testing.assert_close(monitor.last_result.attributions, ref.attributions, rtol=1e-5, atol=1e-6)


def test_a_baseline_token_outside_the_vocabulary_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="the model fails on the `baseline`.*IndexError"):
        trainer(tmp_path, [IntegratedGradientsMonitor(probe=4, layer="embedding", baseline=99)]).fit(
            TokenModel(), *token_loaders())


def test_a_path_that_changes_nothing_is_refused(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, layer="embedding", inputs=dict(attribute="attention_mask"))
    with pytest.raises(ValueError, match="equals that on the probe for every example: there is nothing to attribute"):
        trainer(tmp_path, [monitor]).fit(TokenModel(), *token_loaders())


class PatchEmbed(nn.Module):
    """An 8x8 image cut into 4 patches of 8 hidden units, (B, 4, 8), as a vision transformer's embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 4, stride=4)

    def forward(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)


class PatchModel(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = PatchEmbed(), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)).mean(1))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_patch_layer_is_drawn_as_a_map_over_the_image(tmp_path):
    torch.manual_seed(0)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=8, layer="embed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], logger=TensorBoardLogger(tmp_path)).fit(PatchModel(), *loaders())
    assert not [w for w in caught if "could not write" in str(w.message)]
    # issue 15: a patch layer's map is drawn over the input (it was one bar per patch); rules are map cells
    assert monitor._kind == "image" and all(k < 4 for rules in monitor.top_features.values() for k, _ in rules)
    assert tuple(monitor.last_result.attributions.shape[1:]) != (1, 8, 8)  # completeness stays over the layer


class Ragged(IterableDataset):
    def __iter__(self):
        for length in (5, 6, 7):
            ids = torch.randint(1, 12, (4, length))
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(4, dtype=torch.long)}


def test_a_probe_across_batches_of_other_lengths_names_the_probe(tmp_path):
    with pytest.raises(ValueError, match="`probe`=8 spans 2 validation batches that cannot be joined"):
        trainer(tmp_path, [IntegratedGradientsMonitor(probe=8, layer="embedding")]).fit(
            TokenModel(), token_loaders()[0], DataLoader(Ragged(), batch_size=None))


def test_topk_jaccard_over_too_few_features_warns(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, layer="embedding",
                                         alarm=dict(metric="topk_jaccard", top_k=7), rule_extraction=dict(top_k=7),
                                         faithfulness=dict(top_k=7))
    with pytest.warns(UserWarning, match="topk_jaccard.*always 0"):
        trainer(tmp_path, [monitor], max_epochs=1).fit(TokenModel(), *token_loaders())


def test_half_precision_raises_an_unreachable_tolerance():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(RuntimeWarning, match="below what its gradients"):
        res = integrated_gradients(model, torch.randn(3, 4), target=0, n_steps="auto", tolerance=1e-4)
    assert int(res.n_steps.max()) < 256


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output_transform=lambda out: out.sum()), ValueError, "`output_transform` must give one output"),
    (dict(inputs=dict(unpack=lambda batch: batch["image"])), ValueError,
     r"`inputs.unpack` raised (TypeError|IndexError|KeyError)"),
])
def test_misused_callables_are_named_before_training(tmp_path, kwargs, error, match):
    Counting.steps = 0
    with pytest.raises(error, match=match):
        trainer(tmp_path, [IntegratedGradientsMonitor(probe=4, n_steps=4, **kwargs)]).fit(Counting(), *loaders())
    assert Counting.steps == 0


def test_engine_warnings_are_said_once_per_run(tmp_path):
    # max_steps=3 cannot reach tolerance: the engine warns at every check and group; the monitor passes it on once
    monitor = IntegratedGradientsMonitor(probe=8,
                                         integration=dict(internal_batch_size=4, max_steps=3, tolerance=1e-6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=3).fit(TinyCNN(), *loaders())
    said = [w for w in caught if "did not reach tolerance" in str(w.message)]
    assert len(said) == 1 and "said once" in str(said[0].message)
