"""Data for VINCIE: the session schema (:mod:`.schema`), loaders and adapters (:mod:`.loaders`), the synthetic
shapes world (:mod:`.shapes`: world, videos, scoring) and the video -> sessions build (:mod:`.video`).

Names are imported lazily from their submodules, so that the shapes world (training on the fly, demos) works
without the optional ``datasets`` and ``av`` packages (extra ``data``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "loaders": (
        "MAGICBRUSH_COLUMNS",
        "PairwiseEditAdapter",
        "PairwiseEditColumns",
        "Vincie10MAdapter",
        "Vincie10MColumns",
        "iter_session_records",
        "load_sessions",
        "records_to_dataset",
    ),
    "schema": ("SESSION_FEATURES", "STATIC_CAMERA", "SessionRecord", "SessionValidationError", "mask_to_array"),
    "shapes.score": ("EditScore", "score_edit"),
    "shapes.video": ("make_synthetic_videos", "read_ground_truth", "render_video"),
    "shapes.world": ("ShapesSession", "ShapesWorld"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
