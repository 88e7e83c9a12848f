"""LightningCLI for the examples' models and data, with the monitor configured from YAML.

Any :class:`~examples.common.Classifier` and :class:`~examples.common.SplitDataModule` of the examples
can be picked by ``class_path``; ``callbacks/*.yaml`` are ready configurations::

    python -m examples.cli fit --config callbacks/image.yaml
    python -m examples.cli fit --config callbacks/text.yaml --trainer.max_epochs 3
    python -m examples.cli fit --config callbacks/tabular.yaml --print_config
"""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningCLI

from examples.common import Classifier, SplitDataModule, quiet


def main(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Build (and with ``run=True`` run) the CLI; ``args`` replaces the command line, as in LightningCLI."""
    quiet()
    return LightningCLI(
        Classifier,
        SplitDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
