"""Explainer: which inputs are attributed, baselines in order, rule keys, attribution on one process."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ig_lightning.monitor.explainer import Explainer
from ig_lightning.monitor.probe import ModelInputs

IDS = torch.tensor([[3, 4, 0, 0], [5, 0, 6, 7]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])


def mixed():
    return ModelInputs((torch.randn(2, 3), torch.ones(2, dtype=torch.long)), {"scale": torch.rand(2, 1)})


def test_every_floating_input_is_attributed_by_default():
    explainer = Explainer(mixed(), None, None, None, None, None)
    assert explainer.names == [0, "scale"] and explainer.others == [1] and explainer.n == 2


def test_with_a_layer_the_token_ids_are_attributed():
    inputs = ModelInputs((), {"attention_mask": MASK, "input_ids": IDS})
    explainer = Explainer(inputs, None, nn.Embedding(8, 2), "embedding", None, None)
    assert explainer.names == ["input_ids"] and explainer.others == ["attention_mask"]
    positional = Explainer(ModelInputs((IDS,)), None, nn.Embedding(8, 2), "embedding", None, None)
    assert positional.names == [0]


def test_attribute_selects_and_orders_inputs():
    explainer = Explainer(mixed(), ["scale", 0], None, None, None, None)
    assert explainer.names == ["scale", 0] and explainer.others == [1]
    attributed, others = explainer.split(mixed())
    assert [t.shape for t in attributed] == [(2, 1), (2, 3)] and [t.dtype for t in others] == [torch.long]


def test_attribute_naming_a_missing_input_is_named():
    with pytest.raises(ValueError, match=r"`inputs.attribute` names inputs \['pixels'\] that the probe does not have; "
                                         r"it has \[0, 1, 'scale'\]"):
        Explainer(mixed(), ["pixels"], None, None, None, None)


def test_integer_inputs_only_need_a_layer():
    with pytest.raises(ValueError, match="the probe has no floating-point input to attribute.*pass `layer=`"):
        Explainer(ModelInputs((IDS,)), None, None, None, None, None)


def test_a_baseline_dict_is_put_in_the_attributed_order():
    base0, base_scale = torch.zeros(3), torch.ones(1)
    explainer = Explainer(mixed(), None, None, None, None, {"scale": base_scale, 0: base0})
    assert explainer.baseline == (base0, base_scale)
    partial = Explainer(mixed(), None, None, None, None, {"scale": base_scale})
    assert partial.baseline == (None, base_scale)
    with pytest.raises(ValueError, match=r"`baseline` has entries \[1\] for inputs that are not attributed"):
        Explainer(mixed(), None, None, None, None, {1: 0.0})


def test_a_baseline_tuple_needs_one_entry_per_attributed_input():
    explainer = Explainer(mixed(), None, None, None, None, (0.0, 1.0))
    assert explainer.baseline == (0.0, 1.0)
    assert explainer.baselines_for(torch.device("cpu")) == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"`baseline` must have one entry per attributed input \[0, 'scale'\], got 3"):
        Explainer(mixed(), None, None, None, None, (0.0, 1.0, 2.0))
    one = Explainer(mixed(), None, None, None, None, torch.zeros(3))
    with pytest.raises(TypeError, match="one entry per attributed input .*got one Tensor"):
        one.baselines_for(torch.device("cpu"))


def test_a_per_example_baseline_is_indexed_with_its_examples():
    base = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    explainer = Explainer(ModelInputs((torch.randn(2, 3),)), None, None, None, None, base)
    assert explainer.baselines_for(torch.device("cpu"), torch.tensor([1])).tolist() == [[2.0, 2.0, 2.0]]


def test_rule_keys_for_text_mask_padding_and_the_baseline_token():
    inputs = ModelInputs((), {"input_ids": IDS, "attention_mask": MASK})
    explainer = Explainer(inputs, None, nn.Embedding(8, 2), "embedding", None, None)  # baseline None: token 0
    keys, mask = explainer.rule_keys(inputs, torch.randn(2, 4), "text")
    assert keys.tolist() == IDS.tolist()
    assert mask.tolist() == [[True, True, False, False], [True, False, True, True]]
    with_pad = Explainer(inputs, None, nn.Embedding(8, 2), "embedding", None, 5)  # baseline token 5
    _, mask = with_pad.rule_keys(inputs, torch.randn(2, 4), "text")
    assert mask.tolist() == [[True, True, True, False], [False, True, True, True]]


def test_rule_keys_elsewhere_are_flat_feature_indices():
    explainer = Explainer(ModelInputs((torch.randn(2, 1, 2, 2),)), None, None, None, None, None)
    keys, mask = explainer.rule_keys(ModelInputs((torch.randn(2, 1, 2, 2),)), torch.randn(2, 1, 2, 2), "image")
    assert keys.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]] and mask is None


def test_attribute_on_one_process_is_the_engines_result():
    model = nn.Linear(3, 2)
    inputs = ModelInputs((torch.randn(4, 3),))
    explainer = Explainer(inputs, None, None, None, None, None)
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    result = explainer.attribute(trainer, model, inputs, torch.tensor([0, 1, 0, 1]), n_steps=4,
                                 internal_batch_size=3)
    expected = inputs.args[0] * model.weight.detach()[torch.tensor([0, 1, 0, 1])]
    torch.testing.assert_close(result.attributions, expected)
