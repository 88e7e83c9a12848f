"""The calibrated drift alarm (``drift_threshold="auto"``) in real fits: it catches a sudden change of the
model's reasons, never fires while it calibrates, survives a checkpoint resume, and feeds ``EarlyStopping``."""

from __future__ import annotations

import statistics
import warnings

import pytest
import torch
from alarm_helpers import fit_with_change
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ig_lightning import AttributionDriftError, IntegratedGradientsMonitor
from ig_lightning.monitor.tracking import MIN_HISTORY
from ig_lightning.monitor.stages import Drift


def auto_monitor(**alarm) -> IntegratedGradientsMonitor:
    return IntegratedGradientsMonitor(probe=8, n_steps=8, alarm={"threshold": "auto", **alarm})


def test_a_change_of_reasons_is_caught_at_the_first_check_after_it(tmp_path):
    with pytest.raises(AttributionDriftError, match=r"ig/drift_ratio .* > alarm.factor=5 at epoch 5"):
        fit_with_change(tmp_path, auto_monitor(on_breach="raise"), epochs=7, change_at=5)


def test_a_healthy_run_never_breaches_and_logs_the_ratio_from_the_fifth_check(tmp_path):
    monitor = auto_monitor(on_breach="raise")
    t, recorder = fit_with_change(tmp_path, monitor, epochs=7, change_at=None)
    ratios = [m.get("ig/drift_ratio") for m in recorder.metrics]
    # check 1 has no drift; drift values 1..3 calibrate: the ratio exists from check 2 + MIN_HISTORY on
    assert all(r is None for r in ratios[:MIN_HISTORY + 1]) and all(r is not None for r in ratios[MIN_HISTORY + 1:])
    assert max(r for r in ratios if r is not None) < 4 and t.current_epoch == 7
    # the alarm watches the worst class by default with "auto": the per-class drift is logged
    assert all("ig/drift_class_max" in m and "ig/drift_class/0" in m for m in recorder.metrics[1:])


def test_it_never_fires_while_it_calibrates_even_on_a_huge_change(tmp_path):
    monitor = auto_monitor(on_breach="raise")
    t, recorder = fit_with_change(tmp_path, monitor, epochs=4, change_at=2)  # the change at the 3rd check
    assert t.current_epoch == 4 and recorder.metrics[2]["ig/drift"] > 0.5
    assert all("ig/drift_ratio" not in m for m in recorder.metrics)


def test_a_fixed_threshold_keeps_watching_the_probe_mean(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, alarm=dict(threshold=0.5, on_breach="raise"))
    with pytest.raises(AttributionDriftError, match=r"ig/drift \(cosine vs previous check\) = .* at epoch 5"):
        fit_with_change(tmp_path, monitor, epochs=7, change_at=5)


@pytest.mark.parametrize("on_breach", ["warn", "stop"])
def test_warn_and_stop(tmp_path, on_breach):
    monitor = auto_monitor(on_breach=on_breach)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, _ = fit_with_change(tmp_path, monitor, epochs=7, change_at=5)
    said = [str(w.message) for w in caught if "drift_ratio" in str(w.message)]
    assert said and "epoch 5" in said[0]
    assert t.current_epoch == (6 if on_breach == "stop" else 7)


def test_patience_and_a_one_check_spike_the_interaction_is_said_and_holds(tmp_path):
    """Against the previous check a sudden change is one check of high drift: patience=2 never sees two, and
    the monitor says so when it is made; patience=1 (the default) catches it."""
    with pytest.warns(UserWarning, match="never acted on"):
        monitor = auto_monitor(patience=2, on_breach="raise")
    t, recorder = fit_with_change(tmp_path, monitor, epochs=7, change_at=5)
    ratios = [m.get("ig/drift_ratio", 0.0) for m in recorder.metrics]
    assert t.current_epoch == 7 and sum(r > 5 for r in ratios) == 1  # one spike, never two in a row


def test_early_stopping_can_watch_the_ratio(tmp_path):
    stop = EarlyStopping(monitor="ig/drift_ratio", mode="min", divergence_threshold=5.0, strict=False,
                         check_on_train_epoch_end=False, patience=100)
    t, _ = fit_with_change(tmp_path, auto_monitor(), epochs=7, change_at=5, extra=[stop])
    assert t.current_epoch == 6  # stopped after the check of epoch 5


def test_resume_continues_calibrating_where_the_run_left(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = auto_monitor()
    fit_with_change(tmp_path / "a", first, epochs=5, change_at=None, extra=[ckpt], enable_checkpointing=True)
    saved = torch.load(ckpt.last_model_path, weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("IntegratedGradientsMonitor"))
    assert state["drift_history"]["drift_class_max"] == first.stage(Drift).history.values["drift_class_max"]
    assert len(state["drift_history"]["drift_class_max"]) == 4
    resumed = auto_monitor()
    _, rec = fit_with_change(tmp_path / "b", resumed, epochs=6, change_at=None, ckpt_path=ckpt.last_model_path)
    assert resumed.probe.indices == first.probe.indices  # the stratified probe is kept across the resume
    assert resumed.checks == 6
    kept = resumed.stage(Drift).history.values["drift_class_max"]
    assert kept[:4] == first.stage(Drift).history.values["drift_class_max"] and len(kept) == 5
    # the first check after the resume already has a calibrated ratio (a fresh monitor needs 4 more checks)
    history = first.stage(Drift).history.values["drift_class_max"]
    expected = rec.metrics[0]["ig/drift_class_max"] / max(statistics.median(history), 1e-3)
    assert rec.metrics[0]["ig/drift_ratio"] == pytest.approx(expected)
