"""Rule tests on models whose rules are known: every number equals a count made by hand (plain loops)."""

import math

import pytest
import torch

from ig_lightning.functional.rule_candidates import (
    attribution_shares,
    feature_candidates,
    region_candidates,
    token_candidates,
)
from ig_lightning.functional.rule_tests import Rule, applies, evaluate_rules, fit_condition, rank, remove, values, write

NAN = float("nan")


def step_model(x: torch.Tensor) -> torch.Tensor:
    """Class 1 exactly when feature 0 is above 0.5."""
    return (x[:, 0] > 0.5).long()


def bigram_model(ids: torch.Tensor) -> torch.Tensor:
    """Class 1 exactly when token 5 is followed by token 6."""
    return ((ids[:, :-1] == 5) & (ids[:, 1:] == 6)).any(1).long()


def corner_model(x: torch.Tensor) -> torch.Tensor:
    """Class 1 exactly when the top-left 2x2 block's mean is above 0.5 (images (N, 1, 4, 4))."""
    return (x[:, 0, :2, :2].mean((1, 2)) > 0.5).long()


def by_hand(rule_applies, predicted, target):
    """Coverage and precision counted with loops."""
    hits = [i for i, a in enumerate(rule_applies) if a]
    coverage = len(hits) / len(rule_applies)
    precision = sum(predicted[i] == target for i in hits) / len(hits) if hits else NAN
    return coverage, precision


def test_a_feature_rule_of_a_step_model():
    x = torch.tensor([[0.0, 3.0], [0.2, 1.0], [0.4, 2.0], [0.6, 0.0], [0.8, 5.0], [1.0, 1.0], [0.9, 2.0], [0.1, 0.0]])
    predictions = step_model(x)
    rule = Rule(1, "feature", (0,), share=0.7)
    rule.direction, rule.threshold = fit_condition(values(rule, x), predictions == 1, rule.share)
    assert (rule.direction, rule.threshold) == (">", pytest.approx(0.5))
    evaluate_rules(lambda xs, rows: step_model(xs), [rule], x, predictions, 0.0, max_tests=64)
    coverage, precision = by_hand([float(v) > 0.5 for v in x[:, 0]], predictions.tolist(), 1)
    assert (rule.coverage, rule.precision) == (coverage, precision) == (0.5, 1.0)
    assert rule.necessity == 1.0  # feature 0 set to the baseline 0: every one leaves class 1
    assert rule.typical == pytest.approx(0.8)  # the median where it applies (torch's lower middle)
    assert rule.sufficiency == 1.0  # written into the four others: all become class 1
    assert rule.score == 1.0
    assert rule.class_coverage == 1.0
    assert rule.support == {"rule_set": 8, "applies": 4, "predicted": 4, "applies_predicted": 4, "necessity": 4,
                            "sufficiency": 4}


def test_a_dummy_feature_neither_decides_nor_is_needed():
    x = torch.tensor([[0.0, 3.0], [0.2, 1.0], [0.4, 2.0], [0.6, 0.0], [0.8, 5.0], [1.0, 1.0]])
    predictions = step_model(x)
    rule = Rule(1, "feature", (1,), share=0.1)
    rule.direction, rule.threshold = fit_condition(values(rule, x), predictions == 1, rule.share)
    evaluate_rules(lambda xs, rows: step_model(xs), [rule], x, predictions, 0.0)
    hit = applies(rule, x).tolist()
    assert (rule.coverage, rule.precision) == by_hand(hit, predictions.tolist(), 1)
    assert rule.necessity == 0.0 and rule.score == 0.0
    assert rule.support["sufficiency"] == 0 and math.isnan(rule.sufficiency)  # no other where it does not apply


def test_a_bigram_rule_counted_by_hand():
    ids = torch.tensor([[5, 6, 1, 0], [1, 5, 6, 0], [5, 1, 6, 0], [2, 3, 0, 0], [6, 5, 2, 0], [5, 6, 5, 6]])
    mask = ids != 0
    predictions = bigram_model(ids)
    rule = Rule(1, "tokens", (5, 6))
    evaluate_rules(lambda xs, rows: bigram_model(xs), [rule], ids, predictions, 0, mask=mask)
    present = [any(row[p:p + 2] == [5, 6] for p in range(len(row) - 1)) for row in ids.tolist()]
    assert present == [True, True, False, False, False, True]
    assert (rule.coverage, rule.precision) == by_hand(present, predictions.tolist(), 1) == (0.5, 1.0)
    assert rule.necessity == 1.0  # every occurrence set to the pad id 0
    assert rule.sufficiency == 1.0  # written over the first two real positions of the three others
    assert rule.support["sufficiency"] == 3


def test_writing_tokens_needs_room_among_real_tokens():
    rule = Rule(1, "tokens", (5, 6))
    ids = torch.tensor([[1, 0, 0], [1, 2, 0], [0, 0, 0]])
    written, ok = write(rule, ids, None, ids != 0)
    assert ok.tolist() == [False, True, False]
    assert written[1].tolist() == [5, 6, 0] and torch.equal(written[0], ids[0])


def test_removing_tokens_replaces_every_occurrence_and_nothing_else():
    rule = Rule(1, "tokens", (5, 6))
    ids = torch.tensor([[5, 6, 5, 6, 5]])
    assert remove(rule, ids, 0, ids != 0).tolist() == [[0, 0, 0, 0, 5]]


def test_a_region_rule_of_a_corner_model():
    torch.manual_seed(0)
    x = torch.rand(40, 1, 4, 4) * 0.4
    x[:12, :, :2, :2] = 0.9  # the mark on 12 images
    predictions = corner_model(x)
    keys = (0, 1, 4, 5)  # rows 0-1, cols 0-1 of a 4x4 image
    rule = Rule(1, "region", keys, share=0.5)
    rule.direction, rule.threshold = fit_condition(values(rule, x), predictions == 1, rule.share)
    evaluate_rules(lambda xs, rows: corner_model(xs), [rule], x, predictions, torch.zeros(1, 4, 4))
    marked = [bool(x[i, 0, :2, :2].mean() > rule.threshold) for i in range(40)]
    assert sum(marked) == 12
    assert (rule.coverage, rule.precision) == by_hand(marked, predictions.tolist(), 1) == (0.3, 1.0)
    assert rule.necessity == 1.0 and rule.sufficiency == 1.0


def test_a_rule_that_applies_nowhere():
    x = torch.tensor([[0.0, 1.0], [0.2, 1.0], [0.4, 1.0]])
    rule = Rule(1, "feature", (0,), direction=">", threshold=0.9)
    evaluate_rules(lambda xs, rows: step_model(xs), [rule], x, step_model(x), 0.0)
    assert rule.coverage == 0.0
    assert math.isnan(rule.precision) and math.isnan(rule.necessity)
    assert math.isnan(rule.sufficiency)  # no example where it applies: no value to write in
    assert rule.score == 0.0 and rule.support["applies"] == 0
    assert rule.to_dict()["precision"] is None


def test_necessity_and_sufficiency_rest_on_at_most_max_tests_examples():
    x = torch.rand(100, 2)
    rule = Rule(1, "feature", (0,), direction=">", threshold=0.5)
    evaluate_rules(lambda xs, rows: step_model(xs), [rule], x, step_model(x), 0.0, max_tests=7)
    assert rule.support["necessity"] == 7 and rule.support["sufficiency"] == 7


def test_predict_is_called_once_with_the_rows_the_changed_examples_come_from():
    ids = torch.tensor([[5, 6, 1], [1, 2, 3], [5, 6, 0]])
    calls = []

    def predict(xs, rows):
        calls.append(rows.tolist())
        return bigram_model(xs)

    rules = [Rule(1, "tokens", (5, 6)), Rule(1, "tokens", (1,))]
    evaluate_rules(predict, rules, ids, bigram_model(ids), 0, mask=ids != 0)
    assert len(calls) == 1
    # (5, 6): removed from rows 0 and 2 (class 1), written into row 1; (1,): removed from row 0, no other row to
    # write into (row 1 holds it, row 2 is class 1).
    assert calls[0] == [0, 2, 1, 0]


def test_token_candidates_skip_padding_and_rank_by_mean_share():
    ids = torch.tensor([[7, 8, 0], [7, 9, 0], [3, 3, 3]])
    shares = torch.tensor([[0.5, 0.5, 9.0], [0.9, 0.1, 9.0], [0.3, 0.3, 0.4]])
    found = token_candidates(ids, shares, torch.tensor([0, 0, 1]), ids != 0, max_n=2, k=3)
    # class 0: (7,) = (0.5 + 0.9) / 2 = 0.7; (7, 8) and (7, 9) = 1.0 / 2 hold (7,): left out; (8,) = 0.25, (9,) = 0.05;
    # the padding's 9.0 never counts
    assert found[0] == [((7,), 0.7), ((8,), 0.25), ((9,), 0.05)]
    assert found[1][0] == ((3, 3), 0.7)  # the best occurrence of a repeated n-gram in an example


def test_feature_and_region_candidates():
    shares = torch.tensor([[0.1, -0.6, 0.3], [0.1, -0.4, 0.5]])
    assert feature_candidates(shares, torch.tensor([0, 0]), k=2) == {0: [(1, pytest.approx(-0.5)),
                                                                          (2, pytest.approx(0.4))]}
    maps = torch.zeros(2, 4, 4)
    maps[:, 2:, 2:] = 1.0
    found = region_candidates(maps, torch.tensor([3, 3]), size=2, k=2)[3]
    assert found[0] == ((10, 11, 14, 15), 4.0)
    assert len(found) == 1  # the other windows hold nothing


def test_shares_are_per_example_and_nan_safe():
    shares = attribution_shares(torch.tensor([[1.0, -3.0], [NAN, 2.0], [0.0, 0.0]]))
    assert shares.tolist() == [[0.25, -0.75], [0.0, 1.0], [0.0, 0.0]]


def test_rank_by_score_then_share_and_round_trip():
    a = Rule(0, "feature", (1,), share=0.1, score=0.5)
    b = Rule(0, "feature", (2,), share=0.9, score=0.5)
    c = Rule(0, "feature", (3,), share=0.9, score=NAN)
    assert rank([c, a, b]) == [b, a, c]
    again = Rule.from_dict(b.to_dict())
    assert again.identity == b.identity and again.score == 0.5 and math.isnan(again.coverage)


def test_rank_states_a_bigram_whole_when_its_words_always_come_together():
    blue = Rule(0, "tokens", (5,), share=0.3, score=0.61, support={"applies": 40})
    both = Rule(0, "tokens", (5, 6), share=0.6, score=0.60, support={"applies": 40})
    moon = Rule(0, "tokens", (6,), share=0.3, score=0.59, support={"applies": 40})
    assert rank([blue, both, moon]) == [both]
    alone = Rule(0, "tokens", (5, 6), share=0.6, score=0.60, support={"applies": 12})  # a rarer bigram
    assert rank([blue, alone]) == [blue]
