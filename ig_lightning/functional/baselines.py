"""Baselines for token ids that keep a text's special tokens where they are.

A baseline of all pad ids (id 0 by default) also removes ``[CLS]``/``[SEP]`` (or ``<s>``/``</s>``): the
model then sees no sentence at all, which may be far from neutral (RoBERTa's id 0 is ``<s>`` itself). Keeping
the special tokens and replacing only the words is the "empty sentence" of that model.

Example::

    >>> import torch
    >>> class Tokenizer:
    ...     all_special_ids, pad_token_id, mask_token_id = [0, 101, 102], 0, 103
    >>> ids = torch.tensor([[101, 7, 8, 102, 0]])
    >>> special_token_baseline(ids, Tokenizer()).tolist()
    [[101, 0, 0, 102, 0]]
    >>> special_token_baseline(ids, Tokenizer(), fill="mask").tolist()
    [[101, 103, 103, 102, 0]]
"""

from __future__ import annotations

from typing import Any

import torch

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
