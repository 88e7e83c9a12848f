"""The flat arguments of 0.1 (``drift_threshold=...``) and where each one lives now.

``IntegratedGradientsMonitor(**moved)`` still takes them: ``regroup`` puts each in its settings object and warns once
(a ``FutureWarning``) naming the new places.

Example::

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     groups = regroup({"drift_threshold": "auto", "deletion_check": False}, {})
    >>> groups["alarm"].threshold, groups["faithfulness"].deletion
    ('auto', False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from ig_lightning.monitor.settings import GROUPS, as_settings

#: Arguments of the flat signature (0.1) and where each lives now; ``top_k`` set all three of its uses.
MOVED: dict[str, tuple[str, ...]] = {
    **{k: (f"inputs.{k}",) for k in ("attribute", "unpack", "probe_selection")},
    **{k: (f"integration.{k}",) for k in ("method", "tolerance", "max_steps", "internal_batch_size", "warm_start",
                                           "autocast")},
    **{f"drift_{k}": (f"alarm.{k}",) for k in ("metric", "reference", "threshold", "factor", "window", "scope")},
    **{k: (f"alarm.{k}",) for k in ("completeness_threshold", "attribution_error_threshold", "region",
                                     "region_threshold", "warmup", "patience", "patience_window", "on_breach")},
    "top_k": ("rule_extraction.top_k", "alarm.top_k", "faithfulness.top_k"),
    "deletion_check": ("faithfulness.deletion",),
    **{k: (f"display.{k}",) for k in ("kind", "vocabulary", "feature_names", "class_names", "max_images",
                                       "log_images", "color_headroom")},
}


def regroup(moved: Mapping[str, Any], groups: Mapping[str, Any]) -> dict[str, Any]:
    """The settings objects of ``groups`` with the flat arguments of earlier releases (``moved``) put in their
    place; a FutureWarning names the new place of each. Unknown names, and a setting given both ways, raise."""
    unknown = sorted(k for k in moved if k not in MOVED)
    if unknown:
        raise TypeError(f"IntegratedGradientsMonitor got unexpected argument(s) {unknown}; the settings are grouped "
                        f"in {list(GROUPS)} (see the docstring)")
    changes: dict[str, dict[str, Any]] = {}
    for old, value in moved.items():
        for new in MOVED[old]:
            group, field = new.split(".")
            changes.setdefault(group, {})[field] = value
    if moved:
        where = ", ".join(f"`{old}` -> `{' / '.join(MOVED[old])}`" for old in moved)
        rank_zero_warn(f"IntegratedGradientsMonitor: flat arguments moved into settings objects ({where}); they still "
                       "work but will be removed in 0.3", category=FutureWarning)
    out = {}
    for group, cls in GROUPS.items():
        given = changes.get(group)
        if given and groups.get(group) is not None:
            flat = sorted(old for old in moved if any(new.startswith(f"{group}.") for new in MOVED[old]))
            raise ValueError(f"`{group}` given together with the flat argument(s) {flat} that now live in it: put "
                             f"them in `{group}`")
        settings = as_settings(groups.get(group), cls, group)
        out[group] = dataclasses.replace(settings, **given) if given else settings
    return out
