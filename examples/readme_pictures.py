"""Make the README's pictures from real runs: ``python -m examples.readme_pictures [--out docs/images]``.

Trains the digits, text, tabular and spurious-cue examples, then reads the images back out of the
TensorBoard event files, exactly as TensorBoard serves them, and saves the last check's as PNG files.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples import digits, spurious, tabular, text

PICTURES = {  # file name: (example run, TensorBoard image tag)
    "digits_attribution_maps.png": ("digits", "ig/attribution_maps"),
    "digits_class_mean_maps.png": ("digits", "ig/class_mean_maps"),
    "text_token_attributions.png": ("text", "ig/token_attributions"),
    "tabular_probe_mean.png": ("tabular", "ig/feature_attributions/probe_mean"),
    "spurious_attribution_maps.png": ("spurious", "ig/attribution_maps"),
    "digits_layer_maps.png": ("digits_layer", "ig/attribution_maps"),
}


def last_image(log_dir: Path, tag: str) -> bytes:
    """The PNG bytes of the last image logged under ``tag``."""
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    return events.Images(tag)[-1].encoded_image_string


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images")
    out = Path(parser.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as root:
        runs = {
            "digits": digits.train(root=root, verbose=False),
            "text": text.train(root=root, verbose=False),
            "tabular": tabular.train(root=root, verbose=False),
            "spurious": spurious.train("cue", root=root, verbose=False),
            # at the last convolution block's output (32 x 4 x 4): a map over the 8 x 8 digit
            "digits_layer": digits.train(root=root, verbose=False, name="digits_layer",
                                         monitor={"layer": "features.4"}),
        }
        for name, (example, tag) in PICTURES.items():
            (out / name).write_bytes(last_image(runs[example].log_dir, tag))
            print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
