"""VincieTransformer: the VINCIE multimodal diffusion transformer (official NaDiT "mmdit"), diffusers-native.

Data flow of one forward (shapes for a batch of B sessions in the packed native-aspect format of
``diffusers_vincie.assembly``; D = hidden size, H heads of width d, p = patch size, C = latent channels):

    hidden_states (N_pix, 2C+1) --patchify--> (N_vid, p*p*(2C+1)) --patch_embed--> video stream (N_vid, D)
    encoder_hidden_states (N_txt, text_dim) ----------context_embedder---------> text stream  (N_txt, D)
    timestep (B,) / frame_timestep (F,) --sinusoid + 3-layer MLP--> modulation e (.., 6D), shared by all blocks
    num_layers x VincieTransformerBlock: per stream RMSNorm + modulation -> joint attention over
        [video, text] of each sample (3-axis RoPE, block-causal mask optional) -> gated residual -> SwiGLU MLP
    video stream --RMSNorm + output modulation--> proj_out --unpatchify--> velocity (N_pix, C)

Both streams stay packed (no padding) in every per-token layer. Full attention runs once per sample on its exact
joint sequence, so a batch of different sessions costs what its samples cost; the block-causal layout pads the
samples' joint sequences in attention only (its mask needs one batched call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm

from ..assembly import default_frame_index, insert_turn_tokens, rope_position_ids

ATTENTION_LAYOUTS = ("full", "block_causal")


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float = 4.0) -> int:
    """Official SwiGLU width: ``2/3 * ratio * D`` rounded up to a multiple of 256 (6912 for D = 2560)."""
    return int(math.ceil(int(2 * hidden_size * mlp_ratio / 3) / 256) * 256)


# =====================================================================================================
#                                   Rotary embedding (mmrope3d)
# =====================================================================================================


class VincieRotaryEmbedding(nn.Module):
    """3-axis rotary embedding: ``rope_dim // 3`` dims per axis (t, h, w), interleaved pairs.

    Dims beyond ``3 * (rope_dim // 3)`` of each head are left unrotated (2 of 128 in the 3B model).
    """

    def __init__(self, rope_dim: int, theta: float = 10000.0):
        super().__init__()
        self.axis_dim, self.theta = rope_dim // 3, theta

    def inverse_frequencies(self, device=None) -> torch.Tensor:
        """``theta^(-2j/axis_dim)`` for ``j < axis_dim/2`` in float32 (the official ``freqs`` buffer)."""
        exponent = torch.arange(0, self.axis_dim, 2, device=device)[: self.axis_dim // 2].float() / self.axis_dim
        return 1.0 / (self.theta**exponent)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions (N, 3)`` -> ``(cos, sin)`` of shape ``(N, 3 * axis_dim)`` in float32."""
        angles = positions.float()[:, :, None] * self.inverse_frequencies(positions.device)  # (N, 3, axis_dim/2)
        angles = angles.repeat_interleave(2, dim=-1).flatten(1)  # each frequency twice, interleaved
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the first ``cos.shape[-1]`` dims of ``x (N, H, d)`` in interleaved pairs, in float32."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot].float(), x[..., rot:]
    a, b = x_rot.unflatten(-1, (-1, 2)).unbind(-1)
    rotated_half = torch.stack([-b, a], dim=-1).flatten(-2)
    out = x_rot * cos[:, None] + rotated_half * sin[:, None]
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


# =====================================================================================================
#                                 Attention plan (packing + masks)
# =====================================================================================================


@dataclass
class VincieContextCache:
    """Keys/values of a clean context encoded once with the block-causal layout (one entry per block).

    Clean tokens never attend to noisy ones in that layout, so these keys/values are valid for every
    sampling step of the frames generated after the context.
    """

    keys: list[torch.Tensor]  # per block (B, S_ctx, H, d), RoPE applied
    values: list[torch.Tensor]
    order: torch.Tensor  # (B, S_ctx) block-causal order of each cached token
    valid: torch.Tensor  # (B, S_ctx) False for padding
    text_lengths: torch.Tensor  # (B,) text length of each sample (RoPE offset of its frames)


@dataclass
class _AttentionPlan:
    """Where each packed token sits in the padded joint sequence ``[video_b, text_b]`` and who may see whom."""

    vid_index: torch.Tensor  # (N_vid,) flat index into (B * S)
    txt_index: torch.Tensor  # (N_txt,)
    batch_size: int
    seq_len: int
    mask: Optional[torch.Tensor]  # bool, (B, 1, 1, S_keys) key padding or (B, 1, S, S_keys); None = attend all
    order: Optional[torch.Tensor] = None  # (B, S) for block-causal
    valid: Optional[torch.Tensor] = None  # (B, S)
    context: Optional[VincieContextCache] = None  # keys/values to prepend (cached context)
    sink: Optional[VincieContextCache] = None  # collects keys/values when encoding a context
    sample_bounds: Optional[list] = None  # full layout: per sample ((vid_start, vid_stop), (txt_start, txt_stop))

    def to_padded(self, vid: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Scatters packed ``(N_vid, ...)`` and ``(N_txt, ...)`` into ``(B, S, ...)`` (zeros at padding)."""
        if self.batch_size == 1:  # one sample: the joint sequence is just [video, text], no scatter needed
            return torch.cat([vid, txt.to(vid.dtype)])[None]
        out = vid.new_zeros(self.batch_size * self.seq_len, *vid.shape[1:])
        out = out.index_copy(0, self.vid_index, vid).index_copy(0, self.txt_index, txt.to(vid.dtype))
        return out.unflatten(0, (self.batch_size, self.seq_len))

    def from_padded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size == 1:
            num_video = len(self.vid_index)
            return x[0, :num_video], x[0, num_video:]
        flat = x.flatten(0, 1)
        return flat.index_select(0, self.vid_index), flat.index_select(0, self.txt_index)


def _joint_positions(video_tokens: torch.Tensor, text_lengths: torch.Tensor, seq_len: int):
    """Flat indices of the video and text tokens of each sample inside a ``(B, seq_len)`` layout."""
    device = video_tokens.device
    starts = torch.arange(len(video_tokens), device=device) * seq_len
    vid_index = torch.cat([s + torch.arange(int(n), device=device) for s, n in zip(starts, video_tokens)])
    txt_index = torch.cat(
        [s + int(nv) + torch.arange(int(nt), device=device) for s, nv, nt in zip(starts, video_tokens, text_lengths)]
    )
    return vid_index, txt_index


def block_causal_mask(
    q_order: torch.Tensor,
    q_noisy: torch.Tensor,
    q_valid: torch.Tensor,
    k_order: torch.Tensor,
    k_noisy: torch.Tensor,
    k_valid: torch.Tensor,
) -> torch.Tensor:
    """Boolean ``(B, 1, S_q, S_k)`` mask of the block-causal layout (True = may attend).

    A clean token sees clean tokens of lower or equal order; a noisy token (a frame being denoised) sees clean
    tokens of strictly lower order and the noisy tokens of its own frame; clean tokens never see noisy ones.
    Padding queries see every key (their output is discarded; this only keeps softmax finite).
    """
    qo, ko = q_order[:, :, None], k_order[:, None, :]
    qn, kn = q_noisy[:, :, None], k_noisy[:, None, :]
    sees_clean = ~kn & ((ko < qo) | ((ko == qo) & ~qn))
    sees_own_frame = kn & qn & (ko == qo)
    allowed = (sees_clean | sees_own_frame) & k_valid[:, None, :]
    return (allowed | ~q_valid[:, :, None])[:, None]


# =====================================================================================================
#                                             Attention
# =====================================================================================================


# Backends that apply an arbitrary boolean (B, 1, S_q, S_k) mask; the others only know key padding.
_BLOCK_MASK_BACKENDS = ("native", "_native_math", "_native_efficient", "_native_cudnn")


def _check_backend_supports_masks(backend) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    name = (backend or _AttentionBackendRegistry.get_active_backend()[0]).value
    if name not in _BLOCK_MASK_BACKENDS:
        raise ValueError(
            f"Attention backend {name!r} cannot apply the block-causal mask; use one of {_BLOCK_MASK_BACKENDS} "
            "(`model.set_attention_backend('native')`) for block-causal models."
        )


class VincieAttnProcessor:
    """Joint attention of the video and text streams through ``dispatch_attention_fn``.

    ``qkv_dtype`` optionally casts q/k/v before the attention kernel and the result back (the official code
    always uses ``torch.bfloat16`` there, for flash-attention); ``None`` keeps the activation dtype.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, qkv_dtype: Optional[torch.dtype] = None):
        self.qkv_dtype = qkv_dtype

    def __call__(self, attn: "VincieAttention", vid, txt, vid_rope, txt_rope, plan: _AttentionPlan):
        vq, vk, vv = attn.project(vid, attn.video_stream, vid_rope)
        tq, tk, tv = attn.project(txt, attn.text_stream, txt_rope)
        if plan.sample_bounds is not None:
            vid_out, txt_out = self._per_sample(vq, vk, vv, tq, tk, tv, plan.sample_bounds)
        else:
            vid_out, txt_out = self._padded(attn, vq, vk, vv, tq, tk, tv, plan)
        return attn.video_stream.to_out(vid_out), attn.text_stream.to_out(txt_out)

    def _attend(self, q, k, v, mask=None):
        out_dtype = q.dtype
        if self.qkv_dtype is not None:
            q, k, v = q.to(self.qkv_dtype), k.to(self.qkv_dtype), v.to(self.qkv_dtype)
        out = dispatch_attention_fn(q, k, v, attn_mask=mask, backend=self._attention_backend)
        return out.to(out_dtype).flatten(2)  # (B, S, H*d)

    def _per_sample(self, vq, vk, vv, tq, tk, tv, bounds):
        """Full layout: one unmasked attention call per sample on its exact joint sequence (no padding at all,
        and every backend applies, flash included)."""
        vid_out, txt_out = [], []
        for (v0, v1), (t0, t1) in bounds:
            q, k, v = (torch.cat([a[v0:v1], b[t0:t1].to(a.dtype)])[None] for a, b in ((vq, tq), (vk, tk), (vv, tv)))
            out = self._attend(q, k, v)[0]
            vid_out.append(out[: v1 - v0])
            txt_out.append(out[v1 - v0 :])
        return torch.cat(vid_out), torch.cat(txt_out)

    def _padded(self, attn, vq, vk, vv, tq, tk, tv, plan: _AttentionPlan):
        """Block-causal layout: one masked call over the padded batch (plus cached context keys/values)."""
        q, k, v = plan.to_padded(vq, tq), plan.to_padded(vk, tk), plan.to_padded(vv, tv)
        if plan.sink is not None:
            plan.sink.keys.append(k)
            plan.sink.values.append(v)
        mask = plan.mask
        if plan.context is not None:
            k = torch.cat([plan.context.keys[attn.layer_index].to(k.dtype), k], dim=1)
            v = torch.cat([plan.context.values[attn.layer_index].to(v.dtype), v], dim=1)
        _check_backend_supports_masks(self._attention_backend)
        return plan.from_padded(self._attend(q, k, v, mask))


class VincieAttentionStream(nn.Module):
    """Projections of one stream (video, text, or both in shared blocks): q/k/v, per-head q/k RMSNorm, output."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.norm_q = RMSNorm(head_dim, eps=eps)
        self.norm_k = RMSNorm(head_dim, eps=eps)
        self.to_out = nn.Linear(inner, dim, bias=True)


class VincieAttention(nn.Module, AttentionModuleMixin):
    """Joint multimodal attention: per-sample full (or block-causal) softmax attention over [video, text]."""

    _default_processor_cls = VincieAttnProcessor
    _available_processors = [VincieAttnProcessor]

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float, separate_text_weights: bool, layer_index: int):
        super().__init__()
        self.heads, self.head_dim, self.layer_index = heads, head_dim, layer_index
        self.video_stream = VincieAttentionStream(dim, heads, head_dim, eps)
        self.separate_text_weights = separate_text_weights
        if separate_text_weights:
            self.text_projections = VincieAttentionStream(dim, heads, head_dim, eps)
        self.set_processor(self._default_processor_cls())

    @property
    def text_stream(self) -> VincieAttentionStream:
        return self.text_projections if self.separate_text_weights else self.video_stream

    def project(self, x: torch.Tensor, stream: VincieAttentionStream, rope: tuple[torch.Tensor, torch.Tensor]):
        """``(N, D)`` -> q, k, v ``(N, H, d)`` with qk-norm and RoPE on q and k."""
        q, k, v = (proj(x).unflatten(-1, (self.heads, self.head_dim)) for proj in (stream.to_q, stream.to_k, stream.to_v))
        q = apply_rotary(stream.norm_q(q).to(x.dtype), *rope)
        k = apply_rotary(stream.norm_k(k).to(x.dtype), *rope)
        return q, k, v

    def forward(self, vid, txt, vid_rope, txt_rope, plan: _AttentionPlan):
        return self.processor(self, vid, txt, vid_rope, txt_rope, plan)


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
        self.scale_shift_table = nn.Parameter(torch.zeros(2, 3, dim))
        if separate_text_weights:
            self.ff_context = FeedForward(dim, inner_dim=mlp_hidden, activation_fn="swiglu", bias=False)
            self.scale_shift_table_context = nn.Parameter(torch.zeros(2, 3, dim))

    def forward(self, vid, txt, vid_emb, txt_emb, vid_rope, txt_rope, plan: _AttentionPlan, is_last: bool = False):
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


class VincieTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin):
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
        self.norm_out_shift_scale = nn.Parameter(torch.zeros(2, dim))  # learned [shift, scale] of the output head
        self.proj_out = nn.Linear(dim, patch_size * patch_size * latent_channels)

    # -------------------------------------------------------------------------------- text helpers

    def build_session_text(self, segments: list[torch.Tensor], turn_ids=None) -> torch.Tensor:
        """Inserts this model's turn tokens: ``[E[t_0], seg_0, E[t_1], seg_1, ...]`` (turn ids default 0..n-1)."""
        if turn_ids is None:
            turn_ids = range(len(segments))
        return insert_turn_tokens(segments, list(turn_ids), self.turn_embedding.weight)

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
                "`diffusers_vincie.assembly.interleaved_order`)."
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
            sink = VincieContextCache([], [], order, valid, text_lengths_in_call)
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
        attention_layout: Optional[str] = None,
        context_cache: Optional[VincieContextCache] = None,
        return_context_cache: bool = False,
        return_dict: bool = True,
    ):
        """Predicts the flow velocity ``noise - x0`` of every latent pixel.

        Args:
            hidden_states: ``(sum_b F_b*h_b*w_b, 2C+1)`` packed ``[noisy latent, condition latent, mask]``.
            video_shapes: ``(B, 3)`` rows ``(frames, h, w)`` of the latent grid of each sample.
            encoder_hidden_states: ``(sum_b L_b, text_embed_dim)`` packed session text, turn tokens included
                (see `build_session_text`); ``None`` with a ``context_cache`` (the text is in the cache).
            text_lengths: ``(B,)`` text length ``L_b`` of each sample (also with a cache: RoPE offset of frames).
            timestep: ``(B,)`` timesteps on the 0..1000 scale (text tokens, and frames without ``frame_timestep``).
            frame_timestep: ``(sum_b F_b,)`` optional per-frame timesteps (e.g. 0 for clean context frames).
            frame_index: ``(sum_b F_b,)`` temporal RoPE index of each frame; default ``0..F_b-1``.
            frame_order, text_order: block-causal order of each frame / text token
                (`diffusers_vincie.assembly.interleaved_order`); block-causal layout only.
            frame_is_noisy: ``(sum_b F_b,)`` bool, frames being denoised (block-causal layout only).
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

        patch_shapes = self._patch_shapes(video_shapes)
        tokens_per_frame = torch.repeat_interleave(patch_shapes[:, 1] * patch_shapes[:, 2], patch_shapes[:, 0])
        frames_total = int(video_shapes[:, 0].sum())
        if frame_index is None:
            frame_index = default_frame_index(video_shapes)
        for name, value in (("frame_timestep", frame_timestep), ("frame_index", frame_index), ("frame_order", frame_order)):
            if value is not None and value.shape != (frames_total,):
                raise ValueError(f"`{name}` must have one entry per frame ({frames_total},); got {tuple(value.shape)}.")

        # ---- embeddings
        vid = self.patch_embed(self._patchify(hidden_states.to(dtype), video_shapes))
        if context_cache is None:
            txt = self.context_embedder(encoder_hidden_states.to(dtype))
            text_in_call = text_lengths
        else:
            txt = vid.new_zeros(0, vid.shape[-1])
            text_in_call = torch.zeros_like(text_lengths)

        vid_emb, txt_emb = self._token_modulation(timestep, frame_timestep, patch_shapes, tokens_per_frame, text_in_call)

        vid_pos, txt_pos = rope_position_ids(patch_shapes, text_lengths, frame_index.to(device), text_in_call)
        vid_rope, txt_rope = self.rope(vid_pos), self.rope(txt_pos)
        plan = self._plan(
            layout, tokens_per_frame, patch_shapes, text_in_call, frame_order, text_order, frame_is_noisy,
            context_cache, return_context_cache,
        )

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
            attention_layout="block_causal",
            return_context_cache=True,
        )

    def set_attention_qkv_dtype(self, dtype: Optional[torch.dtype]) -> None:
        """Casts q/k/v to ``dtype`` right before attention (``torch.bfloat16`` reproduces the official code)."""
        for module in self.modules():
            if isinstance(module, VincieAttention):
                module.processor.qkv_dtype = dtype
