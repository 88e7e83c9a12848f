"""IntegratedGradientsMonitor inside real Trainers: what it logs, what it never changes, how it acts."""

import copy
import math
import os
import warnings

import pytest
import torch
from conftest import TinyCNN, fit_cnn, loaders, make_data, trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from ig_lightning import AttributionDriftError, IntegratedGradientsMonitor, integrated_gradients
from ig_lightning.monitor._isolation import eval_mode
from ig_lightning.monitor.stages import Drift, Pictures

# --- training is untouched -------------------------------------------------------------------------


def test_same_seeded_run_gives_bit_identical_weights_with_and_without_the_monitor(tmp_path):
    _, plain = fit_cnn(tmp_path / "a", max_epochs=3)
    rng_plain = torch.get_rng_state()
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8)
    _, watched = fit_cnn(tmp_path / "b", monitor, max_epochs=3)
    assert monitor.checks == 3
    assert torch.equal(torch.get_rng_state(), rng_plain)  # the global stream was not consumed
    plain_state, watched_state = plain.state_dict(), watched.state_dict()
    assert plain_state.keys() == watched_state.keys()
    for key in plain_state:  # parameters and BatchNorm buffers alike
        assert torch.equal(plain_state[key], watched_state[key]), key


class Snapshot(TinyCNN):
    """Sets .grad and a mixed module mode before the check, compares after it (the module's hook runs last)."""

    def on_validation_epoch_start(self):
        for p in self.parameters():
            p.grad = torch.full_like(p, 3.0)
        self.net[2].train()  # a (stateless) submodule in train mode on purpose: its own mode must come back
        self.before = copy.deepcopy(self.state_dict())
        self.modes = [m.training for m in self.modules()]

    def on_validation_epoch_end(self):
        self.untouched = (
            all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in self.parameters())
            and all(torch.equal(v, self.before[k]) for k, v in self.state_dict().items())
            and self.modes == [m.training for m in self.modules()]
            and all(p.requires_grad for p in self.parameters())
        )


def test_a_check_leaves_grads_buffers_modes_and_rng_alone(tmp_path):
    torch.manual_seed(0)
    model = Snapshot()
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=4)
    _, val = loaders()
    t = trainer(tmp_path, [monitor])
    rng = torch.get_rng_state()
    t.validate(model, val, verbose=False)
    plain_rng_after = _rng_after_plain_validate(tmp_path, val, rng)
    assert torch.equal(torch.get_rng_state(), plain_rng_after)
    assert monitor.last_result is not None and model.untouched


def _rng_after_plain_validate(tmp_path, val, rng):
    # Validation itself draws from the global stream (DataLoader seeds): compare with a run without the monitor.
    torch.set_rng_state(rng)
    trainer(tmp_path).validate(TinyCNN(), val, verbose=False)
    return torch.get_rng_state()


def test_eval_mode_restores_each_modules_own_mode():
    model = TinyCNN()
    model.train()
    model.net[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.net[1].training and model.net[0].training


def test_dropout_is_off_during_ig(tmp_path):
    # With dropout active, two checks of the same weights would differ.
    torch.manual_seed(0)
    model, (_, val) = TinyCNN(), loaders()
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=4)
    t = trainer(tmp_path, [monitor])
    t.validate(model, val, verbose=False)
    first = monitor.last_result.attributions
    t.validate(model, val, verbose=False)
    assert torch.equal(first, monitor.last_result.attributions)
    assert monitor.last_metrics["ig/drift"] == pytest.approx(0.0, abs=1e-6)


# --- what it computes and logs ----------------------------------------------------------------------


def test_attributions_are_the_engines_on_the_first_probe_examples(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=16, target="label", baseline=None)
    t, model = fit_cnn(tmp_path, monitor, max_epochs=1)
    x, y = make_data()[:6]
    model.eval()
    expected = integrated_gradients(model, x, target=y, n_steps=16)
    torch.testing.assert_close(monitor.last_result.attributions, expected.attributions, rtol=1e-5, atol=1e-6)
    assert torch.equal(monitor.probe_inputs, x) and torch.equal(monitor.targets, y)


def test_scalars_reach_callback_metrics_and_early_stopping(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8)
    stopper = EarlyStopping(monitor="ig/drift", mode="max", stopping_threshold=1e-9, strict=False)
    t, _ = fit_cnn(tmp_path, monitor, max_epochs=5, callbacks=[stopper])
    for name in ("ig/completeness_error", "ig/completeness_error_max", "ig/drift", "ig/drift_cosine",
                 "ig/drift_spearman", "ig/drift_topk_jaccard", "ig/delta_mean"):
        assert name in t.callback_metrics, name
    assert t.current_epoch < 5 and stopper.stopped_epoch > 0  # EarlyStopping acted on ig/drift unchanged
    assert 0 <= float(t.callback_metrics["ig/completeness_error"]) < 0.05


def test_skips_the_sanity_check_and_respects_every_n_epochs(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, every_n_epochs=2)
    fit_cnn(tmp_path, monitor, max_epochs=5, num_sanity_val_steps=2)
    assert [h["epoch"] for h in monitor.rules_history] == [1, 3]
    assert monitor.checks == 2


@pytest.mark.parametrize("method", ["validate", "fit"])
def test_runs_under_inference_mode_and_no_grad(tmp_path, method):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8)
    torch.manual_seed(0)
    train, val = loaders()
    t = trainer(tmp_path, [monitor], max_epochs=1, inference_mode=True)
    if method == "validate":
        out = t.validate(TinyCNN(), val, verbose=False)
        assert "ig/completeness_error" in out[0]
    else:
        t.fit(TinyCNN(), train, val)
    assert monitor.checks == 1 and math.isfinite(monitor.last_metrics["ig/completeness_error"])


def test_writes_pictures_histograms_and_rules_to_tensorboard(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, display=dict(max_images=4))
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit_cnn(tmp_path, monitor, max_epochs=2, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()
    tags = acc.Tags()
    assert {"ig/attribution_maps", "ig/class_mean_maps"} <= set(tags["images"])
    assert {"ig/histograms/attributions", "ig/histograms/completeness_error"} <= set(tags["histograms"])
    assert len(acc.Images("ig/attribution_maps")) == 2
    scalars = EventAccumulator(logger.log_dir).Reload().Tags()["scalars"]
    assert "ig/drift" in scalars and "ig/completeness_error" in scalars
    lines = open(os.path.join(logger.log_dir, "ig_rules.jsonl")).read().splitlines()
    assert len(lines) == 2


def test_works_without_a_logger(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    t, _ = fit_cnn(tmp_path, monitor, max_epochs=1, logger=False)
    assert "ig/completeness_error" in t.callback_metrics


# --- probe, targets, layers, transforms ---------------------------------------------------------------


def test_probe_as_tensor_pair_and_from_dict_batches(tmp_path):
    x, y = make_data()[:5]
    pair = IntegratedGradientsMonitor(probe=(x, y), n_steps=4)
    fit_cnn(tmp_path, pair, max_epochs=1)
    assert torch.equal(pair.targets, y)

    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            xi, yi = make_data()[i]
            return {"pixels": xi, "cls": yi}

    class DictModel(TinyCNN):
        def validation_step(self, batch, batch_idx):
            return None

    monitor = IntegratedGradientsMonitor(probe=6, n_steps=4, inputs=dict(unpack=lambda b: (b["pixels"], b["cls"])))
    t = trainer(tmp_path, [monitor])
    t.validate(DictModel(), DataLoader(DictData(), batch_size=8), verbose=False)
    assert monitor.probe_inputs.shape == (6, 1, 8, 8) and torch.equal(monitor.targets, make_data()[:6][1])
    with pytest.raises(TypeError, match="pass `unpack=`"):
        trainer(tmp_path, [IntegratedGradientsMonitor(probe=4)]).validate(
            DictModel(), DataLoader(DictData(), batch_size=8), verbose=False)


def test_prediction_target_is_fixed_at_the_first_check(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=12, n_steps=4, target="prediction")
    torch.manual_seed(3)
    model, (train, val) = TinyCNN(), loaders()
    x = make_data()[:12][0]
    trainer(tmp_path, [monitor]).validate(model, val, verbose=False)
    model.eval()
    first_predictions = model(x).argmax(-1)
    assert torch.equal(monitor.targets, first_predictions)
    trainer(tmp_path, [monitor], max_epochs=3).fit(model, train, val)
    model.eval()
    assert not torch.equal(model(x).argmax(-1), first_predictions)  # training changed the predictions...
    assert torch.equal(monitor.targets, first_predictions)  # ...but not what is explained


def test_int_and_callable_targets_and_output_transform(tmp_path):
    torch.manual_seed(0)
    model, (_, val) = TinyCNN(), loaders()
    fixed = IntegratedGradientsMonitor(probe=4, n_steps=4, target=2, output_transform="softmax")
    trainer(tmp_path, [fixed]).validate(model, val, verbose=False)
    assert fixed.targets.tolist() == [2, 2, 2, 2]
    assert bool((fixed.last_result.delta.abs() <= 1).all())  # a difference of probabilities
    picked = IntegratedGradientsMonitor(probe=4, n_steps=4, target=lambda out, labels: (labels + 1) % 4)
    trainer(tmp_path, [picked]).validate(model, val, verbose=False)
    assert picked.targets.tolist() == [1, 2, 3, 0]


def test_layer_by_name_and_a_bad_layer_name(tmp_path):
    torch.manual_seed(0)
    model, (_, val) = TinyCNN(), loaders()
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=8, layer="net.2")
    trainer(tmp_path, [monitor]).validate(model, val, verbose=False)
    assert monitor.last_result.attributions.shape == (4, 6, 8, 8)
    with pytest.raises(ValueError, match="`layer` 'net.99' is not a submodule"):
        trainer(tmp_path, [IntegratedGradientsMonitor(layer="net.99")]).validate(model, val, verbose=False)


def test_auto_steps_are_logged(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps="auto", integration=dict(tolerance=0.02))
    t, _ = fit_cnn(tmp_path, monitor, max_epochs=1)
    assert float(t.callback_metrics["ig/n_steps_mean"]) >= 4
    assert monitor.last_metrics["ig/completeness_error_max"] <= 0.02 + 1e-6


# --- thresholds and actions ----------------------------------------------------------------------------


def test_raise_names_metric_value_threshold_and_epoch(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, alarm=dict(threshold=0.0, on_breach="raise"))
    with pytest.raises(AttributionDriftError, match=r"ig/drift \(cosine vs previous check\) = .* > "
                                                    r"alarm.threshold=0 at epoch 1"):
        fit_cnn(tmp_path, monitor, max_epochs=3)


def test_stop_ends_fit_early_and_warn_only_warns(tmp_path):
    stop = IntegratedGradientsMonitor(probe=8, n_steps=8, alarm=dict(threshold=0.0, on_breach="stop"))
    t, _ = fit_cnn(tmp_path, stop, max_epochs=5)
    assert t.current_epoch == 2  # breach at epoch 1 (the first with a drift), stops after it
    warn = IntegratedGradientsMonitor(probe=8, n_steps=8, alarm=dict(threshold=0.0, on_breach="warn"))
    with pytest.warns(UserWarning, match="alarm.threshold"):
        t, _ = fit_cnn(tmp_path, warn, max_epochs=3)
    assert t.current_epoch == 3


def test_warmup_and_patience_delay_the_action(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8,
                                         alarm=dict(threshold=0.0, on_breach="stop", warmup=2, patience=2))
    t, _ = fit_cnn(tmp_path, monitor, max_epochs=8)
    # checks 1-2 ignored (warmup), checks 3 and 4 breach: the run stops after epoch index 3.
    assert t.current_epoch == 4


def test_completeness_and_region_thresholds(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=2, integration=dict(method="riemann_left"),
                                         alarm=dict(completeness_threshold=1e-6, on_breach="raise"))
    with pytest.raises(AttributionDriftError, match="completeness_threshold"):
        fit_cnn(tmp_path, monitor, max_epochs=1)
    region = torch.zeros(1, 8, 8, dtype=torch.bool)
    region[:, :4, :4] = True
    masses = IntegratedGradientsMonitor(probe=8, n_steps=8,
                                        alarm=dict(region=region, region_threshold=0.0, on_breach="raise"))
    with pytest.raises(AttributionDriftError, match="ig/region_mass"):
        fit_cnn(tmp_path, masses, max_epochs=1)
    assert 0 < masses.last_metrics["ig/region_mass"] < 1


def test_nan_attributions_are_a_breach_even_in_warmup(tmp_path):
    class NaNModel(TinyCNN):
        def forward(self, x):
            out = super().forward(x)
            return out if self.training else out * float("nan")

    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=dict(on_breach="raise", warmup=10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AttributionDriftError, match="NaN or infinite"):
            trainer(tmp_path, [monitor]).validate(NaNModel(), loaders()[1], verbose=False)


# --- checkpoints -------------------------------------------------------------------------------------


def test_state_round_trips_through_a_weights_only_checkpoint_and_resume(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=8, alarm=dict(reference="first"))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t, _ = fit_cnn(tmp_path, monitor, max_epochs=2, callbacks=[ckpt], enable_checkpointing=True)
    path = ckpt.last_model_path
    saved = torch.load(path, weights_only=True)["callbacks"][monitor.state_key]
    assert torch.equal(saved["probe"]["inputs"]["args"][0], monitor.probe_inputs)
    assert torch.equal(saved["first_scores"], monitor.stage(Drift).references.first)

    resumed = IntegratedGradientsMonitor(probe=6, n_steps=8, alarm=dict(reference="first"))
    torch.manual_seed(0)
    train, val = loaders()
    t = trainer(tmp_path, [resumed], max_epochs=3)
    t.fit(TinyCNN(), train, val, ckpt_path=path)
    # Drift is still measured against the same reference.
    assert torch.equal(resumed.stage(Drift).references.first, saved["first_scores"])
    assert resumed.checks == 3


def test_load_state_dict_tolerates_missing_keys():
    monitor = IntegratedGradientsMonitor()
    monitor.load_state_dict({})
    monitor.load_state_dict({"checks": 4})
    assert monitor.checks == 4 and monitor.probe_inputs is None


def test_references_stay_on_cpu_and_do_not_grow(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=4)
    fit_cnn(tmp_path, monitor, max_epochs=4)
    state = monitor.state_dict()
    for value in state.values():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu" and value.shape[0] == 6
    assert monitor.last_result.attributions.device.type == "cpu"


# --- mixed precision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_mixed_precision(tmp_path, autocast):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=16, integration=dict(autocast=autocast))
    t, _ = fit_cnn(tmp_path, monitor, max_epochs=1, precision="bf16-mixed")
    assert monitor.last_result.attributions.dtype == torch.float32
    error = monitor.last_metrics["ig/completeness_error"]
    assert error < (0.2 if autocast else 0.02)  # bf16 autocast pays in completeness; float32 does not


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs a GPU")
def test_fp16_mixed_precision_on_gpu(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=16)
    fit_cnn(tmp_path, monitor, max_epochs=1, precision="16-mixed", accelerator="gpu")
    assert monitor.last_metrics["ig/completeness_error"] < 0.02


def test_label_target_without_labels_is_explained(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=make_data()[:4][0], target="label")
    with pytest.raises(ValueError, match="`target`='label' needs integer class labels"):
        trainer(tmp_path, [monitor]).validate(TinyCNN(), loaders()[1], verbose=False)


def test_colour_scales_are_fixed_at_the_first_check_with_headroom(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=8, display=dict(color_headroom=3.0))
    fit_cnn(tmp_path, monitor, max_epochs=1)
    first = monitor.stage(Pictures).scales.scales.clone()
    expected = 3.0 * monitor.stage(Drift).references.first.reshape(6, -1).abs().amax(1)
    torch.testing.assert_close(first, expected)
    t = trainer(tmp_path, [monitor], max_epochs=3)
    torch.manual_seed(0)
    t.fit(TinyCNN(), *loaders())
    assert torch.equal(monitor.stage(Pictures).scales.scales, first)  # later checks draw on the same scale


def test_single_output_models_need_no_target(tmp_path):
    class Score(TinyCNN):
        def forward(self, x):
            return super().forward(x)[:, 0]  # one score per example, e.g. a regression or a binary logit

        def validation_step(self, batch, batch_idx):
            return None

    monitor = IntegratedGradientsMonitor(probe=4, n_steps=8)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, [monitor], logger=logger).validate(Score(), loaders()[1], verbose=False)
    assert monitor.targets is None and monitor.top_features == {} and monitor.rules == {}
    assert monitor.last_metrics["ig/completeness_error"] < 0.05


def test_resume_from_a_checkpoint_saved_before_the_first_check(tmp_path):
    x, y = make_data()[:6]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    early = IntegratedGradientsMonitor(probe=(x, y), n_steps=4, every_n_epochs=2)
    fit_cnn(tmp_path, early, max_epochs=1, callbacks=[ckpt], enable_checkpointing=True)
    assert early.checks == 0
    resumed = IntegratedGradientsMonitor(probe=(x, y), n_steps=4, every_n_epochs=2)
    torch.manual_seed(0)
    trainer(tmp_path, [resumed], max_epochs=2).fit(TinyCNN(), *loaders(), ckpt_path=ckpt.last_model_path)
    assert resumed.checks == 1 and torch.equal(resumed.targets, y)


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_true_precisions(tmp_path, precision):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=8)
    fit_cnn(tmp_path, monitor, max_epochs=1, precision=precision)
    assert monitor.checks == 1 and math.isfinite(monitor.last_metrics["ig/completeness_error"])


def test_region_with_a_layer_is_over_tokens(tmp_path):
    class Tokens(TinyCNN):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(10, 3)
            self.head = torch.nn.Linear(3, 2)

        def forward(self, ids):
            return self.head(self.embedding(ids).mean(1))

        def validation_step(self, batch, batch_idx):
            return None

    ids = torch.randint(1, 10, (8, 5))
    data = torch.utils.data.TensorDataset(ids, torch.randint(0, 2, (8,)))
    region = torch.tensor([True, False, False, False, False])  # the first token
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, layer="embedding", alarm=dict(region=region))
    torch.manual_seed(0)
    trainer(tmp_path, [monitor]).validate(Tokens(), DataLoader(data, batch_size=4), verbose=False)
    tokens = monitor.last_result.attributions.sum(-1).abs()
    expected = float((tokens[:, 0] / tokens.sum(1)).mean())
    assert monitor.last_metrics["ig/region_mass"] == pytest.approx(expected, rel=1e-5)


def test_probe_from_a_loader_of_whole_batches(tmp_path):
    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            x, y = make_data()[i * 4:(i + 1) * 4]
            return x, y

    class Plain(TinyCNN):
        def validation_step(self, batch, batch_idx):
            return None

    monitor = IntegratedGradientsMonitor(probe=6, n_steps=4)
    trainer(tmp_path, [monitor]).validate(Plain(), DataLoader(Batches(), batch_size=None), verbose=False)
    assert torch.equal(monitor.probe_inputs, make_data()[:6][0])
