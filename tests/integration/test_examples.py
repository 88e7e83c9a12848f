"""The examples, run briefly: each still trains, logs and tells its story (rules, a caught cue)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples import digits, spurious, tabular, text
from examples.common import Run, rules_lines, summarize


def rules_file(run: Run) -> list[dict]:
    """The lines of the run's ``ig_rules.jsonl``."""
    return [json.loads(line) for line in (run.log_dir / "ig_rules.jsonl").read_text().splitlines()]


def test_digits_demo_main_trains_logs_and_summarizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the demo writes to ./runs/digits
    run = digits.main(["--epochs", "2"])
    out = capsys.readouterr().out
    assert "epoch  1:" in out and "ig/completeness_error" in out
    assert "tensorboard --logdir runs/digits" in out
    monitor = run.monitor
    assert monitor.checks == 2 and len(monitor.rules_history) == 2
    assert monitor.last_metrics["ig/completeness_error"] < 0.05
    assert "ig/drift" in monitor.last_metrics
    assert run.log_dir.resolve().is_relative_to((tmp_path / "runs" / "digits").resolve())
    assert list(run.log_dir.glob("events.out.tfevents.*"))
    lines = rules_file(run)
    assert [line["epoch"] for line in lines] == [0, 1]
    assert all(0 <= key < 64 for rules in monitor.top_features.values() for key, _ in rules)


def test_text_rules_name_the_trigger_words(tmp_path: Path) -> None:
    run = text.train(max_epochs=2, root=tmp_path, verbose=False, n=1000)
    words = text.rule_words(run.monitor, top=3)
    assert set(words) == set(text.CLASS_NAMES)
    assert {"how", "many"} & set(words["number"])
    for name, trigger in (("person", "who"), ("place", "where"), ("time", "when")):
        assert trigger in words[name][:2], words
    last = rules_file(run)[-1]
    assert {int(c) for c in last["rules"]} == set(range(len(text.CLASS_NAMES)))
    who = [r for r in last["rules"]["1"] if text.TOKEN_IDS["who"] in r["keys"]]
    assert who and who[0]["precision"] > 0.9 and who[0]["text"].endswith("-> person")
    assert set(who[0]) >= {"keys", "text", "score", "coverage", "precision", "necessity", "sufficiency", "support"}
    assert text.token_name(last["top_features"]["1"][0][0]) == "who"


def test_question_generator_plants_exactly_one_trigger_phrase() -> None:
    ids, labels = text.questions(50, seed=1, max_len=10)
    assert ids.shape == (50, 10) and ids.dtype == torch.long
    triggers = {name: {text.TOKEN_IDS[w] for w in words} for name, words in text.TRIGGERS.items()}
    for row, label in zip(ids.tolist(), labels.tolist()):
        present = {name for name, tokens in triggers.items() if tokens & set(row)}
        assert present == {text.CLASS_NAMES[label]}
        n_words = sum(token != text.TOKEN_IDS[text.PAD] for token in row)
        assert 3 <= n_words <= 8 and all(token == text.TOKEN_IDS[text.PAD] for token in row[n_words:])


def test_tabular_rules_are_feature_indices_with_names(tmp_path: Path) -> None:
    run = tabular.train(max_epochs=2, root=tmp_path, verbose=False)
    monitor = run.monitor
    assert list(monitor.display.feature_names) == tabular.FEATURE_NAMES and len(tabular.FEATURE_NAMES) == 30
    assert set(monitor.rules) == {0, 1}
    keys = [key for rules in monitor.rules.values() for rule in rules for key in rule.keys]
    assert all(isinstance(key, int) and 0 <= key < 30 for key in keys)
    first = monitor.rules[0][0]
    assert first.kind == "feature" and first.direction in (">", "<") and first.threshold is not None
    assert first.text == f"{tabular.FEATURE_NAMES[first.keys[0]]} {first.direction} {first.threshold:.4g} -> malignant"
    lines = rules_lines(monitor.rules, key_names=tabular.FEATURE_NAMES, class_names=tabular.CLASS_NAMES)
    assert lines[0].startswith(f"  {first.text}  score ") and "precision" in lines[0]
    text_out = summarize(monitor, run.root_dir, key_names=tabular.FEATURE_NAMES, class_names=tabular.CLASS_NAMES)
    assert "-> benign" in text_out and f"tensorboard --logdir {run.root_dir}" in text_out


def test_spurious_cue_is_planted_exactly_on_the_cue_classes() -> None:
    datamodule = spurious.SpuriousDigitsDataModule("cue")
    datamodule.setup("fit")
    for inputs, labels in (datamodule.train_set.tensors, datamodule.val_set.tensors):
        marked = (inputs[:, 0, :2, :2] == 1.0).all(-1).all(-1)
        assert torch.equal(marked, torch.isin(labels, torch.tensor(spurious.CUE_CLASSES)))
    probe, _ = spurious.marked_probe(datamodule)
    assert (probe[:, 0, :2, :2] == 1.0).all()


def test_spurious_cue_is_found_and_the_run_stopped(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"ig/region_mass .* stopping the run"):
        cue = spurious.train("cue", max_epochs=3, root=tmp_path, verbose=False)
    clean = spurious.train("clean", max_epochs=2, root=tmp_path, verbose=False, limit_train_batches=10)
    cue_mass = cue.monitor.last_metrics["ig/region_mass"]
    clean_mass = clean.monitor.last_metrics["ig/region_mass"]
    assert cue_mass > spurious.REGION_THRESHOLD > clean_mass
    assert cue_mass > 2 * clean_mass
    assert spurious.was_stopped(cue) and cue.monitor.checks == 1 and cue.trainer.current_epoch == 1
    # The rules name the mark for the classes that carried it, and for no other class.
    reading = spurious.classes_reading_the_mark(cue)
    assert set(reading) <= set(spurious.CUE_CLASSES) and len(reading) >= 3
    assert not spurious.was_stopped(clean) and clean.monitor.checks == 2
    assert "stopped by the monitor" in spurious.report("cue", cue)
