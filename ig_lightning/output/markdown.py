"""Markdown for TensorBoard's text tab and the other loggers: the rules table and the token table.

One escape (``escape()``), one number format (``format_score()``) and one name lookup (``name_lookup()``)
for every table the monitor writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ig_lightning._validation import validate_int
from ig_lightning._validation import validate_tensor, validate_tokens


class TokenizerLike(Protocol):
    """Anything that names token ids the way Hugging Face tokenizers do."""

    def convert_ids_to_tokens(self, ids: int) -> str | None: ...


Names = Sequence[str] | Callable[[int], str] | TokenizerLike | None
"""A list indexed by id, a callable ``id -> str``, or a tokenizer with ``convert_ids_to_tokens``."""


def escape(text: object) -> str:
    """Text safe inside a Markdown table cell and as Markdown rendered to HTML: backslashes and ``|`` escaped,
    ``&``, ``<`` and ``>`` as HTML entities (a vocabulary word ``<img ...>`` stays text), newlines folded.

    Example::

        >>> print(escape("<b>a|b</b>"))
        &lt;b&gt;a\\|b&lt;/b&gt;
    """
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def format_score(value: float, precision: int = 3) -> str:
    """``+0.500``-style signed text; NaN is ``nan`` (never ``+nan``), infinities ``+inf``/``-inf``."""
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:+.{precision}f}"


def name_lookup(names: Names, default: Callable[[int], str], name: str = "names") -> Callable[[int], str]:
    """A function from id to display name; ids a list does not cover fall back to ``default``.

    ``names`` may be None (``default``), a tokenizer-like object with ``convert_ids_to_tokens``
    (Hugging Face; checked first, since tokenizers are also callable), a callable ``id -> str``,
    or a sequence indexed by id.

    Raises:
        TypeError: ``names`` is none of these (the message names the argument ``name``).

    Example::

        >>> class Tokenizer:
        ...     def convert_ids_to_tokens(self, i): return ["[PAD]", "hi"][i]
        ...     def __call__(self, text): raise AssertionError("encodes text, never names ids")
        >>> [name_lookup(Tokenizer(), str)(i) for i in (0, 1)], name_lookup(["a"], str)(5)
        (['[PAD]', 'hi'], '5')
    """
    if names is None:
        return default
    convert = getattr(names, "convert_ids_to_tokens", None)
    if callable(convert):
        def token(i: int) -> str:
            result = convert(int(i))
            return default(i) if result is None else str(result)

        return token
    if callable(names):
        return lambda i: str(names(i))
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(
            f"`{name}` must be a sequence of str, a callable id -> str, an object with "
            f"`convert_ids_to_tokens` or None, got {type(names).__name__}"
        )
    return lambda i: str(names[i]) if 0 <= i < len(names) else default(i)


def rules_markdown(
    rules: dict[int, list[tuple[int, float]]],
    changes: dict[int, dict[str, list[int]]] | None = None,
    *,
    key_names: Callable[[int], str] | Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    precision: int = 3,
    drops: dict[int, float] | None = None,
) -> str:
    """A Markdown table of each class's top features (and what changed) for TensorBoard.

    A non-finite score (only possible in hand-made ``rules``) is written ``nan``/``+inf``/``-inf``.

    Args:
        rules: Output of ``class_top_features()``.
        changes: Output of ``rule_changes()``; adds "entered" and "left" columns.
        key_names: Maps a key to a name: a callable (e.g. a tokenizer's decode) or a
            sequence indexed by key (e.g. a vocabulary or feature names). Default ``str``.
        class_names: Sequence indexed by class. Default ``str``.
        precision: Digits after the decimal point.
        drops: Per class, the relative drop of its score when its rule is removed (the deletion check);
            adds a "removing it drops" column, as a percentage.

    Returns:
        Markdown text, one row per class in ascending order; ``|`` in names is escaped.

    Raises:
        TypeError: ``rules`` not a dict, bad ``key_names``/``class_names``, ``precision`` not int.
        ValueError: ``precision`` < 0.

    Example::

        >>> print(rules_markdown({0: [(7, 1.5)]}, key_names=lambda k: f"w{k}", class_names=["num"]))
        | class | top features |
        |---|---|
        | num | w7 (+1.500) |
    """
    columns, rows = rules_rows(rules, changes, key_names=key_names, class_names=class_names, precision=precision,
                               drops=drops)
    keep = [0, 1] + ([2, 3] if changes is not None else []) + ([4] if drops else [])
    lines = ["| " + " | ".join(columns[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(escape(row[i]) for i in keep) + " |" for row in rows]
    return "\n".join(lines)


def rules_rows(
    rules: dict[int, list[tuple[int, float]]],
    changes: dict[int, dict[str, list[int]]] | None = None,
    *,
    key_names: Callable[[int], str] | Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    precision: int = 3,
    drops: dict[int, float] | None = None,
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """The rules table of ``rules_markdown()`` as plain cells (no escaping), for loggers with tables.

    Columns are always ``class, top features, entered, left, removing it drops`` (``-`` where a check has
    nothing to say), so every check's table has the same columns.

    Example::

        >>> rules_rows({0: [(7, 1.5)]}, {0: {"entered": [7]}}, key_names=lambda k: f"w{k}", drops={0: 0.25})
        (('class', 'top features', 'entered', 'left', 'removing it drops'), (('0', 'w7 (+1.500)', 'w7', '-', '25%'),))
    """
    if not isinstance(rules, dict):
        raise TypeError(f"`rules` must be a dict, got {type(rules).__name__}")
    precision = validate_int(precision, "precision", minimum=0)
    key_name = name_lookup(key_names, str, "key_names")
    class_name = name_lookup(class_names, str, "class_names")
    rows = []
    for c in sorted(rules):
        change = (changes or {}).get(c, {})
        drop = (drops or {}).get(c, math.nan)
        rows.append((
            class_name(c),
            ", ".join(f"{key_name(k)} ({format_score(v, precision)})" for k, v in rules[c]) or "-",
            ", ".join(key_name(k) for k in change.get("entered", [])) or "-",
            ", ".join(key_name(k) for k in change.get("left", [])) or "-",
            f"{100 * drop:.0f}%" if math.isfinite(drop) else "-",
        ))
    return ("class", "top features", "entered", "left", "removing it drops"), tuple(rows)


def token_table(
    tokens: Sequence[Sequence[str]],
    scores: torch.Tensor,
    *,
    title: str | None = None,
    precision: int = 3,
) -> str:
    """A Markdown table with one row per example: each token followed by its score.

    Non-finite scores are written ``nan``, ``+inf`` or ``-inf``.

    Args:
        tokens: N token lists (lengths may differ).
        scores: ``(N, T)`` scores, padded; only the first ``len(tokens[i])`` are used.
        title: Optional heading above the table.
        precision: Digits after the decimal point.

    Returns:
        Markdown text for TensorBoard's text tab; ``|`` in tokens is escaped.

    Raises:
        TypeError: ``tokens`` not a sequence, ``scores`` not a tensor, ``precision`` not int.
        ValueError: ``scores`` not ``(N, T)``, an example longer than T, ``precision`` < 0.

    Example::

        >>> print(token_table([["a|b", "c"]], torch.tensor([[0.5, -0.25]]), precision=2))
        | # | tokens (score) |
        |---|---|
        | 0 | a\\|b (+0.50) c (-0.25) |
    """
    s = validate_tensor(scores, "scores")
    rows = validate_tokens(tokens, s)
    precision = validate_int(precision, "precision", minimum=0)
    lines = [f"### {escape(title)}", ""] if title else []
    lines += ["| # | tokens (score) |", "|---|---|"]
    for i, row in enumerate(rows):
        cells = " ".join(f"{escape(t)} ({format_score(float(s[i, j]), precision)})" for j, t in enumerate(row))
        lines.append(f"| {i} | {cells} |")
    return "\n".join(lines)


#: The columns of the tested rules table, in every logger.
TESTED_COLUMNS = ("class", "rule", "score", "coverage", "precision", "necessity", "sufficiency", "support", "change")


def rule_table_rows(rules: dict[int, list[Any]], changes: dict[int, dict[str, Any]] | None = None,
                      class_names: Sequence[str] | None = None) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """One row per tested rule (``ig_lightning.functional.rule_tests.Rule``), its numbers as columns (``-`` where a
    number rests on no example), and its change since the previous check: ``new``, or the score's change.

    Example::

        >>> from ig_lightning.functional.rule_tests import Rule
        >>> rule = Rule(0, "tokens", (3,), text='"who" -> person', score=0.9, coverage=0.25, precision=1.0,
        ...             necessity=0.9, sufficiency=0.8, support={"rule_set": 64, "applies": 16})
        >>> rule_table_rows({0: [rule]}, {0: {"entered": ['"who" -> person']}})[1]
        (('0', '"who" -> person', '0.90', '0.25', '1.00', '0.90', '0.80', '16/64', 'new'),)
    """
    class_name = name_lookup(class_names, str, "class_names")
    rows = []
    for c in sorted(rules):
        change = (changes or {}).get(c, {})
        entered, before = set(change.get("entered", [])), change.get("scores", {})
        for rule in rules[c]:
            if changes is None:
                moved = "-"
            elif rule.text in entered:
                moved = "new"
            else:
                old = before.get(rule.text, math.nan)
                moved = f"{rule.score - old:+.2f}" if math.isfinite(old) and math.isfinite(rule.score) else "-"
            s = rule.support
            rows.append((class_name(c), rule.text, *(_share(v) for v in (rule.score, rule.coverage, rule.precision,
                                                                          rule.necessity, rule.sufficiency)),
                         f"{s.get('applies', 0)}/{s.get('rule_set', 0)}", moved))
    return TESTED_COLUMNS, tuple(rows)


def rule_table_markdown(rules: dict[int, list[Any]], changes: dict[int, dict[str, Any]] | None = None,
                          class_names: Sequence[str] | None = None, events: Sequence[str] = (),
                          guards: Sequence[Any] = ()) -> str:
    """``rule_table_rows()`` as a Markdown table (every cell escaped), with the rules that left each class's list,
    the check's rule events and the guarded features below it."""
    columns, rows = rule_table_rows(rules, changes, class_names)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    class_name = name_lookup(class_names, str, "class_names")
    left = [f"{escape(class_name(c))}: " + ", ".join(escape(t) for t in ch.get("left", []))
            for c, ch in sorted((changes or {}).items()) if ch.get("left")]
    if left:
        lines += ["", "Left since the previous check: " + "; ".join(left)]
    if events:
        lines += ["", "Rule events: " + "; ".join(escape(e) for e in events)]
    if guards:
        lines += ["", "Guarded features: " + "; ".join(escape(g.summary()) for g in guards)]
    return "\n".join(lines)


def _share(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "-"
