"""Training library of the VINCIE scripts (``training_scripts/``): sequences, flow matching, text, data, steps."""

from .data import (
    PlannedSample,
    ResumableBatchSampler,
    SessionRowsDataset,
    SessionSample,
    SyntheticSessionsDataset,
    collate_planned,
    encode_frames,
    encode_plan_frames,
)
from .flow import add_noise, flow_velocity, sample_logit_normal, weighted_frame_mse
from .sequences import (
    TASKS,
    FrameItem,
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
from .text import PromptEmbeddingCache, build_word_level_tokenizer, encode_prompts, session_prompts

__all__ = [
    "TASKS",
    "FrameItem",
    "PlannedSample",
    "PromptEmbeddingCache",
    "ResumableBatchSampler",
    "SampleTensors",
    "SequenceConfig",
    "SequencePlan",
    "SessionRowsDataset",
    "SessionSample",
    "SyntheticSessionsDataset",
    "TrainingBatch",
    "VincieTrainingModule",
    "add_noise",
    "assemble_block_causal",
    "assemble_full_attention",
    "build_training_batch",
    "build_word_level_tokenizer",
    "collate_planned",
    "collate_samples",
    "encode_frames",
    "encode_plan_frames",
    "encode_prompts",
    "flow_velocity",
    "padding_report",
    "plan_sequence",
    "sample_logit_normal",
    "session_prompts",
    "training_loss",
    "weighted_frame_mse",
]
