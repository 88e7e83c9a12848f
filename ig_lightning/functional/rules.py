"""Read the "rules" a network has learned off its attributions.

Following the Integrated Gradients paper, a rule is a feature that carries the attribution
for a class: e.g. the tokens "how many" for questions with a numeric answer. Features are
integer *keys* (token ids, so a word pools over positions; feature indices for tables;
pixel indices for images). Summing each key's attribution over the examples of a class and
keeping the largest gives the class's rules; comparing two checks shows rules appearing or fading.

Examples whose attribution is NaN or infinite (a diverged model) are left out of every sum and
mean here, so no NaN score is ever returned and nothing raises; a class with no finite example
has no entry.

Example::

    >>> import torch
    >>> keys = torch.tensor([[7, 1], [3, 1]])
    >>> scores = torch.tensor([[0.75, 0.25], [0.5, -0.25]])
    >>> class_top_features(keys, scores, torch.tensor([0, 1]), k=1)
    {0: [(7, 0.75)], 1: [(3, 0.5)]}
"""

from __future__ import annotations


import torch

from ig_lightning._validation import validate_int

REDUCTIONS = ("sum", "mean")


def _validate_tensor(x: object, name: str, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"`{name}` must be {ndim}-D, got shape {tuple(x.shape)}")
    return x.detach()


def _validate_integer(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"`{name}` must be an integer tensor (e.g. int64), got {x.dtype}")
    return x.long()


def _validate_targets(targets: object, n: int) -> torch.Tensor:
    t = _validate_integer(_validate_tensor(targets, "targets", 1), "targets")
    if t.shape[0] != n:
        raise ValueError(f"`targets` must hold one class per example ({n}), got {t.shape[0]}")
    return t


def _validate_inputs(
    keys: object, scores: object, targets: object, mask: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    key = _validate_integer(_validate_tensor(keys, "keys", 2), "keys").cpu()
    score = _validate_tensor(scores, "scores", 2).cpu()
    if not score.dtype.is_floating_point:
        raise TypeError(f"`scores` must be a floating tensor, got {score.dtype}")
    if score.shape != key.shape:
        raise ValueError(f"`scores` must match keys {tuple(key.shape)}, got {tuple(score.shape)}")
    target = _validate_targets(targets, key.shape[0]).cpu()
    if mask is None:
        return key, score, target, torch.ones_like(key, dtype=torch.bool)
    m = _validate_tensor(mask, "mask").cpu()
    if m.dtype != torch.bool:
        raise TypeError(f"`mask` must be a bool tensor, got {m.dtype}")
    if m.shape != key.shape:
        raise ValueError(f"`mask` must match keys {tuple(key.shape)}, got {tuple(m.shape)}")
    return key, score, target, m


def class_top_features(
    keys: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    *,
    k: int = 10,
    mask: torch.Tensor | None = None,
    reduce: str = "sum",
) -> dict[int, list[tuple[int, float]]]:
    """The ``k`` keys carrying the most attribution for each class in ``targets``.

    Each key's scores are pooled over all positions of all examples of a class; ``"mean"``
    divides that sum by how often the key occurs in the class (unmasked). Keys are ranked by
    the pooled score, largest first (evidence for the class), ties broken by smaller key.
    Negative scores only appear when a class has fewer than ``k`` keys with larger ones.

    An example with a NaN or infinite score at an unmasked position is left out entirely
    (scores at masked positions are ignored, finite or not), so returned scores are finite.

    Args:
        keys: ``(N, T)`` integer ids of the features at each position.
        scores: ``(N, T)`` floating attribution of each position (e.g. summed over embedding dims).
        targets: ``(N,)`` integer class of each example.
        k: Keys kept per class.
        mask: Optional ``(N, T)`` bool, False for positions to ignore (padding).
        reduce: ``"sum"`` or ``"mean"``.

    Returns:
        ``{class: [(key, score), ...]}`` with python ints and floats, one entry per class
        with at least one finite example (an empty list when all its positions are masked);
        a class whose examples are all non-finite has no entry.

    Raises:
        TypeError: a tensor of the wrong kind or dtype, ``k`` not an int.
        ValueError: wrong shapes, ``k`` < 1, unknown ``reduce``.

    Example::

        >>> keys = torch.tensor([[5, 5, 2], [5, 2, 2]])
        >>> scores = torch.tensor([[1.0, 1.0, 0.5], [1.0, 0.5, 0.5]])
        >>> class_top_features(keys, scores, torch.tensor([0, 0]), reduce="mean")
        {0: [(5, 1.0), (2, 0.5)]}
    """
    key, score, target, m = _validate_inputs(keys, scores, targets, mask)
    k = validate_int(k, "k", minimum=1)
    if reduce not in REDUCTIONS:
        raise ValueError(f"`reduce` must be one of {REDUCTIONS}, got {reduce!r}")

    if mask is None and key.stride(0) == 0:  # every row has the same keys (flat feature indices): pool per class
        return _shared_keys_top(key[0], score, target, k, reduce)
    finite = (torch.isfinite(score) | ~m).all(1)  # unmasked scores all finite
    m = m & finite.unsqueeze(1)
    classes, kept = target.unsqueeze(1).expand_as(key)[m], key[m]
    # One integer per (class, key) pair: a flat unique is much cheaper than a row-wise one.
    low = int(kept.min()) if kept.numel() else 0
    span = (int(kept.max()) - low + 1) if kept.numel() else 1
    combined, inverse = torch.unique(classes * span + (kept - low), return_inverse=True)
    pairs = torch.stack([torch.div(combined, span, rounding_mode="floor"), combined % span + low], dim=1)
    totals = torch.zeros(pairs.shape[0], dtype=torch.float64)
    totals.index_add_(0, inverse, score[m].double())
    if reduce == "mean":
        totals = totals / torch.bincount(inverse, minlength=pairs.shape[0]).double()
    return {c: _top_of_class(pairs, totals, c, k) for c in torch.unique(target[finite]).tolist()}


def _shared_keys_top(row: torch.Tensor, score: torch.Tensor, target: torch.Tensor, k: int,
                     reduce: str) -> dict[int, list[tuple[int, float]]]:
    """``class_top_features()`` when every example has the keys ``row`` ``(T,)``: per-class sums of the
    scores, ``(classes, T)`` float64, built a few rows at a time (no ``(N, T)`` temporary)."""
    finite = torch.isfinite(score).all(1)
    classes, owner = torch.unique(target[finite], return_inverse=True)
    rows = finite.nonzero().squeeze(1)
    per_position = torch.zeros(len(classes), row.shape[0], dtype=torch.float64)
    for s in range(0, len(rows), 8):
        per_position.index_add_(0, owner[s:s + 8], score[rows[s:s + 8]].double())
    keys, position_key = torch.unique(row, return_inverse=True)
    totals = torch.zeros(len(classes), len(keys), dtype=torch.float64).index_add_(1, position_key, per_position)
    if reduce == "mean":
        occurrences = torch.bincount(position_key, minlength=len(keys)).double()
        totals = totals / (torch.bincount(owner, minlength=len(classes)).double().view(-1, 1) * occurrences)
    pairs = torch.stack([classes.repeat_interleave(len(keys)), keys.repeat(len(classes))], dim=1)
    return {c: _top_of_class(pairs, totals.reshape(-1), c, k) for c in classes.tolist()}


def _top_of_class(pairs: torch.Tensor, totals: torch.Tensor, c: int, k: int) -> list[tuple[int, float]]:
    # Rows of `pairs` are sorted by (class, key), so a stable sort on score breaks ties by key.
    rows = pairs[:, 0] == c
    class_keys, class_totals = pairs[rows, 1], totals[rows]
    order = torch.sort(class_totals, descending=True, stable=True).indices[:k]
    return list(zip(class_keys[order].tolist(), class_totals[order].tolist()))


def rule_changes(
    previous: dict[int, list[tuple[int, float]]] | None,
    current: dict[int, list[tuple[int, float]]],
) -> dict[int, dict[str, list[int]]]:
    """Which keys entered or left each class's top features since the previous check.

    Args:
        previous: Output of ``class_top_features()`` at the previous check, or None.
        current: Output of ``class_top_features()`` now.

    Returns:
        ``{class: {"entered": [...], "left": [...]}}`` for each class in ``current``;
        entered keys in ``current``'s order, left keys in ``previous``'s order. A class
        not in ``previous`` has every key entered and none left; a class only in ``previous``
        (e.g. all its examples diverged to NaN this check) has no entry.

    Raises:
        TypeError: ``previous`` or ``current`` is not a dict.

    Example::

        >>> rule_changes({0: [(1, 0.5), (2, 0.4)]}, {0: [(2, 0.6), (3, 0.1)]})
        {0: {'entered': [3], 'left': [1]}}
    """
    if previous is not None and not isinstance(previous, dict):
        raise TypeError(f"`previous` must be a dict or None, got {type(previous).__name__}")
    if not isinstance(current, dict):
        raise TypeError(f"`current` must be a dict, got {type(current).__name__}")
    before_all = previous or {}
    changes = {}
    for c, top in current.items():
        now = [key for key, _ in top]
        before = [key for key, _ in before_all.get(c, [])]
        now_set, before_set = set(now), set(before)
        changes[c] = {
            "entered": [key for key in now if key not in before_set],
            "left": [key for key in before if key not in now_set],
        }
    return changes


def class_mean_maps(attributions: torch.Tensor, targets: torch.Tensor) -> dict[int, torch.Tensor]:
    """The mean attribution of each class present in ``targets``, over its finite examples.

    An example with any NaN or infinite attribution is left out of its class's mean; a class
    with no finite example has no entry (its mean is never NaN).

    Args:
        attributions: ``(N, ...)`` floating attributions.
        targets: ``(N,)`` integer class of each example.

    Returns:
        ``{class: mean}`` with each mean shaped ``attributions.shape[1:]``, in the
        attributions' dtype and on their device, for each class with a finite example.

    Raises:
        TypeError: not tensors, ``attributions`` not floating, ``targets`` not integer.
        ValueError: ``attributions`` has no batch dimension or ``targets`` the wrong length.

    Example::

        >>> attributions = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        >>> means = class_mean_maps(attributions, torch.tensor([0, 0, 1]))
        >>> {c: m.tolist() for c, m in means.items()}
        {0: [2.0, 3.0], 1: [5.0, 6.0]}
        >>> attributions[2, 0] = float("nan")  # class 1's only example diverged
        >>> {c: m.tolist() for c, m in class_mean_maps(attributions, torch.tensor([0, 0, 1])).items()}
        {0: [2.0, 3.0]}
    """
    a = _validate_tensor(attributions, "attributions")
    if not a.dtype.is_floating_point:
        raise TypeError(f"`attributions` must be a floating tensor, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"`attributions` must be shaped (N, ...), got shape {tuple(a.shape)}")
    target = _validate_targets(targets, a.shape[0]).to(a.device)
    finite = torch.isfinite(a.reshape(a.shape[0], -1)).all(1)
    a, target = a[finite], target[finite]
    classes, inverse = torch.unique(target, return_inverse=True)
    sums = torch.zeros((classes.shape[0], *a.shape[1:]), dtype=a.dtype, device=a.device)
    sums.index_add_(0, inverse, a)
    counts = torch.bincount(inverse, minlength=classes.shape[0]).to(a.dtype)
    means = sums / counts.view(-1, *([1] * (a.ndim - 1)))
    return {c: means[i] for i, c in enumerate(classes.tolist())}
