"""Training library of the VINCIE scripts (``training_scripts/``): sequences, flow matching, text, data, steps."""

from .data import (
    PlannedSample,
    ResumableBatchSampler,
    SessionRowsDataset,
    ShapesSessionsDataset,
    TrainingSession,
    collate_planned,
    encode_frames,
    encode_plan_frames,
)
from .flow import add_noise, flow_velocity, sample_logit_normal, weighted_frame_mse
from .sequences import (
    TASKS,
    SampleTensors,
    SequenceConfig,
    SequencePlan,
    TrainingBatch,
    assemble_block_causal,
    assemble_full_attention,
    collate_samples,
    plan_sequence,
)
from .step import VincieTrainingModule, build_training_batch, padding_report, training_loss
from .text import PromptEmbeddingCache, session_prompts

__all__ = [
    "TASKS",
    "PlannedSample",
    "PromptEmbeddingCache",
    "ResumableBatchSampler",
    "SampleTensors",
    "SequenceConfig",
    "SequencePlan",
    "SessionRowsDataset",
    "TrainingSession",
    "ShapesSessionsDataset",
    "TrainingBatch",
    "VincieTrainingModule",
    "add_noise",
    "assemble_block_causal",
    "assemble_full_attention",
    "build_training_batch",
    "collate_planned",
    "collate_samples",
    "encode_frames",
    "encode_plan_frames",
    "flow_velocity",
    "padding_report",
    "plan_sequence",
    "sample_logit_normal",
    "session_prompts",
    "training_loss",
    "weighted_frame_mse",
]
