"""Every supported logger gets the pictures and the rules of every check, read back from what the REAL libraries
wrote: W&B offline run directories, an MLflow file store, CSV log folders, TensorBoard event files.

W&B and MLflow are optional: their tests are skipped when the package is missing.
"""

from __future__ import annotations

import glob
import io
import json
import os
import struct

import numpy as np
import pytest
import torch
from conftest import TinyCNN, caught_warnings, loaders, trainer, write_failures
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.output import record as record_module
from ig_lightning.output import writers as writers_module

CHECKS = 2  # max_epochs=2, one check per validation epoch (the sanity check is not one)


def fit(tmp_path, logger, monitor=None, **kw):
    torch.manual_seed(0)
    monitor = monitor or IntegratedGradientsMonitor(probe=6, n_steps=4, display=dict(class_names=["a", "b", "c", "d"]))
    t = trainer(tmp_path, [monitor], logger=logger, max_epochs=2, **kw)
    t.fit(TinyCNN(), *loaders())
    return t, monitor


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes the whole picture
    return image.size


def csv_pngs(log_dir, tag="ig/attribution_maps") -> list[str]:
    return sorted(glob.glob(os.path.join(log_dir, *tag.split("/"), "step_*.png")), key=png_step)


def png_step(path: str) -> int:
    return int(os.path.basename(path)[len("step_"):-len(".png")])


def tensorboard_images(log_dir, tag="ig/attribution_maps"):
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    return events.Images(tag) if tag in events.Tags()["images"] else []


# --------------------------------------------------------------------------- CSV


def test_csv_logger_gets_pngs_texts_histograms_and_the_rules_file(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    fit(tmp_path, logger)
    pngs = csv_pngs(logger.log_dir)
    assert len(pngs) == CHECKS and len(csv_pngs(logger.log_dir, "ig/class_mean_maps")) == CHECKS
    image = Image.open(pngs[0])
    assert image.size[0] >= 296 and "#0 label" in image.info["Description"]  # the caption travels with it
    assert len(glob.glob(os.path.join(logger.log_dir, "ig", "rules", "step_*.md"))) == CHECKS
    assert len(glob.glob(os.path.join(logger.log_dir, "ig", "rules_table", "step_*.csv"))) == CHECKS
    assert len(glob.glob(os.path.join(logger.log_dir, "ig", "histograms", "attributions", "step_*.csv"))) == CHECKS
    lines = open(os.path.join(logger.log_dir, "ig_rules.jsonl")).read().splitlines()
    assert len(lines) == CHECKS and {"epoch", "step", "rules", "changes", "rule_drops"} <= set(json.loads(lines[0]))
    steps = {png_step(p) for p in pngs}
    assert steps == {json.loads(line)["step"] for line in lines}
    assert "ig/completeness_error" in open(os.path.join(logger.log_dir, "metrics.csv")).readline()


def test_tensorboard_and_csv_together_both_get_every_check(tmp_path):
    tensorboard, csv_logger = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    fit(tmp_path, [tensorboard, csv_logger])
    events = tensorboard_images(tensorboard.log_dir)
    pngs = csv_pngs(csv_logger.log_dir)
    assert len(events) == len(pngs) == CHECKS
    assert [e.step for e in events] == [png_step(p) for p in pngs]
    # the same picture, pixel for pixel, in both
    tb_pixels = np.array(Image.open(io.BytesIO(events[-1].encoded_image_string)))
    assert np.array_equal(tb_pixels, np.array(Image.open(pngs[-1]).convert("RGB")))
    for logger in (tensorboard, csv_logger):
        assert len(open(os.path.join(logger.log_dir, "ig_rules.jsonl")).read().splitlines()) == CHECKS


@pytest.mark.parametrize("failing", ["CSV", "TensorBoard"])
def test_a_failing_backend_warns_once_and_the_other_still_gets_its_files(tmp_path, monkeypatch, failing):
    def broken(*args, **kwargs):
        raise RuntimeError(f"{failing} broke")

    if failing == "CSV":
        monkeypatch.setattr(writers_module.CSVWriter, "image", broken)
    else:
        monkeypatch.setattr(record_module, "add_png", broken)
    tensorboard, csv_logger = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    with caught_warnings() as caught:
        t, monitor = fit(tmp_path, [tensorboard, csv_logger])
    failures = write_failures(caught)
    assert len(failures) == 1 and f"could not write {failing} pictures (RuntimeError: {failing} broke" in failures[0]
    assert t.current_epoch == 2 and monitor.checks == CHECKS
    assert len(csv_pngs(csv_logger.log_dir)) == (0 if failing == "CSV" else CHECKS)
    assert len(tensorboard_images(tensorboard.log_dir)) == (0 if failing == "TensorBoard" else CHECKS)
    if failing == "CSV":  # its other items (texts, rules file) still arrive
        assert len(glob.glob(os.path.join(csv_logger.log_dir, "ig", "rules", "step_*.md"))) == CHECKS
    assert len(open(os.path.join(csv_logger.log_dir, "ig_rules.jsonl")).read().splitlines()) == CHECKS


# --------------------------------------------------------------------------- W&B


def wandb_records(path):
    """The records of a ``.wandb`` transaction log (LevelDB-style 32 KiB blocks of chunks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, chunks = open(path, "rb").read(), 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        chunks = data if kind in (1, 2) else chunks + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record


def test_wandb_offline_run_gets_captioned_images_tables_and_the_rules_file(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    for name, value in dict(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true",
                            WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true").items():
        monkeypatch.setenv(name, value)
    logger = WandbLogger(save_dir=tmp_path, offline=True, project="ig")
    try:
        with caught_warnings() as caught:
            fit(tmp_path, logger)
        run_dir = logger.experiment.dir
    finally:
        wandb.finish()
    assert not write_failures(caught)
    images = sorted(glob.glob(os.path.join(run_dir, "media", "images", "ig", "attribution_maps_*.png")))
    assert len(images) == CHECKS and png_size(open(images[0], "rb").read())[0] >= 296
    assert len(glob.glob(os.path.join(run_dir, "media", "images", "ig", "class_mean_maps_*.png"))) == CHECKS
    tables = glob.glob(os.path.join(run_dir, "media", "table", "ig", "rules_table_*.table.json"))
    assert len(tables) == CHECKS
    table = json.load(open(tables[0]))
    assert table["columns"] == ["class", "rule", "score", "coverage", "precision", "necessity", "sufficiency",
                                "support", "change"]
    classes = [row[0] for row in table["data"]]  # one row per rule, by class
    assert classes == sorted(classes) and set(classes) <= {"a", "b", "c", "d"} and len(set(classes)) >= 2
    assert len(open(os.path.join(run_dir, "ig_rules.jsonl")).read().splitlines()) == CHECKS

    # History: pictures and scalars both arrive, at the same trainer/global_step, W&B's own step only grows.
    rows = []
    for record in wandb_records(glob.glob(os.path.join(os.path.dirname(run_dir), "run-*.wandb"))[0]):
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                         for item in record.history.item})
    steps = [row["_step"] for row in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    pictures = [row for row in rows if "ig/attribution_maps/path" in row]
    scalars = [row for row in rows if "ig/completeness_error" in row]
    assert len(pictures) == len(scalars) == CHECKS
    assert [r["trainer/global_step"] for r in pictures] == [r["trainer/global_step"] for r in scalars]
    assert pictures[0]["ig/attribution_maps/caption"].startswith("epoch 0, step ")
    assert "#0 label a · pred " in pictures[0]["ig/attribution_maps/caption"]
    assert "ig/histograms/attributions/_type" in pictures[0] or "ig/histograms/attributions" in pictures[0]


# --------------------------------------------------------------------------- MLflow


def test_mlflow_file_store_gets_images_texts_and_the_rules_artifact(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps file stores behind this switch
    uri = f"file:{tmp_path}/mlruns"
    logger, csv_logger = MLFlowLogger(tracking_uri=uri, experiment_name="ig"), CSVLogger(tmp_path, name="csv")
    with caught_warnings() as caught:
        fit(tmp_path, [logger, csv_logger])
    assert not write_failures(caught)
    client = mlflow.tracking.MlflowClient(uri)
    run_id = logger.run_id
    top = {f.path for f in client.list_artifacts(run_id)}
    assert "ig_rules.jsonl" in top
    rules = open(client.download_artifacts(run_id, "ig_rules.jsonl", str(tmp_path))).read().splitlines()
    assert len(rules) == CHECKS and json.loads(rules[-1])["epoch"] == 1

    writer = writers_module.MLflowWriter(logger)
    if writer.keyed:  # mlflow >= 2.12: images by key and step
        files = [f.path for f in client.list_artifacts(run_id, "images")]
        pngs = sorted(p for p in files if p.startswith("images/ig~attribution_maps+step+") and p.endswith(".png"))
    else:
        pngs = sorted(f.path for f in client.list_artifacts(run_id, "ig/attribution_maps"))
    assert len(pngs) == CHECKS
    expected = png_size(open(csv_pngs(csv_logger.log_dir)[0], "rb").read())
    assert png_size(open(client.download_artifacts(run_id, pngs[0], str(tmp_path)), "rb").read()) == expected
    assert len(client.list_artifacts(run_id, "ig/rules")) == CHECKS  # the rules table as Markdown
    metric = client.get_metric_history(run_id, "ig/completeness_error")
    assert len(metric) == CHECKS
    if writer.keyed:
        assert {m.step for m in metric} == {int(p.split("+step+")[1].split("+")[0]) for p in pngs}
