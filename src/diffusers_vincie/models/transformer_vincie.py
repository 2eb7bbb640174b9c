"""VincieTransformer: the VINCIE multimodal diffusion transformer (official NaDiT "mmdit"), diffusers-native.

Data flow of one forward (shapes for a batch of B sessions in the packed native-aspect format of
``diffusers_vincie.sequence``; D = hidden size, H heads of width d, p = patch size, C = latent channels):

    hidden_states (N_pix, 2C+1) --patchify--> (N_vid, p*p*(2C+1)) --patch_embed--> video stream (N_vid, D)
    encoder_hidden_states (N_txt, text_dim) --turn tokens E[k] looked up at text_turn_ids--context_embedder-->
                                                                                 text stream  (N_txt, D)
    timestep (B,) / frame_timestep (F,) --sinusoid + 3-layer MLP--> modulation e (.., 6D), shared by all blocks
    num_layers x VincieTransformerBlock: per stream RMSNorm + modulation -> joint attention over
        [video, text] of each sample (3-axis RoPE, block-causal mask optional) -> gated residual -> SwiGLU MLP
    video stream --RMSNorm + output modulation--> proj_out --unpatchify--> velocity (N_pix, C)

Both streams stay packed (no padding) in every per-token layer. Full attention runs once per sample on its exact
joint sequence, so a batch of different sessions costs what its samples cost; the block-causal layout pads the
samples' joint sequences in attention only (its mask needs one batched call).

RoPE positions (``rope_type="mmrope3d"``, VINCIE-3B): text token ``j`` of a sample at ``(j, j, j)``; a frame at time
``L + frame_index`` where ``L`` is the sample's whole text length in the full layout (official) and, in the
block-causal layout, the number of the sample's text tokens of lower order than the frame, so a frame's position
depends only on what precedes it. With ``rope_type="mmrope3d_v3"`` (VINCIE-7B) a frame sits at time
``frame_index`` (no text offset); text positions are the same.

Model families differ only by config: VINCIE-7B is ``text_projection="mlp"``, ``rope_type="mmrope3d_v3"``,
``patch_size=1``, an attention width (heads x head_dim) wider than ``hidden_size`` and ``rope_dim`` < head_dim.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import PixArtAlphaTextProjection, get_timestep_embedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm

from .attention_vincie import (
    VincieAttention,
    VincieContextCache,
    VincieRotaryEmbedding,
    _AttentionPlan,
    _joint_positions,
    as_ints,
    as_shape_rows,
    block_causal_mask,
    frame_text_offsets,
    per_turn_text_positions,
    repeat_rows,
    rope_positions,
)

ATTENTION_LAYOUTS = ("full", "block_causal")
TEXT_ROPE_MODES = ("diagonal", "per_turn")
TEXT_PROJECTIONS = ("linear", "mlp")
ROPE_TYPES = ("mmrope3d", "mmrope3d_v3")


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float = 4.0) -> int:
    """Official SwiGLU width: ``2/3 * ratio * D`` rounded up to a multiple of 256 (6912 for D = 2560)."""
    return int(math.ceil(int(2 * hidden_size * mlp_ratio / 3) / 256) * 256)


def modulation_offsets(
    shape: tuple, std: Optional[float] = None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Learned modulation offsets as the official ``AdaSingle`` initialises them: shifts and gates ~ N(0, std),
    scales ~ 1 + N(0, std), with ``std = D ** -0.5`` by default. The forward has no ``1 +`` on the scale, so the
    offset carries the unit. ``shape`` ends in ``(slots, D)`` with the scale at slot 1 (``(2, 3, D)`` block
    tables: slot 0/1/2 = shift/scale/gate; ``(2, D)`` output head: shift, scale)."""
    std = shape[-1] ** -0.5 if std is None else std
    offsets = torch.randn(shape, generator=generator) * std
    offsets.select(-2, 1).add_(1.0)
    return offsets


# =====================================================================================================
#                                          Transformer block
# =====================================================================================================


def _modulate(x: torch.Tensor, emb: torch.Tensor, table: torch.Tensor, layer: int) -> torch.Tensor:
    """``x * (scale_e + scale) + (shift_e + shift)`` with ``emb (N, 2, 3, D)`` and ``table (2, 3, D)``."""
    shift = emb[:, layer, 0] + table[layer, 0]
    scale = emb[:, layer, 1] + table[layer, 1]
    return x * scale + shift


def _gate(emb: torch.Tensor, table: torch.Tensor, layer: int) -> torch.Tensor:
    return emb[:, layer, 2] + table[layer, 2]


class VincieTransformerBlock(nn.Module):
    """One MM-DiT block. With ``separate_text_weights`` (the first ``num_mm_layers`` blocks) the text stream has
    its own projections, MLP and modulation offsets; otherwise both streams share one set.

    The learned modulation offsets are ``scale_shift_table[layer, slot]`` with layer 0 = attention, 1 = MLP and
    slot 0/1/2 = shift/scale/gate; there is no ``1 +`` on the scale (the offsets carry it).
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, mlp_hidden: int, eps: float, separate_text_weights: bool, index: int
    ):
        super().__init__()
        self.separate_text_weights = separate_text_weights
        self.norm = RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.attn = VincieAttention(dim, heads, head_dim, eps, separate_text_weights, layer_index=index)
        self.ff = FeedForward(dim, inner_dim=mlp_hidden, activation_fn="swiglu", bias=False)
        self.scale_shift_table = nn.Parameter(modulation_offsets((2, 3, dim)))
        if separate_text_weights:
            self.ff_context = FeedForward(dim, inner_dim=mlp_hidden, activation_fn="swiglu", bias=False)
            self.scale_shift_table_context = nn.Parameter(modulation_offsets((2, 3, dim)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        vid_emb: torch.Tensor,
        txt_emb: torch.Tensor,
        vid_rope,
        txt_rope,
        plan: _AttentionPlan,
        is_last: bool = False,
    ):
        """``(video (N_vid, D), text (N_txt, D))`` -> the same after one block (diffusers' block argument names, so
        its cache hooks find the two streams)."""
        vid, txt = hidden_states, encoder_hidden_states
        txt_ff = self.ff_context if self.separate_text_weights else self.ff
        txt_table = self.scale_shift_table_context if self.separate_text_weights else self.scale_shift_table

        vid_in = _modulate(self.norm(vid), vid_emb, self.scale_shift_table, 0)
        txt_in = _modulate(self.norm(txt), txt_emb, txt_table, 0)
        vid_attn, txt_attn = self.attn(vid_in, txt_in, vid_rope, txt_rope, plan)
        vid = vid_attn * _gate(vid_emb, self.scale_shift_table, 0) + vid
        txt = txt_attn * _gate(txt_emb, txt_table, 0) + txt

        vid = (
            self.ff(_modulate(self.norm(vid), vid_emb, self.scale_shift_table, 1))
            * _gate(vid_emb, self.scale_shift_table, 1)
            + vid
        )
        if not is_last:  # the text stream is discarded after the last block: skip its MLP (as the official code)
            txt = txt_ff(_modulate(self.norm(txt), txt_emb, txt_table, 1)) * _gate(txt_emb, txt_table, 1) + txt
        return vid, txt


# diffusers' block caches (FirstBlockCache, ...) read the two streams by these output positions
TransformerBlockRegistry.register(
    model_class=VincieTransformerBlock,
    metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=1),
)


# =====================================================================================================
#                                        Timestep embedding
# =====================================================================================================


class VincieModulationLinear(nn.Module):
    """The last time-embedding layer, ``D -> 6D``, returning ``(N, 2, 3, D)`` = ``[token, layer, slot, channel]``.

    The weights keep the official layout (output row ``6c + 3*layer + slot``, interleaved), so checkpoints convert
    as they are; the rows are reordered inside `forward` (a ``6D x D`` copy per call) so that every modulation
    vector comes out of the matmul contiguous along the channels. Reading the interleaved output with stride 6
    instead made torch 2.13's CPU inductor miscompile the fused output head (`tests/test_compile.py`), and unit
    strides are what every block's elementwise kernels want anyway. Not an ``nn.Linear``: a LoRA on it would
    add an update in the official row order to an output in this order.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(6 * dim, dim))
        self.bias = nn.Parameter(torch.empty(6 * dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default initialisation (Kaiming-uniform weight, uniform bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.weight.shape[1]
        weight = self.weight.view(dim, 2, 3, dim).permute(1, 2, 0, 3).reshape(6 * dim, dim)
        bias = self.bias.view(dim, 2, 3).permute(1, 2, 0).reshape(6 * dim)
        return F.linear(x, weight, bias).view(-1, 2, 3, dim)


class VincieTimestepEmbedding(nn.Module):
    """Sinusoid (sin first, timesteps on the 0..1000 scale) -> Linear -> SiLU -> Linear -> SiLU -> Linear(6D),
    returned as ``(N, 2, 3, D)`` modulation vectors (`VincieModulationLinear`)."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = nn.Linear(frequency_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.linear_3 = VincieModulationLinear(dim)
        # dtype the timestep is rounded to before the sinusoid; None = float32 (see `set_timestep_and_rope_dtype`)
        self.timestep_dtype: Optional[torch.dtype] = None

    def rounded_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        """The float32 timestep the sinusoid sees (rounded through ``timestep_dtype`` when set)."""
        timestep = timestep.float()
        return timestep if self.timestep_dtype is None else timestep.to(self.timestep_dtype).float()

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        freq = get_timestep_embedding(
            self.rounded_timestep(timestep), self.frequency_dim, flip_sin_to_cos=False, downscale_freq_shift=0
        )
        h = F.silu(self.linear_1(freq.to(self.linear_1.weight.dtype)))
        return self.linear_3(F.silu(self.linear_2(h)))


class VincieTextMLPProjection(nn.Module):
    """The ``"mlp"`` text projection (VINCIE-7B): Linear(text, text) -> GELU(tanh) -> Linear(text, D) (diffusers'
    `PixArtAlphaTextProjection`), then an RMSNorm with a learned weight."""

    def __init__(self, text_embed_dim: int, dim: int, eps: float):
        super().__init__()
        self.mlp = PixArtAlphaTextProjection(text_embed_dim, text_embed_dim, dim, act_fn="gelu_tanh")
        self.norm = RMSNorm(dim, eps=eps)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(text))


# =====================================================================================================
#                                            The model
# =====================================================================================================


class VincieTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin, CacheMixin):
    """The VINCIE diffusion transformer (official NaDiT ``mmdit``, full attention), VINCIE-3B and VINCIE-7B by config.

    Args:
        latent_channels (`int`, defaults to 16): channels C of an image latent. The input has ``2C + 1``
            channels per latent pixel (noisy latent, condition latent, context mask) and the output ``C``.
        hidden_size (`int`, defaults to 2560): width D of both streams.
        num_attention_heads (`int`, defaults to 20): attention heads.
        attention_head_dim (`int`, defaults to 128): width of each head.
        num_layers (`int`, defaults to 32): transformer blocks.
        num_mm_layers (`int`, defaults to 10): leading blocks with separate text weights; later blocks share
            one set of weights between the video and text streams.
        text_embed_dim (`int`, defaults to 5120): width of the text-encoder states (and of the turn table).
        patch_size (`int`, defaults to 2): spatial patch size on the latent grid (temporal patch is 1).
        mlp_hidden_size (`int`, *optional*): SwiGLU width; default the official rule (``2/3 * 4 * D`` rounded up
            to a multiple of 256, i.e. 6912 for D = 2560).
        rope_dim (`int`, defaults to 128): head dims given to RoPE; ``rope_dim // 3`` per axis (t, h, w).
        rope_theta (`float`, defaults to 10000.0): RoPE base (of every axis unless `spatial_rope_theta` is set).
        spatial_rope_theta (`float`, *optional*): RoPE base of the two spatial axes (h, w); default `rope_theta`
            (official). A small base gives a small patch grid more frequencies that tell positions apart (the default
            model, 5 frequencies per axis over 8 patches: at base 10,000 only two turn by more than 0.2 rad).
        norm_eps (`float`, defaults to 1e-5): epsilon of every RMSNorm.
        max_turns (`int`, defaults to 64): rows of the turn-index embedding table (max prompts per session).
        attention_layout (`str`, defaults to `"full"`): ``"full"`` (bidirectional over the whole session; the
            released checkpoints) or ``"block_causal"`` (causal across blocks, bidirectional inside a block,
            clean context never sees noisy frames; enables per-frame timesteps, multi-target training and
            cached context at inference).
        text_rope_mode (`str`, defaults to `"diagonal"`): RoPE positions of the text tokens. ``"diagonal"``: token
            ``j`` of a sample at ``(j, j, j)`` (official). ``"per_turn"`` (block-causal layout only): token ``i`` of
            an instruction at ``(t + i, i, i)``, ``t`` the time of the frame before it, so that every turn's
            instruction meets the image grid at the same relative positions
            (`diffusers_vincie.models.attention_vincie.per_turn_text_positions`).
        text_projection (`str`, defaults to `"linear"`): how text states (turn-token rows included) enter the text
            stream. ``"linear"``: one ``Linear(text_embed_dim, D)`` (VINCIE-3B). ``"mlp"``: Linear(text, text),
            GELU(tanh), Linear(text, D), then an RMSNorm with weight (VINCIE-7B, `VincieTextMLPProjection`).
        rope_type (`str`, defaults to `"mmrope3d"`): where frames sit on the RoPE time axis. ``"mmrope3d"``
            (VINCIE-3B): after the sample's text, at ``L + frame_index`` (block-causal: after the text that precedes
            the frame). ``"mmrope3d_v3"`` (VINCIE-7B): at ``frame_index``, with no text offset, so a video token at
            frame 0, row 0, column 0 shares position ``(0, 0, 0)`` with text token 0. Text positions are the same
            in both.

    The attention width ``num_attention_heads * attention_head_dim`` may differ from ``hidden_size`` (VINCIE-7B:
    32 x 128 = 4096 over D = 3584); only the first ``3 * (rope_dim // 3)`` dims of each head are rotated.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["VincieTransformerBlock"]
    _repeated_blocks = ["VincieTransformerBlock"]
    _skip_layerwise_casting_patterns = ["time_embed", "norm", "turn_embedding"]

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        hidden_size: int = 2560,
        num_attention_heads: int = 20,
        attention_head_dim: int = 128,
        num_layers: int = 32,
        num_mm_layers: int = 10,
        text_embed_dim: int = 5120,
        patch_size: int = 2,
        mlp_hidden_size: Optional[int] = None,
        rope_dim: int = 128,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        max_turns: int = 64,
        attention_layout: str = "full",
        text_rope_mode: str = "diagonal",
        spatial_rope_theta: Optional[float] = None,
        text_projection: str = "linear",
        rope_type: str = "mmrope3d",
    ):
        super().__init__()
        if text_projection not in TEXT_PROJECTIONS:
            raise ValueError(f"`text_projection` must be one of {TEXT_PROJECTIONS}, got {text_projection!r}.")
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"`rope_type` must be one of {ROPE_TYPES}, got {rope_type!r}.")
        if attention_layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"`attention_layout` must be one of {ATTENTION_LAYOUTS}, got {attention_layout!r}.")
        if text_rope_mode not in TEXT_ROPE_MODES:
            raise ValueError(f"`text_rope_mode` must be one of {TEXT_ROPE_MODES}, got {text_rope_mode!r}.")
        if text_rope_mode == "per_turn" and attention_layout != "block_causal":
            raise ValueError(
                '`text_rope_mode="per_turn"` needs `attention_layout="block_causal"` (in the full layout '
                "all text precedes all frames and keeps the official positions)."
            )
        if rope_dim > attention_head_dim or rope_dim // 3 % 2:
            raise ValueError(
                f"`rope_dim` ({rope_dim}) must be <= `attention_head_dim` ({attention_head_dim}) and give an even "
                "number of dims per axis (rope_dim // 3)."
            )
        if not 0 <= num_mm_layers <= num_layers:
            raise ValueError(f"`num_mm_layers` ({num_mm_layers}) must lie in [0, num_layers={num_layers}].")
        dim, in_channels = hidden_size, 2 * latent_channels + 1
        self.gradient_checkpointing = False

        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, dim)
        if text_projection == "mlp":
            self.context_embedder = VincieTextMLPProjection(text_embed_dim, dim, norm_eps)
        else:
            self.context_embedder = nn.Linear(text_embed_dim, dim)
        self.frames_follow_text = rope_type == "mmrope3d"  # the RoPE time of a frame counts the text before it
        self.time_embed = VincieTimestepEmbedding(dim)
        self.turn_embedding = nn.Embedding(max_turns, text_embed_dim)
        self.rope = VincieRotaryEmbedding(rope_dim, rope_theta, spatial_rope_theta)
        mlp_hidden = mlp_hidden_size or swiglu_hidden_size(dim)
        self.transformer_blocks = nn.ModuleList(
            VincieTransformerBlock(
                dim, num_attention_heads, attention_head_dim, mlp_hidden, norm_eps, i < num_mm_layers, index=i
            )
            for i in range(num_layers)
        )
        self.norm_out = RMSNorm(dim, eps=norm_eps)
        self.norm_out_shift_scale = nn.Parameter(modulation_offsets((2, dim)))  # learned [shift, scale], output head
        self.proj_out = nn.Linear(dim, patch_size * patch_size * latent_channels)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``ModelMixin.from_pretrained``, refusing a checkpoint that does not fill every weight of its config.

        diffusers only warns about missing weights and leaves them on the meta device, where the first forward
        fails deep inside; a config edited by hand (e.g. ``num_layers``) is caught here instead.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        missing = [name for name, param in model.named_parameters() if param.is_meta]
        if missing:
            raise ValueError(
                f"{pretrained_model_name_or_path}: the weights do not match the config ({len(missing)} parameters "
                f"missing, e.g. {missing[:3]}); check `num_layers`, `num_mm_layers` and the sizes in config.json "
                "against the checkpoint."
            )
        return model

    # -------------------------------------------------------------------------------- initialisation

    def initialize_weights(
        self,
        modulation_std: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        zero_modulation: bool = False,
    ) -> None:
        """The initialisation of a model trained from scratch (and of the tiny test models).

        Every linear and embedding layer gets PyTorch's default initialisation (Kaiming-uniform linears, N(0, 1)
        turn embeddings), RMSNorm gains 1, and the learned modulation offsets (``scale_shift_table*`` and
        ``norm_out_shift_scale``) are drawn as the official ``AdaSingle`` draws them (`modulation_offsets`:
        N(0, 1/D) shifts and gates, 1 + N(0, 1/D) scales), which is also what ``__init__`` gives.
        ``modulation_std`` replaces the 1/sqrt(D) spread (the tests' random models use 0.2, so that every path
        carries signal). ``zero_modulation`` starts every offset at 0, scales included: this project's
        initialisation before 2026-12-01, kept so that the issue-13 ablations started from it stay reproducible.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, VincieModulationLinear)) or (
                isinstance(module, RMSNorm) and module.weight is not None
            ):
                if isinstance(module, RMSNorm):
                    nn.init.ones_(module.weight)
                else:
                    module.reset_parameters()
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "scale_shift_table" not in name and "norm_out_shift_scale" not in name:
                    continue
                if zero_modulation:
                    param.zero_()
                else:
                    param.copy_(modulation_offsets(tuple(param.shape), modulation_std, generator))

    # -------------------------------------------------------------------------------- text helpers

    def fuse_turn_tokens(
        self, encoder_hidden_states: torch.Tensor, text_turn_ids: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Official ``seq_concat`` fusion: rows whose ``text_turn_ids`` entry is a turn ``k >= 0`` become ``E[k]``
        (``diffusers_vincie.sequence.session_text`` leaves a placeholder there); ``None`` = already fused.

        Called inside `forward` so that offload hooks see the turn table used like every other weight.
        """
        if text_turn_ids is None:
            return encoder_hidden_states
        turns = self.turn_embedding(text_turn_ids.clamp(min=0))
        dtype = torch.promote_types(encoder_hidden_states.dtype, turns.dtype)
        return torch.where((text_turn_ids >= 0)[:, None], turns.to(dtype), encoder_hidden_states.to(dtype))

    # -------------------------------------------------------------------------------- patches

    def _patchify(self, hidden_states: torch.Tensor, shapes: tuple) -> torch.Tensor:
        p = self.config.patch_size
        out = []
        for x, (f, h, w) in zip(hidden_states.split([f * h * w for f, h, w in shapes]), shapes):
            x = x.view(f, h // p, p, w // p, p, -1).permute(0, 1, 3, 2, 4, 5)  # (f, h/p, w/p, dy, dx, c)
            out.append(x.reshape(f * (h // p) * (w // p), -1))
        return torch.cat(out)

    def _unpatchify(self, tokens: torch.Tensor, patch_shapes: tuple) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.latent_channels
        out = []
        for x, (f, h, w) in zip(tokens.split([f * h * w for f, h, w in patch_shapes]), patch_shapes):
            x = x.view(f, h, w, p, p, c).permute(0, 1, 3, 2, 4, 5)  # (f, h, dy, w, dx, c)
            out.append(x.reshape(f * h * p * w * p, c))
        return torch.cat(out)

    # -------------------------------------------------------------------------------- validation

    def _check_inputs(self, hidden_states, video_shapes, encoder_hidden_states, text_lengths, timestep, context):
        """Structural checks on shapes and host-side sizes only (no host sync; see `check_input_values`)."""
        cfg = self.config
        in_channels = 2 * cfg.latent_channels + 1
        if hidden_states.ndim != 2 or hidden_states.shape[-1] != in_channels:
            raise ValueError(
                f"`hidden_states` must be packed latent pixels (N, {in_channels}) = (N, 2*latent_channels+1); "
                f"got {tuple(hidden_states.shape)}."
            )
        if isinstance(video_shapes, torch.Tensor):
            well_formed = video_shapes.ndim == 2 and video_shapes.shape[1] == 3
        else:
            well_formed = all(len(row) == 3 for row in video_shapes)
        if not well_formed or len(video_shapes) == 0:
            shape = tuple(video_shapes.shape) if isinstance(video_shapes, torch.Tensor) else video_shapes
            raise ValueError(f"`video_shapes` must be (batch, 3) rows of (frames, h, w); got {shape}.")
        shapes, lengths = as_shape_rows(video_shapes), as_ints(text_lengths)
        pixels = sum(f * h * w for f, h, w in shapes)
        if pixels != hidden_states.shape[0]:
            raise ValueError(
                f"`video_shapes` describe {pixels} latent pixels but `hidden_states` has {hidden_states.shape[0]} rows."
            )
        if any(h % cfg.patch_size or w % cfg.patch_size or min(f, h, w) <= 0 for f, h, w in shapes):
            raise ValueError(
                f"Latent sizes {[[h, w] for _, h, w in shapes]} must be positive multiples of patch_size="
                f"{cfg.patch_size} (images must be multiples of patch_size x the VAE's spatial factor in pixels)."
            )
        if len(lengths) != len(shapes):
            raise ValueError(f"`text_lengths` must have one entry per sample ({len(shapes)}); got {len(lengths)}.")
        if context is None:
            if encoder_hidden_states is None or encoder_hidden_states.ndim != 2:
                raise ValueError("`encoder_hidden_states` must be packed text (N_txt, text_embed_dim).")
            if encoder_hidden_states.shape[-1] != cfg.text_embed_dim:
                raise ValueError(
                    f"`encoder_hidden_states` width {encoder_hidden_states.shape[-1]} != text_embed_dim "
                    f"{cfg.text_embed_dim}."
                )
            if min(lengths) <= 0 or sum(lengths) != encoder_hidden_states.shape[0]:
                raise ValueError(
                    f"`text_lengths` {list(lengths)} must be positive and sum to the "
                    f"{encoder_hidden_states.shape[0]} rows of `encoder_hidden_states` (every sample needs text)."
                )
        if timestep.shape not in ((len(shapes),), (1,)):
            raise ValueError(
                f"`timestep` must have one value per sample ({len(shapes)},) or one shared value; got "
                f"{tuple(timestep.shape)}."
            )
        return shapes, lengths

    def check_input_values(self, hidden_states: torch.Tensor, text_turn_ids: Optional[torch.Tensor] = None) -> None:
        """Checks that read tensor values (NaN/Inf inputs, turn ids beyond the turn table).

        They cost a host sync, so `forward` does not run them: callers check once per batch or turn, outside any
        sampling loop (the training step does; the pipeline checks its images, latents and turn count itself).
        """
        if not torch.isfinite(hidden_states).all():
            raise ValueError("`hidden_states` contains NaN or Inf values.")
        if text_turn_ids is not None and text_turn_ids.numel() and int(text_turn_ids.max()) >= self.config.max_turns:
            raise ValueError(
                f"Turn id {int(text_turn_ids.max())} exceeds the turn-embedding table ({self.config.max_turns} "
                "turns); use at most `max_turns` instructions per session."
            )

    # -------------------------------------------------------------------------------- attention plan

    def _plan(
        self,
        layout: str,
        tokens_per_frame: tuple[int, ...],
        video_tokens: tuple[int, ...],
        text_lengths_in_call: tuple[int, ...],
        frame_order,
        text_order,
        frame_is_noisy,
        context: Optional[VincieContextCache],
        store_context: bool,
        device,
    ) -> _AttentionPlan:
        lengths = [nv + nt for nv, nt in zip(video_tokens, text_lengths_in_call)]
        batch, seq_len = len(lengths), max(lengths)
        vid_index, txt_index = _joint_positions(video_tokens, text_lengths_in_call, seq_len, device)

        if layout == "full":
            bounds, vid_start, txt_start = [], 0, 0
            for num_video, num_text in zip(video_tokens, text_lengths_in_call):
                bounds.append(((vid_start, vid_start + num_video), (txt_start, txt_start + num_text)))
                vid_start, txt_start = vid_start + num_video, txt_start + num_text
            return _AttentionPlan(vid_index, txt_index, batch, seq_len, None, sample_bounds=bounds)

        if frame_order is None or (text_order is None and sum(text_lengths_in_call) > 0):
            raise ValueError(
                "The block-causal layout needs `frame_order` and `text_order` (see "
                "`diffusers_vincie.sequence.sequence_order`)."
            )
        if (
            store_context and frame_is_noisy is not None and bool(frame_is_noisy.any())
        ):  # once per context, not per step
            raise ValueError("A cached context must be clean: `frame_is_noisy` must be all False.")
        # the joint sequence of sample b is [video_b, text_b] from position 0: the rest is padding
        valid = torch.arange(seq_len, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
        order = torch.zeros(batch * seq_len, dtype=torch.long, device=device)
        order[vid_index] = repeat_rows(frame_order.to(device), tokens_per_frame)
        if text_order is not None:
            order[txt_index] = text_order.to(device)
        noisy = torch.zeros(batch * seq_len, dtype=torch.bool, device=device)
        if frame_is_noisy is not None:
            noisy[vid_index] = repeat_rows(frame_is_noisy.to(device).bool(), tokens_per_frame)
        order, noisy = order.view(batch, seq_len), noisy.view(batch, seq_len)

        k_order, k_noisy, k_valid = order, noisy, valid
        if context is not None:
            k_order = torch.cat([context.order, order], 1)
            k_noisy = torch.cat([torch.zeros_like(context.valid), noisy], 1)
            k_valid = torch.cat([context.valid, valid], 1)
        mask = block_causal_mask(order, noisy, valid, k_order, k_noisy, k_valid)
        sink = None
        if store_context:
            text_order = text_order.to(device) if text_order is not None else order.new_zeros(0)
            sink = VincieContextCache([], [], order, valid, text_lengths_in_call, text_order)
        return _AttentionPlan(vid_index, txt_index, batch, seq_len, mask, order, valid, context, sink)

    def _text_before_frames(self, layout, frames, lengths, frame_order, text_order, context, device) -> torch.Tensor:
        """RoPE time offset of each frame (``rope_type="mmrope3d"``): the sample's whole text in the full layout,
        the text of lower order (in this call or in the cached context) in the block-causal layout."""
        if layout == "full":
            return frame_text_offsets(frames, lengths, device=device)
        if context is None:
            text_before = (lengths, text_order if text_order is not None else frame_order.new_zeros(0))
        else:
            text_before = (context.text_lengths, context.text_order)
        return frame_text_offsets(frames, text_before[0], frame_order.to(device), text_before[1].to(device))

    # -------------------------------------------------------------------------------- modulation

    def _token_modulation(self, timestep, frame_timestep, video_tokens, tokens_per_frame, text_in_call):
        """Time embedding of every video and text token as ``(N, 2, 3, D)`` = ``[token, layer, slot, channel]``.

        One shared timestep (shape ``(1,)``) and no per-frame timesteps give one ``(1, 2, 3, D)`` row broadcast to
        every token (inference, CFG batches): no ``N x 6D`` tensor. The rule reads shapes only, never values (no
        host sync)."""

        def per_token(emb: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
            return emb if emb.shape[0] == 1 else repeat_rows(emb, counts)

        sample_emb = self.time_embed(timestep)  # (B or 1, 2, 3, D)
        txt_emb = per_token(sample_emb, text_in_call)
        if frame_timestep is None:
            return per_token(sample_emb, video_tokens), txt_emb
        return per_token(self.time_embed(frame_timestep.to(timestep)), tokens_per_frame), txt_emb

    # -------------------------------------------------------------------------------- forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        video_shapes: Union[torch.Tensor, Sequence[Sequence[int]]],
        encoder_hidden_states: Optional[torch.Tensor],
        text_lengths: Union[torch.Tensor, Sequence[int]],
        timestep: torch.Tensor,
        frame_timestep: Optional[torch.Tensor] = None,
        frame_index: Optional[torch.Tensor] = None,
        frame_order: Optional[torch.Tensor] = None,
        text_order: Optional[torch.Tensor] = None,
        frame_is_noisy: Optional[torch.Tensor] = None,
        text_turn_ids: Optional[torch.Tensor] = None,
        attention_layout: Optional[str] = None,
        context_cache: Optional[VincieContextCache] = None,
        return_context_cache: bool = False,
        return_dict: bool = True,
    ):
        """Predicts the flow velocity ``noise - x0`` of every latent pixel.

        Args:
            hidden_states: ``(sum_b F_b*h_b*w_b, 2C+1)`` packed ``[noisy latent, condition latent, mask]``.
            video_shapes: ``(B, 3)`` rows ``(frames, h, w)`` of the latent grid of each sample, as Python ints
                (no host sync: use this in a sampling loop and under ``torch.compile``) or a long tensor.
            encoder_hidden_states: ``(sum_b L_b, text_embed_dim)`` packed session text with one row per turn token
                (`diffusers_vincie.sequence.session_text`); ``None`` with a ``context_cache`` (the text is in it).
            text_lengths: ``(B,)`` text length ``L_b`` of each sample, Python ints or a tensor (with a cache: the
                cache's ``text_lengths``).
            timestep: ``(B,)`` timesteps on the 0..1000 scale (text tokens, and frames without ``frame_timestep``),
                or ``(1,)`` shared by every sample.
            frame_timestep: ``(sum_b F_b,)`` optional per-frame timesteps (e.g. 0 for clean context frames).
            frame_index: ``(sum_b F_b,)`` temporal RoPE index of each frame; default ``0..F_b-1``.
            frame_order, text_order: block-causal order of each frame / text token
                (`diffusers_vincie.sequence.sequence_order`); block-causal layout only.
            frame_is_noisy: ``(sum_b F_b,)`` bool, frames being denoised (block-causal layout only).
            text_turn_ids: ``(sum_b L_b,)`` long, the turn of each turn-token row of ``encoder_hidden_states`` and -1
                for instruction tokens; ``None`` when the turn embeddings are already fused in (official fixtures).
            attention_layout: ``"full"`` or ``"block_causal"``; default from the config.
            context_cache: keys/values of a clean context from `encode_context`; this call then holds only the
                frames to generate (block-causal layout).
            return_context_cache: used by `encode_context`.
            return_dict: return a `Transformer2DModelOutput` instead of a tuple.

        Checks here read shapes and sizes only; value checks (NaN inputs, turn ids) are `check_input_values`.

        Returns:
            ``sample`` of shape ``(sum_b F_b*h_b*w_b, C)``.
        """
        layout = attention_layout or self.config.attention_layout
        if layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"`attention_layout` must be one of {ATTENTION_LAYOUTS}, got {layout!r}.")
        if self.config.text_rope_mode == "per_turn" and layout != "block_causal":
            raise ValueError(
                'This model was built with `text_rope_mode="per_turn"`, which needs the block-causal layout; '
                f"got `attention_layout={layout!r}`."
            )
        if (context_cache is not None or return_context_cache) and layout != "block_causal":
            raise ValueError(
                "A context cache needs the block-causal layout (in the full layout context sees the target)."
            )
        device, dtype = self.patch_embed.weight.device, self.patch_embed.weight.dtype
        timestep = torch.as_tensor(timestep, device=device).float().reshape(-1)
        shapes, lengths = self._check_inputs(
            hidden_states, video_shapes, encoder_hidden_states, text_lengths, timestep, context_cache
        )
        if text_turn_ids is not None and (
            encoder_hidden_states is None or text_turn_ids.shape != encoder_hidden_states.shape[:1]
        ):
            raise ValueError("`text_turn_ids` must have one entry per row of `encoder_hidden_states`.")

        p = self.config.patch_size
        patch_shapes = tuple((f, h // p, w // p) for f, h, w in shapes)
        frames = tuple(f for f, _, _ in shapes)
        video_tokens = tuple(f * h * w for f, h, w in patch_shapes)
        tokens_per_frame = tuple(h * w for f, h, w in patch_shapes for _ in range(f))
        if frame_index is None:  # 0..F_b-1 in each sample
            frame_index = torch.cat([torch.arange(f, device=device) for f in frames])
        for name, value in (
            ("frame_timestep", frame_timestep),
            ("frame_index", frame_index),
            ("frame_order", frame_order),
        ):
            if value is not None and value.shape != (sum(frames),):
                raise ValueError(f"`{name}` must have one entry per frame ({sum(frames)},); got {tuple(value.shape)}.")

        # ---- embeddings
        vid = self.patch_embed(self._patchify(hidden_states.to(dtype), shapes))
        if context_cache is None:
            txt = self.context_embedder(self.fuse_turn_tokens(encoder_hidden_states, text_turn_ids).to(dtype))
            text_in_call = lengths
        else:
            txt = vid.new_zeros(0, vid.shape[-1])
            text_in_call = (0,) * len(lengths)

        vid_emb, txt_emb = self._token_modulation(
            timestep, frame_timestep, video_tokens, tokens_per_frame, text_in_call
        )

        plan = self._plan(
            layout,
            tokens_per_frame,
            video_tokens,
            text_in_call,
            frame_order,
            text_order,
            frame_is_noisy,
            context_cache,
            return_context_cache,
            device,
        )
        frame_time = frame_index.to(device)
        if self.frames_follow_text:  # "mmrope3d"; with "mmrope3d_v3" frames start at time 0
            frame_time = frame_time + self._text_before_frames(
                layout, frames, lengths, frame_order, text_order, context_cache, device
            )
        vid_pos, txt_pos = rope_positions(patch_shapes, frame_time, text_in_call)
        if self.config.text_rope_mode == "per_turn" and sum(text_in_call):
            txt_pos = per_turn_text_positions(
                frames, text_in_call, frame_time, frame_order.to(device), text_order.to(device)
            )
        vid_rope, txt_rope = self.rope(vid_pos), self.rope(txt_pos)

        # ---- blocks
        last = len(self.transformer_blocks) - 1
        for i, block in enumerate(self.transformer_blocks):
            args = (vid, txt, vid_emb, txt_emb, vid_rope, txt_rope, plan, i == last)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                vid, txt = self._gradient_checkpointing_func(block, *args)
            else:
                vid, txt = block(*args)

        if return_context_cache:
            return plan.sink

        # ---- output head: RMSNorm, then the blocks' *attention* shift/scale slots + learned offsets (official)
        shift = vid_emb[:, 0, 0] + self.norm_out_shift_scale[0]
        scale = vid_emb[:, 0, 1] + self.norm_out_shift_scale[1]
        vid = self.norm_out(vid).to(dtype) * scale + shift
        sample = self._unpatchify(self.proj_out(vid), patch_shapes)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)

    @torch.no_grad()
    def encode_context(
        self,
        hidden_states: torch.Tensor,
        video_shapes: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_lengths: torch.Tensor,
        frame_order: torch.Tensor,
        text_order: torch.Tensor,
        frame_index: Optional[torch.Tensor] = None,
        text_turn_ids: Optional[torch.Tensor] = None,
    ) -> VincieContextCache:
        """Encodes a clean context once (block-causal layout, t = 0) and returns its per-block keys/values.

        Pass the result as ``context_cache`` to `forward` together with only the frames to generate; their
        output equals the uncached block-causal forward of the whole sequence.
        """
        return self.forward(
            hidden_states,
            video_shapes,
            encoder_hidden_states,
            text_lengths,
            timestep=torch.zeros(1, device=hidden_states.device),
            frame_index=frame_index,
            frame_order=frame_order,
            text_order=text_order,
            text_turn_ids=text_turn_ids,
            attention_layout="block_causal",
            return_context_cache=True,
        )

    def set_attention_qkv_dtype(self, dtype: Optional[torch.dtype]) -> None:
        """Casts q/k/v to ``dtype`` right before attention (``torch.bfloat16`` reproduces the official code)."""
        for module in self.modules():
            if isinstance(module, VincieAttention):
                module.processor.qkv_dtype = dtype

    def set_timestep_and_rope_dtype(self, dtype: Optional[torch.dtype]) -> None:
        """Rounds the timestep to ``dtype`` before its sinusoid and forms the RoPE angles as a ``dtype`` product of
        ``dtype`` positions and frequencies; ``None`` (default) keeps both in float32.

        ``torch.bfloat16`` reproduces the two deterministic roundings of the official VINCIE-7B GPU run, whose FSDP
        mixed precision casts the root inputs (the timestep) and buffers (the RoPE frequencies) to bf16: near
        t = 1000 the sinusoid sees t in steps of 4 (997.96 -> 996), text positions above 256 are no longer exact,
        and large angles carry ~0.4% error. Everything else keeps its dtype. Whether the released weights were
        trained with this rounding is unknown, so it is off by default (float32 follows the official math).
        """
        self.time_embed.timestep_dtype = dtype
        self.rope.angle_dtype = dtype
