"""Views: images reach TensorBoard pixel for pixel; names and kinds are what a reader expects."""

import io

import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from ig_lightning.output.record import add_png
from ig_lightning.output.views import infer_kind, pixel_namer


def test_add_png_round_trips_exactly(tmp_path):
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    writer = SummaryWriter(tmp_path)
    add_png(writer, "ig/x", image, 5)
    writer.close()
    event = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload().Images("ig/x")[0]
    decoded = torch.from_numpy(__import__("numpy").array(Image.open(io.BytesIO(event.encoded_image_string))))
    assert event.step == 5 and (event.width, event.height) == (23, 17)
    assert torch.equal(decoded.permute(2, 0, 1), image)


def test_add_png_falls_back_to_add_image_for_other_writers():
    calls = []

    class Other:
        def add_image(self, *args, **kwargs):
            calls.append((args, kwargs))

    add_png(Other(), "ig/x", torch.zeros(3, 2, 2, dtype=torch.uint8), 1)
    assert calls and calls[0][1] == {"dataformats": "CHW"}


def test_pixel_names():
    assert pixel_namer((1, 8, 8))(10) == "(1,2)"
    assert pixel_namer((3, 4, 4))(17) == "(1,0,1)"
    assert pixel_namer((8, 8))(9) == "(1,1)"


def test_kinds_are_inferred_from_shapes():
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert infer_kind(ids, torch.zeros(2, 5), layer="embedding") == "text"
    assert infer_kind(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), None) == "image"
    assert infer_kind(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), None) == "image"
    assert infer_kind(torch.zeros(2, 30), torch.zeros(2, 30), None) == "tabular"
