from .pipeline_vincie import OFFICIAL_NEGATIVE_PROMPT, VincieInContextPipeline, VincieInContextPipelineOutput
from .sampling import official_scheduler, set_trailing_timesteps
from .session import VincieEditingSession

__all__ = [
    "OFFICIAL_NEGATIVE_PROMPT",
    "VincieEditingSession",
    "VincieInContextPipeline",
    "VincieInContextPipelineOutput",
    "official_scheduler",
    "set_trailing_timesteps",
]
