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

RoPE positions: text token ``j`` of a sample at ``(j, j, j)``; a frame at time ``L + frame_index`` where ``L`` is the
sample's whole text length in the full layout (official) and, in the block-causal layout, the number of the
sample's text tokens of lower order than the frame, so a frame's position depends only on what precedes it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm

from .attention_vincie import (
    VincieAttention,
    VincieContextCache,
    VincieRotaryEmbedding,
    _AttentionPlan,
    _joint_positions,
    block_causal_mask,
    frame_text_offsets,
    rope_positions,
)

ATTENTION_LAYOUTS = ("full", "block_causal")


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float = 4.0) -> int:
    """Official SwiGLU width: ``2/3 * ratio * D`` rounded up to a multiple of 256 (6912 for D = 2560)."""
    return int(math.ceil(int(2 * hidden_size * mlp_ratio / 3) / 256) * 256)


def modulation_offsets(shape: tuple, std: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
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
    """``x * (scale_e + scale) + (shift_e + shift)`` with ``emb (N, D, 2, 3)`` and ``table (2, 3, D)``."""
    shift = emb[:, :, layer, 0] + table[layer, 0]
    scale = emb[:, :, layer, 1] + table[layer, 1]
    return x * scale + shift


def _gate(emb: torch.Tensor, table: torch.Tensor, layer: int) -> torch.Tensor:
    return emb[:, :, layer, 2] + table[layer, 2]


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

        vid = self.ff(_modulate(self.norm(vid), vid_emb, self.scale_shift_table, 1)) * _gate(
            vid_emb, self.scale_shift_table, 1
        ) + vid
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


class VincieTimestepEmbedding(nn.Module):
    """Sinusoid (sin first, timesteps on the 0..1000 scale) -> Linear -> SiLU -> Linear -> SiLU -> Linear(6D)."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = nn.Linear(frequency_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.linear_3 = nn.Linear(dim, 6 * dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        freq = get_timestep_embedding(timestep.float(), self.frequency_dim, flip_sin_to_cos=False, downscale_freq_shift=0)
        h = F.silu(self.linear_1(freq.to(self.linear_1.weight.dtype)))
        return self.linear_3(F.silu(self.linear_2(h)))


# =====================================================================================================
#                                            The model
# =====================================================================================================


class VincieTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin, CacheMixin):
    """The VINCIE diffusion transformer (official NaDiT ``mmdit`` with ``mm_full`` attention and ``mmrope3d``).

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
        rope_theta (`float`, defaults to 10000.0): RoPE base.
        norm_eps (`float`, defaults to 1e-5): epsilon of every RMSNorm.
        max_turns (`int`, defaults to 64): rows of the turn-index embedding table (max prompts per session).
        attention_layout (`str`, defaults to `"full"`): ``"full"`` (bidirectional over the whole session; the
            released checkpoints) or ``"block_causal"`` (causal across blocks, bidirectional inside a block,
            clean context never sees noisy frames; enables per-frame timesteps, multi-target training and
            cached context at inference).
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
    ):
        super().__init__()
        if attention_layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"`attention_layout` must be one of {ATTENTION_LAYOUTS}, got {attention_layout!r}.")
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
        self.context_embedder = nn.Linear(text_embed_dim, dim)
        self.time_embed = VincieTimestepEmbedding(dim)
        self.turn_embedding = nn.Embedding(max_turns, text_embed_dim)
        self.rope = VincieRotaryEmbedding(rope_dim, rope_theta)
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

    def initialize_weights(self, modulation_std: Optional[float] = None, generator: Optional[torch.Generator] = None) -> None:
        """The initialisation of a model trained from scratch (and of the tiny test models).

        Every linear and embedding layer gets PyTorch's default initialisation (Kaiming-uniform linears, N(0, 1)
        turn embeddings), RMSNorm gains 1, and the learned modulation offsets (``scale_shift_table*`` and
        ``norm_out_shift_scale``) are drawn as the official ``AdaSingle`` draws them (`modulation_offsets`:
        N(0, 1/D) shifts and gates, 1 + N(0, 1/D) scales), which is also what ``__init__`` gives.
        ``modulation_std`` replaces the 1/sqrt(D) spread (the tests' random models use 0.2, so that every path
        carries signal).
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) or (isinstance(module, RMSNorm) and module.weight is not None):
                if isinstance(module, RMSNorm):
                    nn.init.ones_(module.weight)
                else:
                    module.reset_parameters()
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "scale_shift_table" in name or "norm_out_shift_scale" in name:
                    param.copy_(modulation_offsets(tuple(param.shape), modulation_std, generator))

    # -------------------------------------------------------------------------------- text helpers

    def fuse_turn_tokens(self, encoder_hidden_states: torch.Tensor, text_turn_ids: Optional[torch.Tensor]) -> torch.Tensor:
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

    def _patchify(self, hidden_states: torch.Tensor, video_shapes: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        out = []
        for x, (f, h, w) in zip(hidden_states.split(video_shapes.prod(-1).tolist()), video_shapes.tolist()):
            x = x.view(f, h // p, p, w // p, p, -1).permute(0, 1, 3, 2, 4, 5)  # (f, h/p, w/p, dy, dx, c)
            out.append(x.reshape(f * (h // p) * (w // p), -1))
        return torch.cat(out)

    def _unpatchify(self, tokens: torch.Tensor, video_shapes: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.latent_channels
        patch_shapes = self._patch_shapes(video_shapes)
        out = []
        for x, (f, h, w) in zip(tokens.split(patch_shapes.prod(-1).tolist()), patch_shapes.tolist()):
            x = x.view(f, h, w, p, p, c).permute(0, 1, 3, 2, 4, 5)  # (f, h, dy, w, dx, c)
            out.append(x.reshape(f * h * p * w * p, c))
        return torch.cat(out)

    def _patch_shapes(self, video_shapes: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        return video_shapes // video_shapes.new_tensor([1, p, p])

    # -------------------------------------------------------------------------------- validation

    def _check_inputs(self, hidden_states, video_shapes, encoder_hidden_states, text_lengths, timestep, context):
        cfg = self.config
        in_channels = 2 * cfg.latent_channels + 1
        if hidden_states.ndim != 2 or hidden_states.shape[-1] != in_channels:
            raise ValueError(
                f"`hidden_states` must be packed latent pixels (N, {in_channels}) = (N, 2*latent_channels+1); "
                f"got {tuple(hidden_states.shape)}."
            )
        if video_shapes.ndim != 2 or video_shapes.shape[1] != 3:
            raise ValueError(f"`video_shapes` must be (batch, 3) rows of (frames, h, w); got {tuple(video_shapes.shape)}.")
        if int(video_shapes.prod(-1).sum()) != hidden_states.shape[0]:
            raise ValueError(
                f"`video_shapes` describe {int(video_shapes.prod(-1).sum())} latent pixels but `hidden_states` has "
                f"{hidden_states.shape[0]} rows."
            )
        if (video_shapes[:, 1:] % cfg.patch_size).any() or (video_shapes <= 0).any():
            raise ValueError(
                f"Latent sizes {video_shapes[:, 1:].tolist()} must be positive multiples of patch_size={cfg.patch_size} "
                "(images must be multiples of 16 pixels for an 8x VAE)."
            )
        batch = video_shapes.shape[0]
        if text_lengths.shape != (batch,):
            raise ValueError(f"`text_lengths` must have one entry per sample ({batch}); got {tuple(text_lengths.shape)}.")
        if context is None:
            if encoder_hidden_states is None or encoder_hidden_states.ndim != 2:
                raise ValueError("`encoder_hidden_states` must be packed text (N_txt, text_embed_dim).")
            if encoder_hidden_states.shape[-1] != cfg.text_embed_dim:
                raise ValueError(
                    f"`encoder_hidden_states` width {encoder_hidden_states.shape[-1]} != text_embed_dim "
                    f"{cfg.text_embed_dim}."
                )
            if (text_lengths <= 0).any() or int(text_lengths.sum()) != encoder_hidden_states.shape[0]:
                raise ValueError(
                    f"`text_lengths` {text_lengths.tolist()} must be positive and sum to the "
                    f"{encoder_hidden_states.shape[0]} rows of `encoder_hidden_states` (every sample needs text)."
                )
        if timestep.shape != (batch,):
            raise ValueError(f"`timestep` must have one value per sample ({batch},); got {tuple(timestep.shape)}.")

    # -------------------------------------------------------------------------------- attention plan

    def _plan(
        self,
        layout: str,
        vid_tokens_per_frame: torch.Tensor,
        patch_shapes: torch.Tensor,
        text_lengths_in_call: torch.Tensor,
        frame_order,
        text_order,
        frame_is_noisy,
        context: Optional[VincieContextCache],
        store_context: bool,
    ) -> _AttentionPlan:
        device = patch_shapes.device
        video_tokens = patch_shapes.prod(-1)
        lengths = video_tokens + text_lengths_in_call
        batch, seq_len = len(lengths), int(lengths.max())
        vid_index, txt_index = _joint_positions(video_tokens, text_lengths_in_call, seq_len)
        valid = torch.zeros(batch * seq_len, dtype=torch.bool, device=device)
        valid[vid_index] = True
        valid[txt_index] = True
        valid = valid.view(batch, seq_len)

        if layout == "full":
            vid_stops, txt_stops = video_tokens.cumsum(0).tolist(), text_lengths_in_call.cumsum(0).tolist()
            bounds = [
                ((vs - int(nv), vs), (ts - int(nt), ts))
                for vs, ts, nv, nt in zip(vid_stops, txt_stops, video_tokens, text_lengths_in_call)
            ]
            return _AttentionPlan(vid_index, txt_index, batch, seq_len, None, sample_bounds=bounds)

        if frame_order is None or (text_order is None and int(text_lengths_in_call.sum()) > 0):
            raise ValueError(
                "The block-causal layout needs `frame_order` and `text_order` (see "
                "`diffusers_vincie.sequence.sequence_order`)."
            )
        if frame_is_noisy is None:
            frame_is_noisy = torch.zeros_like(frame_order, dtype=torch.bool)
        token_order = torch.repeat_interleave(frame_order.to(device), vid_tokens_per_frame)
        token_noisy = torch.repeat_interleave(frame_is_noisy.to(device).bool(), vid_tokens_per_frame)
        text_order = text_order if text_order is not None else token_order.new_zeros(0)
        order = token_order.new_zeros(batch * seq_len)
        order[vid_index], order[txt_index] = token_order, text_order.to(device)
        noisy = torch.zeros(batch * seq_len, dtype=torch.bool, device=device)
        noisy[vid_index] = token_noisy
        order, noisy = order.view(batch, seq_len), noisy.view(batch, seq_len)

        k_order, k_noisy, k_valid = order, noisy, valid
        if context is not None:
            k_order = torch.cat([context.order, order], 1)
            k_noisy = torch.cat([torch.zeros_like(context.valid), noisy], 1)
            k_valid = torch.cat([context.valid, valid], 1)
        mask = block_causal_mask(order, noisy, valid, k_order, k_noisy, k_valid)
        sink = None
        if store_context:
            if bool(noisy.any()):
                raise ValueError("A cached context must be clean: `frame_is_noisy` must be all False.")
            sink = VincieContextCache([], [], order, valid, text_lengths_in_call, text_order.to(device))
        return _AttentionPlan(vid_index, txt_index, batch, seq_len, mask, order, valid, context, sink)

    # -------------------------------------------------------------------------------- modulation

    def _token_modulation(self, timestep, frame_timestep, patch_shapes, tokens_per_frame, text_in_call):
        """Time embedding of every video and text token as ``(N, D, 2, 3)`` (official interleaved layout:
        flat index ``6c + 3*layer + slot``), or ``(1, D, 2, 3)`` broadcast to all tokens when every token shares
        one timestep (inference, CFG batches), which saves materialising ``N x 6D`` tensors."""
        times = timestep if frame_timestep is None else torch.cat([timestep, frame_timestep.to(timestep)])
        if bool((times == times[0]).all()):
            shared = self.time_embed(times[:1]).unflatten(-1, (-1, 2, 3))
            return shared, shared
        sample_emb = self.time_embed(timestep)  # (B, 6D)
        if frame_timestep is None:
            vid_emb = torch.repeat_interleave(sample_emb, patch_shapes.prod(-1), dim=0)
        else:
            vid_emb = torch.repeat_interleave(self.time_embed(frame_timestep.to(timestep)), tokens_per_frame, dim=0)
        txt_emb = torch.repeat_interleave(sample_emb, text_in_call, dim=0)
        return vid_emb.unflatten(-1, (-1, 2, 3)), txt_emb.unflatten(-1, (-1, 2, 3))

    # -------------------------------------------------------------------------------- forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        video_shapes: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor],
        text_lengths: torch.Tensor,
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
            video_shapes: ``(B, 3)`` rows ``(frames, h, w)`` of the latent grid of each sample.
            encoder_hidden_states: ``(sum_b L_b, text_embed_dim)`` packed session text with one row per turn token
                (`diffusers_vincie.sequence.session_text`); ``None`` with a ``context_cache`` (the text is in it).
            text_lengths: ``(B,)`` text length ``L_b`` of each sample (also with a cache: RoPE offset of frames).
            timestep: ``(B,)`` timesteps on the 0..1000 scale (text tokens, and frames without ``frame_timestep``).
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

        Returns:
            ``sample`` of shape ``(sum_b F_b*h_b*w_b, C)``.
        """
        layout = attention_layout or self.config.attention_layout
        if layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"`attention_layout` must be one of {ATTENTION_LAYOUTS}, got {layout!r}.")
        if (context_cache is not None or return_context_cache) and layout != "block_causal":
            raise ValueError("A context cache needs the block-causal layout (in the full layout context sees the target).")
        device, dtype = self.patch_embed.weight.device, self.patch_embed.weight.dtype
        video_shapes, text_lengths = video_shapes.to(device), text_lengths.to(device)
        timestep = torch.as_tensor(timestep, device=device).float().reshape(-1)
        if timestep.numel() == 1 and video_shapes.shape[0] > 1:
            timestep = timestep.expand(video_shapes.shape[0])
        self._check_inputs(hidden_states, video_shapes, encoder_hidden_states, text_lengths, timestep, context_cache)
        if not torch.isfinite(hidden_states).all():
            raise ValueError("`hidden_states` contains NaN or Inf values.")
        if text_turn_ids is not None:
            if encoder_hidden_states is None or text_turn_ids.shape != encoder_hidden_states.shape[:1]:
                raise ValueError("`text_turn_ids` must have one entry per row of `encoder_hidden_states`.")
            if int(text_turn_ids.max()) >= self.config.max_turns:
                raise ValueError(
                    f"Turn id {int(text_turn_ids.max())} exceeds the turn-embedding table ({self.config.max_turns} "
                    "turns); use at most `max_turns` instructions per session."
                )

        patch_shapes = self._patch_shapes(video_shapes)
        tokens_per_frame = torch.repeat_interleave(patch_shapes[:, 1] * patch_shapes[:, 2], patch_shapes[:, 0])
        frames_total = int(video_shapes[:, 0].sum())
        if frame_index is None:  # 0..F_b-1 in each sample
            frame_starts = torch.repeat_interleave(video_shapes[:, 0].cumsum(0) - video_shapes[:, 0], video_shapes[:, 0])
            frame_index = torch.arange(frames_total, device=device) - frame_starts
        for name, value in (("frame_timestep", frame_timestep), ("frame_index", frame_index), ("frame_order", frame_order)):
            if value is not None and value.shape != (frames_total,):
                raise ValueError(f"`{name}` must have one entry per frame ({frames_total},); got {tuple(value.shape)}.")

        # ---- embeddings
        vid = self.patch_embed(self._patchify(hidden_states.to(dtype), video_shapes))
        if context_cache is None:
            txt = self.context_embedder(self.fuse_turn_tokens(encoder_hidden_states, text_turn_ids).to(dtype))
            text_in_call = text_lengths
        else:
            txt = vid.new_zeros(0, vid.shape[-1])
            text_in_call = torch.zeros_like(text_lengths)

        vid_emb, txt_emb = self._token_modulation(timestep, frame_timestep, patch_shapes, tokens_per_frame, text_in_call)

        plan = self._plan(
            layout, tokens_per_frame, patch_shapes, text_in_call, frame_order, text_order, frame_is_noisy,
            context_cache, return_context_cache,
        )
        if layout == "full":
            offsets = frame_text_offsets(video_shapes[:, 0], text_lengths)
        else:  # the text before each frame: in this call, or in the cached context
            text = (text_lengths, text_order) if context_cache is None else (context_cache.text_lengths, context_cache.text_order)
            offsets = frame_text_offsets(video_shapes[:, 0], text[0], frame_order.to(device), text[1].to(device))
        vid_pos, txt_pos = rope_positions(patch_shapes, offsets + frame_index.to(device), text_in_call)
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
        shift = vid_emb[:, :, 0, 0] + self.norm_out_shift_scale[0]
        scale = vid_emb[:, :, 0, 1] + self.norm_out_shift_scale[1]
        vid = self.norm_out(vid).to(dtype) * scale + shift
        sample = self._unpatchify(self.proj_out(vid), video_shapes)
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
        batch = video_shapes.shape[0]
        return self.forward(
            hidden_states,
            video_shapes,
            encoder_hidden_states,
            text_lengths,
            timestep=torch.zeros(batch, device=video_shapes.device),
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
