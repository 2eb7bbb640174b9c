"""Data for VINCIE: the session schema, loaders and adapters, and the synthetic shapes world."""

from .loaders import (
    MAGICBRUSH_COLUMNS,
    PairwiseEditAdapter,
    PairwiseEditColumns,
    Vincie10MAdapter,
    Vincie10MColumns,
    iter_session_records,
    load_sessions,
    records_to_dataset,
)
from .schema import SESSION_FEATURES, STATIC_CAMERA, SessionRecord, SessionValidationError, mask_to_array
from .synthetic import (
    EditScore,
    SyntheticSession,
    SyntheticWorld,
    make_synthetic_videos,
    read_ground_truth,
    score_edit,
)

__all__ = [
    "MAGICBRUSH_COLUMNS",
    "SESSION_FEATURES",
    "STATIC_CAMERA",
    "EditScore",
    "PairwiseEditAdapter",
    "PairwiseEditColumns",
    "SessionRecord",
    "SessionValidationError",
    "SyntheticSession",
    "SyntheticWorld",
    "Vincie10MAdapter",
    "Vincie10MColumns",
    "iter_session_records",
    "load_sessions",
    "make_synthetic_videos",
    "mask_to_array",
    "read_ground_truth",
    "records_to_dataset",
    "score_edit",
]
