"""ig-lightning: Integrated Gradients for PyTorch Lightning, computed while you train.

Example::

    >>> from ig_lightning import IntegratedGradientsMonitor, integrated_gradients
    >>> monitor = IntegratedGradientsMonitor(probe=16, n_steps=32)
"""

from ig_lightning.callback import AttributionDriftError, IntegratedGradientsMonitor
from ig_lightning.engine import IGResult, NonFiniteAttributionWarning, integrated_gradients
from ig_lightning.quadrature import METHODS, quadrature_rule

__all__ = [
    "METHODS",
    "AttributionDriftError",
    "IGResult",
    "IntegratedGradientsMonitor",
    "NonFiniteAttributionWarning",
    "integrated_gradients",
    "quadrature_rule",
]
__version__ = "0.1.0"
