"""The straight-line paths of Integrated Gradients: the model evaluated at points between baseline and input.

``StraightPaths`` gives the gradients at any points of every example's path, in chunks of at most
``internal_batch_size`` points; ``input_problem()`` and ``layer_problem()`` set a path up at the inputs or
at a layer (a forward hook swaps the layer's output for the path point). Parameters are frozen and gradients
switched on for the duration, whatever the caller's mode (``no_grad``, ``inference_mode``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ig_lightning.functional._hooks import LayerTap
from ig_lightning.functional._inputs import Extras, Flat, select_outputs

ForwardFunc = Callable[..., Any]
Attributions = Any  # a Tensor, a tuple of Tensors, or (several layers) a list of those


@contextmanager
def gradients_enabled() -> Iterator[None]:
    """Leave ``inference_mode`` and ``no_grad`` (Lightning validates under them) for the block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def frozen_parameters(forward_func: object) -> Iterator[None]:
    """Stop recording parameter gradients for the block (they are never needed), then restore the flags.

    The graph then holds only what the input gradient needs, which saves time and memory.
    ``.grad`` is never touched: gradients are taken with ``torch.autograd.grad``.
    """
    owner = forward_func if isinstance(forward_func, nn.Module) else getattr(forward_func, "__self__", None)
    params = [p for p in owner.parameters() if p.requires_grad] if isinstance(owner, nn.Module) else []
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def own_copy(t: torch.Tensor) -> torch.Tensor:
    # A fresh, ordinary tensor: usable by autograd even if it was created under inference_mode.
    return t.detach().clone()


class StraightPaths:
    """The straight path ``start + a * (end - start)`` for every example (flat, ``(n, D)``), and gradients on it.

    ``run(points, idx)`` maps flat path points of the examples ``idx`` to one output per point: it
    splits the points into the model's inputs (or the layer's tensors), adds the extra arguments of
    those examples, and selects the target output.
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        start: torch.Tensor,
        diff: torch.Tensor,
        internal_batch_size: int | None,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.run, self.start, self.diff = run, start, diff
        self.n, self.dtype, self.device = start.shape[0], start.dtype, start.device
        self.batch, self.grad_kwargs = internal_batch_size, grad_kwargs or {}

    def gradients_at(self, idx: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients ``(k, D)`` and outputs ``(k,)`` at ``start + alphas[j] * diff`` of example ``idx[j]``."""
        grads, outputs = None, []
        for sl in _chunks(len(idx), self.batch):
            i, a = idx[sl], alphas[sl].view(-1, 1)
            k, size = len(i), _padded(len(i), self.batch)
            if size > k:  # a short chunk, padded with copies of its first point (their results are dropped)
                i, a = torch.cat([i, i[:1].expand(size - k)]), torch.cat([a, a[:1].expand(size - k, 1)])
            grad, out = self._grad(torch.addcmul(self.start[i], a, self.diff[i]), i, with_outputs=True)
            grad, out = grad[:k], out[:k]
            if grads is None:  # written in place chunk by chunk: no list of chunks and no copy by cat
                grads = grad.new_empty((len(idx), *grad.shape[1:]))
            grads[sl] = grad
            del grad
            outputs.append(out)
        return grads, torch.cat(outputs)

    def _grad(self, points: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor | None = None,
              with_outputs: bool = False):
        points.requires_grad_(True)
        selected = self.run(points, idx)
        if not selected.requires_grad:
            raise ValueError(
                "`forward_func` output does not depend differentiably on its inputs: does it detach them, "
                "or run under torch.no_grad()/inference_mode() itself?"
            )
        # The quadrature weights ride along as the backward's seed: no extra pass over the gradients.
        seed = torch.ones_like(selected) if weights is None else weights.to(selected.dtype)
        (grad,) = torch.autograd.grad(selected, points, grad_outputs=seed, allow_unused=True, **self.grad_kwargs)
        grad = torch.zeros_like(points) if grad is None else grad
        return (grad, selected.detach()) if with_outputs else grad

    def weighted_gradients(self, idx: torch.Tensor, alphas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k weights[k] * dF/dz`` at ``z = start + alphas[k] * diff`` for examples ``idx``, ``(b, D)``."""
        start, diff = self.start[idx], self.diff[idx]
        b, m = len(idx), len(alphas)
        acc = torch.zeros_like(start)
        per_alpha = m if self.batch is None else self.batch // b
        if per_alpha >= 1:  # whole rows of alphas per batch, ordered alpha-major like captum
            for k in range(0, m, per_alpha):
                a, w = alphas[k:k + per_alpha], weights[k:k + per_alpha]
                points = torch.addcmul(start.unsqueeze(0), a.view(-1, 1, 1), diff.unsqueeze(0))
                points = points.reshape(-1, start.shape[1])
                grad = self._grad(points, idx.repeat(len(a)), w.repeat_interleave(b))
                acc += grad.view(len(a), b, -1).sum(0)
        else:  # fewer points per batch than examples: one alpha, a slice of examples at a time
            for k in range(m):
                for sl in _chunks(b, self.batch):
                    seed = weights[k].expand(len(idx[sl]))
                    acc[sl] += self._grad(torch.add(start[sl], diff[sl], alpha=float(alphas[k])), idx[sl], seed)
        return acc


def validate_layers(layer: Any, forward_func: Any) -> list[nn.Module] | None:
    if layer is None:
        return None
    layers = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]
    if not layers:
        raise ValueError("`layer` must be a module or a non-empty list of modules, got an empty list")
    owner = forward_func if isinstance(forward_func, nn.Module) else getattr(forward_func, "__self__", None)
    for m in layers:
        if not isinstance(m, nn.Module):
            raise TypeError(f"`layer` must be an nn.Module inside `forward_func` (or a list of them), got "
                            f"{type(m).__name__}")
        if isinstance(owner, nn.Module) and not any(m is sub for sub in owner.modules()):
            raise ValueError(f"`layer` ({type(m).__name__}) is not a submodule of `forward_func`")
    if len({id(m) for m in layers}) != len(layers):
        raise ValueError("`layer` lists the same module twice")
    return layers


def _padded(k: int, batch: int | None) -> int:
    """Rows a chunk of ``k`` points is sent as: a short chunk is rounded up to a power of two (at most ``batch``).

    ``n_steps="auto"`` ends most rounds with a short chunk of some new size, and libraries keep state per input
    shape (oneDNN's and cuDNN's caches of convolution setups, a compiled module's graphs): 5.7 MiB on the digits
    CNN, more than its training step, for 16 sizes. Powers of two bound the sizes by ``log2(batch)``, at the cost
    of fewer than ``k`` extra points per round.
    """
    if batch is None or k >= batch or k == 0:
        return k
    return min(batch, 1 << (k - 1).bit_length())


def _chunks(n: int, batch: int | None) -> list[slice]:
    """Slices of at most ``batch`` rows covering ``range(n)``."""
    step = batch or n
    return [slice(i, i + step) for i in range(0, n, step)]


@dataclass
class Problem:
    """A path ready to integrate: its flat start and ``end - start``, ``delta``, how to evaluate it and how to
    shape the result."""

    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    start: torch.Tensor
    diff: torch.Tensor
    delta: torch.Tensor
    flat: Flat
    rebuild: Callable[[list[torch.Tensor]], Attributions]


def _take(target: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if target is None else target[idx]


def input_problem(forward_func: ForwardFunc, xs: tuple[torch.Tensor, ...], bases: tuple[torch.Tensor, ...],
                   extras: Extras, target: torch.Tensor | None, batch: int | None, is_tuple: bool) -> Problem:
    """The path between the baselines and the inputs themselves."""
    flat = Flat(xs)

    def run(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = forward_func(*flat.split(points), *extras.take(idx))
        return select_outputs(out, _take(target, idx), len(idx))

    n = xs[0].shape[0]
    start, end = flat.flatten(bases), flat.flatten(xs)  # fresh tensors (torch.cat copies), fit for autograd
    every = torch.arange(n, device=start.device)
    f_end, f_start = [], []
    with torch.no_grad():  # F(x) and F(x') of a chunk in one forward, at most `batch` rows
        for sl in _chunks(n, None if batch is None else max(1, batch // 2)):
            out = run(torch.cat([end[sl], start[sl]]), every[sl].repeat(2))
            f_end.append(out[:len(every[sl])])
            f_start.append(out[len(every[sl]):])
    end -= start  # end - start, in place: one probe-sized buffer less
    return Problem(run, start, end, torch.cat(f_end) - torch.cat(f_start), flat,
                    lambda tensors: tuple(tensors) if is_tuple else tensors[0])


def layer_problem(forward_func: ForwardFunc, xs: tuple[torch.Tensor, ...], bases: tuple[torch.Tensor, ...],
                   extras: Extras, target: torch.Tensor | None, batch: int | None, tap: LayerTap,
                   is_list: bool) -> Problem:
    """The path between the layers' tensors on the baselines and on the inputs; the rest of the model reads
    the real inputs, so ``delta`` is exactly what the path integrates."""
    n = xs[0].shape[0]
    every = torch.arange(n, device=xs[0].device)

    def call(tensors: Sequence[torch.Tensor], idx: torch.Tensor, replacement: list[torch.Tensor] | None = None):
        return tap.run(forward_func, (*tensors, *extras.take(idx)), replacement)

    starts, ends, f_start, f_end = [], [], [], []
    with torch.no_grad():
        for sl in _chunks(n, batch):
            idx, t = every[sl], _take(target, every[sl])
            call([b[sl] for b in bases], idx)
            starts.append(tap.batch_first_values(len(idx)))
            f_end.append(select_outputs(call([x[sl] for x in xs], idx), t, len(idx)))
            ends.append(tap.batch_first_values(len(idx)))
            f_start.append(select_outputs(call([x[sl] for x in xs], idx, starts[-1]), t, len(idx)))
    start_leaves = [torch.cat(parts) for parts in zip(*starts)]
    end_leaves = [torch.cat(parts) for parts in zip(*ends)]
    flat = Flat(start_leaves)
    counts, single = list(tap.counts), list(tap.single)

    def run(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = call([x[idx] for x in xs], idx, flat.split(points))
        return select_outputs(out, _take(target, idx), len(idx))

    def rebuild(tensors: list[torch.Tensor]) -> Attributions:
        per_layer, k = [], 0
        for count, one in zip(counts, single):
            part = tensors[k:k + count]
            per_layer.append(part[0] if one else tuple(part))
            k += count
        return per_layer if is_list else per_layer[0]

    start = own_copy(flat.flatten(start_leaves))
    return Problem(run, start, flat.flatten(end_leaves) - start, torch.cat(f_end) - torch.cat(f_start), flat,
                    rebuild)
