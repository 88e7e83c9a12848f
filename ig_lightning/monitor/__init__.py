"""The Lightning side: the callback, its settings and checked configuration, the probe, the checks before
training, the stages of a check, the state kept between checks, and the breach policy."""

from ig_lightning.monitor.callback import IntegratedGradientsMonitor
from ig_lightning.monitor.policy import AttributionDriftError
from ig_lightning.monitor.settings import Alarm, Display, Faithfulness, Inputs, Integration, RuleExtraction

__all__ = ["Alarm", "AttributionDriftError", "Display", "Faithfulness", "Inputs", "Integration",
           "IntegratedGradientsMonitor", "RuleExtraction"]
