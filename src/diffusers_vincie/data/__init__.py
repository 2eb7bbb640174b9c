"""Data for VINCIE: the session schema, loaders and adapters, and the synthetic shapes world."""

from .schema import SESSION_FEATURES, STATIC_CAMERA, SessionRecord, SessionValidationError, mask_to_array

__all__ = [
    "SESSION_FEATURES",
    "STATIC_CAMERA",
    "SessionRecord",
    "SessionValidationError",
    "mask_to_array",
]
