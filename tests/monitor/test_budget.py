"""The monitor's cost, a number the user sets: ``max_overhead``, ``ig/overhead``, each part's time, progress."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from conftest import TinyCNN, fit_cnn, loaders, trainer

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.monitor import budget as budget_module
from ig_lightning.monitor.budget import CheckProgress, OverheadBudget
from ig_lightning.monitor.stages import Completeness


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_spaces_checks_to_stay_within_it_plus_one_check():
    # Epochs of 1 s; a check costs 0.5 s: at 10% the monitor checks about every 5 epochs, the first one always.
    clock = Clock()
    budget = OverheadBudget(0.1, clock=clock)
    budget.begin()
    checked = []
    for epoch in range(60):
        clock.now += 1.0
        if budget.allows(first=not checked):
            checked.append(epoch)
            clock.now += 0.5
            budget.add(0.5)
        assert budget.share() <= 0.1 + 0.5 / budget.elapsed() + 1e-12
    assert checked[0] == 0 and abs(len(checked) - 0.1 * budget.elapsed() / 0.5) <= 1.5  # about 13
    assert budget.share() == pytest.approx(0.1, abs=0.02)
    assert OverheadBudget(None, clock=clock).allows(first=False)  # no budget: always


def test_the_budget_is_kept_across_a_resume():
    clock = Clock()
    budget = OverheadBudget(0.05, clock=clock)
    budget.begin()
    clock.now = 100.0
    budget.add(4.0)
    state = budget.state_dict()
    resumed = OverheadBudget(0.05, clock=clock)
    resumed.load_state_dict(state)
    clock.now = 500.0
    resumed.begin()
    assert resumed.elapsed() == pytest.approx(100.0) and resumed.spent == 4.0 and resumed.last == 4.0
    assert not resumed.allows(first=False)  # (4 + 4) / (100 + 4) > 5%: not yet, also after the resume
    clock.now = 560.0
    assert resumed.allows(first=False)


def slow_completeness(monkeypatch, clock: Clock) -> None:
    """Every check half a (fake) second longer than the tiny model's epochs."""
    update = Completeness.update

    def slow(self, check):
        clock.now += 0.5
        update(self, check)

    monkeypatch.setattr(Completeness, "update", slow)


class SlowSteps(pl.Callback):
    """Training steps of 50 (fake) ms: epochs of 0.3 s, a check 0.5 s."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.now += 0.05


class Record(pl.Callback):
    """The epochs at which the monitor (which runs first) checked."""

    def __init__(self, monitor) -> None:
        self.monitor, self.epochs = monitor, []

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.monitor.checks > len(self.epochs):
            self.epochs.append(trainer.current_epoch)


def test_a_fit_under_max_overhead_skips_checks_logs_its_share_and_trains_the_same(tmp_path, monkeypatch):
    clock = Clock()  # the run's time, made by the slow steps and checks: the same schedule on any machine
    slow_completeness(monkeypatch, clock)
    _, plain = fit_cnn(tmp_path / "a", max_epochs=8)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, max_overhead=0.3,
                                         faithfulness={"sanity_every_n_checks": 0})
    monitor.budget = OverheadBudget(0.3, clock=clock)
    record = Record(monitor)
    _, watched = fit_cnn(tmp_path / "b", monitor, max_epochs=8, callbacks=[record, SlowSteps(clock)])
    # Epochs of 0.3 s, checks of 0.5 s, 30%: after the first check (0.5 s at 0.3 s) the next fits once
    # (0.5 + 0.5) <= 0.3 * (0.8 + 0.3 k + 0.5), at the end of epoch k = 7.
    assert record.epochs == [0, 7]
    budget = monitor.budget
    assert budget.share() <= 0.3 + budget.last / budget.elapsed()
    assert monitor.last_metrics["ig/overhead"] == pytest.approx(budget.share(), abs=0.1)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, watched.state_dict()[key]), key


@pytest.mark.budget_default
def test_by_default_the_monitor_keeps_within_five_percent_and_says_so_once(tmp_path, monkeypatch, caplog):
    assert IntegratedGradientsMonitor().config.max_overhead == 0.05
    assert IntegratedGradientsMonitor(max_overhead=None).config.max_overhead is None  # every epoch
    clock = Clock()
    slow_completeness(monkeypatch, clock)
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, faithfulness={"sanity_every_n_checks": 0})
    monitor.budget = OverheadBudget(monitor.config.max_overhead, clock=clock)
    record = Record(monitor)
    # EarlyStopping on an ig/ scalar (strict): a skipped epoch keeps the last check's value, so it never fails. Its
    # patience would count those epochs as no improvement (docs/usage.md): thresholds are what work across gaps.
    stopper = EarlyStopping(monitor="ig/completeness_error", mode="min", divergence_threshold=10.0, patience=100)
    with caplog.at_level(logging.INFO):
        t, model = fit_cnn(tmp_path, monitor, max_epochs=12, callbacks=[record, SlowSteps(clock), stopper])
    # Epochs of 0.3 s, checks of 0.5 s: within 5% the next check needs (0.5 + 0.5) <= 0.05 * (elapsed + 0.5),
    # 19.5 s: none in 12 epochs after the first, and the user is told once why.
    assert record.epochs == [0] and monitor.budget.skipped == 11 and t.current_epoch == 12
    said = [r.getMessage() for r in caplog.records if "max_overhead=0.05 skips" in r.getMessage()]
    assert len(said) == 1 and "max_overhead=None" in said[0]
    # The trained model's own check: trainer.validate always checks, whatever the budget says.
    t.validate(model, loaders()[1], verbose=False)
    assert monitor.checks == 2 and monitor.last_metrics["ig/completeness_error"] >= 0


def test_every_check_logs_its_overhead_and_the_time_of_each_part(tmp_path):
    monitor = IntegratedGradientsMonitor(probe=4, n_steps=4)
    fit_cnn(tmp_path, monitor, max_epochs=1)
    assert 0 < monitor.last_metrics["ig/overhead"] < 1
    assert list(monitor.last_timings)[0] == "attribution" and list(monitor.last_timings)[-1] == "pictures"
    assert {type(s).__name__ for s in monitor.stages} <= set(monitor.last_timings)
    assert all(t >= 0 for t in monitor.last_timings.values())
    assert monitor.budget.spent >= sum(v for k, v in monitor.last_timings.items())


def test_a_long_check_shows_its_progress_in_the_bar_or_on_the_console(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(budget_module, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(budget_module, "PROGRESS_EVERY", 0.0)

    class Bar:
        def __init__(self):
            self.texts = []

        def set_postfix_str(self, text, refresh=True):
            self.texts.append(text)

    class WithBar:
        is_global_zero = True
        progress_bar_callback = type("Callback", (), {"train_progress_bar": Bar()})()

    shown = CheckProgress(WithBar(), "ig")
    shown("RuleTests")
    shown.done()
    texts = WithBar.progress_bar_callback.train_progress_bar.texts
    assert texts[0].startswith("ig check: RuleTests (") and texts[-1] == ""
    # No bar: the console, through Lightning's rank-zero logger; a real fit says where its check is.
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, [IntegratedGradientsMonitor(probe=4, n_steps=4)], max_epochs=1).fit(TinyCNN(), *loaders())
    said = [r.getMessage() for r in caplog.records if "ig check:" in r.getMessage()]
    assert any("attribution, examples 1-" in m for m in said) and any("Sanity" in m for m in said)


def test_a_resumed_fit_keeps_the_monitors_time_and_its_spacing(tmp_path):
    first = IntegratedGradientsMonitor(probe=4, n_steps=4, max_overhead=0.5)
    t, _ = fit_cnn(tmp_path / "a", first, max_epochs=2, enable_checkpointing=True)
    saved = torch.load(t.checkpoint_callback.best_model_path, weights_only=False)["callbacks"][first.state_key]
    assert saved["overhead_spent"] == pytest.approx(first.budget.spent)
    assert saved["overhead_elapsed"] > saved["overhead_spent"] > 0
    resumed = IntegratedGradientsMonitor(probe=4, n_steps=4, max_overhead=0.5)
    torch.manual_seed(0)
    trainer(tmp_path / "b", [resumed], max_epochs=3).fit(TinyCNN(), *loaders(),
                                                          ckpt_path=t.checkpoint_callback.best_model_path)
    # The old run's time is counted on: the third epoch's check is decided against it (run or skipped), not run as
    # the first check of a fresh budget.
    assert resumed.budget.spent >= saved["overhead_spent"] and resumed.budget.elapsed() > saved["overhead_elapsed"]
    assert first.checks + first.budget.skipped == 2 and resumed.checks + resumed.budget.skipped == first.checks + 1
