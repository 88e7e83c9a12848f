"""The probe: a fixed batch of examples attributed at every check, taken once from the data.

A probe holds the model's *whole* input (``ModelInputs``): positional tensors, keyword tensors
(a Hugging Face batch: ``input_ids``, ``attention_mask``, ...) or both, and optional labels.

Example::

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.arange(10.0).view(5, 2), torch.tensor([0, 1, 0, 1, 1]))
    >>> probe = take_probe(DataLoader(data, batch_size=2, shuffle=True), 3, selection="first")
    >>> probe.inputs.args[0][:, 0].tolist(), probe.labels.tolist(), probe.indices
    ([0.0, 2.0, 4.0], [0, 1, 0], [0, 1, 2])
    >>> take_probe(DataLoader(data, batch_size=2), 2).indices  # stratified: one example of each class
    [0, 1]
    >>> inputs, labels = default_unpack({"input_ids": torch.ones(2, 4, dtype=torch.long),
    ...                                  "attention_mask": torch.ones(2, 4), "labels": torch.tensor([0, 1])})
    >>> inputs.names, labels.tolist()
    (['input_ids', 'attention_mask'], [0, 1])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

Name = Union[int, str]
Unpack = Callable[[Any], "tuple[Any, torch.Tensor | None]"]

#: Keys of a dict batch that make it a keyword batch (the model is called as ``model(**inputs)``).
KEYWORD_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values", "pixel_mask",
                "inputs_embeds", "input_values", "input_features", "decoder_input_ids", "decoder_attention_mask")
#: Keys of a dict batch whose tensor is the one positional input (``model(batch["x"])``).
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "features")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")
#: Keyword inputs that are attributed by default with ``layer=`` (the ones a baseline replaces).
LAYER_INPUT_KEYS = ("input_ids", "pixel_values", "input_values", "input_features", "inputs_embeds")
#: How ``probe=N`` picks its examples: spread over the classes by dataset index, or the first ``N``.
PROBE_SELECTIONS = ("stratified", "first")
#: ``"stratified"`` reads the labels of at most this many validation examples (in index order).
STRATIFY_SCAN = 10_000


@dataclass
class ModelInputs:
    """A batch as the model takes it: ``model(*args, **kwargs)``, every tensor with the batch first.

    Attributes:
        args: Positional tensors.
        kwargs: Keyword tensors, in order.
    """

    args: tuple[torch.Tensor, ...] = ()
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, inputs: Any, what: str = "`inputs.unpack`") -> ModelInputs:
        """A Tensor (one positional input), a tuple/list (positional) or a dict (keyword) of tensors."""
        if isinstance(inputs, ModelInputs):
            return inputs
        if isinstance(inputs, torch.Tensor):
            made = cls((inputs,))
        elif isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
            made = cls(tuple(inputs))
        elif isinstance(inputs, Mapping) and inputs and all(isinstance(k, str) for k in inputs):
            bad = [k for k, v in inputs.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise TypeError(f"{what} must give the model's inputs as tensors, got non-tensors at keys {bad}")
            made = cls((), dict(inputs))
        else:
            raise TypeError(
                f"{what} must give the model's inputs as a Tensor, a tuple of Tensors or a dict of Tensors, got "
                f"{type(inputs).__name__}"
            )
        made.validate()
        return made

    def validate(self) -> None:
        sizes = {name: t.shape[0] if t.ndim else None for name, t in self.items()}
        if any(s is None for s in sizes.values()) or len(set(sizes.values())) != 1:
            raise ValueError(f"every probe input must have the same batch size as its first dimension, got {sizes}")

    @property
    def names(self) -> list[Name]:
        return [*range(len(self.args)), *self.kwargs]

    def items(self) -> list[tuple[Name, torch.Tensor]]:
        return [*enumerate(self.args), *self.kwargs.items()]

    def __getitem__(self, name: Name) -> torch.Tensor:
        return self.args[name] if isinstance(name, int) else self.kwargs[name]

    def __len__(self) -> int:
        return next(iter(self.items()))[1].shape[0]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ModelInputs:
        return ModelInputs(tuple(fn(t) for t in self.args), {k: fn(v) for k, v in self.kwargs.items()})

    def replace(self, values: dict[Name, torch.Tensor]) -> ModelInputs:
        """A copy with some tensors replaced (by name or position)."""
        args = tuple(values.get(i, t) for i, t in enumerate(self.args))
        return ModelInputs(args, {k: values.get(k, v) for k, v in self.kwargs.items()})

    def same_layout(self, other: ModelInputs) -> bool:
        """Whether ``other`` has the same inputs (positions and names), each with as many dimensions (token sequences
        may be padded to other lengths)."""
        return self.names == other.names and all(self[n].ndim == other[n].ndim for n in self.names)

    def call(self, model: Callable[..., Any]) -> Any:
        return model(*self.args, **self.kwargs)

    def state(self) -> dict[str, Any]:
        """Plain containers of tensors, loadable with ``torch.load(weights_only=True)``."""
        return {"args": list(self.args), "kwargs": dict(self.kwargs)}

    @classmethod
    def from_state(cls, state: Any) -> ModelInputs:
        if isinstance(state, torch.Tensor):  # checkpoints written before probes had a structure
            return cls((state,))
        return cls(tuple(state.get("args", ())), dict(state.get("kwargs", {})))


@dataclass
class Probe:
    """The fixed batch every check attributes: the model's inputs, the labels, and where they came from.

    Attributes:
        inputs: The model's inputs (CPU).
        labels: One label per example, or ``None``.
        indices: The examples' indices in the validation dataset, when taken from a map-style one.
        classes: The classes seen among the validation labels that were read (``"stratified"``), for the
            coverage warning; ``None`` when unknown.
        pairs: Whether every row is one (example, positive label) pair of a multi-label probe (its label is
            then that class), see ``positive_pairs()``.
    """

    inputs: ModelInputs
    labels: torch.Tensor | None = None
    indices: list[int] | None = None
    classes: list[int] | None = None
    pairs: bool = False

    def __len__(self) -> int:
        return len(self.inputs)

    def missing_classes(self) -> list[int]:
        """Classes of the validation data that no probe example has (empty when unknown)."""
        if self.classes is None or self.labels is None or self.labels.ndim != 1:
            return []
        present = set(self.labels.reshape(-1).tolist())
        return [c for c in self.classes if c not in present]

    def positive_pairs(self) -> Probe:
        """One row per (example, positive label) of multi-hot labels ``(B, C)``: the example's inputs repeated,
        its label the class; examples without a positive label are left out.

        Raises:
            ValueError: the labels are not multi-hot rows of 0/1, or no example has a positive label.

        Example::

            >>> probe = Probe(ModelInputs((torch.arange(3.0).view(3, 1),)), torch.tensor([[1, 1], [0, 0], [0, 1]]))
            >>> pairs = probe.positive_pairs()
            >>> pairs.inputs.args[0].flatten().tolist(), pairs.labels.tolist(), pairs.indices
            ([0.0, 0.0, 2.0], [0, 1, 1], [0, 0, 2])
        """
        labels = self.labels
        if labels is None or labels.ndim != 2 or not bool(((labels == 0) | (labels == 1)).all()):
            got = None if labels is None else (str(labels.dtype), tuple(labels.shape))
            raise ValueError(f"`target`='positive_labels' needs multi-hot labels (B, C) of 0/1 in the probe, got {got}")
        rows, classes = labels.bool().nonzero(as_tuple=True)
        if not len(rows):
            raise ValueError("`target`='positive_labels': no probe example has a positive label")
        indices = [self.indices[r] for r in rows.tolist()] if self.indices is not None else rows.tolist()
        return Probe(self.inputs.map(lambda t: t[rows]), classes.long(), indices, self.classes, pairs=True)

    def state(self) -> dict[str, Any]:
        """Plain containers of tensors and ints, loadable with ``torch.load(weights_only=True)``."""
        return {"inputs": self.inputs.state(), "labels": self.labels, "indices": self.indices,
                "classes": self.classes, "pairs": self.pairs}

    @classmethod
    def from_state(cls, state: Any, labels: torch.Tensor | None = None) -> Probe:
        """Read ``state()``, or (checkpoints of earlier versions) the inputs' state and separate labels."""
        if isinstance(state, Mapping) and "inputs" in state:
            return cls(ModelInputs.from_state(state["inputs"]), state.get("labels"), state.get("indices"),
                       state.get("classes"), bool(state.get("pairs", False)))
        return cls(ModelInputs.from_state(state), labels)


def default_unpack(batch: Any) -> tuple[ModelInputs, torch.Tensor | None]:
    """The model's inputs and the labels in a batch.

    - a Tensor: the one input, no labels;
    - a tuple/list ``(x, y, ...)``: ``x`` is the input, ``y`` the labels (when a Tensor);
    - a dict with Hugging Face keys (``input_ids``, ``attention_mask``, ``pixel_values``, ...): every tensor
      but the labels (``labels``, ``label``, ``y``, ...) is passed as a keyword argument;
    - another dict: the tensor at ``x``/``input``/``image``/``features``... is the one input.

    Raises:
        TypeError: no inputs found; pass ``unpack=`` to the monitor to say where they are.
    """
    if isinstance(batch, torch.Tensor):
        return ModelInputs((batch,)), None
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) and isinstance(batch[0], torch.Tensor):
        label = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return ModelInputs((batch[0],)), label
    if isinstance(batch, Mapping):
        labels = next((batch[k] for k in LABEL_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
        if any(isinstance(batch.get(k), torch.Tensor) for k in KEYWORD_KEYS):
            kwargs = {k: v for k, v in batch.items()
                      if isinstance(k, str) and isinstance(v, torch.Tensor) and k not in LABEL_KEYS}
            return ModelInputs((), kwargs), labels
        inputs = next((batch[k] for k in INPUT_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
        if inputs is not None:
            return ModelInputs((inputs,)), labels
    keys = f" with keys {list(batch)[:10]}" if isinstance(batch, Mapping) else ""
    raise TypeError(
        f"cannot find the inputs in a batch of type {type(batch).__name__}{keys}: pass `unpack=`, a callable "
        "mapping a batch to (inputs, labels or None), inputs being a Tensor, a tuple (positional arguments) "
        "or a dict (keyword arguments) of Tensors"
    )


def unpack_checked(unpack: Unpack, batch: Any) -> tuple[ModelInputs, torch.Tensor | None]:
    """Call ``unpack`` and check what it returns."""
    try:
        out = unpack(batch)
    except Exception as error:
        if unpack is default_unpack:
            raise
        raise ValueError(f"`inputs.unpack` raised {type(error).__name__}: {error} on a validation batch") from error
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"`inputs.unpack` must return (inputs, labels or None), got {type(out).__name__}")
    inputs, labels = ModelInputs.of(out[0]), out[1]
    if labels is not None and not isinstance(labels, torch.Tensor):
        raise TypeError(f"`inputs.unpack` must return labels as a Tensor or None, got {type(labels).__name__}")
    return inputs, labels


def take_probe(dataloader: DataLoader, n: int, unpack: Unpack = default_unpack,
               selection: str = "stratified") -> Probe:
    """``n`` examples of ``dataloader``'s dataset (fewer if it has fewer), on CPU.

    Map-style datasets are indexed directly (collated with the loader's ``collate_fn``), so the probe does not
    depend on shuffling or on a distributed sampler: every process gets the same examples. With
    ``selection="stratified"`` and integer class labels, the examples are spread over the classes: the labels of
    the first ``STRATIFY_SCAN`` examples are read, and classes take turns (in ascending order) giving their
    next example by index, until ``n`` are in; the probe keeps dataset order. ``"first"`` takes indices
    ``0..n-1``. Iterable datasets are read batch by batch until ``n`` are in (always ``"first"``).
    """
    dataset = getattr(dataloader, "dataset", None)
    collate = getattr(dataloader, "collate_fn", None) or default_collate
    # Without automatic batching (batch_size=None) the dataset's items are whole batches: read the loader.
    batches_items = getattr(dataloader, "batch_sampler", True) is None
    if (dataset is not None and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__")
            and not batches_items):
        if len(dataset) == 0:
            raise ValueError("the validation dataset is empty: cannot take a probe from it")

        def read(indices: Sequence[int]) -> tuple[ModelInputs, torch.Tensor | None]:
            return unpack_checked(unpack, collate([dataset[i] for i in indices]))

        classes = None
        indices = list(range(min(n, len(dataset))))
        if selection == "stratified" and len(dataset) > 0:
            chosen, classes = _stratified(read, len(dataset), n)
            indices = chosen if chosen is not None else indices
        inputs, labels = read(indices)
        return Probe(*_to_cpu(inputs, labels, n), indices=indices, classes=classes)
    parts: list[tuple[ModelInputs, torch.Tensor | None]] = []
    for batch in dataloader:
        parts.append(unpack_checked(unpack, batch))
        if sum(len(x) for x, _ in parts) >= n:
            break
    if not parts:
        raise ValueError("the validation dataloader yielded no batch: cannot take a probe from it")
    first = parts[0][0]
    try:
        inputs = ModelInputs(
            tuple(torch.cat([x.args[i] for x, _ in parts]) for i in range(len(first.args))),
            {k: torch.cat([x.kwargs[k] for x, _ in parts]) for k in first.kwargs},
        )
        labels = None if any(y is None for _, y in parts) else torch.cat([y for _, y in parts])
    except (RuntimeError, KeyError, IndexError) as error:
        raise ValueError(
            f"`probe`={n} spans {len(parts)} validation batches that cannot be joined ({error}): batches padded to "
            "their own longest sequence differ in shape. Use a probe no larger than one batch, or give the probe "
            "itself (`probe=batch`)"
        ) from error
    return Probe(*_to_cpu(inputs, labels, n))


def _stratified(read: Callable[[Sequence[int]], tuple[ModelInputs, torch.Tensor | None]], size: int,
                n: int) -> tuple[list[int] | None, list[int] | None]:
    """Indices spread over the classes (``None`` when the labels are not class indices), and the classes seen."""
    scanned = min(size, STRATIFY_SCAN)
    labels = []
    for start in range(0, scanned, 256):  # labels in chunks: the inputs are read too, and dropped
        _, y = read(range(start, min(start + 256, scanned)))
        if y is not None and y.ndim == 2 and y.shape[1] > 1 and bool(((y == 0) | (y == 1)).all()) and \
                bool((y.sum(1) == 1).all()):
            y = y.argmax(1)  # one-hot rows: their class
        if y is None or y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
            return None, None
        labels.append(y.cpu())
    label = torch.cat(labels)
    classes = sorted(set(label.tolist()))
    per_class = [(label == c).nonzero().flatten().tolist() for c in classes]
    chosen: list[int] = []
    for turn in range(max(len(p) for p in per_class)):
        for members in per_class:
            if turn < len(members) and len(chosen) < n:
                chosen.append(members[turn])
    return sorted(chosen), classes


def _to_cpu(inputs: ModelInputs, labels: torch.Tensor | None, n: int) -> tuple[ModelInputs, torch.Tensor | None]:
    inputs = inputs.map(lambda t: t[:n].detach().cpu().clone())
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
