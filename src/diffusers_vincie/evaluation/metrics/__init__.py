"""`evaluate` modules of the MagicBrush metrics, shipped with the package.

Each folder ``<name>/<name>.py`` is an ``evaluate.Metric`` script that loads offline::

    import evaluate
    from diffusers_vincie.evaluation.metrics import metric_path

    l1 = evaluate.load(metric_path("l1"))
    l1.compute(predictions=[edited_image], references=[target_image])
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["METRIC_MODULES", "metric_path"]

METRIC_MODULES = ("l1", "l2", "clip_i", "clip_t", "dino")


def metric_path(name: str) -> str:
    """Folder of the `evaluate` module ``name`` (one of :data:`METRIC_MODULES`), for ``evaluate.load``."""
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown metric module {name!r}; choose from {list(METRIC_MODULES)}.")
    return str(Path(__file__).parent / name)
