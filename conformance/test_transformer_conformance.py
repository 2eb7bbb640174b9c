"""diffusers' model tester mixins run on `VincieTransformer` with a tiny config (CPU).

The mixins that need an accelerator (torch.compile, memory/offload, attention backends beyond native, fp16)
carry diffusers' own skip marks and report as skipped on a CPU-only machine; the same run on a CUDA machine
runs them.
"""

from __future__ import annotations

import torch
from tests.models.testing_utils import (
    AttentionBackendTesterMixin,
    AttentionTesterMixin,
    BaseModelTesterConfig,
    FasterCacheTesterMixin,
    FirstBlockCacheTesterMixin,
    LayerwiseCastingTesterMixin,
    LoraTesterMixin,
    MagCacheTesterMixin,
    MemoryTesterMixin,
    ModelTesterMixin,
    PyramidAttentionBroadcastTesterMixin,
    TaylorSeerCacheTesterMixin,
    TorchCompileTesterMixin,
    TrainingTesterMixin,
)

from diffusers_vincie import VincieTransformer
from diffusers_vincie.sequence import pack_sessions, session_text
from diffusers_vincie.testing import tiny_7b_family_overrides

LATENT_CHANNELS, TEXT_DIM = 4, 32
# two sessions of different sizes in one packed call: (frames, latent h, latent w) and text rows per turn
SESSIONS = (((2, 4, 4), (5, 4)), ((3, 4, 6), (3, 2, 6)))


class VincieTransformerTesterConfig(BaseModelTesterConfig):
    @property
    def model_class(self):
        return VincieTransformer

    @property
    def main_input_name(self):
        return "hidden_states"

    @property
    def output_shape(self):
        # the mixins' per-item shape after the leading axis, which is here the packed latent-pixel axis
        return (LATENT_CHANNELS,)

    def get_init_dict(self):
        return dict(
            latent_channels=LATENT_CHANNELS,
            hidden_size=32,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_mm_layers=1,
            text_embed_dim=TEXT_DIM,
            rope_dim=12,
            max_turns=8,
        )

    def get_dummy_inputs(self):
        g = torch.Generator().manual_seed(0)
        videos, texts, turn_ids = [], [], []
        for shape, turn_lengths in SESSIONS:
            videos.append(torch.randn(*shape, 2 * LATENT_CHANNELS + 1, generator=g))
            text = session_text(
                [torch.randn(n, TEXT_DIM, generator=g) for n in turn_lengths], range(len(turn_lengths))
            )
            texts.append(text.states)
            turn_ids.append(text.turn_ids)
        hidden_states, video_shapes, encoder_hidden_states, text_lengths = pack_sessions(videos, texts)
        return dict(
            hidden_states=hidden_states,
            video_shapes=video_shapes,
            encoder_hidden_states=encoder_hidden_states,
            text_lengths=text_lengths,
            timestep=torch.tensor([500.0, 250.0]),
            text_turn_ids=torch.cat(turn_ids),
        )


class TestVincieTransformer(VincieTransformerTesterConfig, ModelTesterMixin):
    pass


class TestVincieTransformerMemory(VincieTransformerTesterConfig, MemoryTesterMixin):
    pass


class TestVincieTransformerTraining(VincieTransformerTesterConfig, TrainingTesterMixin):
    def test_gradient_checkpointing_is_applied(self):
        # the mixin's own test, given the modules that must carry the flag (it skips without them)
        super().test_gradient_checkpointing_is_applied(expected_set={"VincieTransformer"})


class TestVincieTransformerLora(VincieTransformerTesterConfig, LoraTesterMixin):
    pass


class TestVincieTransformerAttention(VincieTransformerTesterConfig, AttentionTesterMixin):
    pass


class TestVincieTransformerAttentionBackends(VincieTransformerTesterConfig, AttentionBackendTesterMixin):
    pass


class TestVincieTransformerCompile(VincieTransformerTesterConfig, TorchCompileTesterMixin):
    pass


class TestVincieTransformerFirstBlockCache(VincieTransformerTesterConfig, FirstBlockCacheTesterMixin):
    pass


class TestVincieTransformerTaylorSeerCache(VincieTransformerTesterConfig, TaylorSeerCacheTesterMixin):
    pass


class TestVincieTransformerMagCache(VincieTransformerTesterConfig, MagCacheTesterMixin):
    pass


class TestVincieTransformerPyramidAttentionBroadcast(
    VincieTransformerTesterConfig, PyramidAttentionBroadcastTesterMixin
):
    pass


class TestVincieTransformerFasterCache(VincieTransformerTesterConfig, FasterCacheTesterMixin):
    pass


class TestVincieTransformerLayerwiseCasting(VincieTransformerTesterConfig, LayerwiseCastingTesterMixin):
    pass


# --- the same mixins on a VINCIE-7B-family config: MLP text projection, mmrope3d_v3 positions, patch 1 and
# attention (2 x 20) wider than the 32-wide streams


class VincieTransformer7BFamilyTesterConfig(VincieTransformerTesterConfig):
    def get_init_dict(self):
        return {**super().get_init_dict(), **tiny_7b_family_overrides()}


class TestVincieTransformer7BFamily(VincieTransformer7BFamilyTesterConfig, ModelTesterMixin):
    pass


class TestVincieTransformer7BFamilyMemory(VincieTransformer7BFamilyTesterConfig, MemoryTesterMixin):
    pass


class TestVincieTransformer7BFamilyTraining(VincieTransformer7BFamilyTesterConfig, TrainingTesterMixin):
    def test_gradient_checkpointing_is_applied(self):
        super().test_gradient_checkpointing_is_applied(expected_set={"VincieTransformer"})


class TestVincieTransformer7BFamilyLora(VincieTransformer7BFamilyTesterConfig, LoraTesterMixin):
    pass


class TestVincieTransformer7BFamilyAttention(VincieTransformer7BFamilyTesterConfig, AttentionTesterMixin):
    pass


class TestVincieTransformer7BFamilyCompile(VincieTransformer7BFamilyTesterConfig, TorchCompileTesterMixin):
    pass


class TestVincieTransformer7BFamilyFirstBlockCache(VincieTransformer7BFamilyTesterConfig, FirstBlockCacheTesterMixin):
    pass


class TestVincieTransformer7BFamilyLayerwiseCasting(
    VincieTransformer7BFamilyTesterConfig, LayerwiseCastingTesterMixin
):
    pass
