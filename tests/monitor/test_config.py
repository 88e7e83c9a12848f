"""MonitorConfig: every argument of IntegratedGradientsMonitor is checked once, at construction, naming it.

The one table of constructor errors: each row must raise the same error from ``IntegratedGradientsMonitor(**kw)``
and from ``MonitorConfig(**kw)`` (the monitor validates through the config). A setting inside a settings object is
named by its full path (``alarm.factor``).
"""

import dataclasses
import inspect
import math

import pytest
import torch

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.monitor.config import MonitorConfig
from ig_lightning.monitor.moved import MOVED
from ig_lightning.monitor.settings import (
    GROUPS,

    Alarm,
    Display,
    Faithfulness,
    Integration,
    RuleExtraction,
)

NAN = float("nan")

BAD_ARGUMENTS = [
    # probe, target, steps, method
    ({"probe": 0}, ValueError, "`probe` must be >= 1, got 0"),
    ({"probe": "16"}, TypeError, "`probe`"),
    ({"probe": True}, TypeError, "`probe` must be an int"),
    ({"probe": (torch.zeros(3, 2), torch.zeros(2))}, ValueError, "`probe` labels"),
    ({"probe": torch.tensor([[0.0, NAN]])}, ValueError, "`probe` input 0 holds NaN or infinite values"),
    ({"inputs": {"probe_selection": "random"}}, ValueError, "`inputs.probe_selection`.*'random'"),
    ({"target": "labels"}, ValueError, "`target` can be .*'labels'"),
    ({"target": -1}, ValueError, "`target` must be >= 0"),
    ({"target": True}, TypeError, "`target` must be an int"),
    ({"target": 1.5}, TypeError, "`target` must be an int"),
    ({"n_steps": 0}, ValueError, "`n_steps` must be >= 1"),
    ({"n_steps": "fast"}, ValueError, "`n_steps`.*'fast'"),
    ({"n_steps": True}, TypeError, "`n_steps`"),
    ({"n_steps": "auto", "integration": {"max_steps": 2}}, ValueError,
     "`integration.max_steps` must be >= 3 for n_steps='auto', got 2"),
    ({"integration": {"method": "simpson"}}, ValueError, "`integration.method`"),
    ({"n_steps": 32, "alarm": {"attribution_error_threshold": 0.1}}, ValueError,
     "`alarm.attribution_error_threshold` needs n_steps='auto'"),
    ({"n_steps": 32, "integration": {"warm_start": True}}, ValueError, "`integration.warm_start=True` needs n_steps"),
    ({"integration": {"max_steps": 0}}, ValueError, "`integration.max_steps` must be >= 1"),
    ({"integration": {"internal_batch_size": 0}}, ValueError, "`integration.internal_batch_size`"),
    ({"integration": {"internal_batch_size": 2.5}}, TypeError, "`integration.internal_batch_size` must be an int"),
    ({"integration": {"autocast": "yes"}}, TypeError, "`integration.autocast`"),
    # what is attributed, and how
    ({"baseline": "black"}, ValueError, "`baseline` as a name must be one of"),
    ({"baseline": NAN}, ValueError, "`baseline` must be finite"),
    ({"baseline": torch.tensor([0.0, math.inf])}, ValueError, "`baseline` must be finite"),
    ({"baseline": (0.0, -math.inf)}, ValueError, r"`baseline\[1\]` must be finite"),
    ({"layer": torch.nn.Linear(1, 1)}, TypeError, "`layer` must be a submodule name"),
    ({"layer": "   "}, ValueError, "`layer` must name a submodule"),
    ({"layer": ""}, ValueError, "`layer` must name a submodule"),
    ({"inputs": {"attribute": [0, 0]}}, ValueError, "`inputs.attribute` names an input twice"),
    ({"inputs": {"attribute": True}}, TypeError, "`inputs.attribute`"),
    ({"output_transform": "softplus"}, ValueError, "`output_transform` can be"),
    ({"output_transform": 3}, TypeError, "`output_transform` must be a name or a callable"),
    ({"inputs": {"unpack": 3}}, TypeError, "`inputs.unpack`"),
    ({"display": {"kind": "audio"}}, ValueError, "`display.kind`"),
    # when and against what
    ({"every_n_epochs": 0}, ValueError, "`every_n_epochs` must be >= 1"),
    ({"integration": {"tolerance": NAN}}, ValueError, "`integration.tolerance` must be a finite number"),
    ({"integration": {"tolerance": math.inf}}, ValueError, "`integration.tolerance` must be a finite number"),
    ({"alarm": {"metric": "l2"}}, ValueError, "`alarm.metric` can be .*'l2'"),
    ({"alarm": {"reference": "best"}}, ValueError, "`alarm.reference`"),
    ({"alarm": {"threshold": -1}}, ValueError, "`alarm.threshold`"),
    ({"alarm": {"threshold": math.inf}}, ValueError, "`alarm.threshold` must be a finite number"),
    ({"alarm": {"threshold": "sometimes"}}, ValueError, "`alarm.threshold` must be a number, 'auto' or None"),
    ({"alarm": {"factor": 1.0}}, ValueError, "`alarm.factor` must be > 1"),
    ({"alarm": {"factor": 0}}, ValueError, "`alarm.factor`"),
    ({"alarm": {"window": 1}}, ValueError, "`alarm.window`"),
    ({"alarm": {"scope": "x"}}, ValueError, "`alarm.scope`.*'x'"),
    ({"alarm": {"completeness_threshold": NAN}}, ValueError, "`alarm.completeness_threshold`"),
    ({"alarm": {"region_threshold": 0.5}}, ValueError, "`alarm.region_threshold` needs a `alarm.region`"),
    ({"alarm": {"region": torch.ones(2, 2, dtype=torch.bool), "region_threshold": NAN}}, ValueError,
     "`alarm.region_threshold`"),
    ({"alarm": {"region": torch.ones(8)}}, TypeError, "`alarm.region`"),
    ({"alarm": {"region": [[1, 0]]}}, TypeError, "`alarm.region`"),
    ({"alarm": {"region": torch.zeros(2, 2, dtype=torch.bool)}}, ValueError,
     "`alarm.region` must select at least one"),
    ({"alarm": {"top_k": 0}}, ValueError, "`alarm.top_k` must be >= 1"),
    # what to do on a breach
    ({"alarm": {"warmup": -1}}, ValueError, "`alarm.warmup`"),
    ({"alarm": {"patience": 0}}, ValueError, "`alarm.patience`"),
    ({"alarm": {"patience_window": 0}}, ValueError, "`alarm.patience_window`"),
    ({"alarm": {"patience": 3, "patience_window": 2}}, ValueError,
     r"`alarm.patience_window` must be >= `alarm.patience` \(3\), got 2"),
    ({"alarm": {"on_breach": "stopp"}}, ValueError, "`alarm.on_breach` can be .*'stopp'"),
    ({"faithfulness": {"deletion": 1}}, TypeError, "`faithfulness.deletion`"),
    ({"faithfulness": {"top_k": 0}}, ValueError, "`faithfulness.top_k` must be >= 1"),
    ({"faithfulness": {"curves": "yes"}}, TypeError, "`faithfulness.curves`"),
    ({"display": {"background": "yes"}}, TypeError, "`display.background`"),
    ({"max_overhead": 0.0}, ValueError, "`max_overhead`"),
    ({"max_overhead": 1.0}, ValueError, "`max_overhead` is the monitor's largest share"),
    ({"max_overhead": "5%"}, TypeError, "`max_overhead`"),
    ({"faithfulness": {"curve_points": 0}}, ValueError, "`faithfulness.curve_points` must be >= 1"),
    ({"faithfulness": {"fill": "zeros"}}, ValueError, "`faithfulness.fill`"),
    ({"faithfulness": {"sanity_every_n_checks": -1}}, ValueError, "`faithfulness.sanity_every_n_checks` must be >= 0"),
    ({"faithfulness": {"sanity_steps": 0}}, ValueError, "`faithfulness.sanity_steps` must be >= 1"),
    ({"faithfulness": {"sanity_tolerance": 0}}, ValueError, "`faithfulness.sanity_tolerance`"),
    ({"faithfulness": {"sanity_warn_above": 1.5}}, ValueError, "`faithfulness.sanity_warn_above` must be a share"),
    # baselines and noise
    ({"baseline": "blurred"}, ValueError, "`baseline` as a name must be one of"),
    ({"baseline": []}, ValueError, "`baseline` as a list holds several baselines"),
    ({"baseline": [0.0, float("nan")]}, ValueError, r"`baseline\[1\]` must be finite"),
    ({"baseline": ("blur",)}, TypeError, r"`baseline\[0\]` must be None, a number or a Tensor, got the name"),
    ({"integration": {"baseline_samples": 0}}, ValueError, "`integration.baseline_samples` must be >= 1"),
    ({"integration": {"baseline_sigma": 0.0}}, ValueError, "`integration.baseline_sigma`"),
    ({"integration": {"noise_samples": -1}}, ValueError, "`integration.noise_samples` must be >= 0"),
    ({"integration": {"noise_sigma": -0.1}}, ValueError, "`integration.noise_sigma`"),
    ({"integration": {"noise_type": "var"}}, ValueError, "`integration.noise_type`"),
    ({"integration": {"seed": -1}}, ValueError, "`integration.seed` must be >= 0"),
    ({"integration": {"seed": 1.5}}, TypeError, "`integration.seed`"),
    ({"baseline": "uniform", "integration": {"warm_start": True}}, ValueError, "averages several paths"),
    ({"integration": {"noise_samples": 2, "warm_start": True}}, ValueError, "averages several paths"),
    # pictures and names
    ({"display": {"max_images": True}}, TypeError, "`display.max_images` must be an int"),
    ({"rule_extraction": {"top_k": 0}}, ValueError, "`rule_extraction.top_k` must be >= 1"),
    ({"rule_extraction": {"test": "yes"}}, TypeError, "`rule_extraction.test` must be a bool"),
    ({"rule_extraction": {"rule_set": 0}}, ValueError, "`rule_extraction.rule_set` must be >= 1"),
    ({"rule_extraction": {"candidates": 0}}, ValueError, "`rule_extraction.candidates` must be >= 1"),
    ({"rule_extraction": {"decisive": 1.5}}, TypeError, "`rule_extraction.decisive` must be an int"),
    ({"rule_extraction": {"attribution_sample": 0}}, ValueError, "`rule_extraction.attribution_sample` must be >= 1"),
    ({"rule_extraction": {"max_ngram": 0}}, ValueError, "`rule_extraction.max_ngram` must be >= 1"),
    ({"rule_extraction": {"region_size": 0}}, ValueError, "`rule_extraction.region_size` must be >= 1"),
    ({"rule_extraction": {"max_tests": 0}}, ValueError, "`rule_extraction.max_tests` must be >= 1"),
    ({"rule_extraction": {"event_sufficiency": 1.5}}, ValueError,
     r"`rule_extraction.event_sufficiency` must be a share in \[0, 1\], got 1.5"),
    ({"rule_extraction": {"event_rise": NAN}}, ValueError, "`rule_extraction.event_rise` must be a finite number"),
    ({"rule_extraction": {"events_breach": 1}}, TypeError, "`rule_extraction.events_breach` must be a bool"),
    ({"rule_extraction": {"guards": "watermark"}}, TypeError, "`rule_extraction.guards` must be a non-empty list"),
    ({"rule_extraction": {"guards": []}}, TypeError, "`rule_extraction.guards` must be a non-empty list"),
    ({"rule_extraction": {"guards": [1.5]}}, TypeError, "`rule_extraction.guards` entries must be str, int or a bool"),
    ({"rule_extraction": {"guards": [-1]}}, ValueError, "`rule_extraction.guards` feature indices must be >= 0"),
    ({"rule_extraction": {"guards": [torch.zeros(2, 2, dtype=torch.bool)]}}, ValueError,
     "`rule_extraction.guards` masks must be bool Tensors selecting at least one pixel"),
    ({"rule_extraction": {"guard_necessity": -0.1}}, ValueError, "`rule_extraction.guard_necessity`"),
    ({"rule_extraction": {"guard_sufficiency": 2}}, ValueError, "`rule_extraction.guard_sufficiency` must be a share"),
    ({"display": {"log_images": "yes"}}, TypeError, "`display.log_images` must be a bool"),
    ({"display": {"color_headroom": math.inf}}, ValueError, "`display.color_headroom`"),
    ({"display": {"color_headroom": 0}}, ValueError, "`display.color_headroom`"),
    ({"display": {"feature_names": "abc"}}, TypeError, "`display.feature_names` must be a list of names"),
    ({"display": {"class_names": []}}, ValueError, "`display.class_names` must not be empty"),
    ({"display": {"vocabulary": "abc"}}, TypeError, "`display.vocabulary` must be a list of names"),
    # the settings objects themselves
    ({"alarm": {"factr": 3.0}}, TypeError, r"`alarm` has no setting 'factr'; its settings are \['threshold', 'factor'"),
    ({"alarm": 0.5}, TypeError, r"`alarm` must be Alarm\(...\) or a dict of its settings, got float"),
    ({"display": ["kind", "image"]}, TypeError, r"`display` must be Display\(...\) or a dict"),
    ({"integration": Alarm()}, TypeError,
     r"`integration` must be Integration\(...\) or a dict of its settings, got Alarm"),
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
    monitor = IntegratedGradientsMonitor(baseline=[[0.0, 0.5]],
                                         alarm=dict(region=[[True, False], [False, False]], region_threshold=0.5))
    assert monitor.alarm.region.dtype == torch.bool and monitor.alarm.region.shape == (2, 2)
    assert torch.equal(monitor.baseline, torch.tensor([0.0, 0.5]))


def test_auto_steps_with_enough_max_steps_are_accepted():
    config = MonitorConfig(n_steps="auto", integration=dict(max_steps=3))
    assert (config.n_steps, config.integration.max_steps) == ("auto", 3)


def test_the_signature_reads_at_a_glance():
    parameters = inspect.signature(IntegratedGradientsMonitor).parameters
    names = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]  # not **moved (0.1)
    assert len(names) <= 15, names
    assert names[:9] == ["probe", "target", "baseline", "layer", "n_steps", "output_transform", "every_n_epochs",
                         "max_overhead", "name"]
    assert names[9:] == [*GROUPS] and list(parameters)[-1] == "moved"


@pytest.mark.parametrize(("group", "cls"), list(GROUPS.items()))
def test_each_settings_argument_takes_its_object_a_dict_or_none(group, cls):
    fields = dataclasses.fields(cls)
    assert all(f.default is not dataclasses.MISSING for f in fields)  # every field has a default
    assert getattr(IntegratedGradientsMonitor(), group) == cls()
    assert getattr(IntegratedGradientsMonitor(**{group: {}}), group) == cls()
    given = cls()
    assert getattr(IntegratedGradientsMonitor(**{group: given}), group) is given
    assert cls.__doc__ and all(f"{f.name}:" in cls.__doc__ for f in fields)  # each field documented


def test_settings_objects_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Alarm().factor = 2.0


def test_flat_arguments_of_0_1_still_work_with_a_warning_naming_their_new_place():
    with pytest.warns(FutureWarning, match=r"`drift_threshold` -> `alarm.threshold`.*`top_k` -> "
                                           r"`rule_extraction.top_k / alarm.top_k / faithfulness.top_k`"):
        old = IntegratedGradientsMonitor(probe=8, drift_threshold="auto", top_k=5, class_names=["a", "b"],
                                         deletion_check=False, warm_start=True)
    new = IntegratedGradientsMonitor(probe=8, alarm=Alarm(threshold="auto", top_k=5),
                                     rule_extraction=RuleExtraction(top_k=5),
                                     faithfulness=Faithfulness(deletion=False, top_k=5),
                                     display=Display(class_names=["a", "b"]), integration=Integration(warm_start=True))
    assert old.config == new.config
    assert old.state_key == new.state_key


def test_every_flat_argument_of_0_1_has_a_place():
    for old, new in MOVED.items():
        for path in new:
            group, field = path.split(".")
            assert field in {f.name for f in dataclasses.fields(GROUPS[group])}, (old, path)


def test_a_flat_argument_and_its_group_together_are_refused():
    with pytest.raises(ValueError, match=r"`alarm` given together with the flat argument\(s\) \['drift_factor'\]"), \
            pytest.warns(FutureWarning):
        IntegratedGradientsMonitor(drift_factor=3.0, alarm={"threshold": "auto"})


def test_an_unknown_argument_names_the_settings_objects():
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['treshold'\].*'alarm'"):
        IntegratedGradientsMonitor(treshold=0.5)


def test_a_bad_flat_argument_is_named_by_its_new_path():
    with pytest.raises(ValueError, match="`alarm.factor` must be > 1"), pytest.warns(FutureWarning):
        IntegratedGradientsMonitor(drift_factor=0.5)
