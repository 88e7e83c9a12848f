"""A monitor state saved by the release before the restructuring (commit be96c25) loads into today's monitor.

``tests/data/monitor_state_v0.pt`` was written by that release's ``IntegratedGradientsMonitor(probe=6, n_steps=4)``
after ``trainer(max_epochs=2)`` fitted a seeded ``TinyCNN`` on ``loaders()`` (conftest), with
``torch.save(monitor.state_dict(), ...)``. Its keys: settings, model, probe ({"args", "kwargs"}), probe_labels,
targets, first_scores, previous_scores, scales, rules ({class: [[key, score], ...]}), single_output, checks,
breach_streak.
"""

import warnings
from pathlib import Path

import pytest
import torch
from conftest import TinyCNN, loaders, make_data, trainer

from ig_lightning import Alarm, Display, Faithfulness, IntegratedGradientsMonitor, RuleExtraction
from ig_lightning.monitor.stages import Drift, Pictures

PATH = Path(__file__).resolve().parents[1] / "data" / "monitor_state_v0.pt"


@pytest.fixture
def saved():
    return torch.load(PATH, weights_only=True)


def test_the_fixture_is_in_the_previous_format(saved):
    assert set(saved) == {"settings", "model", "probe", "probe_labels", "targets", "first_scores", "previous_scores",
                          "scales", "rules", "single_output", "checks", "breach_streak"}
    assert saved["settings"] == {"probe": 6, "layer": None, "attribute": None, "target": "auto", "baseline": "None",
                                 "output_transform": None}
    assert saved["checks"] == 2 and saved["breach_streak"] == 0 and saved["single_output"] is False
    assert set(saved["probe"]) == {"args", "kwargs"} and saved["probe"]["kwargs"] == {}


def test_an_old_state_loads_into_todays_monitor(saved):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=4, baseline=None)  # 0.1's default
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.load_state_dict(saved)
    assert [str(w.message) for w in caught if "IntegratedGradientsMonitor" in str(w.message)] == []
    (x,) = saved["probe"]["args"]
    assert x.shape == (6, 1, 8, 8)
    assert torch.equal(monitor.probe.inputs.args[0], x) and monitor.probe.inputs.kwargs == {}
    torch.testing.assert_close(x, make_data()[:6][0])  # the old release took the first 6 examples
    assert torch.equal(monitor.probe.labels, saved["probe_labels"]) and monitor.probe.labels.tolist() == [0, 1, 2, 3,
                                                                                                        0, 1]
    assert torch.equal(monitor.targets, saved["targets"])
    assert monitor.stage(Drift).references.first.shape == monitor.stage(Drift).references.previous.shape == (6, 64)
    torch.testing.assert_close(monitor.stage(Drift).references.first, saved["first_scores"].reshape(6, -1).float())
    torch.testing.assert_close(monitor.stage(Drift).references.previous,
                               saved["previous_scores"].reshape(6, -1).float())
    assert torch.equal(monitor.stage(Pictures).scales.scales, saved["scales"])
    assert monitor.top_features == {int(c): [(int(k), float(v)) for k, v in r] for c, r in saved["rules"].items()}
    assert sorted(monitor.top_features) == [0, 1, 2, 3]
    assert monitor.checks == 2
    assert monitor.policy.streak == 0 and monitor.policy.recent == []


def test_an_old_breach_streak_loads(saved):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=4, baseline=None, alarm=dict(patience=3))
    monitor.load_state_dict({**saved, "breach_streak": 2})
    assert monitor.policy.streak == 2 and monitor.policy.recent == [True, True]


def test_training_goes_on_from_an_old_state(saved, tmp_path):
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=4, baseline=None)  # 0.1's default
    monitor.load_state_dict(saved)
    first = monitor.stage(Drift).references.first.clone()
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=1).fit(TinyCNN(), *loaders())
    said = [str(w.message) for w in caught if "IntegratedGradientsMonitor" in str(w.message)]
    assert not any("other settings" in m or "another model" in m for m in said), said
    assert monitor.checks == 3
    assert torch.equal(monitor.probe.inputs.args[0], saved["probe"]["args"][0])  # the probe was kept, not retaken
    assert torch.equal(monitor.targets, saved["targets"])
    torch.testing.assert_close(monitor.stage(Drift).references.first, first)  # the first reference is the old run's
    # The fresh seeded TinyCNN after one epoch is the old run's model at its first check: the same attributions.
    torch.testing.assert_close(monitor.stage(Drift).references.previous, first)
    assert not torch.equal(monitor.stage(Drift).references.previous, saved["previous_scores"].reshape(6, -1).float())
    assert "ig/drift" in monitor.last_metrics


# A whole Lightning checkpoint of the 0.1 release (the flat signature, commit 304b1a5): written by
# IntegratedGradientsMonitor(probe=6, n_steps=4, drift_threshold="auto", top_k=5, class_names=["a", "b", "c", "d"],
# patience=2, patience_window=3) and ModelCheckpoint after trainer(max_epochs=4) fitted a seeded TinyCNN on
# loaders() (conftest).
CKPT_0_1 = Path(__file__).resolve().parents[1] / "data" / "monitor_v0_1.ckpt"


def grouped_monitor() -> IntegratedGradientsMonitor:
    """The 0.1 monitor of ``CKPT_0_1``, written with today's settings objects."""
    return IntegratedGradientsMonitor(probe=6, n_steps=4, baseline=None,
                                      alarm=Alarm(threshold="auto", top_k=5, patience=2, patience_window=3),
                                      rule_extraction=RuleExtraction(top_k=5), faithfulness=Faithfulness(top_k=5),
                                      display=Display(class_names=["a", "b", "c", "d"]))


def test_a_0_1_checkpoint_resumes_with_the_grouped_settings(tmp_path):
    ckpt = torch.load(CKPT_0_1, weights_only=False)
    monitor = grouped_monitor()
    (old_key,) = [k for k in ckpt["callbacks"] if k.startswith("IntegratedGradientsMonitor")]
    assert monitor.state_key == old_key  # Lightning finds the old state under the same key
    old = ckpt["callbacks"][old_key]
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=5).fit(TinyCNN(), *loaders(), ckpt_path=CKPT_0_1)
    said = [str(w.message) for w in caught if "IntegratedGradientsMonitor" in str(w.message)]
    assert not any("other settings" in m or "another model" in m for m in said), said
    assert monitor.checks == old["checks"] + 1 == 5
    assert monitor.probe.state()["indices"] == old["probe"]["indices"]  # the probe was kept, not retaken
    assert torch.equal(monitor.probe.inputs.args[0], old["probe"]["inputs"]["args"][0])
    assert torch.equal(monitor.targets, old["targets"])
    torch.testing.assert_close(monitor.stage(Drift).references.first, old["first_scores"])
    assert monitor.top_features.keys() == {int(c) for c in old["rules"]}
    history = monitor.stage(Drift).history.values["drift_class_max"]
    assert history[:-1] == old["drift_history"]["drift_class_max"]  # the alarm keeps calibrating on the old run
    assert "ig/drift_ratio" in monitor.last_metrics  # three earlier values came from the checkpoint
    assert len(monitor.policy.recent) <= 3


def test_an_old_state_under_the_auto_baseline_keeps_its_probe_and_retakes_image_references(saved, tmp_path):
    # 0.1 attributed from zeros; "auto" attributes images from black and white: the drift references no longer
    # compare, and a warning says so; the probe and its targets do not depend on the baseline and are kept.
    monitor = IntegratedGradientsMonitor(probe=6, n_steps=4)
    monitor.load_state_dict(saved)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=1).fit(TinyCNN(), *loaders())
    said = [str(w.message) for w in caught if "IntegratedGradientsMonitor" in str(w.message)]
    assert not any("other settings" in m for m in said), said
    assert sum("attributed from zeros (the default of 0.1)" in m for m in said) == 1
    assert torch.equal(monitor.probe.inputs.args[0], saved["probe"]["args"][0])
    assert torch.equal(monitor.targets, saved["targets"])
    assert "ig/drift" not in monitor.last_metrics  # the first check of the new references
