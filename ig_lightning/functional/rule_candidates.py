"""Candidate rules read off attributions: the n-grams, features or image regions that carry a class's attribution.

Each example's attributions are turned into *shares* (divided by its total ``|attribution|``) and averaged over the
examples explained as the class; the largest are the candidates, which ``ig_lightning.functional.rule_tests`` states
as conditions and tests on data.

Example::

    >>> import torch
    >>> ids = torch.tensor([[1, 2, 0], [3, 2, 0], [1, 2, 5]])
    >>> shares = torch.tensor([[0.6, 0.3, 0.0], [0.1, 0.8, 0.0], [0.5, 0.4, 0.1]])
    >>> token_candidates(ids, shares, torch.tensor([0, 1, 0]), ids != 0, k=2)[0]
    [((1, 2), 0.9), ((2, 5), 0.25)]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attribution_shares(scores: torch.Tensor) -> torch.Tensor:
    """Each example's attributions over its total ``|attribution|`` (rows of zeros stay zero; NaN rows become 0)."""
    flat = scores.flatten(1).double()
    flat = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    total = flat.abs().sum(1, keepdim=True).clamp_min(1e-30)
    return (flat / total).reshape(scores.shape)


def token_candidates(ids: torch.Tensor, shares: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                     max_n: int = 3, k: int = 8) -> dict[int, list[tuple[tuple[int, ...], float]]]:
    """Per class, the ``k`` n-grams (1 to ``max_n`` real tokens in a row) with the largest mean share over the
    class's examples (an n-gram absent from an example adds 0 for it), leaving out an n-gram inside or around a better
    one (``"a how many"`` after ``"how many"``), so that other words get their turn; only positive shares."""
    out = {}
    for c in sorted(set(targets.tolist())):
        rows = (targets == c).nonzero().flatten().tolist()
        totals: dict[tuple[int, ...], float] = {}
        for i in rows:
            seen: dict[tuple[int, ...], float] = {}
            real = mask[i].tolist()
            row_ids, row_shares = ids[i].tolist(), shares[i].tolist()
            for n in range(1, max_n + 1):
                for p in range(len(row_ids) - n + 1):
                    if all(real[p:p + n]):
                        gram = tuple(row_ids[p:p + n])
                        seen[gram] = max(seen.get(gram, -math.inf), sum(row_shares[p:p + n]))
            for gram, value in seen.items():
                totals[gram] = totals.get(gram, 0.0) + value
        ranked = sorted(((g, v / len(rows)) for g, v in totals.items() if v > 0), key=lambda gv: (-gv[1], gv[0]))
        chosen: list[tuple[tuple[int, ...], float]] = []
        for gram, value in ranked:  # an n-gram overlapping a better one says little more: room for other words
            if len(chosen) == k:
                break
            if not any(_inside(gram, g) or _inside(g, gram) for g, _ in chosen):
                chosen.append((gram, round(value, 6)))
        out[c] = chosen
    return out


def _inside(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    return any(big[p:p + len(small)] == small for p in range(len(big) - len(small) + 1))


def feature_candidates(shares: torch.Tensor, targets: torch.Tensor, k: int = 8) -> dict[int, list[tuple[int, float]]]:
    """Per class, the ``k`` features with the largest mean absolute share, and that mean (signed)."""
    flat = shares.flatten(1)
    out = {}
    for c in sorted(set(targets.tolist())):
        mean = flat[targets == c].mean(0)
        order = torch.argsort(mean.abs(), descending=True, stable=True)[:k]
        out[c] = [(int(i), float(mean[i])) for i in order if float(mean[i].abs()) > 0]
    return out


def region_candidates(shares: torch.Tensor, targets: torch.Tensor, size: int,
                      k: int = 8) -> dict[int, list[tuple[tuple[int, ...], float]]]:
    """Per class, up to ``k`` non-overlapping ``size x size`` windows of the class's mean share map ``(H, W)`` (the
    shares summed over channels first) with the largest ``|sum|``, as flat pixel indices ``row * W + col``."""
    maps = (shares if shares.ndim == 3 else shares.sum(1)).double()  # (B, H, W)
    height, width = maps.shape[1:]
    size = max(1, min(size, height, width))
    stride = max(1, size // 2)
    rows = torch.tensor(_starts(height, size, stride)).repeat_interleave(len(_starts(width, size, stride)))
    cols = torch.tensor(_starts(width, size, stride)).repeat(len(_starts(height, size, stride)))
    classes = sorted(set(targets.tolist()))
    means = torch.stack([maps[targets == c].mean(0) for c in classes])  # (classes, H, W)
    total = F.pad(means.cumsum(1).cumsum(2), (1, 0, 1, 0))  # integral images: every window's sum at once
    sums = (total[:, rows + size, cols + size] - total[:, rows, cols + size] - total[:, rows + size, cols]
            + total[:, rows, cols]).tolist()
    starts = list(zip(rows.tolist(), cols.tolist()))
    out = {}
    for c, class_sums in zip(classes, sums):
        order = sorted(range(len(starts)), key=lambda i: (-abs(class_sums[i]), starts[i]))
        taken: list[tuple[tuple[int, ...], float]] = []
        used: set[int] = set()
        for i in order:
            if len(taken) == k or class_sums[i] == 0:
                break
            r, q = starts[i]
            pixels = tuple(rr * width + qq for rr in range(r, r + size) for qq in range(q, q + size))
            if used.isdisjoint(pixels):
                used.update(pixels)
                taken.append((pixels, class_sums[i]))
        out[c] = taken
    return out


def _starts(length: int, size: int, stride: int) -> list[int]:
    starts = list(range(0, length - size + 1, stride))
    return starts if starts[-1] == length - size else [*starts, length - size]
