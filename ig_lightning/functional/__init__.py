"""The engine: Integrated Gradients, quadrature, adaptive steps, drift and rules, with no Lightning.

Everything here works on a plain ``nn.Module`` or callable; ``import ig_lightning.functional`` never imports
Lightning (a test blocks it and imports this package).

Example::

    >>> import torch
    >>> from ig_lightning.functional import integrated_gradients
    >>> result = integrated_gradients(lambda x: (3 * x).sum(1), torch.ones(2, 4), n_steps=8)
    >>> result.attributions[0].tolist()
    [3.0, 3.0, 3.0, 3.0]
"""

from ig_lightning.functional.averaged import NT_TYPES, averaged_integrated_gradients, relative_stdevs
from ig_lightning.functional.baselines import blurred, data_draws, gaussian_draws, special_token_baseline, uniform_draws
from ig_lightning.functional.curves import CurveResult, faithfulness_curves
from ig_lightning.functional.deletion import DeletionResult, deletion_drop, rule_deletion_drop
from ig_lightning.functional.drift import DRIFT_METRICS, drift_distances
from ig_lightning.functional.integrated_gradients import IGResult, NonFiniteAttributionWarning, integrated_gradients
from ig_lightning.functional.quadrature import METHODS, quadrature_rule
from ig_lightning.functional.rules import class_mean_maps, class_top_features, rule_changes
from ig_lightning.functional.sanity import (
    SanityResult,
    cascade,
    cascade_points,
    informative_mask,
    mean_similarity,
    parameter_randomization,
    randomizable_layers,
    randomized,
    rank_correlation,
)

__all__ = [
    "CurveResult",
    "DRIFT_METRICS",
    "NT_TYPES",
    "SanityResult",
    "averaged_integrated_gradients",
    "blurred",
    "cascade",
    "cascade_points",
    "data_draws",
    "faithfulness_curves",
    "gaussian_draws",
    "informative_mask",
    "mean_similarity",
    "parameter_randomization",
    "randomizable_layers",
    "randomized",
    "rank_correlation",
    "relative_stdevs",
    "uniform_draws",
    "DeletionResult",
    "METHODS",
    "IGResult",
    "NonFiniteAttributionWarning",
    "class_mean_maps",
    "class_top_features",
    "deletion_drop",
    "drift_distances",
    "integrated_gradients",
    "quadrature_rule",
    "rule_changes",
    "rule_deletion_drop",
    "special_token_baseline",
]
