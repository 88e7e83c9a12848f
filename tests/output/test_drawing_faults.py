"""A diverged model (NaN / infinite attributions, scales, inputs, errors) never breaks drawing or writing.

The engine side (rules and drift over non-finite scores) is in tests/functional/test_nonfinite.py.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from ig_lightning.output.markdown import token_table
from ig_lightning.output.charts import bar_chart, token_strip
from ig_lightning.output.render import NONFINITE_RGB, colorize_signed, image_grid
from ig_lightning.functional.rules import class_mean_maps, class_top_features
from ig_lightning.output.markdown import rules_markdown
from ig_lightning.output.views import CheckRecord, ImageView, TabularView, TextView, log_common

BAD = [math.nan, math.inf, -math.inf]
GREY = torch.tensor(NONFINITE_RGB, dtype=torch.uint8)


def is_grey(img: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` uint8 image to ``(H, W)`` bool: pixels painted in the non-finite colour."""
    return (img == GREY.view(3, 1, 1)).all(0)


def panel(img: torch.Tensor, row: int, col: int, size: int = 8, pad: int = 2) -> torch.Tensor:
    """Panel ``col`` (0 input, 1 heatmap, 2 overlay) of example ``row`` in an :func:`image_grid`."""
    top, left = pad + row * (size + pad), pad + col * (size + pad)
    return img[:, top : top + size, left : left + size]


def read_events(path) -> EventAccumulator:
    return EventAccumulator(str(path), size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()


def decoded(events: EventAccumulator, tag: str) -> torch.Tensor:
    png = events.Images(tag)[-1].encoded_image_string
    return torch.from_numpy(np.array(Image.open(io.BytesIO(png)))).permute(2, 0, 1)


def record(scores: torch.Tensor, *, inputs=None, targets=None, scales=None, relative=None, **kwargs) -> CheckRecord:
    n = scores.shape[0]
    return CheckRecord(
        3, 1, torch.rand(scores.shape) if inputs is None else inputs, targets, scores,
        torch.ones(n) if scales is None else scales, torch.full((n,), 0.01) if relative is None else relative,
        **kwargs,
    )


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize("bad", BAD)
def test_image_grid_paints_nonfinite_pixels_grey_only_there(bad: float) -> None:
    torch.manual_seed(0)
    attributions = torch.randn(2, 1, 8, 8)
    attributions[0, 0, 2, 3] = bad
    img = image_grid(torch.rand(2, 1, 8, 8), attributions, torch.ones(2), min_size=8)
    assert tuple(img.shape) == (3, 2 * 10 + 2, 3 * 10 + 2)
    for col in (1, 2):  # heatmap and overlay
        grey = is_grey(panel(img, 0, col))
        assert grey[2, 3] and grey.sum() == 1
        assert not is_grey(panel(img, 1, col)).any()


def test_image_grid_example_all_nan_is_grey_and_others_unchanged() -> None:
    torch.manual_seed(0)
    inputs, attributions = torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    clean = image_grid(inputs, attributions, torch.ones(2), min_size=8)
    attributions[1] = math.nan
    img = image_grid(inputs, attributions, torch.tensor([1.0, math.nan]), min_size=8)
    assert is_grey(panel(img, 1, 1)).all() and is_grey(panel(img, 1, 2)).all()
    assert torch.equal(panel(img, 0, 1), panel(clean, 0, 1)) and torch.equal(panel(img, 1, 0), panel(clean, 1, 0))


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_image_grid_bad_scale_falls_back_to_finite_max(scale: float) -> None:
    torch.manual_seed(0)
    inputs, attributions = torch.rand(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    attributions[0, :, 0, 0] = math.nan  # must not count in the fallback
    largest = attributions.sum(1).nan_to_num().abs().max()
    img = image_grid(inputs, attributions, torch.tensor([scale]), min_size=8)
    assert torch.equal(img, image_grid(inputs, attributions, largest.view(1), min_size=8))
    assert is_grey(panel(img, 0, 1)).sum() == 1  # only the NaN pixel: never an all-grey image


@pytest.mark.parametrize("bad", BAD)
def test_image_grid_nonfinite_input_pixel_is_grey_and_keeps_normalisation(bad: float) -> None:
    inputs = torch.linspace(0.1, 0.9, 64).view(1, 1, 8, 8)
    faulty = inputs.clone()
    faulty[0, 0, 4, 4] = bad
    attributions = torch.zeros(1, 1, 8, 8)
    clean, img = (image_grid(x, attributions, torch.ones(1), min_size=8) for x in (inputs, faulty))
    for col in (0, 2):  # input and overlay (zero attribution: the grey input shows through)
        changed = (panel(img, 0, col) != panel(clean, 0, col)).any(0)
        assert changed.sum() == 1 and changed[4, 4] and is_grey(panel(img, 0, col))[4, 4]
    assert torch.equal(panel(img, 0, 1), panel(clean, 0, 1))


def test_colorize_signed_nonfinite_values_are_grey() -> None:
    colours = colorize_signed(torch.tensor([0.5, math.nan, math.inf, -math.inf, 0.0]), 1.0)
    assert [row.tolist() == list(NONFINITE_RGB) for row in colours] == [False, True, True, True, False]


@pytest.mark.parametrize("scale", [1.0, 0.0, math.nan])
def test_token_strip_draws_nonfinite_token_on_grey(scale: float) -> None:
    tokens = [["how", "many"], ["why"]]
    scores = torch.tensor([[0.8, math.nan], [-0.8, 0.0]])
    img = token_strip(tokens, scores, torch.tensor([scale, scale]))
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    assert is_grey(img).sum() > 50  # the box behind "many"
    assert not is_grey(token_strip(tokens, scores.nan_to_num(), torch.ones(2))).any()
    r, g, b = img.int()
    assert ((r > b + 50) & (r > g + 50)).any() and (b > r + 50).any()  # finite tokens drawn normally


def test_token_table_writes_nonfinite_scores() -> None:
    table = token_table([["a", "b", "c", "d"]], torch.tensor([[math.nan, math.inf, -math.inf, 0.5]]))
    assert "a (nan) b (+inf) c (-inf) d (+0.500)" in table


@pytest.mark.parametrize("scale", [None, 1.0])
@pytest.mark.parametrize("values", [[0.3, math.nan, -0.5], [math.inf, -math.inf, 0.1], [math.nan] * 3])
def test_bar_chart_draws_nonfinite_bars_grey(values: list[float], scale: float | None) -> None:
    img = bar_chart(torch.tensor(values), ["a", "b", "c"], scale=scale)
    assert tuple(img.shape) == (3, 320, 480)
    assert is_grey(img).sum() > 500  # a bar's face, not stray anti-aliased text pixels
    assert is_grey(bar_chart(torch.tensor([0.3, 0.2, -0.5]), scale=scale)).sum() < 100


# --------------------------------------------------------------------------- views


@pytest.mark.parametrize(
    ("scores", "relative", "written"),
    [
        ([0.5, math.nan, math.inf, -1.0], [0.1, math.nan], {"attributions": 2, "completeness_error": 1}),
        ([math.nan] * 4, [math.inf, -math.inf], {}),
        ([0.5, 0.25, 0.0, 1.0], [0.1, 0.2], {"attributions": 4, "completeness_error": 2}),
    ],
)
def test_log_common_logs_finite_values_only(tmp_path, scores, relative, written) -> None:
    writer = SummaryWriter(tmp_path)
    log_common(writer, record(torch.tensor(scores).view(2, 2), relative=torch.tensor(relative)))
    writer.close()
    events = read_events(tmp_path)
    tags = {tag.removeprefix("ig/histograms/") for tag in events.Tags()["histograms"]}
    assert tags == set(written)
    for name, count in written.items():
        assert events.Histograms(f"ig/histograms/{name}")[0].histogram_value.num == count


def test_image_view_draws_diverged_examples_and_classes_grey(tmp_path) -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, 1, 8, 8)
    scores[1] = math.nan  # class 1's only example diverged
    scores[2, 0, 0, 0] = math.inf  # one of class 0's examples diverged at one pixel
    inputs = torch.rand(4, 1, 8, 8)
    inputs[3, 0, 5, 5] = math.nan
    targets = torch.tensor([0, 1, 0, 2])
    rules = class_top_features(torch.arange(64).expand(4, 64), scores.view(4, -1), targets, k=2)
    writer = SummaryWriter(tmp_path)
    ImageView(min_size=8).log(writer, record(scores, inputs=inputs, targets=targets,
                                             scales=torch.tensor([1.0, math.nan, 0.0, math.inf]), rules=rules))
    writer.close()
    events = read_events(tmp_path)
    grid = decoded(events, "ig/attribution_maps")
    assert tuple(grid.shape) == (3, 4 * 10 + 2, 3 * 10 + 2)
    assert is_grey(panel(grid, 1, 1)).all() and is_grey(panel(grid, 2, 1)).sum() == 1
    assert is_grey(panel(grid, 3, 0))[5, 5] and not is_grey(panel(grid, 3, 1)).any()
    means = decoded(events, "ig/class_mean_maps")  # rows: classes 0, 1, 2
    assert tuple(means.shape) == (3, 3 * 10 + 2, 3 * 10 + 2)
    assert not is_grey(panel(means, 0, 1)).any()  # class 0: mean of its finite example only
    assert is_grey(panel(means, 1, 1)).all() and is_grey(panel(means, 1, 2)).all()
    text = events.Tensors("ig/rules/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "Rows of `ig/class_mean_maps`: 0, 1, 2" in text


def test_tabular_view_survives_nonfinite_scores_and_scales(tmp_path) -> None:
    scores = torch.tensor([[0.5, -0.2, 0.1], [math.nan, math.inf, 0.3], [0.1, 0.2, 0.3]])
    writer = SummaryWriter(tmp_path)
    TabularView(["a", "b", "c"]).log(writer, record(scores, scales=torch.tensor([math.nan, 0.0, 1.0])))
    writer.close()
    events = read_events(tmp_path)
    assert len(events.Tags()["images"]) == 4
    assert is_grey(decoded(events, "ig/feature_attributions/example_1")).sum() > 500
    assert is_grey(decoded(events, "ig/feature_attributions/probe_mean")).sum() < 100  # mean of finite examples


def test_text_view_leaves_padding_out(tmp_path) -> None:
    vocabulary = ["[PAD]", "how", "many", "why"]
    padded, mask = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    scores = torch.tensor([[0.5, -0.5, 9.0, math.nan], [0.25, 7.0, 7.0, 7.0]])
    short = torch.tensor([[1, 2], [3, 0]])  # the same examples, without padding
    for folder, rec in [("padded", record(scores, inputs=padded, mask=mask)),
                        ("short", record(scores[:, :2], inputs=short, mask=short != 0))]:
        writer = SummaryWriter(tmp_path / folder)
        TextView(vocabulary).log(writer, rec)
        writer.close()
    padded_events, short_events = read_events(tmp_path / "padded"), read_events(tmp_path / "short")
    assert torch.equal(decoded(padded_events, "ig/token_attributions"), decoded(short_events, "ig/token_attributions"))
    table = padded_events.Tensors("ig/tokens/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| 0 | how (+0.500) many (-0.500) |" in table and "| 1 | why (+0.250) |" in table
    assert "PAD" not in table and "nan" not in table


class Tokenizer:
    """The one method of a Hugging Face tokenizer the view uses; calling it (encoding text) is a bug."""

    def convert_ids_to_tokens(self, ids: int) -> str | None:
        return {1: "▁how", 2: "##many"}.get(ids)

    def __call__(self, text: str) -> dict:
        raise AssertionError("a tokenizer encodes text; it must not be called to name ids")


def test_text_view_names_tokens_with_a_tokenizer_and_draws_nan_grey(tmp_path) -> None:
    writer = SummaryWriter(tmp_path)
    TextView(Tokenizer()).log(writer, record(torch.tensor([[0.5, math.nan, 0.1]]), inputs=torch.tensor([[1, 2, 9]])))
    writer.close()
    events = read_events(tmp_path)
    table = events.Tensors("ig/tokens/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "▁how (+0.500) ##many (nan) 9 (+0.100)" in table  # unknown id 9: its number
    assert is_grey(decoded(events, "ig/token_attributions")).sum() > 50
    with pytest.raises(TypeError, match="vocabulary"):
        TextView(vocabulary=3)


# --------------------------------------------------------------------------- rules


def test_class_mean_maps_and_markdown_skip_or_show_nonfinite() -> None:
    attributions = torch.tensor([[1.0, 2.0], [math.nan, 0.0], [3.0, 4.0], [math.inf, 1.0]])
    means = class_mean_maps(attributions, torch.tensor([0, 0, 0, 1]))
    assert {c: m.tolist() for c, m in means.items()} == {0: [2.0, 3.0]}
    assert rules_markdown({0: [(1, math.nan), (2, math.inf)]}).endswith("| 0 | 1 (nan), 2 (+inf) |")
