"""The probe: which examples take_probe picks, how a batch is unpacked, and its state in checkpoints."""

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from ig_lightning.monitor.probe import ModelInputs, Probe, default_unpack, take_probe

# labels by index: 0 1 2 | 0 0 1 | 2 2 2 | 1 0 2   (class 0 at 0, 3, 4, 10; class 1 at 1, 5, 9; class 2 at 2, 6, 7, 8, 11)
LABELS = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 2, 1, 0, 2])
DATA = TensorDataset(torch.arange(12.0).view(12, 1) * 10, LABELS)


def loader(shuffle=False, seed=0, batch_size=4, data=DATA):
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def test_first_takes_the_first_indices_whatever_the_shuffle():
    for seed in (0, 1):
        probe = take_probe(loader(shuffle=True, seed=seed), 5, selection="first")
        assert probe.indices == [0, 1, 2, 3, 4]
        assert probe.inputs.args[0].flatten().tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
        assert probe.labels.tolist() == [0, 1, 2, 0, 0] and probe.classes is None


@pytest.mark.parametrize("n", [1, 3, 4, 6, 8, 12])
def test_stratified_probes_are_in_dataset_order_with_their_labels(n):
    probe = take_probe(loader(), n)
    assert probe.classes == [0, 1, 2]
    assert probe.indices == sorted(probe.indices) and len(probe.indices) == n
    assert probe.labels.tolist() == LABELS[probe.indices].tolist()
    assert probe.inputs.args[0].flatten().tolist() == [10.0 * i for i in probe.indices]


def test_stratified_exact_indices():
    # turn 1: 0, 1, 2; turn 2: 3, 5, 6; turn 3: 4, 9, 7; turn 4: 10, (class 1 has no 4th), 8; turn 5: 11
    assert take_probe(loader(), 3).indices == [0, 1, 2]
    assert take_probe(loader(), 6).indices == [0, 1, 2, 3, 5, 6]
    assert take_probe(loader(), 8).indices == [0, 1, 2, 3, 4, 5, 6, 9]
    assert take_probe(loader(), 9).indices == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    assert take_probe(loader(), 11).indices == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert take_probe(loader(), 50).indices == list(range(12))


def test_stratified_is_deterministic_and_independent_of_the_shuffle():
    probes = [take_probe(loader(shuffle=True, seed=seed, batch_size=b), 6) for seed, b in ((0, 4), (1, 3), (2, 12))]
    probes.append(take_probe(loader(), 6))
    assert all(p.indices == [0, 1, 2, 3, 5, 6] for p in probes)
    assert all(torch.equal(p.inputs.args[0], probes[0].inputs.args[0]) for p in probes)


def test_stratified_spreads_where_first_would_miss_classes():
    data = TensorDataset(torch.zeros(9, 2), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2]))
    assert take_probe(loader(data=data), 3, selection="first").labels.tolist() == [0, 0, 0]
    probe = take_probe(loader(data=data), 3)
    assert probe.indices == [0, 6, 8] and probe.labels.tolist() == [0, 1, 2] and probe.missing_classes() == []


def test_float_labels_fall_back_to_the_first_examples():
    data = TensorDataset(torch.arange(6.0).view(6, 1), torch.rand(6))
    probe = take_probe(loader(data=data), 4)
    assert probe.indices == [0, 1, 2, 3] and probe.classes is None
    assert probe.inputs.args[0].flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(10):
            yield torch.tensor([float(i)]), torch.tensor(i % 2)


def test_iterable_datasets_are_read_in_order():
    probe = take_probe(DataLoader(Stream(), batch_size=3), 5)
    assert probe.inputs.args[0].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert probe.labels.tolist() == [0, 1, 0, 1, 0]
    assert probe.indices is None and probe.classes is None


def test_an_empty_dataset_is_named():
    with pytest.raises(ValueError, match="the validation dataset is empty"):
        take_probe(loader(data=TensorDataset(torch.zeros(0, 2), torch.zeros(0))), 4)


def test_missing_classes():
    assert Probe(ModelInputs((torch.zeros(3, 1),)), torch.tensor([0, 2, 2]), classes=[0, 1, 2, 3]).missing_classes() \
        == [1, 3]
    assert Probe(ModelInputs((torch.zeros(3, 1),)), torch.tensor([0, 2, 2])).missing_classes() == []
    assert Probe(ModelInputs((torch.zeros(3, 1),)), None, classes=[0, 1]).missing_classes() == []


def test_probe_state_round_trip():
    probe = take_probe(loader(), 6)
    state = probe.state()
    assert set(state) == {"inputs", "labels", "indices", "classes", "pairs"}
    again = Probe.from_state(state)
    assert torch.equal(again.inputs.args[0], probe.inputs.args[0]) and torch.equal(again.labels, probe.labels)
    assert again.indices == [0, 1, 2, 3, 5, 6] and again.classes == [0, 1, 2]


def test_probe_from_an_old_style_state():
    x, labels = torch.randn(3, 2), torch.tensor([1, 0, 1])
    old = Probe.from_state({"args": [x], "kwargs": {}}, labels)  # ModelInputs' state and separate labels
    assert torch.equal(old.inputs.args[0], x) and torch.equal(old.labels, labels)
    assert old.indices is None and old.classes is None
    oldest = Probe.from_state(x)  # a bare tensor: checkpoints before probes had a structure
    assert oldest.inputs.names == [0] and torch.equal(oldest.inputs.args[0], x) and oldest.labels is None
    kwargs = Probe.from_state({"args": [], "kwargs": {"input_ids": torch.ones(2, 3, dtype=torch.long)}})
    assert kwargs.inputs.names == ["input_ids"] and len(kwargs) == 2


@pytest.mark.parametrize("batch, names", [
    (torch.zeros(2, 3), [0]),
    ((torch.zeros(2, 3), torch.tensor([0, 1])), [0]),
    ({"x": torch.zeros(2, 3), "y": torch.tensor([0, 1])}, [0]),
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "token_type_ids": torch.zeros(2, 3, dtype=torch.long),
      "pixel_values": torch.zeros(2, 3), "labels": torch.tensor([0, 1]), "text": ["a", "b"]},
     ["input_ids", "token_type_ids", "pixel_values"]),
])
def test_default_unpack_understands_plain_and_hugging_face_batches(batch, names):
    inputs, labels = default_unpack(batch)
    assert isinstance(inputs, ModelInputs) and inputs.names == names


def test_unpack_errors_name_what_they_got():
    with pytest.raises(TypeError, match=r"keys \['a', 'b'\].*unpack="):
        default_unpack({"a": 1, "b": torch.zeros(2)})
    with pytest.raises(TypeError, match="non-tensors at keys"):
        ModelInputs.of({"input_ids": torch.zeros(2), "text": "x"})
    with pytest.raises(ValueError, match="same batch size"):
        ModelInputs.of((torch.zeros(2, 3), torch.zeros(3, 3)))
