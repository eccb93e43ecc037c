"""The one monitored metric: what "best" means for a run.

`config.monitor` (val_loss by default, as the seed recipe's Keras callbacks) decides the LR
plateau schedule, early stopping, the weights restored and exported at the end, checkpoint
retention and Tune's ranking of trials. Its mode follows from its name: a loss is minimised,
an accuracy maximised.
"""

from __future__ import annotations

import math

MODES = {"val_loss": "min", "val_accuracy": "max"}
METRICS = tuple(MODES)


def mode(metric: str) -> str:
    """'min' or 'max'."""
    return MODES[metric]


def better(value: float, best: float | None, metric: str) -> bool:
    """Whether `value` of `metric` improves on `best` (None: nothing yet). NaN (a diverged
    epoch) never improves, so a diverging run decays its rate and stops early."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if mode(metric) == "min" else value > best


def best_of(values, metric: str) -> float:
    """The best of `values` (NaN left out; NaN when there are none)."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return math.nan
    return min(finite) if mode(metric) == "min" else max(finite)


def describe(metric: str) -> str:
    """'val_loss (lowest)' / 'val_accuracy (highest)': for logs and summaries."""
    return f"{metric} ({'lowest' if mode(metric) == 'min' else 'highest'})"
