"""The baselines and noise a monitor attributes from, made once from the probe (and the data) and a seed.

``baseline`` may name a kind (``BASELINE_KINDS``) instead of giving a value:

- ``"auto"`` (the default): chosen per kind of input by ``benchmarks/bench_trust.py``: images (a 4-D floating
  input ``(B, C, H, W)``) are attributed from black and white, the smallest and the largest value of the examples
  (two paths, averaged); every other input from zeros (token id 0 at a ``layer``), as ``None``;
- ``"blur"``: each example blurred (images), one baseline per example (Xu et al., CVPR 2020);
- ``"uniform"``: ``integration.baseline_samples`` draws per example, uniform over the probe's input range;
- ``"gaussian"``: draws around each example, ``x + N(0, sigma)`` clipped to the probe's range;
- ``"data"``: draws of validation examples (expected gradients, Erion et al. 2021);

and a list of fixed baselines is averaged over (``[0.0, 1.0]``: black and white, as XRAI does). Every draw comes
from a generator seeded with ``integration.seed``: the same at every check, on every rank and after a resume, and
the global random stream is never used. Each (example, baseline, noisy copy) is one path of the engine
(``ig_lightning.functional.averaged``); completeness is against the mean ``F(baseline)``.

Removing a feature (the deletion check, the rule tests, the curves' ``"baseline"`` fill) sets it to the *first*
baseline: the first draw, the blurred example, or the first of a list.

Example::

    >>> import torch
    >>> from ig_lightning.monitor.config import MonitorConfig
    >>> from ig_lightning.monitor.probe import ModelInputs
    >>> inputs = ModelInputs.of(torch.rand(4, 1, 8, 8), "`probe`")
    >>> draws = make_baselines(MonitorConfig(baseline="uniform", integration={"baseline_samples": 3}), inputs, [0])
    >>> len(draws), tuple(draws[0].shape)
    (3, (4, 1, 8, 8))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ig_lightning.functional.baselines import blurred, data_draws, gaussian_draws, uniform_draws
from ig_lightning.monitor.config import MonitorConfig
from ig_lightning.monitor.probe import ModelInputs, Name


def make_baselines(config: MonitorConfig, inputs: ModelInputs, names: Sequence[Name],
                   data: ModelInputs | None = None) -> Any:
    """``config.baseline`` for ``inputs``: a kind made into per-example baselines (a list of ``K`` draws, or one
    tensor for ``"blur"``); any other baseline as it is.

    Args:
        config: The monitor's settings.
        inputs: The examples the baselines are for (the probe, or the rule set).
        names: The attributed inputs, in the explainer's order.
        data: Rows to draw ``"data"`` baselines from (the rule set of validation examples); ``None``: ``inputs``.

    Raises:
        ValueError: the kind does not fit the attributed inputs (``"blur"`` needs images, ``"uniform"`` and
            ``"gaussian"`` floating inputs, ``"data"`` rows shaped like the inputs), naming ``baseline``.
    """
    kind = config.baseline
    if not isinstance(kind, str) or kind == "special_tokens":
        return kind
    integration = config.integration
    tensors = [inputs[name] for name in names]
    if kind == "auto":
        return auto_baseline(tensors, integration.warm_start)
    if kind == "blur":
        made = []
        for name, x in zip(names, tensors):
            if not x.is_floating_point() or x.ndim not in (3, 4):
                raise ValueError(f"`baseline`='blur' blurs images (B, C, H, W) or (B, H, W); the attributed input "
                                 f"{name!r} is {tuple(x.shape)} {x.dtype}: use another `baseline`")
            made.append(blurred(x, integration.baseline_sigma * max(x.shape[-2:])))
        return made[0] if len(made) == 1 else tuple(made)
    n = integration.baseline_samples
    per_input = []
    for i, (name, x) in enumerate(zip(names, tensors)):
        generator = torch.Generator().manual_seed(integration.seed + 7919 * i)
        if kind == "data":
            rows = x if data is None else data[name]
            if tuple(rows.shape[1:]) != tuple(x.shape[1:]) or rows.dtype != x.dtype:
                raise ValueError(f"`baseline`='data' draws validation examples, but their input {name!r} is "
                                 f"{tuple(rows.shape[1:])} {rows.dtype}, not the probe's {tuple(x.shape[1:])} "
                                 f"{x.dtype}: pass a baseline")
            # The same generator seed for every input: one example's inputs are drawn together.
            generator = torch.Generator().manual_seed(integration.seed)
            per_input.append(data_draws(rows, len(x), n, generator=generator))
            continue
        if not x.is_floating_point():
            raise ValueError(f"`baseline`={kind!r} draws floating-point values, but the attributed input {name!r} is "
                             f"{x.dtype} (token ids): use 'data', a token id or 'special_tokens'")
        low, high = float(x.min()), float(x.max())
        if high <= low:
            high = low + 1.0
        if kind == "uniform":
            per_input.append(uniform_draws(x, n, low=low, high=high, generator=generator))
        else:
            per_input.append(gaussian_draws(x, n, sigma=integration.baseline_sigma * (high - low), generator=generator,
                                            low=low, high=high))
    if len(per_input) == 1:
        return list(per_input[0])
    return [tuple(draws[k] for draws in per_input) for k in range(n)]


def auto_baseline(tensors: Sequence[torch.Tensor], warm_start: bool = False) -> Any:
    """``baseline="auto"``: black and white (``[min, max]`` of the examples) for images, a 4-D floating input, with
    one path per baseline; zeros (``None``) otherwise, and with ``integration.warm_start`` (one path per example).

    Example::

        >>> import torch
        >>> auto_baseline([torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)]), auto_baseline([torch.ones(2, 5)])
        ([0.0, 1.0], None)
    """
    if warm_start or len(tensors) != 1 or tensors[0].ndim != 4 or not tensors[0].is_floating_point():
        return None
    low, high = float(tensors[0].min()), float(tensors[0].max())
    return None if low == high else [low, high]


#: The baseline is "predicted with high confidence" above this softmax probability (on most examples).
BASELINE_CONFIDENCE = 0.9


def confident_class(base_outputs: torch.Tensor) -> tuple[torch.Tensor, tuple[int, float] | None]:
    """The model's top-class probability at each baseline ``(B,)``, and ``(class, mean confidence)`` when most of
    them are predicted as one class above ``BASELINE_CONFIDENCE`` (else ``None``): the baseline is not neutral.

    Example::

        >>> import torch
        >>> confidence, found = confident_class(torch.tensor([[9.0, 0.0], [8.0, 0.0], [0.0, 0.0]]))
        >>> found[0], round(found[1], 3)
        (0, 1.0)
    """
    confidence, predicted = base_outputs.float().softmax(-1).max(-1)
    confident = confidence > BASELINE_CONFIDENCE
    if not bool(confident.float().mean() > 0.5):
        return confidence, None
    return confidence, (int(predicted[confident].mode().values), float(confidence[confident].mean()))


def make_noise(config: MonitorConfig, inputs: ModelInputs, names: Sequence[Name]) -> tuple[torch.Tensor, ...] | None:
    """The noise of ``integration.noise_samples`` copies of every example, one ``(J, B, ...)`` tensor per attributed
    input: ``N(0, sigma)`` with ``sigma = integration.noise_sigma * (max - min)`` of each example; ``None`` when off.

    Raises:
        ValueError: an attributed input is not floating point (token ids), naming ``integration.noise_samples``.
    """
    integration = config.integration
    if not integration.noise_samples:
        return None
    noise = []
    for i, name in enumerate(names):
        x = inputs[name]
        if not x.is_floating_point():
            raise ValueError(f"`integration.noise_samples` adds noise to floating inputs, but the attributed input "
                             f"{name!r} is {x.dtype} (token ids): set noise_samples=0")
        flat = x.reshape(len(x), -1).double()
        scale = (flat.max(1).values - flat.min(1).values).clamp_min(1e-12) * integration.noise_sigma
        generator = torch.Generator().manual_seed(integration.seed + 104729 * (i + 1))
        draws = torch.randn((integration.noise_samples, *x.shape), generator=generator, dtype=torch.float64)
        noise.append((draws * scale.view(1, -1, *[1] * (x.ndim - 1))).to(x.dtype))
    return tuple(noise)
