"""MonitorConfig: every argument of IntegratedGradientsMonitor is checked once, at construction, naming it.

The one table of constructor errors: each row must raise the same error from ``IntegratedGradientsMonitor(**kw)``
and from ``MonitorConfig(**kw)`` (the monitor validates through the config).
"""

import math

import pytest
import torch

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.monitor.config import MonitorConfig

NAN = float("nan")

BAD_ARGUMENTS = [
    # probe, target, steps, method
    ({"probe": 0}, ValueError, "`probe` must be >= 1, got 0"),
    ({"probe": "16"}, TypeError, "`probe`"),
    ({"probe": True}, TypeError, "`probe` must be an int"),
    ({"probe": (torch.zeros(3, 2), torch.zeros(2))}, ValueError, "`probe` labels"),
    ({"probe": torch.tensor([[0.0, NAN]])}, ValueError, "`probe` input 0 holds NaN or infinite values"),
    ({"probe_selection": "random"}, ValueError, "`probe_selection`.*'random'"),
    ({"target": "labels"}, ValueError, "`target` can be .*'labels'"),
    ({"target": -1}, ValueError, "`target` must be >= 0"),
    ({"target": True}, TypeError, "`target` must be an int"),
    ({"target": 1.5}, TypeError, "`target` must be an int"),
    ({"n_steps": 0}, ValueError, "`n_steps` must be >= 1"),
    ({"n_steps": "fast"}, ValueError, "`n_steps`.*'fast'"),
    ({"n_steps": True}, TypeError, "`n_steps`"),
    ({"n_steps": "auto", "max_steps": 2}, ValueError, "`max_steps` must be >= 3 for n_steps='auto', got 2"),
    ({"method": "simpson"}, ValueError, "`method`"),
    ({"attribution_error_threshold": 0.1, "n_steps": 32}, ValueError,
     "`attribution_error_threshold` needs n_steps='auto'"),
    ({"internal_batch_size": 0}, ValueError, "`internal_batch_size`"),
    ({"internal_batch_size": 2.5}, TypeError, "`internal_batch_size` must be an int"),
    ({"autocast": "yes"}, TypeError, "`autocast`"),
    # what is attributed, and how
    ({"baseline": "black"}, TypeError, "`baseline`"),
    ({"baseline": NAN}, ValueError, "`baseline` must be finite"),
    ({"baseline": torch.tensor([0.0, math.inf])}, ValueError, "`baseline` must be finite"),
    ({"baseline": (0.0, -math.inf)}, ValueError, r"`baseline\[1\]` must be finite"),
    ({"layer": torch.nn.Linear(1, 1)}, TypeError, "`layer` must be a submodule name"),
    ({"layer": "   "}, ValueError, "`layer` must name a submodule"),
    ({"layer": ""}, ValueError, "`layer` must name a submodule"),
    ({"attribute": [0, 0]}, ValueError, "`attribute` names an input twice"),
    ({"attribute": True}, TypeError, "`attribute`"),
    ({"output_transform": "softplus"}, ValueError, "`output_transform` can be"),
    ({"output_transform": 3}, TypeError, "`output_transform` must be a name or a callable"),
    ({"unpack": 3}, TypeError, "`unpack`"),
    ({"kind": "audio"}, ValueError, "`kind`"),
    # when and against what
    ({"every_n_epochs": 0}, ValueError, "`every_n_epochs` must be >= 1"),
    ({"tolerance": NAN}, ValueError, "`tolerance` must be a finite number"),
    ({"tolerance": math.inf}, ValueError, "`tolerance` must be a finite number"),
    ({"drift_metric": "l2"}, ValueError, "`drift_metric` can be .*'l2'"),
    ({"drift_reference": "best"}, ValueError, "`drift_reference`"),
    ({"drift_threshold": -1}, ValueError, "`drift_threshold`"),
    ({"drift_threshold": math.inf}, ValueError, "`drift_threshold` must be a finite number"),
    ({"drift_threshold": "sometimes"}, ValueError, "`drift_threshold` must be a number, 'auto' or None"),
    ({"drift_factor": 1.0}, ValueError, "`drift_factor` must be > 1"),
    ({"drift_factor": 0}, ValueError, "`drift_factor`"),
    ({"drift_window": 1}, ValueError, "`drift_window`"),
    ({"drift_scope": "x"}, ValueError, "`drift_scope`.*'x'"),
    ({"completeness_threshold": NAN}, ValueError, "`completeness_threshold`"),
    ({"region_threshold": 0.5}, ValueError, "`region_threshold` needs a `region`"),
    ({"region": torch.ones(2, 2, dtype=torch.bool), "region_threshold": NAN}, ValueError, "`region_threshold`"),
    ({"region": torch.ones(8)}, TypeError, "`region`"),
    ({"region": [[1, 0]]}, TypeError, "`region`"),
    ({"region": torch.zeros(2, 2, dtype=torch.bool)}, ValueError, "`region` must select at least one"),
    # what to do on a breach
    ({"warmup": -1}, ValueError, "`warmup`"),
    ({"patience": 0}, ValueError, "`patience`"),
    ({"patience_window": 0}, ValueError, "`patience_window`"),
    ({"patience": 3, "patience_window": 2}, ValueError, r"`patience_window` must be >= `patience` \(3\), got 2"),
    ({"on_breach": "stopp"}, ValueError, "`on_breach` can be .*'stopp'"),
    ({"deletion_check": 1}, TypeError, "`deletion_check`"),
    # pictures and names
    ({"max_images": True}, TypeError, "`max_images` must be an int"),
    ({"top_k": 0}, ValueError, "`top_k` must be >= 1"),
    ({"log_images": "yes"}, TypeError, "`log_images` must be a bool"),
    ({"color_headroom": math.inf}, ValueError, "`color_headroom`"),
    ({"color_headroom": 0}, ValueError, "`color_headroom`"),
    ({"feature_names": "abc"}, TypeError, "`feature_names` must be a list of names"),
    ({"class_names": []}, ValueError, "`class_names` must not be empty"),
]


def _id(row) -> str:
    return "-".join(f"{k}={v!r}"[:40] for k, v in row[0].items())


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ARGUMENTS, ids=[_id(r) for r in BAD_ARGUMENTS])
@pytest.mark.parametrize("make", [IntegratedGradientsMonitor, MonitorConfig], ids=["monitor", "config"])
def test_bad_arguments_fail_at_construction_naming_the_argument(make, kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        make(**kwargs)
    assert type(caught.value) is error  # exactly this type (ValueError and TypeError are not interchangeable)


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ARGUMENTS, ids=[_id(r) for r in BAD_ARGUMENTS])
def test_the_monitor_and_the_config_say_the_same(kwargs, error, match):
    with pytest.raises(error) as from_monitor:
        IntegratedGradientsMonitor(**kwargs)
    with pytest.raises(error) as from_config:
        MonitorConfig(**kwargs)
    assert str(from_monitor.value) == str(from_config.value)


def test_region_and_baseline_accept_lists_from_config_files():
    monitor = IntegratedGradientsMonitor(region=[[True, False], [False, False]], region_threshold=0.5,
                                         baseline=[0.0, 0.5])
    assert monitor.region.dtype == torch.bool and monitor.region.shape == (2, 2)
    assert torch.equal(monitor.baseline, torch.tensor([0.0, 0.5]))


def test_auto_steps_with_enough_max_steps_are_accepted():
    config = MonitorConfig(n_steps="auto", max_steps=3)
    assert (config.n_steps, config.max_steps) == ("auto", 3)
