"""Hugging Face models with nothing but ``IntegratedGradientsMonitor(layer=...)`` (issue 8).

A tiny randomly initialised BERT (``examples/transformer.py``, no download) is fine-tuned on dict batches
with planted trigger words; the monitor takes the whole input (``input_ids`` and ``attention_mask``) from
the validation data and attributes at the word embeddings.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

pytest.importorskip("transformers")

from examples import transformer as T  # noqa: E402  (needs transformers)
from examples.common import make_trainer, seed  # noqa: E402
from ig_lightning import IntegratedGradientsMonitor  # noqa: E402
from ig_lightning.monitor.rule_stage import RuleTests  # noqa: E402

PROBE = 16  # the monitor's default probe size
TRIGGER_IDS = {c: set(T.TOKENIZER.convert_tokens_to_ids(T.TRIGGERS[name])) for c, name in enumerate(T.CLASS_NAMES)}


class CallRecorder(Callback):
    """Records ``input_ids`` and ``attention_mask`` of every call of the model during each check.

    Placed before the monitor: the hook goes on in ``on_validation_epoch_end`` (the monitor's check runs
    there, after this callback's) and comes off in ``on_validation_end``, after every epoch-end hook.
    """

    def __init__(self) -> None:
        self.checks: list[list[tuple[torch.Tensor, torch.Tensor | None]]] = []
        self._handle = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        signature, calls = inspect.signature(pl_module.forward), []
        self.checks.append(calls)

        def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            arguments = signature.bind(*args, **kwargs).arguments
            mask = arguments.get("attention_mask")
            calls.append((arguments["input_ids"].detach().cpu().clone(),
                          None if mask is None else mask.detach().cpu().clone()))

        self._handle = pl_module.register_forward_pre_hook(record, with_kwargs=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@dataclass
class Trained:
    model: T.BertQuestionClassifier
    datamodule: T.QuestionsDataModule
    monitor: IntegratedGradientsMonitor
    recorder: CallRecorder
    probe: dict[str, torch.Tensor]
    root: Path
    val_acc: float


def probe_batch(datamodule: T.QuestionsDataModule, indices: list[int]) -> dict[str, torch.Tensor]:
    """The validation examples at ``indices`` as the validation loader collates them: what the monitor should
    take (``indices``: the monitor's own, spread over the classes)."""
    return T.collate([datamodule.val_set[i] for i in indices])


def scores_of(monitor: IntegratedGradientsMonitor) -> torch.Tensor:
    """One score per token: the attribution at the word embeddings summed over the embedding dimension."""
    attributions = monitor.last_result.attributions
    assert attributions.ndim == 3 and attributions.shape[-1] == 32  # (probe, tokens, hidden size)
    return attributions.sum(-1)


def relative_completeness_error(monitor: IntegratedGradientsMonitor) -> torch.Tensor:
    result = monitor.last_result
    return result.completeness_error.abs() / result.delta.abs()


def validate(trained: Trained, monitor: IntegratedGradientsMonitor, loader: DataLoader | None = None) -> Trainer:
    """``trainer.validate`` of the trained model with ``monitor`` (on the datamodule, or on ``loader``)."""
    trainer = make_trainer("validate", [monitor], max_epochs=1, root=trained.root, verbose=False)
    if loader is None:
        trainer.validate(trained.model, datamodule=trained.datamodule, verbose=False)
    else:
        trainer.validate(trained.model, dataloaders=loader, verbose=False)
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Fine-tune the tiny BERT for 3 epochs with the monitor given only ``layer=`` and ``vocabulary=``."""
    root = tmp_path_factory.mktemp("transformer")
    seed(0)
    datamodule, model = T.QuestionsDataModule(n=1000), T.BertQuestionClassifier()
    monitor, recorder = IntegratedGradientsMonitor(layer=T.LAYER, display=dict(vocabulary=T.TOKENIZER),
                                                    max_overhead=None), CallRecorder()
    trainer = make_trainer("transformer", [recorder, monitor], max_epochs=3, root=root, verbose=False)
    trainer.fit(model, datamodule=datamodule)
    return Trained(model, datamodule, monitor, recorder, probe_batch(datamodule, monitor.probe.indices), root,
                   float(trainer.callback_metrics["val/acc"]))


def test_questions_are_hugging_face_batches_with_one_trigger_and_padding() -> None:
    datamodule = T.QuestionsDataModule(n=200)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.dtype == mask.dtype == labels.dtype == torch.long and ids.shape == mask.shape
    assert torch.equal(mask, (ids != T.TOKENIZER.pad_token_id).long())
    lengths = mask.sum(1)
    assert lengths.max() == ids.shape[1] and lengths.min() < ids.shape[1]  # padded to the batch's longest
    for row, n, label in zip(ids.tolist(), lengths.tolist(), labels.tolist()):
        assert row[0] == T.TOKENIZER.cls_token_id and row[n - 1] == T.TOKENIZER.sep_token_id
        assert all(token == T.TOKENIZER.pad_token_id for token in row[n:])
        present = {c for c, trigger in TRIGGER_IDS.items() if trigger & set(row)}
        assert present == {label}
    assert T.TOKENIZER.convert_ids_to_tokens(0) == "[PAD]"
    assert T.TOKENIZER.convert_ids_to_tokens(T.TOKENIZER.convert_tokens_to_ids(["how", "many"])) == ["how", "many"]


def test_the_model_learns_the_triggers_and_the_probe_has_every_class_and_padding(trained: Trained) -> None:
    assert trained.val_acc > 0.97
    assert set(trained.probe["labels"].tolist()) == set(range(len(T.CLASS_NAMES)))
    assert (trained.probe["attention_mask"] == 0).any()
    assert trained.monitor.checks == 3
    # The probe is the model's whole input, labels left out: validation examples spread over the classes
    # (4 of each, by index), as collated.
    assert len(trained.monitor.probe.indices) == PROBE and not trained.monitor.probe.missing_classes()
    kwargs = trained.monitor.probe_inputs.kwargs
    assert list(kwargs) == ["input_ids", "attention_mask"]
    assert all(torch.equal(kwargs[key].cpu(), trained.probe[key]) for key in kwargs)


def rule_test_rows(ids: torch.Tensor, mask: torch.Tensor, rule_ids: torch.Tensor, rule_mask: torch.Tensor) -> bool:
    """Whether every row is a rule-set row, with its own attention mask, in which at most 3 tokens were changed (a
    rule's n-gram removed or written in), or its baseline (every id the pad token, for the one-point attribution)."""
    if len(ids) == 0 or ids.shape[1] != rule_ids.shape[1]:
        return False
    same_mask = (mask[:, None, :].long() == rule_mask[None].long()).all(-1)
    close = ((ids[:, None, :] != rule_ids[None]).sum(-1) <= 3) | (ids == T.TOKENIZER.pad_token_id).all(-1, keepdim=True)
    return bool((close & same_mask).any(1).all())


def test_the_attention_mask_reaches_the_model_at_every_path_point(trained: Trained) -> None:
    probe_ids, probe_mask = trained.probe["input_ids"], trained.probe["attention_mask"]
    rule_set = trained.monitor.stage(RuleTests).rule_set.inputs
    rule_ids, rule_mask = rule_set["input_ids"], rule_set["attention_mask"]
    assert len({tuple(row) for row in probe_ids.tolist()}) == PROBE  # a row's ids name its example
    assert len(trained.recorder.checks) == trained.monitor.checks
    calls = trained.recorder.checks[-1]
    rows_per_example = torch.zeros(PROBE, dtype=torch.long)
    for ids, mask in calls:
        assert mask is not None, "the model was called without attention_mask"
        probe_like = ids.shape[1] == probe_ids.shape[1] and bool(
            ((ids[:, None, :] == probe_ids[None]) | (ids[:, None, :] == T.TOKENIZER.pad_token_id)).all(-1).any(1).all())
        if not probe_like:  # the rule tests: rule-set rows with their own masks, at most 3 tokens changed
            assert rule_test_rows(ids, mask, rule_ids, rule_mask), "rows that are neither the probe's nor the rule set's"
            continue
        assert ids.shape == mask.shape and ids.shape[1] == probe_ids.shape[1]
        if (ids == T.TOKENIZER.pad_token_id).all():  # the baseline's ids, run for the baseline's embeddings
            n = len(ids)
            assert any(torch.equal(mask.long(), probe_mask[k:k + n].long()) for k in range(PROBE - n + 1))
            continue
        same = ids[:, None, :] == probe_ids[None]
        match = same.all(-1)  # (rows, probe): which example each row is
        if not bool(match.any(1).all()):  # the deletion check: an example with some tokens set to the baseline
            deleted = (same | (ids[:, None, :] == T.TOKENIZER.pad_token_id)).all(-1)
            assert deleted.any(1).all(), "a call's input_ids are neither the probe's nor the probe with deletions"
            fits = (mask[:, None, :].long() == probe_mask[None].long()).all(-1) & deleted
            assert fits.any(1).all(), "a deletion row's attention_mask is not its example's"
            continue
        assert (match.sum(1) == 1).all(), "a call's input_ids are not the probe's"
        example = match.long().argmax(1)
        assert torch.equal(mask.long(), probe_mask[example].long()), "a row's attention_mask is not its example's"
        rows_per_example += torch.bincount(example, minlength=PROBE)
    # Every quadrature point of every example was evaluated with the example's own mask.
    n_evaluations = trained.monitor.last_result.n_evaluations
    assert (rows_per_example >= n_evaluations).all() and (n_evaluations >= 5).all(), (rows_per_example, n_evaluations)
    print(f"\nlast check: {len(calls)} model calls, {rows_per_example.tolist()} rows per probe example")


def test_padding_gets_zero_attribution_and_is_not_a_rule(trained: Trained) -> None:
    scores = scores_of(trained.monitor)
    mask = trained.probe["attention_mask"].bool()
    assert scores.shape == mask.shape
    assert torch.equal(scores[~mask], torch.zeros_like(scores[~mask]))
    assert trained.monitor.last_result.attributions[~mask].abs().max() == 0
    assert (scores[mask] != 0).float().mean() > 0.9  # real tokens do carry attribution
    keys = {key for rules in trained.monitor.top_features.values() for key, _ in rules}
    assert T.TOKENIZER.pad_token_id not in keys


def test_token_tables_use_the_tokenizer_and_leave_out_padding(trained: Trained) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (trained.root / "transformer" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
    accumulator.Reload()
    table = accumulator.Tensors("ig/tokens/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "[CLS]" in table and "[SEP]" in table and "[PAD]" not in table
    assert "ig/token_attributions" in accumulator.Tags()["images"]


def test_the_rules_name_the_trigger_words(trained: Trained) -> None:
    rules = trained.monitor.top_features
    assert set(rules) == set(range(len(T.CLASS_NAMES)))
    for c, trigger in TRIGGER_IDS.items():
        top = [key for key, _ in rules[c][:3]]
        assert trigger & set(top), (T.CLASS_NAMES[c], T.TOKENIZER.convert_ids_to_tokens(top))


def test_delta_is_the_trained_model_with_the_probe_mask(trained: Trained) -> None:
    """F(x) - F(x'): the baseline swaps the word embeddings for [PAD]'s, the mask and the weights stay."""
    probe, model = trained.probe, trained.model.eval()
    targets = probe["labels"]
    with torch.no_grad():
        logits = model(probe["input_ids"], probe["attention_mask"]).logits
        baseline = model(torch.zeros_like(probe["input_ids"]), probe["attention_mask"]).logits
    expected = (logits - baseline).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(trained.monitor.last_result.delta, expected, rtol=1e-4, atol=1e-4)


def test_the_mask_matters_all_ones_mask_gives_other_attributions(trained: Trained) -> None:
    def unmasked(items: list) -> dict[str, torch.Tensor]:
        batch = T.collate(items)
        return {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}

    loader = DataLoader(trained.datamodule.val_set, batch_size=32, collate_fn=unmasked)
    monitor = IntegratedGradientsMonitor(layer=T.LAYER, display=dict(vocabulary=T.TOKENIZER))
    validate(trained, monitor, loader)
    assert monitor.checks == 1
    mask = trained.probe["attention_mask"].bool()
    masked, ones = scores_of(trained.monitor), scores_of(monitor)
    assert ones.shape == masked.shape
    # Same ids and weights, only the mask differs: padding still has zero attribution ([PAD] is the baseline),
    # the real tokens' attributions and F(x) - F(x') change.
    assert torch.equal(ones[~mask], torch.zeros_like(ones[~mask]))
    padded = ~mask.all(1)
    difference = (ones - masked)[padded].abs().max()
    assert difference > 1e-2, difference
    assert not torch.allclose(monitor.last_result.delta[padded], trained.monitor.last_result.delta[padded],
                              rtol=0, atol=1e-3)
    # Examples without padding are unaffected by an all-ones mask.
    torch.testing.assert_close(ones[~padded], masked[~padded], rtol=1e-4, atol=1e-5)


def per_feature_error(monitor: IntegratedGradientsMonitor, reference: torch.Tensor) -> torch.Tensor:
    attributions = monitor.last_result.attributions.reshape(len(reference), -1)
    return (attributions - reference).norm(dim=1) / reference.norm(dim=1)


# Attention makes the path sharply curved for some examples: 32 Gauss-Legendre points (the old default) leave
# one ~90% incomplete, while the default n_steps="auto" refines exactly those examples.
def test_the_default_auto_is_accurate_where_a_fixed_rule_is_not(trained: Trained) -> None:
    reference_monitor = IntegratedGradientsMonitor(layer=T.LAYER, n_steps=1024, display=dict(vocabulary=T.TOKENIZER))
    validate(trained, reference_monitor)
    reference = reference_monitor.last_result.attributions.reshape(PROBE, -1)
    fixed = IntegratedGradientsMonitor(layer=T.LAYER, n_steps=32, display=dict(vocabulary=T.TOKENIZER))
    validate(trained, fixed)
    monitor = IntegratedGradientsMonitor(layer=T.LAYER, display=dict(vocabulary=T.TOKENIZER))  # the default: "auto"
    trainer = validate(trained, monitor)
    assert monitor.checks == 1 and "ig/attribution_error" in trainer.callback_metrics
    error, estimate = per_feature_error(monitor, reference), monitor.last_result.attribution_error
    fixed_complete, fixed_error = relative_completeness_error(fixed), per_feature_error(fixed, reference)
    print(f"\n32 Gauss-Legendre: completeness mean {fixed_complete.mean():.2e} max {fixed_complete.max():.2e}, "
          f"per-feature error mean {fixed_error.mean():.2e} max {fixed_error.max():.2e}")
    print(f"auto: completeness mean {relative_completeness_error(monitor).mean():.2e} max "
          f"{relative_completeness_error(monitor).max():.2e}, per-feature error mean {error.mean():.2e} max "
          f"{error.max():.2e}, estimate max {estimate.max():.2e}, evaluations mean "
          f"{monitor.last_result.n_evaluations.double().mean():.1f} max {int(monitor.last_result.n_evaluations.max())}")
    tolerance = monitor.integration.tolerance
    assert (relative_completeness_error(monitor) <= tolerance).all()
    assert (estimate <= tolerance).all() and (error <= 2 * tolerance).all(), (error, estimate)
    assert relative_completeness_error(fixed).max() > 10 * relative_completeness_error(monitor).max()
    # The same model and probe as in fit: the explained outputs agree.
    torch.testing.assert_close(monitor.last_result.delta, trained.monitor.last_result.delta, rtol=1e-4, atol=1e-4)


def test_the_tested_rules_state_the_trigger_words_and_never_a_special_token(trained: Trained) -> None:
    rules, special = trained.monitor.rules, set(T.TOKENIZER.all_special_ids)
    for c, trigger in TRIGGER_IDS.items():
        first = rules[c][:3]
        assert any(trigger & set(r.keys) for r in first), [r.text for r in first]
        assert all(r.text.endswith(f"-> {c}") for r in first)  # the fixture gives no class names
    assert not any(special & set(r.keys) for rs in rules.values() for r in rs)  # [CLS], [SEP], [PAD] never
