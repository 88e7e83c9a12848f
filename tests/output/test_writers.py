"""Items, captions, layer maps and the writers behind every logger, without training (fast)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ig_lightning.output import captions
from ig_lightning.output.render import NONFINITE_RGB, image_grid, text_band, upsample_map
from ig_lightning.output.report import Reporter
from ig_lightning.output.views import (
    CheckRecord,
    Histogram,
    Image,
    ImageView,
    Table,
    TabularView,
    Text,
    TextView,
    example_caption,
)
from ig_lightning.output.writers import backend_of, tag_path

GREY = torch.tensor(NONFINITE_RGB, dtype=torch.uint8)


def record(inputs, scores, **kw) -> CheckRecord:
    n = scores.shape[0]
    kw.setdefault("targets", torch.arange(n) % 2)
    kw.setdefault("relative_error", torch.full((n,), 0.004))
    return CheckRecord(step=7, epoch=1, inputs=inputs, scores=scores, scales=torch.ones(n), **kw)


# --------------------------------------------------------------------------- upsample_map


def test_upsample_map_shape_and_modes():
    maps = torch.randn(3, 4, 5)
    assert upsample_map(maps, (28, 30)).shape == (3, 28, 30)
    assert upsample_map(maps.unsqueeze(1), (8, 10)).shape == (3, 8, 10)
    blocks = upsample_map(maps, (8, 10), mode="nearest")
    assert torch.equal(blocks, maps.repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert torch.equal(upsample_map(maps, (4, 5)), maps)  # already the size: unchanged
    for bad in (torch.zeros(3, 4), torch.zeros(2, 3, 4, 4)):
        with pytest.raises(ValueError, match="scores"):
            upsample_map(bad, (8, 8))
    with pytest.raises(ValueError, match="mode"):
        upsample_map(maps, (8, 8), mode="cubic")


@pytest.mark.parametrize("value", [0.3, -1.7e-3, 2.5])
def test_upsample_map_keeps_a_constant_map_exactly(value):
    maps = torch.full((2, 7, 7), value)
    for mode in ("bilinear", "nearest"):
        assert torch.equal(upsample_map(maps, (28, 23), mode=mode), torch.full((2, 28, 23), value))


def test_upsample_map_stays_within_the_values_mixed():
    maps = torch.randn(4, 3, 3)
    up = upsample_map(maps, (17, 17))
    assert (up.amin((1, 2)) >= maps.amin((1, 2))).all() and (up.amax((1, 2)) <= maps.amax((1, 2))).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_upsample_map_nonfinite_cell_stays_nonfinite_and_does_not_leak(bad):
    maps = torch.ones(1, 4, 4)
    maps[0, 1, 2] = bad
    up = upsample_map(maps, (8, 8))
    nonfinite = ~torch.isfinite(up[0])
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 4:6] = True
    assert torch.equal(nonfinite, expected)
    assert torch.equal(up[0][~expected], torch.ones(60))  # neighbours: the finite values only
    if not math.isnan(bad):
        assert (up[0][expected] == bad).all()


# --------------------------------------------------------------------------- captions


def test_caption_text_is_at_least_11_pixels_high():
    band = text_band("#3 label 7 · pred 1", 296)
    ink = (band < 128).any(0).any(1).nonzero()
    assert ink.max() - ink.min() + 1 >= 11  # capitals and digits, without descenders
    assert band.shape[2] == 296 and captions.CAPTION_PX >= 14


def test_long_captions_wrap_at_the_separator_and_never_get_cut():
    text = "#3 label 7 · pred 1 · explains 7 · completeness 0.4%"
    one_line, wrapped = text_band(text, 2000), text_band(text, 200)
    assert wrapped.shape[1] > one_line.shape[1] and wrapped.shape[2] == 200
    wide = text_band("averyveryverylongclassnamewithoutanyseparator", 50)
    assert wide.shape[2] > 50  # the picture widens instead


def test_example_caption_names_classes_and_leaves_out_what_the_record_lacks():
    r = record(torch.zeros(3, 4), torch.zeros(3, 4), labels=torch.tensor([0, 1, 1]),
               predictions=torch.tensor([1, 1, 0]), relative_error=torch.tensor([0.1, math.nan, 0.0042]))
    assert example_caption(r, 2, ["cat", "dog"]) == "#2 label dog · pred cat · explains cat · completeness 0.4%"
    assert example_caption(r, 1) == "#1 label 1 · pred 1 · explains 1 · completeness nan"
    bare = record(torch.zeros(1, 4), torch.zeros(1, 4), targets=None)
    assert example_caption(bare, 0) == "#0 · completeness 0.4%"


def test_image_view_captions_every_row_inside_the_picture():
    torch.manual_seed(0)
    inputs, scores = torch.rand(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    r = record(inputs, scores, labels=torch.tensor([0, 1, 0]), predictions=torch.tensor([0, 0, 0]))
    items = ImageView(["cat", "dog"]).items(r)
    maps = next(i for i in items if isinstance(i, Image) and i.tag == "ig/attribution_maps")
    plain = image_grid(inputs, scores, torch.ones(3), min_size=96)
    assert maps.pixels.shape[2] == plain.shape[2] and maps.pixels.shape[1] > plain.shape[1] + 3 * 30
    assert maps.caption.splitlines()[1:] == [example_caption(r, i, ["cat", "dog"]) for i in range(3)]
    means = next(i for i in items if isinstance(i, Image) and i.tag == "ig/class_mean_maps")
    assert "class cat · 2 examples · completeness 0.4%" in means.caption
    # thumbnails (panels under caption_min_size) stay as they were
    small = ImageView(min_size=8).items(r)[0].pixels
    assert torch.equal(small, image_grid(inputs, scores, torch.ones(3), min_size=8))


def test_text_and_tabular_views_caption_each_example():
    r = record(torch.tensor([[1, 2], [3, 0]]), torch.tensor([[0.5, -0.5], [0.2, 0.0]]),
               labels=torch.tensor([1, 0]), predictions=torch.tensor([1, 1]))
    strip = TextView(["[PAD]", "how", "many", "why"], ["q", "p"]).items(r)[0]
    assert strip.tag == "ig/token_attributions" and "#1 label q · pred p · explains p" in strip.caption
    from ig_lightning.output.charts import token_strip
    assert strip.pixels.shape[1] > token_strip([["how", "many"], ["why", "[PAD]"]], r.scores, torch.ones(2)).shape[1]
    charts = TabularView(["f0", "f1"], ["q", "p"]).items(r)
    assert charts[0].caption == "#0 label p · pred p · explains q · completeness 0.4%"
    assert charts[-1].tag == "ig/feature_attributions/probe_mean"


def test_views_give_items_the_rules_as_markdown_and_as_a_table():
    rules = {0: [(3, 0.5)], 1: [(1, -0.25)]}
    r = record(torch.zeros(2, 4), torch.zeros(2, 4), rules=rules, changes={0: {"entered": [3], "left": []}},
               rule_drops={0: 0.5, 1: math.nan})
    items = TabularView(["a", "b", "c", "d"], ["x", "y"]).items(r)
    text = next(i for i in items if isinstance(i, Text) and i.tag == "ig/rules")
    table = next(i for i in items if isinstance(i, Table))
    assert "| x | d (+0.500) | d | - | 50% |" in text.markdown
    assert table.tag == "ig/rules_table" and table.rows == (("x", "d (+0.500)", "d", "-", "50%"),
                                                            ("y", "b (-0.250)", "-", "-", "-"))


# --------------------------------------------------------------------------- layer maps


def test_image_view_draws_a_layer_map_over_the_input():
    torch.manual_seed(0)
    inputs = torch.rand(2, 3, 16, 16)
    layer = torch.randn(2, 4, 4)
    layer[1, 0, 0] = math.nan
    r = record(inputs, layer)
    view = ImageView(min_size=16, caption_min_size=10**6)  # no captions: panel positions are plain
    grid = view.items(r)[0].pixels
    expected = image_grid(inputs, upsample_map(layer, (16, 16)), torch.ones(2), min_size=16)
    assert torch.equal(grid, expected) and tuple(grid.shape) == (3, 2 * 18 + 2, 3 * 18 + 2)
    heat = grid[:, 2 + 18 : 2 + 18 + 16, 2 + 18 : 2 + 18 + 16]  # example 1's heatmap
    grey = (heat == GREY.view(3, 1, 1)).all(0)
    assert grey[:4, :4].all() and grey.sum() == 16  # the NaN cell covers its 4x4 input pixels only
    means = next(i for i in view.items(r) if i.tag == "ig/class_mean_maps")
    assert tuple(means.pixels.shape) == (3, 2 * 18 + 2, 3 * 18 + 2)


def test_image_grid_takes_one_map_for_a_colour_image():
    img = image_grid(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8), torch.ones(2), min_size=8)
    assert tuple(img.shape) == (3, 22, 32)
    with pytest.raises(ValueError, match="attributions"):
        image_grid(torch.rand(2, 3, 8, 8), torch.randn(2, 2, 8, 8), torch.ones(2))


# --------------------------------------------------------------------------- reporter and writers


def rules_record(step: int) -> CheckRecord:
    r = record(torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8), rules={0: [(1, 0.5)]})
    r.step = step
    return r


def test_loggers_sharing_a_directory_get_one_rules_line_per_check(tmp_path):
    tb, csv = TensorBoardLogger(tmp_path, name="x", version=0), CSVLogger(tmp_path, name="x", version=0)
    assert tb.log_dir == csv.log_dir
    reporter = Reporter([tb, csv], True, ImageView(min_size=8))
    for step in (1, 2):
        reporter.write(rules_record(step))
    lines = open(os.path.join(tb.log_dir, "ig_rules.jsonl")).read().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert sorted(os.listdir(os.path.join(csv.log_dir, "ig", "attribution_maps"))) == ["step_1.png", "step_2.png"]


def test_other_loggers_get_scalars_only_said_once(tmp_path, caplog):
    class OtherLogger:
        pass

    with caplog.at_level(logging.INFO):
        reporter = Reporter([OtherLogger()], True, ImageView())
        reporter.write(rules_record(1))
    said = [m for m in caplog.messages if "OtherLogger gets the scalars only" in m]
    assert len(said) == 1 and not reporter.writers and backend_of(OtherLogger()) is None


def test_a_backend_that_cannot_be_imported_warns_once_and_the_others_still_work(tmp_path, monkeypatch):
    class WandbLogger:  # what the reporter recognises, by class name (any subclass too)
        pass

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
    csv = CSVLogger(tmp_path, name="csv")
    with pytest.warns(UserWarning, match="could not write W&B pictures \\((ModuleNotFound|Import)Error"):
        reporter = Reporter([WandbLogger(), csv], True, ImageView(min_size=8))
    reporter.write(rules_record(3))
    assert os.listdir(os.path.join(csv.log_dir, "ig", "attribution_maps")) == ["step_3.png"]


def test_failures_inside_one_writer_warn_once_per_kind(tmp_path):
    class Broken:
        name, directory = "Fake", None

        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise OSError("disk full")
            return fail

    reporter = Reporter([], True, ImageView(min_size=8))
    reporter.writers = [Broken()]
    with pytest.warns(UserWarning) as caught:
        for step in (1, 2, 3):
            reporter.write(rules_record(step))
    messages = sorted(str(w.message).split(" (")[0] for w in caught)
    assert messages == ["IntegratedGradientsMonitor: could not write Fake pictures",
                        "IntegratedGradientsMonitor: could not write the Fake rules artifact"]


def test_tag_paths_are_folders_and_never_escape():
    assert tag_path("ig/attribution_maps") == os.path.join("ig", "attribution_maps")
    assert tag_path("ig/../x y") == os.path.join("ig", "_", "x_y")


def test_histogram_items_hold_finite_values_only():
    from ig_lightning.output.views import common_items

    r = record(torch.zeros(2, 2), torch.tensor([[math.nan, 1.0], [2.0, math.inf]]),
               relative_error=torch.tensor([math.nan, math.nan]))
    items = common_items(r)
    assert [(i.tag, i.values.tolist()) for i in items] == [("ig/histograms/attributions", [1.0, 2.0])]
    assert all(isinstance(i, Histogram) for i in items)


def test_wandb_and_mlflow_are_imported_only_for_their_loggers(tmp_path):
    code = (
        "import sys\n"
        "from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger\n"
        "from ig_lightning.output.report import Reporter\n"
        "from ig_lightning.output.views import ImageView\n"
        f"r = Reporter([TensorBoardLogger({str(tmp_path)!r}), CSVLogger({str(tmp_path)!r})], True, ImageView())\n"
        "assert len(r.writers) == 2\n"
        "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
