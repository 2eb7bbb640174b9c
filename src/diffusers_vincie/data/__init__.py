"""Data for VINCIE: the session schema, loaders and adapters, and the synthetic shapes world."""

from .schema import SESSION_FEATURES, STATIC_CAMERA, SessionRecord, SessionValidationError, mask_to_array
from .synthetic import EditScore, SyntheticSession, SyntheticWorld, read_ground_truth, score_edit

__all__ = [
    "SESSION_FEATURES",
    "STATIC_CAMERA",
    "EditScore",
    "SessionRecord",
    "SessionValidationError",
    "SyntheticSession",
    "SyntheticWorld",
    "mask_to_array",
    "read_ground_truth",
    "score_edit",
]
