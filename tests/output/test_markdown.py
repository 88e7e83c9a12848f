"""ig_lightning.output.markdown: the rules table."""

from __future__ import annotations

import pytest

from ig_lightning.functional.rules import rule_changes
from ig_lightning.output.markdown import rules_markdown


def test_rules_markdown_names_and_changes() -> None:
    rules = {1: [(3, 2.0), (9, 0.25)], 0: [(7, 1.5)]}
    changes = rule_changes({1: [(3, 1.0), (4, 0.5)]}, rules)
    text = rules_markdown(
        rules,
        changes,
        key_names=["k0", "k1", "k2", "how|many"],
        class_names=["number", "place"],
        precision=2,
    )
    lines = text.splitlines()
    assert lines[0] == "| class | top features | entered | left |"
    assert lines[2].startswith("| number | 7 (+1.50) | 7 | - |")  # key 7 beyond the vocabulary: str(7)
    assert "how\\|many (+2.00), 9 (+0.25)" in lines[3]
    assert lines[3].endswith("| 9 | 4 |")


def test_rules_markdown_defaults_and_callable_names() -> None:
    text = rules_markdown({5: [(2, -0.5)]}, key_names=lambda key: f"tok{key}")
    assert "| 5 | tok2 (-0.500) |" in text and "entered" not in text
    with pytest.raises(TypeError, match="rules"):
        rules_markdown([(2, 0.5)])
    with pytest.raises(TypeError, match="key_names"):
        rules_markdown({0: []}, key_names=3)
    with pytest.raises(ValueError, match="precision"):
        rules_markdown({0: []}, precision=-1)
