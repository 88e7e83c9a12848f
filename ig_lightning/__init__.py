"""ig-lightning: Integrated Gradients for PyTorch Lightning, computed while you train.

The engine (``ig_lightning.functional``) imports no Lightning; the monitor (``ig_lightning.monitor``) is
imported on first use, so ``from ig_lightning import integrated_gradients`` stays Lightning-free.

Example::

    >>> from ig_lightning import Alarm, IntegratedGradientsMonitor, integrated_gradients
    >>> monitor = IntegratedGradientsMonitor(probe=16, n_steps=32, alarm=Alarm(threshold="auto"))
"""

from typing import Any

from ig_lightning.functional import (
    METHODS,
    IGResult,
    NonFiniteAttributionWarning,
    integrated_gradients,
    quadrature_rule,
    special_token_baseline,
)

__all__ = [
    "METHODS",
    "Alarm",
    "AttributionDriftError",
    "Display",
    "Faithfulness",
    "IGResult",
    "Inputs",
    "Integration",
    "IntegratedGradientsMonitor",
    "NonFiniteAttributionWarning",
    "RuleExtraction",
    "integrated_gradients",
    "quadrature_rule",
    "special_token_baseline",
]
__version__ = "0.1.0"

_MONITOR_NAMES = ("AttributionDriftError", "IntegratedGradientsMonitor", "Inputs", "Integration", "Alarm",
                  "RuleExtraction", "Faithfulness", "Display")


def __getattr__(name: str) -> Any:
    """The monitor's names, imported (with Lightning) only when asked for."""
    if name in _MONITOR_NAMES:
        from ig_lightning import monitor

        return getattr(monitor, name)
    raise AttributeError(f"module 'ig_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MONITOR_NAMES])
