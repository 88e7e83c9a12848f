"""Maps a user can trust, through the monitor: baselines beyond zero, noise averaging, the faithfulness curves, the
randomisation sanity check and the baseline watched during training (``ig_lightning.monitor.trust``)."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from conftest import Classifier, TinyCNN, TokenModel, fit_cnn, loaders, make_data, token_loaders, trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ig_lightning import IntegratedGradientsMonitor, integrated_gradients
from ig_lightning.functional import blurred
from ig_lightning.functional._inputs import make_baselines

KINDS = ["blur", "uniform", "gaussian", "data", [0.0, 1.0]]


def _paths(monitor, x):
    """Each baseline of the monitor's explainer as one tensor per probe example."""
    explainer = monitor._explainer
    idx = torch.arange(len(x))
    return [make_baselines(explainer.baselines_for(torch.device("cpu"), idx, k), (x,))[0]
            for k in range(len(explainer.baselines))]


@pytest.mark.parametrize("baseline", KINDS, ids=str)
def test_each_baseline_kind_is_the_mean_of_the_engines_ig_over_its_paths(tmp_path, baseline):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=16, target="label", baseline=baseline,
                                         integration={"baseline_samples": 3})
    _, model = fit_cnn(tmp_path, monitor, max_epochs=1)
    x, y = make_data()[:6]
    model.eval()
    paths = _paths(monitor, x)
    assert len(paths) == {"blur": 1, "uniform": 3, "gaussian": 3, "data": 3}.get(str(baseline), 2)
    expected = [integrated_gradients(model, x, target=y, n_steps=16, baselines=b) for b in paths]
    mean = torch.stack([e.attributions for e in expected]).mean(0)
    torch.testing.assert_close(monitor.last_result.attributions, mean, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # completeness is against the mean output at the baselines
        out = model(x).gather(1, y.view(-1, 1)).flatten()
        at_base = torch.stack([model(b).gather(1, y.view(-1, 1)).flatten() for b in paths]).mean(0)
    torch.testing.assert_close(monitor.last_result.delta, out - at_base, rtol=1e-5, atol=1e-6)
    low, high = float(x.min()), float(x.max())
    if baseline == "blur":
        torch.testing.assert_close(paths[0], blurred(x, 0.1 * 8))
    elif baseline in ("uniform", "gaussian"):
        assert all(bool(((b >= low) & (b <= high)).all()) for b in paths)
        assert not torch.equal(paths[0], paths[1])
    elif baseline == "data":  # every draw is a validation example
        rows = make_data()[:][0].reshape(96, -1)
        assert all(bool((b.reshape(6, 1, -1) == rows.unsqueeze(0)).all(-1).any(1).all()) for b in paths)


def test_completeness_is_against_the_mean_over_the_noisy_copies_and_baselines(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps="auto", target="label", baseline="uniform",
                                         integration={"baseline_samples": 2, "noise_samples": 3,
                                                      "tolerance": 5e-3}, faithfulness={"sanity_every_n_checks": 0})
    _, model = fit_cnn(tmp_path, monitor, max_epochs=1)
    x, y = make_data()[:6]
    model.eval()
    noise = monitor._explainer.noise[0]
    assert noise.shape == (3, 6, 1, 8, 8)
    with torch.no_grad():
        noisy = torch.stack([model(x + n).gather(1, y.view(-1, 1)).flatten() for n in noise]).mean(0)
        at_base = torch.stack([model(b).gather(1, y.view(-1, 1)).flatten() for b in _paths(monitor, x)]).mean(0)
    result = monitor.last_result
    torch.testing.assert_close(result.delta, noisy - at_base, rtol=1e-5, atol=1e-6)
    total = result.attributions.reshape(6, -1).sum(1)
    assert bool(((total - result.delta).abs() <= 5e-3 * result.delta.abs().clamp_min(1e-3) + 1e-5).all())
    assert monitor.last_metrics["ig/completeness_error_max"] < 5e-3


def test_draws_are_seeded_the_same_in_every_monitor_and_after_a_resume(tmp_path):
    settings = dict(probe=6, n_steps=8, baseline="gaussian", integration={"baseline_samples": 2, "noise_samples": 2})
    first = IntegratedGradientsMonitor(**settings)
    t, model = fit_cnn(tmp_path / "a", first, max_epochs=1, enable_checkpointing=True)
    second = IntegratedGradientsMonitor(**settings)
    fit_cnn(tmp_path / "b", second, max_epochs=1)
    for a, b in zip(first._explainer.baselines + list(first._explainer.noise),
                    second._explainer.baselines + list(second._explainer.noise)):
        assert torch.equal(a, b)
    other = IntegratedGradientsMonitor(**{**settings, "integration": {"baseline_samples": 2, "noise_samples": 2,
                                                                      "seed": 1}})
    fit_cnn(tmp_path / "c", other, max_epochs=1)
    assert not torch.equal(first._explainer.baselines[0], other._explainer.baselines[0])
    # Resumed from the checkpoint, the next check attributes from the same draws.
    ckpt = t.checkpoint_callback.best_model_path
    resumed = IntegratedGradientsMonitor(**settings)
    trainer(tmp_path / "d", [resumed], max_epochs=1).validate(TinyCNN(), loaders()[1], ckpt_path=ckpt, verbose=False)
    trainer(tmp_path / "e", [first], max_epochs=1).validate(model, loaders()[1], verbose=False)
    torch.testing.assert_close(resumed.last_result.attributions, first.last_result.attributions)


@pytest.mark.parametrize("settings", [
    dict(baseline="uniform", integration={"baseline_samples": 2, "noise_samples": 2}),
    dict(baseline=[0.0, 1.0], faithfulness={"sanity_every_n_checks": 1, "sanity_steps": 3, "fill": "neighbours"}),
], ids=["draws-and-noise", "sanity-every-check"])
def test_training_is_bit_identical_with_draws_noise_and_the_sanity_check(tmp_path, settings):
    _, plain = fit_cnn(tmp_path / "a", max_epochs=3)
    rng_plain = torch.get_rng_state()
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, **settings)
    _, watched = fit_cnn(tmp_path / "b", monitor, max_epochs=3)
    assert monitor.checks == 3 and torch.equal(torch.get_rng_state(), rng_plain)
    for key, value in plain.state_dict().items():  # parameters and BatchNorm buffers alike
        assert torch.equal(value, watched.state_dict()[key]), key


class TiedText(pl.LightningModule):
    """A language-model-like classifier whose output layer shares the embedding's weight, with dropout."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.mix = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(8, vocab, bias=False)
        self.out.weight = self.embedding.weight

    def forward(self, input_ids, attention_mask):
        hidden = self.drop(torch.tanh(self.mix(self.embedding(input_ids)))) * attention_mask.unsqueeze(-1)
        return self.out(hidden.sum(1))[:, :3]

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self(batch["input_ids"], batch["attention_mask"]),
                                                         batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def _fit_tied(tmp_path, monitor):
    torch.manual_seed(0)
    model = TiedText()
    train, val = token_loaders()
    trainer(tmp_path, [monitor] if monitor else [], max_epochs=2).fit(model, train, val)
    return model


def test_the_sanity_check_keeps_tied_weights_tied_and_training_bit_identical(tmp_path):
    plain = _fit_tied(tmp_path / "a", None)
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=8, layer="embedding",
                                         faithfulness={"sanity_every_n_checks": 1, "sanity_steps": 2})
    watched = _fit_tied(tmp_path / "b", monitor)
    assert watched.out.weight is watched.embedding.weight
    assert "ig/sanity_spearman" in monitor.last_metrics
    for key, value in plain.state_dict().items():
        assert torch.equal(value, watched.state_dict()[key]), key


class Record(pl.Callback):
    """The monitor's scalars at every check (it runs after the monitor)."""

    def __init__(self, monitor) -> None:
        self.monitor, self.keys = monitor, []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.keys.append(set(self.monitor.last_metrics))


def test_the_sanity_check_runs_at_the_first_check_and_every_n_and_logs_the_cascade(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8,
                                         faithfulness={"sanity_every_n_checks": 2, "sanity_steps": 2})
    record = Record(monitor)
    fit_cnn(tmp_path, monitor, max_epochs=4, callbacks=[record])
    has = ["ig/sanity_spearman" in keys for keys in record.keys]
    assert has == [True, False, True, False]
    # TinyCNN's layers with reset_parameters, BatchNorm left out: the linear head and the convolution.
    assert [name for name, _ in monitor.stage(_sanity()).layers] == ["net.5", "net.0"]
    assert {"ig/sanity_cascade/1", "ig/sanity_cascade/2", "ig/sanity_spearman_signed"} <= record.keys[0]
    values = [monitor.last_metrics.get(k) for k in ("ig/sanity_spearman",)]
    assert all(v is None or -1 <= v <= 1 for v in values)


def _sanity():
    from ig_lightning.monitor.trust import Sanity

    return Sanity


def test_the_randomised_maps_use_the_sanity_tolerance_and_keep_their_notes_to_themselves(tmp_path, monkeypatch):
    from ig_lightning.monitor.explainer import Explainer

    calls, attribute = [], Explainer.attribute

    def recorded(self, *args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("tolerance", "max_steps")})
        return attribute(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "attribute", recorded)
    found = {}
    for tolerance in (0.01, 0.1, 1e-9):
        calls.clear()
        monitor = IntegratedGradientsMonitor(probe=8, integration={"tolerance": 0.02, "max_steps": 128},
                                             faithfulness={"sanity_tolerance": tolerance})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit_cnn(tmp_path / str(tolerance), monitor, max_epochs=1)
        # The trained model's maps keep integration.tolerance; the two randomised models' take sanity_tolerance,
        # with at most 64 points per path.
        assert calls[0] == {"tolerance": 0.02, "max_steps": 128}
        assert calls[-2:] == [{"tolerance": tolerance, "max_steps": 64}] * 2
        found[tolerance] = monitor.last_metrics["ig/sanity_spearman"]
        # 1e-9 cannot be reached in 64 points, but a randomised model's paths are not the user's: no note of it.
        assert not [w for w in caught if f"tolerance={tolerance}" in str(w.message)]
    # A rank correlation needs no 1% accuracy.
    assert found[0.1] == pytest.approx(found[0.01], abs=0.05)


def test_the_sanity_check_warns_when_the_maps_show_the_input_more_than_the_model(tmp_path):
    # A linear model on features of very different scales: IG = (x - 0) * w is ranked by |x| whatever w is.
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-2, 2, 12)
    x = torch.randn(64, 12, generator=g) * scales
    y = (x[:, -1] > 0).long()
    data = TensorDataset(x, y)

    class Linear(Classifier):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(12, 2)

        def forward(self, v):
            return self.net(v)

    monitor = IntegratedGradientsMonitor(probe=16, n_steps=4, faithfulness={"sanity_every_n_checks": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        trainer(tmp_path, [monitor], max_epochs=1).fit(Linear(), DataLoader(data, batch_size=16),
                                                      DataLoader(data, batch_size=16))
    assert monitor.last_metrics["ig/sanity_spearman"] > 0.8
    said = [str(w.message) for w in caught if "randomisation sanity check" in str(w.message)]
    assert len(said) == 1 and "faithfulness.sanity_warn_above=0.6" in said[0] and "`baseline`" in said[0]


def test_the_curves_are_logged_with_each_fill_and_point_at_what_matters(tmp_path):
    for fill in ("baseline", "blur", "neighbours"):
        monitor = IntegratedGradientsMonitor(probe=8, n_steps=16, faithfulness={"fill": fill, "curve_points": 4})
        fit_cnn(tmp_path / fill, monitor, max_epochs=3)
        metrics = monitor.last_metrics
        assert {"ig/deletion_auc", "ig/insertion_auc", "ig/srg"} <= set(metrics), fill
        assert metrics["ig/srg"] == pytest.approx(metrics["ig/insertion_auc"] - metrics["ig/deletion_auc"])
        assert metrics["ig/srg"] > 0, fill  # removing the most relevant pixels first hurts more
    off = IntegratedGradientsMonitor(probe=8, n_steps=8, faithfulness={"curves": False})
    fit_cnn(tmp_path / "off", off, max_epochs=1)
    assert "ig/srg" not in off.last_metrics


@pytest.mark.parametrize(("model", "settings", "match"), [
    ("tabular", dict(baseline="blur"), "`baseline`='blur' blurs images"),
    ("tokens", dict(baseline="uniform", layer="embedding"), "`baseline`='uniform' draws floating-point values"),
    ("tokens", dict(layer="embedding", integration={"noise_samples": 2}), "`integration.noise_samples` adds noise"),
    ("tabular", dict(faithfulness={"fill": "neighbours"}), "`faithfulness.fill`='neighbours' fills pixels"),
], ids=["blur-tabular", "uniform-ids", "noise-ids", "neighbours-tabular"])
def test_a_baseline_or_fill_that_does_not_fit_the_inputs_is_refused_before_training(tmp_path, model, settings,
                                                                                     match):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, **settings)
    if model == "tokens":
        net, (train, val) = TokenModel(), token_loaders()
    else:
        net = _TabularNet()
        data = TensorDataset(torch.randn(32, 5), torch.arange(32) % 2)
        train = val = DataLoader(data, batch_size=8)
    t = trainer(tmp_path, [monitor])
    with pytest.raises(ValueError, match=match):
        t.fit(net, train, val)
    assert t.global_step == 0


class _TabularNet(Classifier):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, v):
        return self.net(v)


def test_the_baseline_is_watched_at_every_check_and_a_confident_one_is_named_once(tmp_path):
    # Class 0 is the examples near zero: trained, the model predicts the zero baseline as class 0 with certainty.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % 2
    x = torch.randn(128, 5, generator=g) * 0.1 + 3.0 * y.view(-1, 1)
    data = TensorDataset(x, y)
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=4)
    record = Record(monitor)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor, record], max_epochs=4).fit(_TabularNet(), DataLoader(data, batch_size=16,
                                                                                        shuffle=True),
                                                              DataLoader(data, batch_size=16))
    assert all("ig/baseline_confidence" in keys for keys in record.keys)
    said = [str(w.message) for w in caught if "predicts the `baseline`" in str(w.message)]
    assert len(said) == 1 and "no longer neutral" in said[0] and "('auto': zeros) as class 0" in said[0]
    assert monitor.last_metrics["ig/baseline_confidence"] > 0.9
