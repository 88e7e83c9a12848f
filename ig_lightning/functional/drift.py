"""How far apart two sets of attributions are: one distance per example, 0 = same, larger = more drift.

Each metric compares an example's attribution vector now with the same example's reference
(the first check, or the previous one). Vectors are flattened per example.

Non-finite input never raises: an example whose current or reference vector holds a NaN or an
infinity gets distance NaN ("no drift computed") in every metric, and the other examples are
unaffected. The callback reads NaN that way and never keeps a non-finite check as a reference.

Example::

    >>> import torch
    >>> a = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    >>> [round(v, 6) for v in drift_distances(a, a)["cosine"].tolist()]
    [0.0]
    >>> [round(v, 6) for v in drift_distances(a, -a)["cosine"].tolist()]
    [2.0]
    >>> b = torch.tensor([[1.0, 2.0], [float("nan"), 0.0]])
    >>> drift_distances(b, b.flip(1))["cosine"].isnan().tolist()
    [False, True]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchmetrics.functional import cosine_similarity, spearman_corrcoef

DRIFT_METRICS = ("cosine", "spearman", "topk_jaccard")


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.detach().cpu().reshape(a.shape[0], -1).double()


def _finite_rows(
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], current: torch.Tensor, reference: torch.Tensor
) -> torch.Tensor:
    """``distance`` on the flattened rows, NaN for each row with a non-finite value on either side.

    Non-finite rows are replaced by zeros before ``distance`` sees them, so they cannot disturb
    the other rows (or raise) and the metric only ever gets finite vectors.
    """
    a, b = _flat(current), _flat(reference)
    bad = ~(torch.isfinite(a).all(1) & torch.isfinite(b).all(1))
    a, b = torch.where(bad.unsqueeze(1), 0.0, a), torch.where(bad.unsqueeze(1), 0.0, b)
    return torch.where(bad, math.nan, distance(a, b).double())


def cosine_distance(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``1 - cos(current_i, reference_i)`` per example, in [0, 2]; two zero vectors are at distance 0.

    NaN for an example with a non-finite value in ``current`` or ``reference``.
    """
    return _finite_rows(_cosine, current, reference)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dist = (1 - cosine_similarity(a, b, reduction="none")).clamp(0, 2)
    a_zero, b_zero = (a == 0).all(1), (b == 0).all(1)
    dist = torch.where(a_zero & b_zero, torch.zeros_like(dist), dist)
    return torch.where(a_zero ^ b_zero, torch.ones_like(dist), dist)


def spearman_distance(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``1 - Spearman rank correlation`` per example, in [0, 2]; identical vectors are at distance 0.

    NaN for an example with a non-finite value in ``current`` or ``reference``.
    """
    return _finite_rows(_spearman, current, reference)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape[1] < 2:
        return (a != b).any(1).double()
    dist = (1 - spearman_corrcoef(a.T.contiguous(), b.T.contiguous()).reshape(-1)).clamp(0, 2)
    return torch.where((a == b).all(1), torch.zeros_like(dist), dist)


def topk_jaccard_distance(current: torch.Tensor, reference: torch.Tensor, k: int = 10) -> torch.Tensor:
    """``1 - |A & B| / |A | B|`` per example, A and B the ``k`` features with the largest ``|attribution|``.

    NaN for an example with a non-finite value in ``current`` or ``reference``.
    """
    return _finite_rows(lambda a, b: _topk_jaccard(a, b, k), current, reference)


def _topk_jaccard(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, a.shape[1])
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.abs().topk(k, dim=1).indices, True)
    top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.abs().topk(k, dim=1).indices, True)
    inter = (top_a & top_b).sum(1).double()
    union = (top_a | top_b).sum(1).double()
    return 1 - inter / union


def drift_distances(current: torch.Tensor, reference: torch.Tensor, *, k: int = 10) -> dict[str, torch.Tensor]:
    """Every metric of ``DRIFT_METRICS``, each one distance per example (float64, on CPU).

    Args:
        current: Attributions now, ``(B, ...)``.
        reference: Attributions of the same examples at the reference check, same shape.
        k: How many top features ``topk_jaccard`` compares.

    Returns:
        ``{metric: (B,) distances}``; an example with a NaN or infinite value in ``current`` or
        ``reference`` has distance NaN in every metric (drift not computed for it), the others
        are computed as usual.

    Raises:
        ValueError: the shapes differ.
    """
    if current.shape != reference.shape:
        raise ValueError(
            f"drift needs attributions of the same shape, got {tuple(current.shape)} and {tuple(reference.shape)}"
        )
    current, reference = current.cpu(), reference.cpu()
    return {
        "cosine": cosine_distance(current, reference),
        "spearman": spearman_distance(current, reference),
        "topk_jaccard": topk_jaccard_distance(current, reference, k),
    }
