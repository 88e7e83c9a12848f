"""``callbacks/*.yaml`` parse with LightningCLI, build the monitor they describe, and run."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from examples import digits, tabular, text
from examples.cli import main
from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.monitor.settings import GROUPS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "callbacks"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
CONFIGURATION_DOC = CONFIG_DIR.parent / "docs" / "configuration.md"
MONITOR = "ig_lightning.IntegratedGradientsMonitor"
CLASS_NAMES = {"image": digits.CLASS_NAMES, "text": text.CLASS_NAMES, "tabular": tabular.CLASS_NAMES}
# Monitor arguments stored under another attribute name.
ATTRIBUTES = {"probe": "probe_size"}
# Lightning 2.6's own calls of jsonargparse APIs deprecated in 4.49: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.pytorch.cli")


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when ``args=`` and ``sys.argv`` both hold arguments: leave only ``args=``."""
    monkeypatch.setattr("sys.argv", ["examples.cli"])


def load(path: Path) -> dict[str, Any]:
    """The YAML file as a dict."""
    return yaml.safe_load(path.read_text())


def monitor_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``init_args`` of the config's (only) monitor callback."""
    entries = [c for c in config["trainer"]["callbacks"] if c["class_path"] == MONITOR]
    assert len(entries) == 1
    return entries[0].get("init_args", {})


def resolved(value: Any) -> Any:
    """What a YAML value becomes: an import path such as ``examples.text.token_name`` names that object."""
    if isinstance(value, str) and "." in value and " " not in value:
        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def the_monitor(cli: LightningCLI) -> IntegratedGradientsMonitor:
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, IntegratedGradientsMonitor)]
    assert len(monitors) == 1
    return monitors[0]


def cli_args(path: Path, tmp_path: Path, *extra: str) -> list[str]:
    """Command-line arguments reading ``path``, with the TensorBoard logs under ``tmp_path``."""
    return ["--config", str(path), "--trainer.logger.init_args.save_dir", str(tmp_path), *extra]


def assert_monitor_has(monitor: IntegratedGradientsMonitor, args: dict[str, Any]) -> None:
    """Every YAML value is the monitor's: top-level arguments, and each settings object's fields."""
    for name, value in args.items():
        got = getattr(monitor, ATTRIBUTES.get(name, name))
        if isinstance(value, dict):  # a settings object, e.g. alarm: {threshold: auto}
            for field, v in value.items():
                assert getattr(got, field) == resolved(v), f"{name}.{field}"
        else:
            assert got == resolved(value), name


def test_there_is_a_config_per_kind_of_input() -> None:
    assert {p.stem for p in CONFIGS} == {"image", "text", "tabular"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_the_configured_monitor(path: Path, tmp_path: Path) -> None:
    config = load(path)
    cli = main(cli_args(path, tmp_path), run=False)
    monitor = the_monitor(cli)
    assert_monitor_has(monitor, monitor_args(config))
    assert class_path(cli.model) == config["model"]["class_path"]
    assert class_path(cli.datamodule) == config["data"]["class_path"]
    assert isinstance(cli.trainer.logger, TensorBoardLogger)
    assert Path(cli.trainer.logger.save_dir) == tmp_path
    if monitor.layer is not None:
        cli.model.get_submodule(monitor.layer)  # the layer named in the YAML exists


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_names_match_the_example(path: Path) -> None:
    display = monitor_args(load(path))["display"]
    assert display["class_names"] == CLASS_NAMES[path.stem]
    if path.stem == "tabular":
        assert display["feature_names"] == tabular.FEATURE_NAMES
    if path.stem == "text":
        assert resolved(display["vocabulary"]) is text.token_name


def test_bad_monitor_value_is_rejected_when_parsing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The choices are Literal types: the parser itself refuses the value and names the argument.
    path = CONFIG_DIR / "image.yaml"
    with pytest.raises(SystemExit):
        main(cli_args(path, tmp_path, "--trainer.callbacks.init_args.alarm.on_breach", "explode"), run=False)
    err = capsys.readouterr().err
    assert "on_breach" in err and "explode" in err


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_one_epoch(path: Path, tmp_path: Path) -> None:
    extra = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5", "--trainer.enable_progress_bar",
             "false", "--trainer.enable_model_summary", "false")
    cli = main(["fit", *cli_args(path, tmp_path, *extra)])
    monitor = the_monitor(cli)
    assert monitor.checks == 1
    assert monitor.last_metrics["ig/completeness_error"] < 0.05
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir.is_relative_to(tmp_path)
    assert (log_dir / "config.yaml").exists() and list(log_dir.glob("events.out.tfevents.*"))
    (line,) = (log_dir / "ig_rules.jsonl").read_text().splitlines()
    assert {int(c) for c in json.loads(line)["rules"]} == {int(c) for c in monitor.rules}


def doc_examples() -> list[dict[str, Any]]:
    """The YAML example of each settings object in docs/configuration.md."""
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", CONFIGURATION_DOC.read_text(), re.S)]


def test_the_docs_show_every_settings_object_in_yaml() -> None:
    assert sorted(next(iter(e)) for e in doc_examples()) == sorted(GROUPS)


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: next(iter(e)))
def test_each_settings_object_of_the_docs_parses_through_lightning_cli(example: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    config = load(CONFIG_DIR / "image.yaml")
    ((group, fields),) = example.items()
    monitor_args(config)[group] = fields
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monitor = the_monitor(main(cli_args(path, tmp_path), run=False))
    assert isinstance(getattr(monitor, group), GROUPS[group])
    assert_monitor_has(monitor, example)


@pytest.mark.parametrize(("flag", "value"), [("alarm.factr", "3"), ("alarm.factor", "0.5"),
                                             ("display.max_images", "many")])
def test_a_bad_settings_field_stops_the_cli_naming_it(flag: str, value: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    # Refused while parsing (SystemExit, the message on stderr) or when the parser builds the objects (our error).
    with pytest.raises((SystemExit, ValueError)) as caught:
        main(cli_args(CONFIG_DIR / "image.yaml", tmp_path, f"--trainer.callbacks.init_args.{flag}", value), run=False)
    said = capsys.readouterr().err + str(caught.value)
    assert flag.split(".")[1] in said and value in said, said[-2000:]
