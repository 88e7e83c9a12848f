"""warm_start=True: each check starts every probe row's path from the last check's mesh.

Checked here: argument errors at construction, the same attributions as a cold monitor within the tolerance with
fewer rounds, training left bit-identical, meshes kept in the checkpoint (a resumed run starts warm) and dropped with
the progress when the monitor meets another model. Two processes: tests/integration/test_alarm_ddp.py (mode warm)."""

import pytest
import torch
from lightning.pytorch import Callback

from conftest import Net, caught_warnings, data_loaders, fit_net, make_trainer
from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.monitor.meshes import PathMeshes


class Rounds(Callback):
    """Placed after the monitors: their rounds, evaluations and attributions at every check."""

    def __init__(self, *monitors) -> None:
        self.monitors, self.seen = monitors, []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.seen.append([(m.last_result.rounds, m.last_result.n_evaluations.clone(),
                           m.last_result.attributions.clone(), m.last_result.attribution_error.clone())
                          for m in self.monitors])


def monitors(**kw):
    # One baseline for both: with warm starts "auto" is zeros (one path per example), without it black and white.
    common = dict(probe=8, baseline=None, display=dict(log_images=False), faithfulness=dict(deletion=False), **kw)
    return (IntegratedGradientsMonitor(name="cold", integration=dict(tolerance=1e-3), **common),
            IntegratedGradientsMonitor(name="warm", integration=dict(tolerance=1e-3, warm_start=True), **common))


def test_warm_start_needs_auto_steps_and_a_bool():
    with pytest.raises(ValueError, match="`integration.warm_start=True` needs n_steps='auto'"):
        IntegratedGradientsMonitor(n_steps=16, integration=dict(warm_start=True))
    with pytest.raises(TypeError, match="warm_start"):
        IntegratedGradientsMonitor(integration=dict(warm_start="yes"))
    assert IntegratedGradientsMonitor(integration=dict(warm_start=True)).integration.warm_start is True


def test_warm_checks_match_cold_ones_within_tolerance_in_fewer_rounds(tmp_path):
    cold, warm = monitors()
    seen = Rounds(cold, warm)
    with caught_warnings():
        fit_net(tmp_path, cold, callbacks=[warm, seen], max_epochs=4)
    assert len(seen.seen) == 4
    first = seen.seen[0]
    assert first[0][0] == first[1][0]  # the first check of both is cold
    later_cold = sum(s[0][0] for s in seen.seen[1:])
    later_warm = sum(s[1][0] for s in seen.seen[1:])
    assert later_warm < later_cold, seen.seen
    for (_, _, a_cold, e_cold), (_, _, a_warm, e_warm) in seen.seen:
        assert bool((e_warm <= 1e-3).all()) and bool((e_cold <= 1e-3).all())
        err = (a_warm - a_cold).flatten(1).norm(dim=1) / a_cold.flatten(1).norm(dim=1).clamp_min(1e-6)
        assert bool((err <= 3e-3).all()), err  # both within 1e-3 of the exact integral (estimated)
    assert warm.last_metrics["ig/warm/rounds"] == seen.seen[-1][1][0]
    assert len(warm.meshes) == 8 and len(cold.meshes) == 0


def test_training_stays_bit_identical_with_warm_checks(tmp_path):
    def run(monitor):
        with caught_warnings():
            _, model = fit_net(tmp_path / str(monitor is None), monitor, max_epochs=3)
        return model.state_dict(), torch.get_rng_state()

    plain, rng_plain = run(None)
    watched, rng_watched = run(IntegratedGradientsMonitor(probe=4, integration=dict(warm_start=True),
                                                          display=dict(log_images=False)))
    assert torch.equal(rng_plain, rng_watched)
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key


def test_meshes_are_in_the_checkpoint_and_a_resumed_run_starts_warm(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=8, integration=dict(tolerance=1e-3, warm_start=True),
                                         display=dict(log_images=False))
    with caught_warnings():
        fit_net(tmp_path, monitor, max_epochs=2)
    state = monitor.state_dict()
    assert set(state["meshes"]) == set(range(8))
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = IntegratedGradientsMonitor(probe=8, integration=dict(tolerance=1e-3, warm_start=True),
                                         display=dict(log_images=False))
    resumed.load_state_dict(loaded)
    for row, mesh in monitor.meshes.meshes.items():
        assert torch.equal(resumed.meshes.meshes[row], mesh)
    fresh = IntegratedGradientsMonitor(probe=8, integration=dict(tolerance=1e-3, warm_start=True),
                                       display=dict(log_images=False))
    torch.manual_seed(0)
    model = Net()
    model.load_state_dict(monitor._model_ref().state_dict())
    with caught_warnings():
        make_trainer(tmp_path, [resumed]).validate(model, data_loaders()[1], verbose=False)
        make_trainer(tmp_path, [fresh]).validate(model, data_loaders()[1], verbose=False)
    assert resumed.last_result.rounds < fresh.last_result.rounds
    torch.testing.assert_close(resumed.last_result.attributions, fresh.last_result.attributions,
                               atol=3e-3 * float(fresh.last_result.attributions.abs().max()), rtol=0)


def test_broken_or_oversized_meshes_start_cold():
    meshes = PathMeshes()
    meshes.load_state_dict({"meshes": {0: torch.tensor([0.0, 0.3, 1.0]), 1: torch.tensor([0.0, 0.5, 1.0]),
                                       2: torch.linspace(0, 1, 9, dtype=torch.float64)}})
    assert sorted(meshes.meshes) == [1, 2]  # 0.3 is not a node the bisection makes
    start = meshes.start_for(torch.tensor([0, 1, 2]), max_steps=8)
    assert start.mesh_size().tolist() == [5, 3, 5]  # no mesh, a kept one, one over max_steps: the grid
    assert meshes.start_for(torch.tensor([5]), max_steps=8) is True  # no mesh at all: cold, leaving meshes
    meshes.load_state_dict({})
    assert len(meshes) == 0


def test_meshes_go_with_the_progress_when_the_monitor_meets_another_model(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, integration=dict(warm_start=True), display=dict(log_images=False))
    with caught_warnings():
        fit_net(tmp_path, monitor, max_epochs=1)
        assert len(monitor.meshes) == 4
        torch.manual_seed(1)
        other = Net()
        make_trainer(tmp_path, [monitor], max_epochs=1).fit(other, *data_loaders())
    assert monitor.checks == 1 and len(monitor.meshes) == 4  # dropped, then taken anew at the new model's check
