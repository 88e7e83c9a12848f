"""What a user sees: a real TensorBoard server over a short run's logs serves everything the monitor wrote."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch
from conftest import TinyCNN, free_port, loaders, trainer
from lightning.pytorch.loggers import TensorBoardLogger

from ig_lightning import IntegratedGradientsMonitor



def get(base: str, path: str, **params) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture
def served_run(tmp_path):
    torch.manual_seed(0)
    train, val = loaders()
    logger = TensorBoardLogger(tmp_path, name="run")
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, display=dict(max_images=4))
    trainer(tmp_path, [monitor], max_epochs=2, logger=logger).fit(TinyCNN(), train, val)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # bounded wait for the server and for the first load of the logs
            try:
                runs = json.loads(get(base, "/data/runs"))
                if runs:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tensorboard did not come up: {server.stderr.read()[-2000:]!r}")
            time.sleep(0.5)
        yield base, runs[0]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_tensorboard_serves_scalars_images_histograms_and_text(served_run):
    base, run = served_run
    scalars = json.loads(get(base, "/data/plugin/scalars/tags"))[run]
    for tag in ("ig/completeness_error", "ig/completeness_error_max", "ig/drift", "ig/drift_spearman"):
        assert tag in scalars, sorted(scalars)
    points = json.loads(get(base, "/data/plugin/scalars/scalars", run=run, tag="ig/completeness_error"))
    assert len(points) == 2 and all(0 <= p[2] < 1 for p in points)  # [wall_time, step, value] per check

    images = json.loads(get(base, "/data/plugin/images/tags"))[run]
    assert {"ig/attribution_maps", "ig/class_mean_maps"} <= set(images)
    shots = json.loads(get(base, "/data/plugin/images/images", run=run, tag="ig/attribution_maps"))
    assert len(shots) == 2
    png = get(base, "/data/plugin/images/individualImage?" + shots[-1]["query"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    histograms = json.loads(get(base, "/data/plugin/histograms/tags"))[run]
    assert {"ig/histograms/attributions", "ig/histograms/completeness_error"} <= set(histograms)
    text_tags = json.loads(get(base, "/data/plugin/text/tags"))[run]
    rules_tag = next(t for t in text_tags if t.startswith("ig/rules"))  # SummaryWriter adds /text_summary
    entries = json.loads(get(base, "/data/plugin/text/text", run=run, tag=rules_tag))
    assert len(entries) == 2 and "class" in entries[-1]["text"].lower()
