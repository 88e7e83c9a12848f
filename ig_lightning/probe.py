"""The probe: a fixed batch of examples attributed at every check, taken once from the data.

Example::

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.arange(10.0).view(5, 2), torch.tensor([0, 1, 0, 1, 1]))
    >>> inputs, labels = take_probe(DataLoader(data, batch_size=2, shuffle=True), 3)
    >>> inputs[:, 0].tolist(), labels.tolist()
    ([0.0, 2.0, 4.0], [0, 1, 0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

Unpack = Callable[[Any], "tuple[torch.Tensor, torch.Tensor | None]"]

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "input_ids", "features")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def default_unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and labels from a batch: ``x``, ``(x, y, ...)``, or a dict with keys such as ``"x"``/``"y"``.

    Raises:
        TypeError: no inputs found; pass ``unpack=`` to the monitor to say where they are.
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) and isinstance(batch[0], torch.Tensor):
        label = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], label
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in INPUT_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
        labels = next((batch[k] for k in LABEL_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
        if inputs is not None:
            return inputs, labels
    raise TypeError(
        f"cannot find the inputs in a batch of type {type(batch).__name__}: pass `unpack=`, a callable "
        "mapping a batch to (inputs, labels or None)"
    )


def unpack_checked(unpack: Unpack, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Call ``unpack`` and check what it returns."""
    out = unpack(batch)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
        raise TypeError(f"`unpack` must return (inputs: Tensor, labels: Tensor | None), got {type(out).__name__}")
    if out[1] is not None and not isinstance(out[1], torch.Tensor):
        raise TypeError(f"`unpack` must return labels as a Tensor or None, got {type(out[1]).__name__}")
    return out


def take_probe(
    dataloader: DataLoader, n: int, unpack: Unpack = default_unpack
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` examples of ``dataloader``'s dataset, on CPU.

    Map-style datasets are indexed directly (``dataset[0..n-1]``, collated with the loader's
    ``collate_fn``), so the probe does not depend on shuffling or on a distributed sampler: every
    process gets the same examples. Iterable datasets are read batch by batch until ``n`` are in.
    """
    dataset = getattr(dataloader, "dataset", None)
    collate = getattr(dataloader, "collate_fn", None) or default_collate
    # Without automatic batching (batch_size=None) the dataset's items are whole batches: read the loader.
    batches_items = getattr(dataloader, "batch_sampler", True) is None
    if (dataset is not None and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__")
            and not batches_items):
        count = min(n, len(dataset))
        if count == 0:
            raise ValueError("the validation dataset is empty: cannot take a probe from it")
        return _to_cpu(*unpack_checked(unpack, collate([dataset[i] for i in range(count)])), n)
    inputs, labels = [], []
    for batch in dataloader:
        x, y = unpack_checked(unpack, batch)
        inputs.append(x)
        labels.append(y)
        if sum(len(t) for t in inputs) >= n:
            break
    if not inputs:
        raise ValueError("the validation dataloader yielded no batch: cannot take a probe from it")
    label = None if any(y is None for y in labels) else torch.cat(labels)
    return _to_cpu(torch.cat(inputs), label, n)


def _to_cpu(inputs: torch.Tensor, labels: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    inputs = inputs[:n].detach().cpu().clone()
    return inputs, None if labels is None else labels[:n].detach().cpu().clone()


def first_val_dataloader(loaders: Any) -> DataLoader | None:
    """The first validation dataloader, whatever container Lightning keeps them in."""
    if loaders is None:
        return None
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders
