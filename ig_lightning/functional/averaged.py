"""Integrated Gradients averaged over several baselines and over noisy copies of the inputs.

One baseline makes the features equal to it blind (they get no attribution); averaging IG over a few fixed
baselines (black and white: PAIR's XRAI) or over drawn ones (uniform noise, Gaussian around ``x``, rows of the
data: expected gradients; see ``ig_lightning.functional.baselines``) removes that blindness. Averaging over
noisy copies ``x + N(0, stdevs^2)`` of each example is SmoothGrad over IG (captum's ``NoiseTunnel``), with its
``nt_type`` choices: the mean (``smoothgrad``), the mean of squares (``smoothgrad_sq``) or the variance
(``vargrad``) over the copies.

Every (example, baseline, noise copy) is one straight path, and all paths go through ONE call of
``integrated_gradients`` on the repeated batch: ``n_steps="auto"`` then keeps its accuracy target and error
estimate per path, and the cost (time and memory) is ``K * J`` times that of one IG on the batch (``K``
baselines, ``J`` noise copies); ``internal_batch_size`` caps the points per forward as usual.

Completeness: the mean attributions add up to ``mean over paths of F(x + noise) - F(x'_k)``, the ``delta`` of
the result: ``F(x) - mean_k F(x'_k)`` without noise (the target of expected gradients, reached exactly up to
the quadrature's error for the drawn baselines themselves).

Example::

    >>> import torch
    >>> w = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    >>> x = torch.ones(2, 3, dtype=torch.float64)
    >>> res = averaged_integrated_gradients(lambda z: z @ w, x, baselines=[0.0, 1.0], n_steps=4)
    >>> res.attributions[0].tolist()  # mean of (x - 0) * w and (x - 1) * w
    [0.5, -1.0, 1.5]
    >>> res.delta.tolist(), res.n_evaluations.tolist()
    ([1.0, 1.0], [8, 8])
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import torch
from torch.utils._pytree import tree_map

from ig_lightning._validation import validate_choice, validate_int, validate_positive_float, validate_target
from ig_lightning.functional._inputs import as_tuple, make_baselines, validate_inputs
from ig_lightning.functional._paths import ForwardFunc
from ig_lightning.functional.baselines import _cpu_generator, _sigma_per_example, normal_noise
from ig_lightning.functional.integrated_gradients import IGResult, integrated_gradients

__all__ = ["NT_TYPES", "averaged_integrated_gradients", "relative_stdevs"]

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")

# Arguments of ``integrated_gradients`` that ``**ig_kwargs`` may hold (``target`` and
# ``additional_forward_args`` are repeated to the paths, the rest passes through).
_IG_KWARGS = tuple(p for p in inspect.signature(integrated_gradients).parameters
                   if p not in ("forward_func", "inputs", "baselines"))


def relative_stdevs(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise levels relative to each example's range: ``sigma * (max - min)`` over its features.

    PAIR's SmoothGrad convention ("sigma 0.15 of the range"): pass the result as ``stdevs=``.

    Args:
        x: Float inputs ``(B, ...)``.
        sigma: The fraction of the range (a float > 0, e.g. ``0.15``).

    Returns:
        ``(B,)`` in ``x``'s dtype, on its device.

    Raises:
        TypeError: ``x`` is not a floating point tensor, or ``sigma`` is not a number.
        ValueError: ``x`` has no batch dimension, or ``sigma`` is not > 0.

    Example::

        >>> import torch
        >>> relative_stdevs(torch.tensor([[0.0, 2.0], [1.0, 1.5]]), 0.5).tolist()
        [1.0, 0.25]
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"a tensor of dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"`x` must be a floating point tensor, got {what}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"`x` must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    sigma = validate_positive_float(sigma, "sigma")
    flat = x.detach().reshape(x.shape[0], -1)
    if flat.shape[1] == 0:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    return sigma * (flat.amax(1) - flat.amin(1))


def averaged_integrated_gradients(
    forward_func: ForwardFunc,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    baselines: Any,
    nt_type: str = "smoothgrad",
    nt_samples: int = 0,
    stdevs: float | torch.Tensor | tuple = 0.0,
    noise: torch.Tensor | tuple | None = None,
    generator: torch.Generator | None = None,
    **ig_kwargs: Any,
) -> IGResult:
    """Integrated Gradients averaged over ``K`` baselines and ``J`` noisy copies of each example.

    Each example gets ``K * J`` straight paths, from every baseline ``x'_k`` to every copy ``x + n_j`` (``J = 1``
    and ``n_1 = 0`` without noise), all computed in one ``integrated_gradients`` call on the repeated batch.
    With ``K * J == 1`` and no noise the result is exactly ``integrated_gradients(..., baselines=baselines[0])``.

    How the paths combine (``A_jk``: the attributions of the path from ``x'_k`` to ``x + n_j``):
    ``a_j = mean_k A_jk`` is the baseline-averaged IG of copy ``j``, and the attributions are ``mean_j a_j``
    (``smoothgrad``), ``mean_j a_j^2`` (``smoothgrad_sq``) or ``mean_j (a_j - mean_j a_j)^2`` (``vargrad``,
    the population variance). That is captum's ``NoiseTunnel(IntegratedGradients)`` for ``K = 1``, and the noise
    tunnel around the baseline-averaged IG for ``K > 1`` (the baselines define the method, the noise smooths it).

    Args:
        forward_func: As for ``integrated_gradients``.
        inputs: As for ``integrated_gradients``: a Tensor ``(B, ...)`` or a tuple of them (token ids with
            ``layer=``).
        baselines: A ``list`` of ``K >= 1`` baselines, each anything ``integrated_gradients(baselines=...)``
            takes (None, a number, a Tensor broadcastable to the input, or a tuple with one per input), e.g.
            ``[0.0, 1.0]`` (black and white) or ``list(uniform_draws(x, 8, ...))``. A list, not a tuple: a
            tuple keeps its meaning "one baseline per input". Anything else is one baseline (``K = 1``).
            Integer inputs (token ids, with ``layer=``) take integer baselines.
        nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"`` (captum's names): how the noisy copies
            combine (above); the last two need noise.
        nt_samples: Noisy copies per example (``J``) drawn from ``generator``; 0: no noise (unless ``noise``).
        stdevs: The noise's standard deviation: a float, a ``(B,)`` tensor with one per example (see
            ``relative_stdevs``), or a tuple with one such entry per input (0 leaves an input without noise).
            Must be 0 (the default) when no noise is drawn.
        noise: Explicit noise instead of drawing it: ``(J, B, ...)`` added to the input (a tuple with one per
            input, ``None`` for an input without noise), for reproducible or reference runs. ``nt_samples`` is
            then 0 or ``J``, and ``stdevs`` 0.
        generator: The CPU ``torch.Generator`` the noise is drawn from. ``None``: a fresh one seeded with
            ``torch.initial_seed()``: torch's global random stream is never consumed (training is left as it
            would be), and every such call draws the same noise (pass a generator for fresh draws).
        **ig_kwargs: Passed to ``integrated_gradients`` (``target``, ``additional_forward_args``, ``n_steps``,
            ``method``, ``internal_batch_size``, ``tolerance``, ``layer``, ``multiply_by_inputs``, ...).
            ``target`` and the ``additional_forward_args`` tensors whose first dimension is ``B`` are repeated
            to every path of their example (an argument that is not per example but has ``B * K * J`` rows
            would be split like the paths: give it another shape). ``internal_batch_size`` caps points per
            forward over all ``B * K * J`` paths. With ``n_steps="auto"``, counts in the engine's warnings are
            paths, and ``warm_start`` refers to the paths (reuse it with the same ``K`` and ``J``).

    Returns:
        An ``IGResult`` per example: ``attributions`` combined as above (the inputs' or the layer's
        structure); ``delta`` the mean over its paths of ``F(x + n_j) - F(x'_k)``; ``completeness_error`` the
        mean attributions (smoothgrad, also for the other ``nt_type``) summed minus ``delta``; ``n_steps``,
        ``attribution_error`` the largest over its paths (NaN where no path has an estimate);
        ``n_evaluations`` the sum over its paths; ``rounds`` and ``warm_start`` of the one call.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: an argument with a bad value (named in the message), e.g. noise for token ids.

    Example::

        >>> import torch
        >>> from ig_lightning.functional.baselines import gaussian_draws
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        >>> x = torch.randn(5, 4, dtype=torch.float64)
        >>> g = torch.Generator().manual_seed(0)
        >>> draws = gaussian_draws(x, 3, sigma=0.5, generator=g)
        >>> res = averaged_integrated_gradients(model, x, baselines=list(draws), target=0, nt_samples=4,
        ...                                     stdevs=0.1, generator=g, n_steps="auto", tolerance=1e-3)
        >>> res.attributions.shape, bool((res.relative_error() < 1e-2).all())
        (torch.Size([5, 4]), True)
    """
    if not callable(forward_func):
        raise TypeError(f"`forward_func` must be callable, got {type(forward_func).__name__}")
    unknown = [k for k in ig_kwargs if k not in _IG_KWARGS]
    if unknown:
        raise TypeError(f"`{unknown[0]}` is not an argument of integrated_gradients (those are {list(_IG_KWARGS)})")
    items = validate_inputs(inputs, needs_float=ig_kwargs.get("layer") is None)
    batch = items[0].shape[0]
    nt_type = validate_choice(nt_type, "nt_type", NT_TYPES)
    nt_samples = validate_int(nt_samples, "nt_samples", minimum=0)
    if generator is not None:
        generator = _cpu_generator(generator)
    specs = _baseline_specs(baselines, items)
    noise_t = _noise(items, nt_samples, stdevs, noise, generator)
    if nt_type != "smoothgrad" and noise_t is None:
        raise ValueError(f"`nt_type`={nt_type!r} needs noise (nt_samples >= 1 or `noise`); without noise use "
                         "'smoothgrad'")
    target_arg = ig_kwargs.pop("target", None)
    target = validate_target(target_arg, batch)
    if len(specs) == 1 and noise_t is None:  # one path per example: the engine's own result
        return integrated_gradients(forward_func, inputs, baselines=baselines[0] if isinstance(baselines, list)
                                    else baselines, target=target_arg, **ig_kwargs)

    n_copies, n_bases = 1 if noise_t is None else noise_t[1], len(specs)
    paths = n_copies * n_bases
    rows = []
    for i, x in enumerate(items):
        x = x.detach()
        if noise_t is not None and noise_t[0][i] is not None:
            copies = x.unsqueeze(0) + noise_t[0][i]
        else:
            copies = x.unsqueeze(0).expand(n_copies, *x.shape)
        rows.append(copies.unsqueeze(1).expand(n_copies, n_bases, *x.shape).reshape(paths * batch, *x.shape[1:]))
    bases = []
    for i, x in enumerate(items):
        stacked = torch.stack([spec[i] for spec in specs])  # (K, B, ...)
        bases.append(stacked.unsqueeze(0).expand(n_copies, *stacked.shape).reshape(paths * batch, *x.shape[1:]))
    is_tuple = isinstance(inputs, tuple)
    if "additional_forward_args" in ig_kwargs:
        ig_kwargs["additional_forward_args"] = _repeat_extras(ig_kwargs["additional_forward_args"], batch, paths)
    res = integrated_gradients(
        forward_func,
        tuple(rows) if is_tuple else rows[0],
        baselines=tuple(bases) if is_tuple else bases[0],
        target=None if target is None else target.repeat(paths),
        **ig_kwargs,
    )
    return _combine(res, nt_type, n_copies, n_bases, batch)


def _baseline_specs(baselines: Any, items: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
    """Each of the ``K`` baselines as one tensor per input (shaped like it); errors name the list entry."""
    if not isinstance(baselines, list):
        return [make_baselines(baselines, items)]
    if not baselines:
        raise ValueError("`baselines` must hold at least one baseline, got an empty list")
    specs = []
    for k, spec in enumerate(baselines):
        try:
            specs.append(make_baselines(spec, items))
        except (TypeError, ValueError) as error:
            raise type(error)(str(error).replace("`baselines", f"`baselines[{k}]", 1)) from error
    return specs


def _noise(
    items: tuple[torch.Tensor, ...], nt_samples: int, stdevs: Any, noise: Any, generator: torch.Generator | None
) -> tuple[list[torch.Tensor | None], int] | None:
    """The noise per input (``(J, B, ...)`` or None) and ``J``; None without noise."""
    batch, n_inputs = items[0].shape[0], len(items)
    if noise is not None:
        if not _is_zero(stdevs):
            raise ValueError(f"`stdevs` must be left at 0 when `noise` is given (the noise is explicit), "
                             f"got {stdevs!r}")
        entries = noise if isinstance(noise, tuple) else (noise,)
        if len(entries) != n_inputs:
            raise ValueError(f"`noise` must have one entry per input ({n_inputs}), got {len(entries)}")
        out: list[torch.Tensor | None] = []
        n_copies = None
        for i, (t, x) in enumerate(zip(entries, items)):
            name = "`noise`" if n_inputs == 1 else f"`noise[{i}]`"
            if t is None:
                out.append(None)
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a Tensor (J, B, ...) or None, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
            _noisable(x, i, n_inputs, name)
            if t.ndim != x.ndim + 1 or t.shape[1:] != x.shape or t.shape[0] == 0:
                raise ValueError(f"{name} must be shaped (J, *input.shape) = (J, {', '.join(map(str, x.shape))}) "
                                 f"with J >= 1, got {tuple(t.shape)}")
            if n_copies is not None and t.shape[0] != n_copies:
                raise ValueError(f"{name} has {t.shape[0]} draws, but the other noise has {n_copies}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} holds NaN or infinite values")
            n_copies = t.shape[0]
            out.append(t.detach().to(device=x.device, dtype=x.dtype))
        if n_copies is None:
            raise ValueError("`noise` must hold at least one tensor, got only None")
        if nt_samples not in (0, n_copies):
            raise ValueError(f"`nt_samples` must be 0 or the number of `noise` draws ({n_copies}), got {nt_samples}")
        return out, n_copies
    if nt_samples == 0:
        if not _is_zero(stdevs):
            raise ValueError(f"`stdevs` is {stdevs!r} but `nt_samples` is 0: pass nt_samples >= 1 to draw noise")
        return None
    if isinstance(stdevs, tuple):
        if len(stdevs) != n_inputs:
            raise ValueError(f"`stdevs` must have one entry per input ({n_inputs}), got {len(stdevs)}")
        names = [f"stdevs[{i}]" for i in range(n_inputs)]
        entries = stdevs
    else:
        names, entries = ["stdevs"] * n_inputs, (stdevs,) * n_inputs
    scales = []
    for i, (s, x, name) in enumerate(zip(entries, items, names)):
        if isinstance(s, bool) or not isinstance(s, (numbers.Real, torch.Tensor)):
            raise TypeError(f"`{name}` must be a float, a ({batch},) tensor or a tuple of them per input, "
                            f"got {type(s).__name__}")
        scale = _sigma_per_example(s, x, name, allow_zero=True)
        if bool((scale > 0).any()):
            _noisable(x, i, n_inputs, f"`{name}`")
            scales.append(scale)
        else:
            scales.append(None)
    if all(s is None for s in scales):
        raise ValueError(f"`stdevs` is 0 for every input: the {nt_samples} noisy copies would equal the inputs; "
                         "pass stdevs > 0 (or nt_samples=0)")
    if generator is None:
        generator = torch.Generator().manual_seed(torch.initial_seed())
    return [None if s is None else normal_noise(x.detach(), nt_samples, s, generator)
            for x, s in zip(items, scales)], nt_samples


def _noisable(x: torch.Tensor, i: int, n_inputs: int, name: str) -> None:
    if not x.is_floating_point():
        where = "`inputs`" if n_inputs == 1 else f"`inputs[{i}]`"
        raise ValueError(f"{name}: noise needs floating point inputs, but {where} has dtype {x.dtype} (token ids, "
                         "attributed with `layer=`, take no noise)")


def _is_zero(stdevs: Any) -> bool:
    return isinstance(stdevs, numbers.Real) and not isinstance(stdevs, bool) and stdevs == 0


def _repeat_extras(args: Any, batch: int, paths: int) -> Any:
    """``additional_forward_args`` with every per-example tensor (first dimension ``B``) tiled to the paths."""
    def tile(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.ndim >= 1 and a.shape[0] == batch:
            return a.repeat(paths, *([1] * (a.ndim - 1)))
        return a

    if args is None:
        return None
    return tuple(tile(a) for a in as_tuple(args)) if isinstance(args, tuple) else tile(args)


def _combine(res: IGResult, nt_type: str, n_copies: int, n_bases: int, batch: int) -> IGResult:
    """Per example, the paths' results of one call (rows ordered copy, baseline, example) combined."""
    paths = n_copies * n_bases

    def reduce(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        per_copy = t.reshape(n_copies, n_bases, batch, *t.shape[1:]).mean(1)
        if nt_type == "smoothgrad":
            return per_copy.mean(0)
        if nt_type == "smoothgrad_sq":
            return (per_copy * per_copy).mean(0)
        centred = per_copy - per_copy.mean(0, keepdim=True)
        return (centred * centred).mean(0)

    per_path = lambda t: t.reshape(paths, batch)  # noqa: E731
    errors = per_path(res.attribution_error)
    none = torch.isnan(errors).all(0)
    worst = torch.where(torch.isnan(errors), float("-inf"), errors).amax(0)
    worst = torch.where(none, torch.full_like(worst, float("nan")), worst)
    return IGResult(
        tree_map(reduce, res.attributions),
        per_path(res.delta).mean(0),
        per_path(res.completeness_error).mean(0),
        per_path(res.n_steps).amax(0),
        per_path(res.n_evaluations).sum(0),
        worst,
        res.rounds,
        res.warm_start,
    )
