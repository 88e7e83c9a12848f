"""The Lightning side: the callback, its checked configuration, the probe, the checks before training, the
state kept between checks, and the breach policy."""

from ig_lightning.monitor.callback import IntegratedGradientsMonitor
from ig_lightning.monitor.policy import AttributionDriftError

__all__ = ["AttributionDriftError", "IntegratedGradientsMonitor"]
