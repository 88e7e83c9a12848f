"""Model-parameter randomisation, cascading from the top, in place and restored bit-exactly.

- :func:`randomizable_layers`: the layers that can be randomised, top (output) first; normalisation
  layers are never listed (their "reset" is not random and BatchNorm statistics must not be touched).
- :func:`randomized`: a context manager that re-initialises layers in place with their own
  ``reset_parameters()`` under a forked RNG and restores them bit-exactly on exit.
- :func:`cascade`: cumulative randomisation; ``attribute_fn()`` runs after the first ``k`` layers for
  each ``k`` in ``points``.

Example::

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    >>> [name for name, _ in randomizable_layers(model)]
    ['3', '0']
    >>> before = [p.clone() for p in model.parameters()]
    >>> x = torch.randn(5, 4)
    >>> runs = cascade(model, randomizable_layers(model), lambda: model(x).detach(), points=[1, 2], seed=0)
    >>> [(k, name) for k, name, _ in runs]
    [(1, '3'), (2, '0')]
    >>> all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    True
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Union

import torch
from torch import nn

from ig_lightning._validation import validate_int

__all__ = ["LayerSpec", "cascade", "cascade_points", "randomizable_layers", "randomized"]

Maps = Union[torch.Tensor, Sequence[torch.Tensor]]
#: A layer given to :func:`randomized` / :func:`cascade`: a ``(name, module)`` pair (as listed by
#: :func:`randomizable_layers`), a module of the model, or a module's qualified name.
LayerSpec = Union[tuple[str, nn.Module], nn.Module, str]

_NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*, their lazy versions
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
# Hugging Face and other hand-written norms: LlamaRMSNorm, T5LayerNorm, FusedLayerNorm, ...
_NORM_NAME = re.compile(r"Norm(alization)?(\d+d)?$")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def _is_randomizable(module: nn.Module) -> bool:
    if _is_norm(module) or not callable(getattr(module, "reset_parameters", None)):
        return False
    own = list(module.parameters(recurse=False))
    return bool(own) and not any(nn.parameter.is_lazy(p) for p in own)

# ----------------------------------------------------------------------------------------------- layers


def randomizable_layers(
    model: nn.Module, *, order_by: Callable[[], Any] | torch.Tensor | tuple[Any, ...] | None = None
) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that a parameter-randomisation test re-initialises, top (output) first.

    A module is listed when it has a callable ``reset_parameters`` and at least one parameter of its own
    (``parameters(recurse=False)``, none of them lazy), and is not a normalisation layer: ``BatchNorm*``,
    ``SyncBatchNorm``, ``InstanceNorm*``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``LocalResponseNorm``,
    and any module whose class name ends in ``Norm`` (``LlamaRMSNorm``, ``T5LayerNorm``, ...). Their
    ``reset_parameters()`` sets constants (ones and zeros) rather than random values and, for BatchNorm,
    wipes the running statistics. Modules without ``reset_parameters`` (parameters held directly by a
    custom module, ``nn.MultiheadAttention``'s input projection) are never randomised; note also that
    some resets are constants (``nn.PReLU``).

    Order, top first:

    - ``order_by`` given: the reverse of the order in which the modules are first *entered* during one
      forward pass (a module's pre-hook fires before its children's). Run with the model in eval mode and
      under ``torch.no_grad()`` (so BatchNorm statistics are not updated); every module's mode is restored
      afterwards. Listed modules that the pass never calls come last, in reverse registration order. A
      module called several times counts at its first call.
    - otherwise: the reverse of ``model.named_modules()`` (registration) order, which is the forward
      order for ``nn.Sequential`` and for models that register their layers in the order they use them.

    Args:
        model: The model.
        order_by: ``None``, a callable with no arguments that runs the model once (``lambda: model(x)``),
            or an example input (a Tensor, or a tuple of positional arguments) passed as ``model(*inputs)``.

    Returns:
        ``(qualified name, module)`` pairs, top (output) first; a shared module appears once.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``order_by`` is neither callable nor an input.

    Example::

        >>> from torch import nn
        >>> class Net(nn.Module):  # registered out of forward order
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.head, self.norm, self.body = nn.Linear(3, 1), nn.LayerNorm(3), nn.Linear(2, 3)
        ...     def forward(self, x):
        ...         return self.head(self.norm(self.body(x)))
        >>> [name for name, _ in randomizable_layers(Net())]
        ['body', 'head']
        >>> import torch
        >>> [name for name, _ in randomizable_layers(Net(), order_by=torch.zeros(1, 2))]
        ['head', 'body']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    candidates = [(name, m) for name, m in model.named_modules() if _is_randomizable(m)]
    registration = list(reversed(candidates))
    if order_by is None:
        return registration
    if isinstance(order_by, torch.Tensor):
        inputs: tuple[Any, ...] = (order_by,)
        run: Callable[[], Any] = lambda: model(*inputs)  # noqa: E731
    elif isinstance(order_by, tuple):
        inputs = order_by
        run = lambda: model(*inputs)  # noqa: E731
    elif callable(order_by):
        run = order_by
    else:
        raise TypeError(
            f"`order_by` must be None, a callable running the model, or an example input, got {type(order_by).__name__}"
        )
    first_call: dict[int, int] = {}

    def record(module: nn.Module, _args: Any) -> None:
        first_call.setdefault(id(module), len(first_call))

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(record) for _, m in candidates]
    try:
        model.eval()
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    called = sorted((pair for pair in candidates if id(pair[1]) in first_call), key=lambda p: -first_call[id(p[1])])
    return called + [pair for pair in registration if id(pair[1]) not in first_call]


def _resolve_layers(model: nn.Module, layers: Any) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Sequence):
        raise TypeError(
            "`layers` must be a list of (name, module) pairs, modules or module names, "
            f"got {type(layers).__name__}"
        )
    names = {id(m): name for name, m in model.named_modules()}
    resolved: list[tuple[str, nn.Module]] = []
    for item in layers:
        if isinstance(item, str):
            try:
                module = model.get_submodule(item)
            except AttributeError:
                raise ValueError(f"`layers` names a module that `model` does not have: {item!r}") from None
            name = item
        elif isinstance(item, nn.Module):
            module, name = item, names.get(id(item), "")
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], nn.Module):
            name, module = str(item[0]), item[1]
        else:
            raise TypeError(f"`layers` must hold (name, module) pairs, modules or module names, got {item!r}")
        if id(module) not in names:
            raise ValueError(f"`layers` holds a module that is not part of `model`: {name or type(module).__name__}")
        if _is_norm(module):
            raise ValueError(
                f"`layers` holds a normalisation layer, which is never randomised: {name!r} ({type(module).__name__})"
            )
        if not callable(getattr(module, "reset_parameters", None)):
            raise ValueError(
                f"`layers` holds a module without `reset_parameters()`: {name!r} ({type(module).__name__})"
            )
        if any(module is m for _, m in resolved):
            raise ValueError(f"`layers` holds the same module twice: {name!r}")
        resolved.append((name, module))
    return resolved


# ------------------------------------------------------------------------------------ randomise, restore


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t``'s data on the CPU (what restoring reads back)."""
    return t.detach().to("cpu", copy=True)


def _layer_seed(seed: int, index: int) -> int:
    """A 63-bit seed for the ``index``-th layer, the same in every process and for every list of points."""
    digest = hashlib.blake2b(f"ig_lightning.sanity:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Snapshot:
    """Saved state of the modules it has seen: tensors' data (on CPU, once per tensor), the tensor object held
    in each parameter/buffer slot, each tensor's ``requires_grad`` and ``.grad``, every module's mode."""

    def __init__(self, model: nn.Module) -> None:
        self._modes = [(m, m.training) for m in model.modules()]
        self._modules: set[int] = set()
        self._slots: list[tuple[dict[str, Any], str, Any]] = []
        self._tensors: dict[int, tuple[torch.Tensor, torch.Tensor | None, bool, torch.Tensor | None]] = {}

    def save(self, module: nn.Module) -> None:
        for m in module.modules():
            if id(m) in self._modules:
                continue
            self._modules.add(id(m))
            for slots in (m._parameters, m._buffers):
                for name, t in slots.items():
                    self._slots.append((slots, name, t))
                    if t is not None and id(t) not in self._tensors:
                        data = None if t.is_meta else _to_host(t)
                        self._tensors[id(t)] = (t, data, t.requires_grad, t.grad if t.is_leaf else None)

    def restore(self) -> None:
        for slots, name, t in self._slots:
            if slots.get(name) is not t:
                slots[name] = t
        with torch.no_grad():
            for t, data, requires_grad, grad in self._tensors.values():
                if data is not None:
                    t.copy_(data)
                if t.is_leaf:
                    if t.requires_grad != requires_grad:
                        t.requires_grad_(requires_grad)
                    if t.grad is not grad:
                        t.grad = grad
        for m, training in self._modes:
            m.training = training


def _reset(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` with every RNG it may draw from seeded, the global streams untouched."""
    accelerators: dict[str, set[int]] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type not in ("cpu", "meta"):
            accelerators.setdefault(t.device.type, set()).add(t.device.index or 0)
    with ExitStack() as stack:
        if not accelerators:
            stack.enter_context(torch.random.fork_rng(devices=[]))
        for kind, indices in accelerators.items():
            stack.enter_context(torch.random.fork_rng(devices=sorted(indices), device_type=kind))
        torch.random.default_generator.manual_seed(seed)
        for kind, indices in accelerators.items():
            device_module = torch.get_device_module(kind)
            for index in sorted(indices):
                on_device = getattr(device_module, "device", None)
                with on_device(index) if callable(on_device) else ExitStack():
                    device_module.manual_seed(seed)
        with torch.no_grad():
            module.reset_parameters()


def _validate_seed(seed: Any) -> int:
    return validate_int(seed, "seed")


@contextmanager
def randomized(model: nn.Module, layers: Sequence[LayerSpec], *, seed: int) -> Iterator[nn.Module]:
    """Re-initialise ``layers`` of ``model`` in place for the duration of the block; restore them bit-exactly.

    Layers are processed one at a time, in the order given: the data of the layer's parameters and buffers
    (its submodules' included, since a custom ``reset_parameters`` may reach them) is copied to the CPU, then
    ``layer.reset_parameters()`` runs under ``torch.random.fork_rng`` (the CPU generator and those of the
    accelerators holding the layer's tensors) seeded from ``seed`` and the layer's position ``i`` in
    ``layers``. So the global RNG streams are not consumed, the same ``seed`` gives the same weights, and the
    first ``k`` layers get the same weights whatever follows them (as in :func:`cascade`).

    On exit, also when the block raises: every saved tensor's data is copied back (``.copy_`` under
    ``torch.no_grad()``) into the same tensor object, and every parameter/buffer slot again holds its
    original object (a ``reset_parameters`` that assigned a new ``nn.Parameter`` is undone; tied weights stay
    one object). ``.grad``, ``requires_grad`` and every module's training mode are as before. A tensor shared
    by several layers is saved once, before its first reset. Normalisation layers are refused.

    Memory: the saved copies live on the CPU (as much host memory as the randomised layers' tensors);
    device memory grows by no more than what one ``reset_parameters()`` allocates for itself.

    In-place resets bump the tensors' version counters: do not reuse an autograd graph built before the
    block for a backward pass after it.

    Args:
        model: The model holding ``layers``.
        layers: ``(name, module)`` pairs (from :func:`randomizable_layers`), modules of ``model``, or qualified
            module names; each module must have ``reset_parameters()`` and not be a normalisation layer.
        seed: An int; layer ``i`` is reset from a seed derived from ``(seed, i)``.

    Yields:
        ``model``, with the layers randomised.

    Raises:
        TypeError: ``model``, ``layers`` or ``seed`` of the wrong type.
        ValueError: a layer that is not in ``model``, is a normalisation layer, has no ``reset_parameters()``,
            or is given twice.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
        >>> before = model[1].weight.clone()
        >>> with randomized(model, ["1"], seed=0):
        ...     changed = not torch.equal(model[1].weight, before)
        >>> changed, torch.equal(model[1].weight, before)
        (True, True)
    """
    resolved = _resolve_layers(model, layers)
    seed = _validate_seed(seed)
    snapshot = _Snapshot(model)
    try:
        for index, (_, module) in enumerate(resolved):
            snapshot.save(module)
            _reset(module, _layer_seed(seed, index))
        yield model
    finally:
        snapshot.restore()


def cascade_points(n_layers: int, n: int) -> list[int]:
    """``n`` roughly evenly spaced layer counts from 1 to ``n_layers``, always ending with ``n_layers``.

    ``1 + floor((n_layers - 1) * j / (n - 1))`` for ``j = 0 .. n - 1``; ``n >= n_layers`` gives every count,
    ``n = 1`` only ``[n_layers]`` (the fully random model).

    Example::

        >>> cascade_points(10, 3), cascade_points(4, 10), cascade_points(7, 1)
        ([1, 5, 10], [1, 2, 3, 4], [7])
    """
    n_layers = validate_int(n_layers, "n_layers", minimum=1)
    n = validate_int(n, "n", minimum=1)
    if n >= n_layers:
        return list(range(1, n_layers + 1))
    if n == 1:
        return [n_layers]
    return [1 + (n_layers - 1) * j // (n - 1) for j in range(n)]


def _validate_points(points: Any, n_layers: int) -> list[int]:
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
        raise TypeError(f"`points` must be a list of layer counts, got {type(points).__name__}")
    if not points:
        raise ValueError("`points` must not be empty")
    out = [validate_int(k, "points") for k in points]
    if any(k < 0 or k > n_layers for k in out):
        raise ValueError(f"`points` must hold counts between 0 and {n_layers} (the number of layers), got {out}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"`points` must be strictly increasing, got {out}")
    return out


def cascade(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    attribute_fn: Callable[[], Any],
    *,
    points: Sequence[int] | None = None,
    seed: int = 0,
) -> list[tuple[int, str, Any]]:
    """Cascading randomisation: reset ``layers`` one by one (top first), call ``attribute_fn()`` at ``points``.

    Layer ``i`` (0-based position in ``layers``) is reset exactly once, as in :func:`randomized`, from a
    seed derived from ``(seed, i)``: the model after ``k`` resets is the same whatever ``points`` holds.
    After the first ``k`` layers are randomised, for each ``k`` in ``points``, ``attribute_fn()`` is called
    and its result kept (``k = 0``: the unrandomised model). Layers beyond ``max(points)`` are not touched.
    On return, and also when ``attribute_fn`` raises, the model is restored bit-exactly (see
    :func:`randomized`). The model's training mode is the caller's: call ``model.eval()`` first. Only what
    the resets touch is saved; side effects of ``attribute_fn`` itself (BatchNorm statistics updated by a
    forward pass in training mode) are not undone.

    Args:
        model: The model holding ``layers``.
        layers: Top first, as from :func:`randomizable_layers` (or modules / qualified names).
        attribute_fn: Called with no arguments on the randomised model; returns anything (detach or copy
            tensors that alias the parameters: they are restored afterwards).
        points: Strictly increasing layer counts in ``[0, len(layers)]``; ``None``: every count ``1..n``.
            :func:`cascade_points` spaces a few.
        seed: An int.

    Returns:
        ``(k, name of the k-th layer (the lowest randomised; "" for k = 0), attribute_fn())`` per point.

    Raises:
        TypeError, ValueError: a bad ``model``, ``layers``, ``attribute_fn``, ``points`` or ``seed`` (named).

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> x = torch.ones(1, 2)
        >>> runs = cascade(model, randomizable_layers(model), lambda: model(x).detach(), points=[0, 2], seed=1)
        >>> [(k, name) for k, name, _ in runs], torch.equal(runs[0][2], model(x).detach())
        ([(0, ''), (2, '0')], True)
    """
    resolved = _resolve_layers(model, layers)
    if not resolved:
        raise ValueError("`layers` must not be empty")
    if not callable(attribute_fn):
        raise TypeError(f"`attribute_fn` must be callable, got {type(attribute_fn).__name__}")
    points = list(range(1, len(resolved) + 1)) if points is None else _validate_points(points, len(resolved))
    seed = _validate_seed(seed)
    wanted = set(points)
    results: list[tuple[int, str, Any]] = []
    snapshot = _Snapshot(model)
    try:
        if 0 in wanted:
            results.append((0, "", attribute_fn()))
        for index, (name, module) in enumerate(resolved[: points[-1]]):
            snapshot.save(module)
            _reset(module, _layer_seed(seed, index))
            if index + 1 in wanted:
                results.append((index + 1, name, attribute_fn()))
    finally:
        snapshot.restore()
    return results

