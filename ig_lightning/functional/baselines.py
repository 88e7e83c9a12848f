"""Baselines: token ids that keep a text's special tokens, and drawn or blurred baselines for images and features.

A feature equal to its baseline gets no attribution, whatever the model does with it: IG multiplies by
``x - x'``. A black (zero) baseline is blind to black pixels. Baselines that are not a constant avoid that;
averaged over several of them (``ig_lightning.functional.averaged``) the attributions add up to
``F(x) - mean_k F(x'_k)``, the completeness target of every averaged baseline below (Sturmfels, Lundberg,
Lee, Distill 2020; Erion et al. 2021).

- ``special_token_baseline``: token ids. A baseline of all pad ids (id 0 by default) also removes
  ``[CLS]``/``[SEP]`` (or ``<s>``/``</s>``): the model then sees no sentence at all, which may be far from
  neutral (RoBERTa's id 0 is ``<s>`` itself). Keeping the special tokens and replacing only the words is the
  "empty sentence" of that model.
- ``blurred``: ``x`` under a Gaussian blur. A feature gets attribution only where blurring changes it (edges
  and texture, not flat regions): the information that blurring destroys.
- ``uniform_draws``: ``n`` baselines of uniform noise in ``[low, high]``; no pixel value is special, so
  none is blind, in expectation.
- ``gaussian_draws``: ``n`` baselines ``x + N(0, sigma)`` (clipped to the valid range): "Gaussian around x",
  the attribution of the features that small perturbations of ``x`` would change.
- ``data_draws``: ``n`` baselines drawn from data (rows with replacement): expected gradients; a feature gets
  no attribution only where it equals the data's value, on every draw.

Every draw takes an explicit (CPU) ``torch.Generator``: the same seed gives the same baselines on every
device, and torch's global random stream is never consumed (a callback must not change training). Draws are
shaped ``(n, B, ...)``: pass ``list(draws)`` as ``baselines=`` of ``averaged_integrated_gradients``.

Example::

    >>> import torch
    >>> class Tokenizer:
    ...     all_special_ids, pad_token_id, mask_token_id = [0, 101, 102], 0, 103
    >>> ids = torch.tensor([[101, 7, 8, 102, 0]])
    >>> special_token_baseline(ids, Tokenizer()).tolist()
    [[101, 0, 0, 102, 0]]
    >>> special_token_baseline(ids, Tokenizer(), fill="mask").tolist()
    [[101, 103, 103, 102, 0]]
    >>> x = torch.rand(2, 3, 8, 8)
    >>> uniform_draws(x, 4, low=0.0, high=1.0, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 2, 3, 8, 8])
    >>> torch.allclose(blurred(torch.ones(2, 3, 8, 8), sigma=2.0), torch.ones(2, 3, 8, 8))
    True
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as nnf

from ig_lightning._validation import validate_int, validate_positive_float

__all__ = ["blurred", "data_draws", "gaussian_draws", "special_token_baseline", "uniform_draws"]

FILLS = ("pad", "mask")


def special_token_baseline(input_ids: torch.Tensor, tokenizer: Any, *, fill: str = "pad") -> torch.Tensor:
    """Baseline token ids: the special tokens of ``input_ids`` kept in place, every other token replaced.

    Args:
        input_ids: ``(B, L)`` integer token ids.
        tokenizer: A Hugging Face tokenizer (or anything with ``all_special_ids`` and ``pad_token_id`` /
            ``mask_token_id``).
        fill: What replaces the other tokens: ``"pad"`` (the pad token) or ``"mask"`` (the mask token).

    Returns:
        A LongTensor shaped like ``input_ids`` (pass it as ``baseline=``: one baseline per example).

    Raises:
        TypeError: ``input_ids`` is not an integer tensor, or ``tokenizer`` has no ``all_special_ids``.
        ValueError: ``fill`` is unknown, or the tokenizer has no such token.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise TypeError(f"`input_ids` must be an integer tensor of token ids, got {type(input_ids).__name__}"
                        + (f" of dtype {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else ""))
    if fill not in FILLS:
        raise ValueError(f"`fill` can be {set(FILLS)}, got {fill!r}")
    special = getattr(tokenizer, "all_special_ids", None)
    if special is None:
        raise TypeError(f"`tokenizer` must have `all_special_ids` (a Hugging Face tokenizer), got "
                        f"{type(tokenizer).__name__}")
    fill_id = getattr(tokenizer, f"{fill}_token_id", None)
    if fill_id is None:
        raise ValueError(f"`tokenizer` has no {fill} token (its `{fill}_token_id` is None): use the other `fill`")
    keep = torch.isin(input_ids, torch.tensor(list(special), dtype=input_ids.dtype, device=input_ids.device))
    return torch.where(keep, input_ids, torch.full_like(input_ids, int(fill_id)))


# --- drawn and blurred baselines ---------------------------------------------------------------------------


def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` under a Gaussian blur of its last two dimensions (the blur baseline of Sturmfels et al.).

    A separable convolution with a normalised Gaussian kernel (it sums to 1: a constant image stays constant,
    and the sum of each channel is kept away from the border), truncated at ``ceil(3 sigma)`` pixels (at least 1,
    at most the image's size). Borders reflect where the image is larger than the kernel's radius, else
    replicate the edge pixels. Blur IG (Xu et al. 2020) uses such images as the start of its path.

    Args:
        x: Float images ``(B, C, H, W)`` or ``(B, H, W)`` (any leading dimensions: the last two are blurred).
        sigma: Standard deviation of the blur, in pixels (a float > 0).

    Returns:
        A tensor shaped like ``x``, in its dtype and on its device.

    Raises:
        TypeError: ``x`` is not a floating point tensor, or ``sigma`` is not a number.
        ValueError: ``x`` has fewer than 3 dimensions, or ``sigma`` is not > 0.

    Example::

        >>> import torch
        >>> delta = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
        >>> delta[0, 0, 4, 4] = 1.0
        >>> out = blurred(delta, sigma=1.0)
        >>> round(out.sum().item(), 12), bool(out[0, 0, 4, 4] < 1), out[0, 0, 4, 4] == out.max()
        (1.0, True, tensor(True))
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"a tensor of dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"`x` must be a floating point tensor of images, got {what}")
    if x.ndim < 3:
        raise ValueError(f"`x` must be images shaped (B, C, H, W) or (B, H, W), got shape {tuple(x.shape)}")
    sigma = validate_positive_float(sigma, "sigma")
    *lead, height, width = x.shape
    if x.numel() == 0:
        return x.clone()
    out = x.detach().reshape(-1, 1, height, width)
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    out = out.to(compute)
    for dim, size in ((3, width), (2, height)):
        radius = min(max(math.ceil(3 * sigma), 1), size)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).to(device=x.device, dtype=compute)
        mode = "reflect" if radius < size else "replicate"
        if dim == 3:
            out = nnf.conv2d(nnf.pad(out, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
        else:
            out = nnf.conv2d(nnf.pad(out, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return out.to(x.dtype).reshape(*lead, height, width)


def uniform_draws(x: torch.Tensor, n: int, *, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` baselines per example of ``x``, uniform in ``[low, high]`` feature by feature.

    Args:
        x: The float inputs ``(B, ...)``: the draws take their shape, dtype and device.
        n: Draws per example (an int >= 1).
        low: Smallest value (e.g. ``0.0`` for images in ``[0, 1]``).
        high: Largest value, ``> low``.
        generator: A CPU ``torch.Generator``: the only source of randomness.

    Returns:
        ``(n, B, ...)`` on ``x``'s device, in its dtype.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: ``n < 1``, or ``low >= high``, or a bound that is not finite.

    Example::

        >>> import torch
        >>> d = uniform_draws(torch.zeros(3, 5), 2, low=-1.0, high=1.0, generator=torch.Generator().manual_seed(0))
        >>> d.shape, bool(d.min() >= -1), bool(d.max() <= 1)
        (torch.Size([2, 3, 5]), True, True)
    """
    x = _float_batch(x, "x")
    n = validate_int(n, "n", minimum=1)
    low, high = _finite(low, "low"), _finite(high, "high")
    if not low < high:
        raise ValueError(f"`low` must be < `high`, got low={low!r}, high={high!r}")
    generator = _cpu_generator(generator)
    draw = torch.rand((n, *x.shape), generator=generator, dtype=_draw_dtype(x.dtype))
    return (low + (high - low) * draw).to(device=x.device, dtype=x.dtype)


def gaussian_draws(
    x: torch.Tensor,
    n: int,
    *,
    sigma: float | torch.Tensor,
    generator: torch.Generator,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    """``n`` baselines per example: ``x + N(0, sigma^2)`` feature by feature ("Gaussian around x").

    Args:
        x: The float inputs ``(B, ...)``.
        n: Draws per example (an int >= 1).
        sigma: The noise's standard deviation: a float > 0, or a ``(B,)`` tensor (>= 0) with one per example
            (e.g. ``relative_stdevs(x, 0.15)``: relative to each example's range).
        generator: A CPU ``torch.Generator``: the only source of randomness.
        low: Clip the draws below at ``low`` (``None``: no clipping), e.g. ``0.0`` for images.
        high: Clip the draws above at ``high`` (``None``: no clipping); ``> low`` when both are given.

    Returns:
        ``(n, B, ...)`` on ``x``'s device, in its dtype.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: a bad value (named in the message).

    Example::

        >>> import torch
        >>> x = torch.full((2, 4), 0.5, dtype=torch.float64)
        >>> d = gaussian_draws(x, 8, sigma=1.0, generator=torch.Generator().manual_seed(0), low=0.0, high=1.0)
        >>> d.shape, bool(d.min() >= 0), bool(d.max() <= 1)
        (torch.Size([8, 2, 4]), True, True)
    """
    x = _float_batch(x, "x")
    n = validate_int(n, "n", minimum=1)
    scale = _sigma_per_example(sigma, x, "sigma", allow_zero=False)
    low = None if low is None else _finite(low, "low")
    high = None if high is None else _finite(high, "high")
    if low is not None and high is not None and not low < high:
        raise ValueError(f"`low` must be < `high`, got low={low!r}, high={high!r}")
    generator = _cpu_generator(generator)
    out = x.detach() + normal_noise(x, n, scale, generator)
    if low is not None or high is not None:
        out = out.clamp(low, high)
    return out


def data_draws(
    data: torch.Tensor | tuple[torch.Tensor, ...], batch_size: int, n: int, *, generator: torch.Generator
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``n`` baselines for each of ``batch_size`` examples: rows of ``data`` drawn uniformly, with replacement.

    The baselines of expected gradients (Erion et al. 2021): averaged over the draws, IG estimates the
    attributions against the data distribution, whose completeness target is ``F(x) - E[F(x')]``.

    Args:
        data: Reference rows ``(N, ...)`` (any dtype: token ids too), or a tuple of such tensors with one ``N``
            (several inputs: one row index is drawn for all of them).
        batch_size: Examples to draw baselines for (``B`` of the inputs to explain).
        n: Draws per example (an int >= 1).
        generator: A CPU ``torch.Generator``: the only source of randomness.

    Returns:
        ``(n, batch_size, ...)`` on ``data``'s device, in its dtype; a tuple of them for a tuple ``data``.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: ``data`` is empty, the tensors of a tuple have different ``N``, or ``n``/``batch_size`` < 1.

    Example::

        >>> import torch
        >>> data = torch.arange(10.0).view(5, 2)
        >>> d = data_draws(data, 3, 4, generator=torch.Generator().manual_seed(0))
        >>> d.shape, bool((d[..., 1] - d[..., 0] == 1).all())
        (torch.Size([4, 3, 2]), True)
    """
    if isinstance(data, torch.Tensor):
        items: tuple = (data,)
    elif isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        items = data
    else:
        raise TypeError(f"`data` must be a Tensor or a non-empty tuple of Tensors, got {type(data).__name__}")
    for i, t in enumerate(items):
        name = "`data`" if len(items) == 1 else f"`data[{i}]`"
        if t.ndim < 1 or t.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one row to draw from, got shape {tuple(t.shape)}")
        if t.shape[0] != items[0].shape[0]:
            raise ValueError(f"{name} has {t.shape[0]} rows, but `data[0]` has {items[0].shape[0]}")
    batch_size = validate_int(batch_size, "batch_size", minimum=1)
    n = validate_int(n, "n", minimum=1)
    generator = _cpu_generator(generator)
    idx = torch.randint(items[0].shape[0], (n, batch_size), generator=generator)
    out = tuple(t.detach()[idx.to(t.device)] for t in items)
    return out[0] if isinstance(data, torch.Tensor) else out


# --- helpers (shared with ``averaged``) ----------------------------------------------------------------------


def normal_noise(x: torch.Tensor, n: int, scale: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(n, B, ...)`` draws of ``N(0, scale_b^2)``, ``scale`` a ``(B,)`` tensor; on ``x``'s device and dtype."""
    draw = torch.randn((n, *x.shape), generator=generator, dtype=_draw_dtype(x.dtype))
    scale = scale.detach().to("cpu", draw.dtype).view(1, -1, *([1] * (x.ndim - 1)))
    return (draw * scale).to(device=x.device, dtype=x.dtype)


def _sigma_per_example(sigma: Any, x: torch.Tensor, name: str, *, allow_zero: bool) -> torch.Tensor:
    """``sigma`` (a number, or a ``(B,)`` tensor of values >= 0) as a ``(B,)`` float64 CPU tensor."""
    batch = x.shape[0]
    if isinstance(sigma, torch.Tensor):
        if not sigma.is_floating_point():
            raise TypeError(f"`{name}` must be a float or a float tensor of shape ({batch},), got dtype {sigma.dtype}")
        if sigma.shape != (batch,):
            raise ValueError(f"`{name}` must have one value per example, shape ({batch},), got {tuple(sigma.shape)}")
        values = sigma.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(f"`{name}` must hold finite values >= 0, got {values[:8].tolist()}")
        return values
    return torch.full((batch,), validate_positive_float(sigma, name, allow_zero=allow_zero), dtype=torch.float64)


def _float_batch(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"a tensor of dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"`{name}` must be a floating point tensor, got {what}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    return x


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return float(value)


def _cpu_generator(generator: Any) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
                        f"got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"`generator` must be a CPU generator (draws are moved to the input's device), "
                         f"got one on {generator.device}")
    return generator


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    """Draw in float64 for float64 inputs, else in float32 (the same numbers for float32 and half inputs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
