"""preflight: the checks before training, on small fakes (no Trainer, no model)."""

from types import SimpleNamespace

import pytest
import torch
from conftest import caught_warnings, monitor_messages
from torch.utils.data import DataLoader, TensorDataset

from ig_lightning.monitor.config import MonitorConfig
from ig_lightning.monitor.explainer import Explainer
from ig_lightning.monitor.preflight import (
    batch_size_of,
    decide_kind,
    points_per_forward,
    validate_outputs,
    warn_about_baseline,
    warn_about_coverage,
)
from ig_lightning.monitor.probe import ModelInputs, Probe


def probe_of(x, labels=None, classes=None):
    return Probe(ModelInputs((x,)), labels, classes=classes)


def explainer_of(probe):
    return Explainer(probe.inputs, None, None, None, None, None)


@pytest.fixture
def caught():
    with caught_warnings() as record:
        yield record


IMAGES = torch.randn(4, 1, 8, 8)
TABLE = torch.randn(4, 5)
LABELS = torch.tensor([0, 1, 2, 0])
LOGITS = torch.randn(4, 3)


# --- validate_outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("x", "kind"), [(IMAGES, "image"), (TABLE, "tabular")])
def test_validate_outputs_returns_the_kind(x, kind, caught):
    probe = probe_of(x, LABELS)
    assert validate_outputs(MonitorConfig(), probe, explainer_of(probe), LOGITS, []) == kind
    assert monitor_messages(caught) == []


def test_class_names_of_another_length_are_named():
    probe = probe_of(TABLE, LABELS)
    with pytest.raises(ValueError, match="`display.class_names` has 2 names but the model has 3 outputs"):
        validate_outputs(MonitorConfig(display=dict(class_names=["a", "b"])), probe, explainer_of(probe), LOGITS, [])


def test_feature_names_of_another_length_are_named():
    probe = probe_of(TABLE, LABELS)
    with pytest.raises(ValueError, match="`display.feature_names` has 2 names but the inputs have 5 features"):
        validate_outputs(MonitorConfig(display=dict(feature_names=["a", "b"])), probe, explainer_of(probe), LOGITS, [])


@pytest.mark.parametrize("transform", ["softmax", "log_softmax"])
@pytest.mark.parametrize("outputs", [torch.randn(4), torch.randn(4, 1)])
def test_softmax_over_one_output_is_named(transform, outputs):
    probe = probe_of(TABLE)
    with pytest.raises(ValueError, match=f"`output_transform`='{transform}' over a model with one output"):
        validate_outputs(MonitorConfig(output_transform=transform), probe, explainer_of(probe), outputs, [])


def test_kind_image_on_a_table_is_named():
    probe = probe_of(TABLE, LABELS)
    with pytest.raises(ValueError, match=r"`display.kind`='image' needs attributions shaped like the input image "
                                         r"\(5,\)"):
        validate_outputs(MonitorConfig(display=dict(kind="image")), probe, explainer_of(probe), LOGITS, [])


def test_a_region_that_does_not_broadcast_is_named():
    probe = probe_of(IMAGES, LABELS)
    config = MonitorConfig(alarm=dict(region=torch.ones(3, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"`alarm.region` of shape \(3, 3\) does not broadcast to one example's scores "
                                         r"\(1, 8, 8\)"):
        validate_outputs(config, probe, explainer_of(probe), LOGITS, [])
    fits = MonitorConfig(alarm=dict(region=torch.ones(8, 8, dtype=torch.bool)))
    assert validate_outputs(fits, probe, explainer_of(probe), LOGITS, []) == "image"


def test_labels_out_of_range_are_named():
    probe = probe_of(TABLE, torch.tensor([0, 1, 5, 0]))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\].*got \[5\]"):
        validate_outputs(MonitorConfig(), probe, explainer_of(probe), LOGITS, [])


def test_float_labels_with_auto_target_warn(caught):
    probe = probe_of(TABLE, torch.rand(4))
    validate_outputs(MonitorConfig(), probe, explainer_of(probe), LOGITS, [])
    (message,) = monitor_messages(caught)
    assert "are not class indices, so target='auto' explains the prediction" in message


def test_topk_jaccard_over_too_few_features_warns(caught):
    probe = probe_of(TABLE, LABELS)
    validate_outputs(MonitorConfig(alarm=dict(metric="topk_jaccard", top_k=5), rule_extraction=dict(top_k=5),
                                   faithfulness=dict(top_k=5)), probe, explainer_of(probe), LOGITS, [])
    (message,) = monitor_messages(caught)
    assert "top_k=5 features of each example, but the probe has 5: it is always 0" in message


# --- decide_kind -----------------------------------------------------------------------------------------


def test_decide_kind():
    ids = torch.ones(2, 6, dtype=torch.long)
    assert decide_kind("auto", IMAGES, (1, 8, 8), None) == "image"
    assert decide_kind("auto", TABLE, (5,), None) == "tabular"
    assert decide_kind("auto", ids, (6,), "embedding") == "text"
    assert decide_kind("tabular", IMAGES, (1, 8, 8), None) == "tabular"
    assert decide_kind("auto", IMAGES, (4, 16), "patches") == "tabular"  # patches: not an image of the input
    with pytest.raises(ValueError, match="`display.kind`='image' needs attributions shaped like the input image"):
        decide_kind("image", IMAGES, (4, 16), "patches")
    with pytest.raises(ValueError, match="`display.kind`='text' needs integer token ids attributed at an embedding"):
        decide_kind("text", TABLE, (5,), None)
    with pytest.raises(ValueError, match="`display.kind`='text'"):
        decide_kind("text", ids, (6,), None)


# --- warn_about_coverage ---------------------------------------------------------------------------------


def test_coverage_warns_naming_the_missing_classes(caught):
    probe = probe_of(TABLE, LABELS, classes=[0, 1, 2, 3, 4])
    warn_about_coverage(probe, 4)
    (message,) = monitor_messages(caught)
    assert "holds no example of validation classes [3, 4]" in message
    assert "raise `probe` (it is 4) to at least the number of classes (5)" in message


def test_coverage_warns_when_the_data_is_smaller_than_the_probe(caught):
    probe = probe_of(TABLE, LABELS, classes=[0, 1, 2])
    warn_about_coverage(probe, 10)
    assert monitor_messages(caught) == ["IntegratedGradientsMonitor: `probe`=10 but the validation data has 4 examples; "
                                "the probe holds those 4"]


def test_full_coverage_says_nothing(caught):
    warn_about_coverage(probe_of(TABLE, LABELS, classes=[0, 1, 2]), 4)
    warn_about_coverage(probe_of(TABLE, LABELS, classes=None), 4)  # classes unknown: nothing to say
    assert monitor_messages(caught) == []


# --- warn_about_baseline ---------------------------------------------------------------------------------


def test_a_confident_baseline_warns():
    probe = probe_of(TABLE, LABELS)
    outputs = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    base = torch.tensor([[0.0, 9.0, 0.0]]).expand(4, 3)
    with pytest.warns(UserWarning, match="predicts the `baseline` as class 1 with confidence 1.00: it is not neutral"):
        warn_about_baseline(MonitorConfig(), probe, outputs, base)


def test_a_flat_delta_warns(caught):
    probe = probe_of(TABLE, LABELS)
    outputs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    base = outputs.clone()
    base[0, 0] = -2.0  # one example of 4 differs: 3 flat
    warn_about_baseline(MonitorConfig(), probe, outputs, base)
    (message,) = monitor_messages(caught)
    assert "for 3 of 4 probe examples the explained output barely differs between the input and the `baseline`" \
        in message


def test_a_neutral_baseline_says_nothing(caught):
    probe = probe_of(TABLE, LABELS)
    outputs = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    warn_about_baseline(MonitorConfig(), probe, outputs, torch.zeros(4, 3))
    assert monitor_messages(caught) == []


def test_one_output_models_only_get_the_flat_check(caught):
    probe = probe_of(TABLE)
    warn_about_baseline(MonitorConfig(), probe, torch.ones(4), torch.ones(4))
    (message,) = monitor_messages(caught)
    assert "for 4 of 4 probe examples" in message


# --- batch sizes -----------------------------------------------------------------------------------------


def test_batch_size_of():
    data = TensorDataset(torch.zeros(10, 2))
    loader = DataLoader(data, batch_size=4)
    assert batch_size_of(loader) == 4
    assert batch_size_of([loader, DataLoader(data, batch_size=2)]) == 4
    assert batch_size_of({"a": DataLoader(data, batch_size=3)}) == 3
    assert batch_size_of(DataLoader(data, batch_size=None)) is None
    assert batch_size_of(SimpleNamespace(batch_size=None, batch_sampler=SimpleNamespace(batch_size=6))) == 6
    assert batch_size_of(None) is None and batch_size_of([]) is None and batch_size_of({}) is None


def fake_trainer(fn, train=None, val=None):
    return SimpleNamespace(state=SimpleNamespace(fn=fn), val_dataloaders=val,
                           fit_loop=SimpleNamespace(_combined_loader=SimpleNamespace(iterables=train)))


def test_points_per_forward():
    data = TensorDataset(torch.zeros(10, 2))
    train, val = DataLoader(data, batch_size=5), DataLoader(data, batch_size=3)
    assert points_per_forward(fake_trainer("fit", train, val), 7, 4) == 7  # internal_batch_size wins
    assert points_per_forward(fake_trainer("fit", train, val), None, 4) == 2  # half the training batch
    assert points_per_forward(fake_trainer("validate", train, val), None, 4) == 1  # validation's under validate
    assert points_per_forward(fake_trainer("fit", None, val), None, 4) == 1
    assert points_per_forward(fake_trainer("fit", None, None), None, 4) == 2  # the probe's size
    one = DataLoader(data, batch_size=1)
    assert points_per_forward(fake_trainer("fit", one, val), None, 4) == 1  # never 0

