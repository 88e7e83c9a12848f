"""Issue 9, "never break the run": the monitor under faults (bad setups, diverged models, I/O, DDP) in real fits.

Bad constructor arguments are in the one table of tests/monitor/test_config.py; the models, data and helpers
(``Net``, ``fit_net``, ``make_trainer``, the poisons, ``Snapshots``) are in tests/conftest.py.

Each case asserts the exact outcome: which error and message, that it came before the first training step,
that training went on or stopped as configured, and (under DDP) that no rank hung.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import (
    NAN,
    Net,
    Snapshots,
    caught_warnings,
    data_loaders,
    dataset,
    fit_net,
    free_port,
    inf_all,
    make_trainer,
    marked,
    monitor_messages,
    nan_all,
    nan_at_first_epoch,
    nan_gradient_all,
    nan_gradient_at_zero,
    nan_marked,
    nan_marked_at_first_epoch,
    probe_with_marker,
    write_failures,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from ig_lightning import AttributionDriftError, IntegratedGradientsMonitor
from ig_lightning.monitor.stages import Drift
from ig_lightning.output import report as report_module
from ig_lightning.output import record as record_module

WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fault_worker.py")


# --- the start of fit: configuration errors found before the first training step -----------------------


class NotBatchFirst(nn.Module):
    def forward(self, x):
        return x.transpose(0, 1)


class UsesLayerTwice(Net):
    def __init__(self):
        super().__init__("tabular")

    def forward(self, x):
        return self.net[2](self.net[1](self.net[1](self.net[0](x))))


class TransposedLayer(Net):
    def __init__(self):
        super().__init__("tabular")
        self.flip = NotBatchFirst()

    def forward(self, x):
        return self.net(self.flip(x).transpose(0, 1))


class NeverUsesLayer(Net):
    def __init__(self):
        super().__init__("tabular")
        self.unused = nn.Linear(5, 5)


class PerPosition(Net):
    """Outputs (B, T, C): one score per token and class, which needs an output_transform to be explained."""

    def __init__(self):
        super().__init__("text")

    def forward(self, x):
        return self.head(self.embedding(x))


class VectorOut(Net):
    """One score per example, shape (B,)."""

    def __init__(self):
        super().__init__("tabular")

    def forward(self, x):
        return super().forward(x)[:, 0]


class RaisesInEval(Net):
    def forward(self, x):
        if not self.training:
            raise RuntimeError("boom in eval")
        return super().forward(x)


def _image_labels(labels):
    x, _ = dataset("image")[:4]
    return x, labels


START_ERRORS = {
    "label_out_of_range": ("image", Net, dict(probe=_image_labels(torch.tensor([0, 1, 7, 2]))), ValueError,
                           r"labels must be class indices in \[0, 3\]"),
    "negative_label": ("image", Net, dict(probe=_image_labels(torch.tensor([0, -1, 2, 2]))), ValueError,
                       r"labels must be class indices"),
    "float_labels_with_label_target": ("image", Net, dict(probe=_image_labels(torch.tensor([0.0, 1.0, 2.0, 3.0])),
                                                          target="label"), ValueError,
                                       "`target`='label' needs integer"),
    "int_target_out_of_range": ("image", Net, dict(probe=4, target=9), ValueError, r"`target` must be class indices"),
    "callable_target_bad_shape": ("image", Net, dict(probe=4, target=lambda out, y: torch.zeros(3, dtype=torch.long)),
                                  ValueError, r"`target` must have shape \(4,\)"),
    "baseline_shape": ("image", Net, dict(probe=4, baseline=torch.zeros(3, 5, 5)), ValueError, "`baseline`"),
    "baseline_tuple_length": ("image", Net, dict(probe=4, baseline=(0.0, 1.0)), ValueError,
                              "`baseline` must have one entry per attributed input"),
    "baseline_dtype": ("image", Net, dict(probe=4, baseline=torch.zeros(1, 8, 8, dtype=torch.long)), TypeError,
                       "`baseline` dtype torch.int64 does not match"),
    "float_baseline_for_token_ids": ("text", Net, dict(probe=4, layer="embedding", baseline=0.5), TypeError,
                                     "`baseline` must be an int for integer inputs"),
    "region_shape": ("image", Net, dict(probe=4, alarm=dict(region=torch.ones(5, 5, dtype=torch.bool))),
                     ValueError,
                     "`alarm.region` of shape"),
    "missing_layer": ("image", Net, dict(probe=4, layer="net.99"), ValueError, "`layer` 'net.99' is not a submodule"),
    "layer_used_twice": ("tabular", UsesLayerTwice, dict(probe=4, layer="net.1"), ValueError, "`layer`"),
    "layer_never_runs": ("tabular", NeverUsesLayer, dict(probe=4, layer="unused"), ValueError, "`layer`"),
    "layer_not_batch_first": ("tabular", TransposedLayer, dict(probe=4, layer="flip"), ValueError,
                              "`layer` output holds a tensor of shape"),
    "attribute_unknown_input": ("image", Net, dict(probe=4, inputs=dict(attribute="pixels")), ValueError,
                                "`inputs.attribute` names inputs \\['pixels'\\]"),
    "class_names_count": ("image", Net, dict(probe=4, display=dict(class_names=["a", "b", "c"])), ValueError,
                          "`display.class_names` has 3 names but the model has 4 outputs"),
    "feature_names_count": ("tabular", Net, dict(probe=4, display=dict(feature_names=["a", "b"])), ValueError,
                            "`display.feature_names` has 2 names but the inputs have 5 features"),
    "vocabulary_too_short": ("text", Net, dict(probe=4, layer="embedding",
                                               display=dict(vocabulary=["<pad>", "a", "b"])),
                             ValueError, "`display.vocabulary` has 3 tokens but the probe holds token id"),
    "image_kind_on_tabular": ("tabular", Net, dict(probe=4, display=dict(kind="image")), ValueError,
                              "`display.kind`='image' needs"),
    "text_kind_without_layer": ("tabular", Net, dict(probe=4, display=dict(kind="text")), ValueError,
                                "`display.kind`='text' needs"),
    "token_ids_without_layer": ("text", Net, dict(probe=4), ValueError, "pass `layer=`"),
    "softmax_over_single_output": ("tabular", lambda: Net("tabular", classes=1), dict(probe=4,
                                   output_transform="softmax"), ValueError, "`output_transform`='softmax'"),
    "log_softmax_over_vector_output": ("tabular", VectorOut, dict(probe=4, output_transform="log_softmax"),
                                       ValueError, "`output_transform`='log_softmax' over a model with one output"),
    "model_raises_on_the_probe": ("image", RaisesInEval, dict(probe=4), RuntimeError, "boom in eval"),
    "outputs_not_2d": ("text", PerPosition, dict(probe=4, layer="embedding"), ValueError,
                       r"the model must give one output \(B,\) or one row of outputs \(B, C\) per example"),
    "unpack_returns_junk": ("image", Net, dict(probe=4, inputs=dict(unpack=lambda batch: batch[0])), TypeError,
                            "`inputs.unpack` must return"),
}


START_BUGS: dict = {}  # cases that fail today, marked xfail(strict=True) with the bug they show


@pytest.mark.parametrize("case", [pytest.param(c, marks=START_BUGS.get(c, ())) for c in sorted(START_ERRORS)])
def test_configuration_errors_are_found_before_the_first_training_step(tmp_path, case):
    kind, make_model, kwargs, error, match = START_ERRORS[case]
    model = make_model(kind) if make_model is Net else make_model()
    monitor = IntegratedGradientsMonitor(n_steps=4, **kwargs)
    with pytest.raises(error, match=match):
        fit_net(tmp_path, monitor, kind, model=model, max_epochs=1)
    assert model.steps == 0


@pytest.mark.parametrize("with_sanity_check", [False, True])
def test_start_check_runs_even_when_the_first_validation_is_late(tmp_path, with_sanity_check):
    # check_val_every_n_epoch=3: no validation data is loaded before epoch 2, yet the probe is checked at once.
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, display=dict(class_names=["a", "b"]))
    model = Net()
    with pytest.raises(ValueError, match="`display.class_names` has 2 names"):
        fit_net(tmp_path, monitor, model=model, max_epochs=3, check_val_every_n_epoch=3,
            num_sanity_val_steps=2 if with_sanity_check else 0)
    assert model.steps == 0


def test_probe_larger_than_the_data_warns_before_training_and_holds_what_there_is(tmp_path):
    x, y = dataset()[:5]
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=4)
    model, seen = Net(), []
    with caught_warnings() as caught:
        model.on_first_step = lambda: seen.extend(monitor_messages(caught))
        t, _ = fit_net(tmp_path, monitor, model=model, val=TensorDataset(x, y), max_epochs=2)
    assert any("`probe`=8 but the validation data has 5 examples" in m for m in seen)
    assert len(monitor.probe) == 5 and monitor.checks == 2 and t.current_epoch == 2


@pytest.mark.parametrize("how", ["limit_val_batches", "no_validation_step"])
def test_validation_that_never_runs_warns_before_training(tmp_path, how):
    class NoValidation(Net):
        validation_step = pl.LightningModule.validation_step

    model = NoValidation() if how == "no_validation_step" else Net()
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    seen = []
    with caught_warnings() as caught:
        model.on_first_step = lambda: seen.extend(monitor_messages(caught))
        kw = {"limit_val_batches": 0} if how == "limit_val_batches" else {}
        t, _ = fit_net(tmp_path, monitor, model=model, max_epochs=1, **kw)
    assert any("validation never runs" in m for m in seen)
    assert monitor.checks == 0 and t.current_epoch == 1


def test_resumed_checkpoint_with_other_probe_settings_warns_and_takes_the_probe_anew(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = IntegratedGradientsMonitor(probe=6, n_steps=4)
    fit_net(tmp_path, first, max_epochs=1, callbacks=[ckpt], enable_checkpointing=True)
    resumed = IntegratedGradientsMonitor(probe=4, n_steps=4)
    model, seen = Net(), []
    with caught_warnings() as caught:
        model.on_first_step = lambda: seen.extend(monitor_messages(caught))
        t, _ = fit_net(tmp_path, resumed, model=model, max_epochs=2, ckpt_path=ckpt.last_model_path)
    assert any("other settings" in m and "probe" in m for m in seen)
    assert len(resumed.probe) == 4 and resumed.stage(Drift).references.first.shape[0] == 4 and t.current_epoch == 2


def test_one_monitor_reused_for_another_model_warns_and_resets(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    fit_net(tmp_path, monitor, max_epochs=2)
    assert monitor.checks == 2
    other, seen = Net("tabular"), []
    with caught_warnings() as caught:
        other.on_first_step = lambda: seen.extend(monitor_messages(caught))
        fit_net(tmp_path, monitor, "tabular", model=other, max_epochs=1)
    assert any("used with another model" in m for m in seen)
    assert monitor.checks == 1 and monitor.probe_inputs.shape == (4, 5)  # the tabular probe, taken anew


def test_one_monitor_reused_for_a_new_model_of_the_same_architecture_warns_and_resets(tmp_path):
    # A loop that builds a new model per run (e.g. a hyperparameter search) with one monitor.
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    fit_net(tmp_path, monitor, max_epochs=2)
    seen, other = [], Net()
    with caught_warnings() as caught:
        other.on_first_step = lambda: seen.extend(monitor_messages(caught))
        fit_net(tmp_path, monitor, model=other, max_epochs=1)
    assert any("used with another model" in m for m in seen)
    assert monitor.checks == 1


# --- memory: points per forward --------------------------------------------------------------------------


class CountsPoints(Net):
    def __init__(self):
        super().__init__("tabular")
        self.sizes = []

    def forward(self, x):
        if x.requires_grad:  # path points of an IG check
            self.sizes.append(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize(("internal_batch_size", "train_batch", "expected"),
                         [(None, 4, 2), (None, 6, 3), (None, 1, 1), (16, 4, 16)])
def test_points_per_forward_default_to_half_the_training_batch_size(tmp_path, internal_batch_size, train_batch,
                                                                   expected):
    # Rule tests and the sanity check off: the count is of the probe's path points (the rule tests' passes are
    # counted below; the sanity check's cascade attributes the probe again, with the same points per forward).
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, integration=dict(internal_batch_size=internal_batch_size),
                                         rule_extraction=dict(test=False), faithfulness=dict(sanity_every_n_checks=0))
    model = CountsPoints()
    torch.manual_seed(0)
    data = dataset("tabular")
    t = make_trainer(tmp_path, [monitor], max_epochs=1)
    t.fit(model, DataLoader(data, batch_size=train_batch, shuffle=True), DataLoader(data, batch_size=12))
    assert max(model.sizes) == expected and sum(model.sizes) == 8 * 8


def test_points_per_forward_under_validate_default_to_half_the_validation_batch_size(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, rule_extraction=dict(test=False),
                                         faithfulness=dict(sanity_every_n_checks=0))
    model = CountsPoints()
    make_trainer(tmp_path, [monitor]).validate(model, DataLoader(dataset("tabular"), batch_size=6), verbose=False)
    assert max(model.sizes) == 3 and sum(model.sizes) == 8 * 8


class CountsEveryForward(Net):
    def __init__(self):
        super().__init__("tabular")
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return super().forward(x)


def test_rule_tests_send_no_more_rows_through_a_forward_than_the_check(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8)
    model = CountsEveryForward()
    make_trainer(tmp_path, [monitor]).validate(model, DataLoader(dataset("tabular"), batch_size=6), verbose=False)
    assert monitor.rules and max(model.sizes[1:]) <= 6  # the validation batches, then at most 3 rows a forward


# --- divergence: NaN / inf in outputs, gradients, probe inputs ----------------------------------------------


@pytest.mark.parametrize("on_breach", ["warn", "stop", "raise"])
def test_nan_outputs_are_a_breach_handled_by_on_breach(tmp_path, on_breach):
    model = Net()
    model.poison = nan_all
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=dict(on_breach=on_breach))
    with caught_warnings() as caught:
        if on_breach == "raise":
            with pytest.raises(AttributionDriftError, match=r"for 4 of 4 probe examples \[0, 1, 2, 3\]: the values "
                                                            r"come from the model's outputs"):
                fit_net(tmp_path, monitor, model=model, max_epochs=3)
            return
        t, _ = fit_net(tmp_path, monitor, model=model, max_epochs=3)
    breaches = [m for m in monitor_messages(caught) if "NaN or infinite" in m]
    assert breaches and all("the model's outputs" in m for m in breaches)
    assert t.current_epoch == (3 if on_breach == "warn" else 1)
    assert monitor.last_metrics["ig/nonfinite_examples"] == 4


def test_infinite_outputs_are_a_breach(tmp_path):
    model = Net("tabular")
    model.poison = inf_all
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=dict(on_breach="raise"))
    with pytest.raises(AttributionDriftError, match="the values come from the model's outputs"):
        fit_net(tmp_path, monitor, "tabular", model=model, max_epochs=1)


@pytest.mark.parametrize(("poison", "at", "examples"), [(nan_gradient_all, None, "4 of 4 probe examples [0, 1, 2, 3]"),
                                                         (nan_gradient_at_zero, 2, "1 of 4 probe examples [2]")])
def test_nonfinite_gradients_with_finite_outputs_are_blamed_on_gradients(tmp_path, poison, at, examples):
    x, y = dataset("tabular")[:4]
    x = x.clone()
    if at is not None:
        x[at, 0] = 0.0
    model = Net("tabular")
    model.poison = poison
    monitor = IntegratedGradientsMonitor(probe=(x, y), n_steps=4, alarm=dict(on_breach="raise"))
    with pytest.raises(AttributionDriftError) as raised:
        fit_net(tmp_path, monitor, "tabular", model=model, max_epochs=1)
    message = str(raised.value)
    assert examples in message and "the values come from the model's gradients" in message
    assert "model's outputs" not in message and model.steps > 0


def test_nan_in_the_probe_taken_from_the_data_is_blamed_on_the_probe(tmp_path):
    x, y = dataset("tabular")[:8]
    x = x.clone()
    x[1, 3] = NAN
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=dict(on_breach="warn"))
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, "tabular", val=TensorDataset(x, y), max_epochs=2,
                   logger=TensorBoardLogger(tmp_path, name="tb"))
    breaches = [m for m in monitor_messages(caught) if "NaN or infinite" in m]
    assert breaches and all("1 of 4 probe examples [1]: the values come from the probe inputs" in m for m in breaches)
    assert not write_failures(caught) and t.current_epoch == 2
    assert "ig/drift" in monitor.last_metrics and math.isfinite(monitor.last_metrics["ig/drift"])


def test_faults_of_several_sources_in_one_check_are_each_named(tmp_path):
    x, y = dataset("tabular")[:6]
    x = x.clone()
    x[1, 3] = math.inf  # probe input
    x[2, 0] = 1000.0  # marked: NaN outputs
    x[4, 0] = 0.0  # NaN gradient only
    model = Net("tabular")
    model.poison = lambda m, inputs, out: nan_gradient_at_zero(m, inputs, nan_marked(m, inputs, out))
    monitor = IntegratedGradientsMonitor(probe=5, n_steps=4, alarm=dict(on_breach="raise"))
    with pytest.raises(AttributionDriftError) as raised:
        make_trainer(tmp_path, [monitor]).validate(model, DataLoader(TensorDataset(x, y), batch_size=8), verbose=False)
    message = str(raised.value)
    assert "for 1 of 5 probe examples [1]: the values come from the probe inputs" in message
    assert "for 1 of 5 probe examples [2]: the values come from the model's outputs" in message
    assert "for 1 of 5 probe examples [4]: the values come from the model's gradients" in message


KIND_KW = {  # images from zeros: the marker (a feature of 1000) would be the white of baseline="auto"
    "image": dict(baseline=None, display=dict(class_names=["a", "b", "c", "d"])),
    "tabular": dict(display=dict(feature_names=list("vwxyz"), class_names=["a", "b", "c", "d"])),
    "text": dict(layer="embedding",
                 display=dict(vocabulary=[f"t{i}" for i in range(10)], class_names=["a", "b", "c", "d"])),
}
KIND_TAG = {"image": "ig/attribution_maps", "tabular": "ig/feature_attributions/probe_mean",
            "text": "ig/token_attributions"}


def inf_marked(module, x, out):
    return torch.where(marked(x)[:, None], -math.inf, out)


@pytest.mark.parametrize("which", ["one", "all", "inf_one"])
@pytest.mark.parametrize("kind", ["image", "tabular", "text"])
def test_nan_outputs_never_break_pictures_rules_or_drift(tmp_path, kind, which):
    x, y = probe_with_marker(kind)
    model = Net(kind)
    model.poison = {"one": nan_marked, "all": nan_all, "inf_one": inf_marked}[which]
    monitor = IntegratedGradientsMonitor(probe=(x, y), n_steps=4, **KIND_KW[kind], alarm=dict(threshold=10.0))
    logger = TensorBoardLogger(tmp_path, name="tb")
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, kind, model=model, max_epochs=2, logger=logger)
    assert not write_failures(caught), write_failures(caught)
    expected = "4 of 4 probe examples [0, 1, 2, 3]" if which == "all" else "1 of 4 probe examples [1]"
    breaches = [m for m in monitor_messages(caught) if "NaN or infinite" in m]
    assert len(breaches) == 2 and all(expected in m and "the model's outputs" in m for m in breaches)
    assert t.current_epoch == 2 and monitor.checks == 2
    tags = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload().Tags()["images"]
    if which != "all":  # the finite examples are drawn and compared as usual
        assert KIND_TAG[kind] in tags
        assert math.isfinite(monitor.last_metrics["ig/drift"])
        assert math.isfinite(monitor.last_metrics["ig/completeness_error"])


@pytest.mark.parametrize("reference", ["previous", "first"])
def test_a_nonfinite_first_check_is_never_a_reference_and_later_checks_work(tmp_path, reference):
    model = Net()
    model.poison = nan_at_first_epoch
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=dict(threshold=0.0, reference=reference))
    snaps = Snapshots(monitor)
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, model=model, max_epochs=3, callbacks=[snaps],
                   logger=TensorBoardLogger(tmp_path, name="tb"))
    assert not write_failures(caught)
    messages = monitor_messages(caught)
    assert any("at epoch 0 for 4 of 4 probe examples" in m for m in messages)
    assert snaps.metrics[0]["ig/nonfinite_examples"] == 4 and "ig/drift" not in snaps.metrics[0]
    assert snaps.metrics[1]["ig/nonfinite_examples"] == 0 and "ig/drift" not in snaps.metrics[1]  # nothing to compare
    assert math.isfinite(snaps.metrics[2]["ig/drift"]) and snaps.metrics[2]["ig/drift"] > 0
    assert any("alarm.threshold=0 at epoch 2" in m for m in messages)  # the threshold fires again
    assert not any("alarm.threshold=0 at epoch 1" in m for m in messages)
    assert torch.isfinite(snaps.first[2]).all() and torch.equal(snaps.first[2], snaps.previous[1])
    assert torch.isfinite(snaps.scales[1]).all() and t.current_epoch == 3


def test_one_nonfinite_example_gets_its_reference_at_the_next_finite_check(tmp_path):
    x, y = probe_with_marker("image")
    model = Net()
    model.poison = nan_marked_at_first_epoch
    monitor = IntegratedGradientsMonitor(probe=(x, y), n_steps=4, baseline=None, alarm=dict(reference="first"))
    snaps = Snapshots(monitor)
    with caught_warnings():
        fit_net(tmp_path, monitor, model=model, max_epochs=3, callbacks=[snaps])
    first0, first1 = snaps.first[0], snaps.first[1]
    assert torch.isnan(first0[1]).all() and torch.isfinite(first0[[0, 2, 3]]).all()
    assert torch.equal(first1[[0, 2, 3]], first0[[0, 2, 3]])  # kept from the first check
    assert torch.equal(first1[1], snaps.previous[1][1])  # the bad example's reference is its first finite check
    assert math.isfinite(snaps.metrics[0]["ig/completeness_error"]) and "ig/drift" not in snaps.metrics[0]
    assert all(math.isfinite(m["ig/drift"]) for m in snaps.metrics[1:])
    assert torch.isnan(snaps.scales[0][1]) and torch.isfinite(snaps.scales[1]).all()


def nan_at_second_epoch(module, x, out):
    return out * NAN if module.current_epoch == 1 else out


def test_a_nonfinite_check_between_finite_ones_is_skipped_as_previous_reference(tmp_path):
    model = Net()
    model.poison = nan_at_second_epoch
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=dict(reference="previous", on_breach="warn"))
    snaps = Snapshots(monitor)
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, model=model, max_epochs=3, callbacks=[snaps])
    assert any("at epoch 1 for 4 of 4 probe examples" in m for m in monitor_messages(caught))
    assert torch.equal(snaps.previous[1], snaps.previous[0])  # the NaN check replaced no reference
    assert "ig/drift" not in snaps.metrics[1] and math.isfinite(snaps.metrics[2]["ig/drift"])
    assert t.current_epoch == 3


@pytest.mark.parametrize(("poison", "source"), [(nan_all, "the model's outputs"),
                                                 (nan_gradient_all, "the model's gradients")])
def test_nonfinite_values_with_auto_steps_are_a_breach_not_a_crash(tmp_path, poison, source):
    torch.manual_seed(0)
    model = Net("tabular")
    model.poison = poison
    monitor = IntegratedGradientsMonitor(probe=4, n_steps="auto", integration=dict(max_steps=16),
                                         alarm=dict(on_breach="raise"))
    with pytest.raises(AttributionDriftError, match=f"4 of 4 probe examples \\[0, 1, 2, 3\\]: the values come from "
                                                    f"{source}"):
        make_trainer(tmp_path, [monitor]).validate(model, data_loaders("tabular")[1], verbose=False)


def test_region_mass_and_completeness_stay_finite_with_one_nonfinite_example(tmp_path):
    x, y = probe_with_marker("image")
    torch.manual_seed(0)
    model = Net()
    model.poison = nan_marked
    region = torch.zeros(1, 8, 8, dtype=torch.bool)
    region[:, :4] = True
    monitor = IntegratedGradientsMonitor(probe=(x, y), n_steps=4, baseline=None,
                                         alarm=dict(region=region, region_threshold=1.0, completeness_threshold=10.0,
                                                    metric="spearman"))
    with caught_warnings() as caught:
        make_trainer(tmp_path, [monitor]).validate(model, data_loaders()[1], verbose=False)
        make_trainer(tmp_path, [monitor]).validate(model, data_loaders()[1], verbose=False)
    metrics = monitor.last_metrics
    for name in ("ig/region_mass", "ig/completeness_error", "ig/completeness_error_max", "ig/drift"):
        assert math.isfinite(metrics[name]), name
    assert metrics["ig/nonfinite_examples"] == 1
    assert [m for m in monitor_messages(caught) if "NaN" in m][0].count("probe examples [1]") == 1


@pytest.mark.parametrize("case", ["plain", "breaching_monitor", "nan_model"])
def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path, case):
    def run(with_monitor):
        torch.manual_seed(0)
        model = Net()
        if case == "nan_model":
            model.poison = nan_all
        alarm = dict(threshold=0.0 if case != "plain" else None, on_breach="warn")
        monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=alarm) if with_monitor else None
        with caught_warnings():
            t, _ = fit_net(tmp_path / str(with_monitor), monitor, model=model, max_epochs=2)
        return model.state_dict(), torch.get_rng_state(), monitor

    plain, rng_plain, _ = run(False)
    watched, rng_watched, monitor = run(True)
    assert monitor.checks == 2 and torch.equal(rng_plain, rng_watched)
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key


# --- exceptions from the model during a check ------------------------------------------------------------


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("model exploded in a check (backward)")


class ExplodesInCheck(Net):
    """Raises in an IG check (the first layer's output needs gradients), after drawing from every random stream."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def forward(self, x):
        h = self.net[0](x)
        if not self.training and h.requires_grad:
            torch.rand(3)
            np.random.rand(3)
            random.random()
            if self.where == "forward":
                raise RuntimeError("model exploded in a check (forward)")
            h = FailingBackward.apply(h)
        return self.net[1:](h)


class StateBeforeCheck(Callback):
    """Placed before the monitor: what the model looked like when the check began."""

    def on_validation_epoch_end(self, trainer, pl_module):
        self.modes = [m.training for m in pl_module.modules()]
        self.flags = [p.requires_grad for p in pl_module.parameters()]
        self.rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        self.hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                      for m in pl_module.modules()]
        self.params = copy.deepcopy(pl_module.state_dict())


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("layer", [None, "net.0"])
def test_an_exception_in_the_model_during_a_check_propagates_and_leaves_the_model_alone(tmp_path, layer, where):
    torch.manual_seed(0)
    model = ExplodesInCheck(where)
    model.net[0].bias.requires_grad_(False)  # a flag the check must not turn back on
    model.net[2].train()  # a submodule whose own mode must come back
    before = StateBeforeCheck()
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, layer=layer)
    with pytest.raises(RuntimeError, match=f"model exploded in a check \\({where}\\)"):
        fit_net(tmp_path, monitor, model=model, max_epochs=1, limit_train_batches=1, before=[before])
    assert model.steps == 1  # the start check passed; the epoch-end check raised
    assert [m.training for m in model.modules()] == before.modes
    assert [p.requires_grad for p in model.parameters()] == before.flags and before.flags.count(False) == 1
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()] == before.hooks
    assert torch.equal(torch.get_rng_state(), before.rng[0])
    assert np.array_equal(np.random.get_state()[1], before.rng[1]) and random.getstate() == before.rng[2]
    assert all(torch.equal(v, before.params[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


class StateAtStart(StateBeforeCheck):
    def on_train_start(self, trainer, pl_module):
        self.on_validation_epoch_end(trainer, pl_module)


def test_an_exception_in_the_start_check_propagates_and_leaves_the_model_alone(tmp_path):
    torch.manual_seed(0)
    model = RaisesInEval()
    model.net[0].bias.requires_grad_(False)
    before = StateAtStart()
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, layer="net.0")
    with pytest.raises(RuntimeError, match="boom in eval"):
        fit_net(tmp_path, monitor, model=model, max_epochs=1, before=[before])
    assert model.steps == 0 and before.modes.count(True) == len(before.modes)  # the model was training
    assert [m.training for m in model.modules()] == before.modes
    assert [p.requires_grad for p in model.parameters()] == before.flags
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()] == before.hooks
    assert torch.equal(torch.get_rng_state(), before.rng[0])


# --- I/O faults: one warning, training goes on --------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("target", "what"),
    [
        ((SummaryWriter, "add_histogram"), "TensorBoard pictures"),
        ((SummaryWriter, "add_text"), "TensorBoard pictures"),
        ((record_module, "add_png"), "TensorBoard pictures"),
        ((report_module, "open"), "the rules file"),
    ],
)
def test_a_full_disk_gives_one_warning_and_training_goes_on(tmp_path, monkeypatch, target, what):
    monkeypatch.setattr(*target, enospc, raising=False)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    logger = TensorBoardLogger(tmp_path, name="tb")
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, max_epochs=3, logger=logger)
    failures = write_failures(caught)
    assert len(failures) == 1 and f"could not write {what} (OSError" in failures[0] and "No space left" in failures[0]
    assert t.current_epoch == 3 and monitor.checks == 3 and "ig/completeness_error" in t.callback_metrics


def test_a_logger_error_gives_one_warning_and_training_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the logger broke")

    monkeypatch.setattr(SummaryWriter, "add_histogram", broken)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, alarm=dict(on_breach="raise"))
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, max_epochs=2, logger=TensorBoardLogger(tmp_path, name="tb"))
    failures = write_failures(caught)
    assert len(failures) == 1 and "RuntimeError: the logger broke" in failures[0] and t.current_epoch == 2


class RemoveLogDir(Callback):
    """Before the second check: removes the logger's directory (the event file stays open, unlinked)."""

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            for callback in trainer.callbacks:  # the first check's files are written (on the worker) before
                if getattr(callback, "_reporter", None) is not None:
                    callback._reporter.flush()
            shutil.rmtree(trainer.logger.log_dir)


def test_a_removed_log_directory_never_ends_the_run(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    logger = TensorBoardLogger(tmp_path, name="tb")
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, max_epochs=3, logger=logger, callbacks=[RemoveLogDir()])
    assert t.current_epoch == 3 and monitor.checks == 3 and not write_failures(caught)
    # made again: the rules of the two later checks are written
    assert len(open(os.path.join(logger.log_dir, "ig_rules.jsonl")).read().splitlines()) == 2


def test_a_directory_where_the_rules_file_should_be_gives_one_warning(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    logger = TensorBoardLogger(tmp_path, name="tb")
    os.makedirs(os.path.join(logger.log_dir, "ig_rules.jsonl"))
    with caught_warnings() as caught:
        t, _ = fit_net(tmp_path, monitor, max_epochs=2, logger=logger)
    failures = write_failures(caught)
    assert len(failures) == 1 and "could not write the rules file (IsADirectoryError" in failures[0]
    assert t.current_epoch == 2 and "ig/attribution_maps" in EventAccumulator(
        logger.log_dir, size_guidance={"images": 0}).Reload().Tags()["images"]


def test_one_check_logs_scalars_pictures_histograms_and_rules_at_one_step(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, display=dict(class_names=["a", "b", "c", "d"]))
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit_net(tmp_path, monitor, max_epochs=3, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0,
                                                          "scalars": 0}).Reload()
    scalars = [e.step for e in acc.Scalars("ig/completeness_error")]
    images = [e.step for e in acc.Images("ig/attribution_maps")]
    histograms = [e.step for e in acc.Histograms("ig/histograms/attributions")]
    rules_tag = next(tag for tag in acc.Tags()["tensors"] if tag.startswith("ig/rules"))
    rules = [e.step for e in acc.Tensors(rules_tag)]
    assert len(scalars) == 3 and len(set(scalars)) == 3
    assert scalars == images == histograms == rules


# --- DDP: 2 gloo processes ----------------------------------------------------------------------------------

DDP_TIMEOUT = 240


class WorkerRun:
    """``tests/fault_worker.py MODE OUT`` started now, in a process group of its own (rank 1 joins it)."""

    def __init__(self, mode: str, out) -> None:
        self.mode, self.out, self.started = mode, out, time.monotonic()
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        self.log = open(out / "output.txt", "w")
        self.proc = subprocess.Popen([sys.executable, WORKER, mode, str(out)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=os.path.dirname(WORKER),
                                     start_new_session=True)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def finish(self) -> tuple[int, str, list[dict]]:
        """Exit status, output and each rank's results, once every process of the run has ended; a rank still
        running after ``DDP_TIMEOUT`` seconds (a hang) fails the test."""
        while time.monotonic() - self.started < DDP_TIMEOUT:
            if self.proc.poll() is not None and not self._group_alive():
                break
            time.sleep(0.2)
        else:
            if self._group_alive():
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"DDP run {self.mode!r}: a rank was still running after {DDP_TIMEOUT} s (hung)")
        self.log.close()
        output = (self.out / "output.txt").read_text()
        ranks = [torch.load(self.out / f"{self.mode}_rank{r}.pt", weights_only=False) for r in (0, 1)]
        return self.proc.returncode, output, ranks


@pytest.fixture(scope="module", autouse=True)
def ddp_runs(request, tmp_path_factory):
    """Both DDP runs start with this module and run beside the single-process tests (each run keeps only one
    core busy while its ranks start one after the other); the DDP tests below collect them."""
    wanted = any("ddp" in item.name for item in request.session.items if item.module is request.module)
    runs = {mode: WorkerRun(mode, tmp_path_factory.mktemp(mode)) for mode in ("write_fails_then_stop", "nan_raise")} \
        if wanted else {}
    results = {}

    def get(mode):
        if mode not in results:
            results[mode] = runs[mode].finish()
        return results[mode]

    yield get
    for run in runs.values():  # a run no test collected (deselected, or a failure before): end it
        if run.proc.poll() is None or run._group_alive():
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        run.log.close()


def test_ddp_rank_zero_write_failures_do_not_take_the_ranks_down(ddp_runs):
    # On rank 0 every picture and rules-file write fails (ENOSPC); NaN outputs from epoch 1 with on_breach="stop".
    returncode, output, (rank0, rank1) = ddp_runs("write_fails_then_stop")
    assert returncode == 0, output[-3000:]
    assert rank0["checks"] == rank1["checks"] == 2  # both ranks went on to the second check
    failures = rank0["failures"]
    assert len(failures) == 2 and all("No space left on device" in f for f in failures)
    assert any("could not write the rules file" in f for f in failures)
    assert any("could not write TensorBoard pictures" in f for f in failures)
    assert rank1["failures"] == []


def test_ddp_nan_breach_with_stop_stops_every_rank_at_the_same_epoch(ddp_runs):
    returncode, output, ranks = ddp_runs("write_fails_then_stop")
    assert returncode == 0, output[-3000:]
    assert [r["epoch"] for r in ranks] == [2, 2]  # NaN at the check of epoch 1: every rank stops after it
    assert all("error" not in r for r in ranks)


def test_ddp_nan_breach_with_raise_raises_on_every_rank_without_hanging(ddp_runs):
    returncode, output, ranks = ddp_runs("nan_raise")
    assert returncode != 0 and "AttributionDriftError" in output
    for r in ranks:
        assert r["error"] == "AttributionDriftError" and r["epoch"] == 0 and r["checks"] == 1
        assert "for 5 of 5 probe examples [0, 1, 2, 3, 4]: the values come from the model's outputs" in r["message"]
