"""Causal language models: explain the next token at the last real position of a prompt (issue 15, item 8).

A tiny randomly initialised GPT-2 (``examples/causal_lm.py``, no download) is wrapped so that
``forward(input_ids, attention_mask)`` returns the next-token logits at each prompt's last real token, with
positions counted from the mask. The same prompts padded on the left and on the right must then give the
same attributions on their real tokens, exactly zero on padding (the baseline is the pad id), and explain
the very logit one computes by hand from the Hugging Face model.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("transformers")

from conftest import trainer

from examples import causal_lm as C
from ig_lightning import IntegratedGradientsMonitor

LENGTH, PROBE, N_STEPS = 10, 8, 64
PROMPTS = C.prompts(12, seed=3, min_len=2, max_len=LENGTH)


@pytest.fixture(scope="module")
def model() -> C.NextTokenLM:
    torch.manual_seed(0)
    # A larger init spread than GPT-2's 0.02 so that the random model's next-token logits are not all ~0.
    return C.NextTokenLM(C.tiny_config(initializer_range=0.3)).eval()


def explain(model: C.NextTokenLM, side: str, tmp_path) -> tuple[IntegratedGradientsMonitor, dict]:
    """``trainer.validate`` with the monitor on the prompts padded on ``side``; the probe it explained."""
    rows = C.pad(PROMPTS, side, LENGTH)
    monitor = IntegratedGradientsMonitor(probe=PROBE, layer=C.LAYER, target="prediction", baseline=C.PAD_ID,
                                         n_steps=N_STEPS, display=dict(log_images=False))
    trainer(tmp_path / side, [monitor], max_epochs=1).validate(model, DataLoader(rows, batch_size=4), verbose=False)
    indices = list(monitor.probe.indices)
    probe = {k: torch.stack([rows[i][k] for i in indices]) for k in ("input_ids", "attention_mask")}
    return monitor, probe


@pytest.fixture(scope="module")
def explained(model, tmp_path_factory) -> dict[str, tuple[IntegratedGradientsMonitor, dict]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("causal_lm")
        return {side: explain(model, side, root) for side in ("left", "right")}
    finally:
        torch.set_num_threads(threads)


def real_scores(attributions: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each example's attributions ``(real tokens, hidden)`` in prompt order."""
    return [a[m.bool()] for a, m in zip(attributions, mask)]


def test_helpers_find_the_last_real_token_and_its_position() -> None:
    for side in ("left", "right"):
        rows = C.pad([[5, 6, 7], [8]], side, 4)
        mask = torch.stack([r["attention_mask"] for r in rows])
        ids = torch.stack([r["input_ids"] for r in rows])
        last = C.last_real_position(mask)
        assert ids[torch.arange(2), last].tolist() == [7, 8]
        assert C.position_ids(mask)[torch.arange(2), last].tolist() == [2, 0]
        assert int((ids * (1 - mask)).abs().sum()) == 0  # padding is the pad id


def test_left_padding_needs_position_ids_and_the_wrapper_gives_the_same_logits(model) -> None:
    left = C.pad(PROMPTS, "left", LENGTH)
    right = C.pad(PROMPTS, "right", LENGTH)
    stack = lambda rows, k: torch.stack([r[k] for r in rows])
    with torch.no_grad():
        out_left = model(stack(left, "input_ids"), stack(left, "attention_mask"))
        out_right = model(stack(right, "input_ids"), stack(right, "attention_mask"))
        # Without position_ids GPT-2 numbers left padding as positions: the prompt is shifted, the logits differ.
        shifted = model.lm(input_ids=stack(left, "input_ids"), attention_mask=stack(left, "attention_mask")).logits
    assert out_left.shape == (len(PROMPTS), C.tiny_config().vocab_size)
    torch.testing.assert_close(out_left, out_right, rtol=1e-5, atol=1e-5)
    short = torch.tensor([len(p) < LENGTH for p in PROMPTS])
    assert (shifted[short, -1] - out_left[short]).abs().max() > 1e-3


def test_left_and_right_padding_give_the_same_attributions_and_zero_on_padding(explained) -> None:
    (left, left_probe), (right, right_probe) = explained["left"], explained["right"]
    assert left.probe.indices == right.probe.indices
    assert torch.equal(left.targets, right.targets)
    a_left, a_right = left.last_result.attributions, right.last_result.attributions
    assert a_left.shape == a_right.shape == (PROBE, LENGTH, 32)  # (probe, tokens, n_embd)
    assert bool((left_probe["attention_mask"] == 0).any())  # some padding in the probe
    for side, monitor, probe in (("left", left, left_probe), ("right", right, right_probe)):
        padding = probe["attention_mask"] == 0
        assert torch.equal(monitor.last_result.attributions[padding], torch.zeros_like(
            monitor.last_result.attributions[padding])), side
    for l_row, r_row in zip(real_scores(a_left, left_probe["attention_mask"]),
                            real_scores(a_right, right_probe["attention_mask"])):
        torch.testing.assert_close(l_row, r_row, rtol=1e-4, atol=1e-4)
        assert float(l_row.abs().sum()) > 0


def test_completeness_and_the_explained_output_is_the_next_token_logit(explained, model) -> None:
    for side, (monitor, probe) in explained.items():
        result = monitor.last_result
        relative = result.completeness_error.abs() / result.delta.abs()
        assert float(relative.max()) < 0.01, (side, relative)
        ids, mask = probe["input_ids"], probe["attention_mask"]
        rows = torch.arange(len(ids))
        lengths = mask.sum(1)
        last = lengths - 1 if side == "right" else torch.full_like(lengths, LENGTH - 1)
        with torch.no_grad():
            positions = (mask.cumsum(1) - 1).clamp_min(0)  # by hand: HF does not derive them from the mask
            logits = model.lm(input_ids=ids, attention_mask=mask, position_ids=positions).logits[rows, last]
            base = model.lm(input_ids=torch.full_like(ids, C.PAD_ID), attention_mask=mask,
                            position_ids=positions).logits[rows, last]
        # target="prediction": the model's next token at the first check.
        assert torch.equal(monitor.targets.cpu(), logits.argmax(-1))
        target = monitor.targets.cpu()
        expected = logits[rows, target] - base[rows, target]
        torch.testing.assert_close(result.delta.to(expected.dtype).cpu(), expected, rtol=1e-4, atol=1e-5)
        assert float(expected.abs().min()) > 1e-3  # a delta that means something
