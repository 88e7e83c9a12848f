"""ig-lightning: Integrated Gradients for PyTorch Lightning, computed while you train."""

from ig_lightning.engine import IGResult, NonFiniteAttributionWarning, integrated_gradients
from ig_lightning.quadrature import METHODS, quadrature_rule

__all__ = ["METHODS", "IGResult", "NonFiniteAttributionWarning", "integrated_gradients", "quadrature_rule"]
__version__ = "0.1.0"
