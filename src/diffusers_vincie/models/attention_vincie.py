"""Rotary positions and joint attention of `VincieTransformer` (official ``mmrope3d`` and ``mm_full`` attention).

Both streams stay packed (no padding) in every per-token layer. Full attention runs once per sample on its exact
joint sequence ``[video, text]`` (no padding, any backend); the block-causal layout scatters q/k/v into a padded
``(B, S, H, d)`` batch with its mask (only mask-capable backends apply it). The position rule lives here too: a
frame sits on the RoPE time axis after the text that precedes it (`frame_text_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.normalization import RMSNorm

# =====================================================================================================
#                                   Rotary embedding (mmrope3d)
# =====================================================================================================


class VincieRotaryEmbedding(nn.Module):
    """3-axis rotary embedding: ``rope_dim // 3`` dims per axis (t, h, w), interleaved pairs.

    Dims beyond ``3 * (rope_dim // 3)`` of each head are left unrotated (2 of 128 in the 3B model). The time axis
    uses base ``theta``; the two spatial axes use ``spatial_theta`` (default ``theta``, as in the official model).
    """

    def __init__(self, rope_dim: int, theta: float = 10000.0, spatial_theta: Optional[float] = None):
        super().__init__()
        self.axis_dim, self.theta = rope_dim // 3, theta
        self.spatial_theta = theta if spatial_theta is None else spatial_theta
        # dtype of the angle product (positions x frequencies); None = float32. ``torch.bfloat16`` reproduces a
        # run whose mixed precision casts positions and the frequency buffer to bf16 (official 7B GPU run)
        self.angle_dtype: Optional[torch.dtype] = None

    def inverse_frequencies(self, device=None) -> torch.Tensor:
        """``base^(-2j/axis_dim)`` for ``j < axis_dim/2`` in float32, ``(3, axis_dim/2)`` for the axes (t, h, w)
        (each row the official ``freqs`` buffer when the bases agree)."""
        exponent = torch.arange(0, self.axis_dim, 2, device=device)[: self.axis_dim // 2].float() / self.axis_dim
        bases = torch.tensor([self.theta, self.spatial_theta, self.spatial_theta], device=device)[:, None]
        return 1.0 / (bases**exponent)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions (N, 3)`` -> rotation angles ``(N, 3 * axis_dim)`` in float32, axes (t, h, w), each
        frequency twice (interleaved pairs)."""
        frequencies = self.inverse_frequencies(positions.device)
        if self.angle_dtype is None:
            angles = positions.float()[:, :, None] * frequencies  # (N, 3, axis_dim/2)
        else:
            angles = (positions.to(self.angle_dtype)[:, :, None] * frequencies.to(self.angle_dtype)).float()
        return angles.repeat_interleave(2, dim=-1).flatten(1)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions (N, 3)`` -> ``(cos, sin)`` of shape ``(N, 3 * axis_dim)`` in float32."""
        angles = self.angles(positions)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the first ``cos.shape[-1]`` dims of ``x (N, H, d)`` in interleaved pairs, in float32."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot].float(), x[..., rot:]
    a, b = x_rot.unflatten(-1, (-1, 2)).unbind(-1)
    rotated_half = torch.stack([-b, a], dim=-1).flatten(-2)
    out = x_rot * cos[:, None] + rotated_half * sin[:, None]
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


def as_ints(values) -> tuple[int, ...]:
    """Python ints of a 1-D tensor or sequence. A tensor costs one host sync: callers in a sampling loop pass
    lists (geometry is known on the host), which keeps `VincieTransformer.forward` free of syncs."""
    return tuple(int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values))


def as_shape_rows(values) -> tuple[tuple[int, int, int], ...]:
    """``(frames, h, w)`` rows as Python ints, from a ``(B, 3)`` tensor or a sequence of triples."""
    rows = values.tolist() if isinstance(values, torch.Tensor) else values
    return tuple((int(f), int(h), int(w)) for f, h, w in rows)


def sample_ids(counts: tuple[int, ...], device=None) -> torch.Tensor:
    """``(sum counts,)`` index of the sample each packed row belongs to."""
    return torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])


def repeat_rows(x: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """Row ``i`` of ``x`` repeated ``counts[i]`` times, with sizes known on the host (no data-dependent shape)."""
    if len(set(counts)) == 1:
        return x.repeat_interleave(counts[0], dim=0)
    return torch.cat([row.expand(n, *row.shape[1:]) for row, n in zip(x.split(1), counts)])


def frame_text_offsets(
    frames_per_sample: Union[torch.Tensor, Sequence[int]],
    text_lengths: Union[torch.Tensor, Sequence[int]],
    frame_order: Optional[torch.Tensor] = None,
    text_order: Optional[torch.Tensor] = None,
    device=None,
) -> torch.Tensor:
    """Text tokens before each frame on the RoPE time axis, ``(sum F,)``.

    Without orders (official full layout) every frame of a sample follows its whole text. With block-causal orders
    a frame counts only its sample's text tokens of lower order, so its position depends only on what precedes it:
    the same frame gets the same position in a multi-target training sequence and at cached inference.
    """
    frames, lengths = as_ints(frames_per_sample), as_ints(text_lengths)
    if frame_order is None:
        return torch.tensor([n for n, f in zip(lengths, frames) for _ in range(f)], dtype=torch.long, device=device)
    frame_sample = sample_ids(frames, frame_order.device)
    text_sample = sample_ids(lengths, frame_order.device)
    before = (text_sample[None, :] == frame_sample[:, None]) & (text_order[None, :] < frame_order[:, None])
    return before.sum(-1)


def rope_positions(
    patch_shapes: Union[torch.Tensor, Sequence[Sequence[int]]],
    frame_time: torch.Tensor,
    text_lengths_in_call: Union[torch.Tensor, Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-axis RoPE positions (``mmrope3d``): ``(video_pos (N_vid, 3), text_pos (N_txt, 3))`` in float32.

    Video token of frame ``f``, patch row ``y``, column ``x`` sits at ``(frame_time[f], y, x)``; text token ``j`` of a
    sample (among the text tokens present in this call) at ``(j, j, j)``.
    """
    device = frame_time.device
    video, first_frame = [], 0
    for frames, height, width in as_shape_rows(patch_shapes):
        rows = torch.arange(height, device=device).repeat_interleave(width).repeat(frames)
        cols = torch.arange(width, device=device).repeat(height * frames)
        times = frame_time[first_frame : first_frame + frames].repeat_interleave(height * width)
        video.append(torch.stack([times.float(), rows.float(), cols.float()], -1))
        first_frame += frames
    text = torch.cat([torch.arange(n, device=device) for n in as_ints(text_lengths_in_call)])
    return torch.cat(video), text[:, None].expand(-1, 3).float()


def per_turn_text_positions(
    frames_per_sample: Union[torch.Tensor, Sequence[int]],
    text_lengths: Union[torch.Tensor, Sequence[int]],
    frame_time: torch.Tensor,
    frame_order: torch.Tensor,
    text_order: torch.Tensor,
) -> torch.Tensor:
    """Text RoPE positions of the ``"per_turn"`` rule (block-causal layout), ``(sum L, 3)`` in float32.

    Token ``i`` of an instruction sits at ``(t + i, i, i)``, where ``t`` is the RoPE time of the latest frame before
    the instruction (0 if none; a noisy target has its clean frame's time, so either may count). Under the official
    ``(j, j, j)`` rule the instruction of turn ``k`` sits at spatial offsets that grow with the text before it, so
    the words that name a place ("at the top left") meet the target's patch grid at another relative position at
    every depth; here they meet it at the same one, and the instruction still follows its turn's image in time.
    A sample's first instruction keeps ``(j, j, j)``.
    """
    frames, lengths = as_ints(frames_per_sample), as_ints(text_lengths)
    device = frame_time.device
    frame_sample, text_sample = sample_ids(frames, device), sample_ids(lengths, device)
    before = (frame_sample[None, :] == text_sample[:, None]) & (frame_order[None, :] < text_order[:, None])
    start = torch.where(before, frame_time[None, :].float(), torch.zeros((), device=device)).amax(-1)
    # index of each token inside its instruction: tokens of one instruction share a sample and an order
    first = torch.ones_like(text_order, dtype=torch.bool)
    first[1:] = (text_order[1:] != text_order[:-1]) | (text_sample[1:] != text_sample[:-1])
    run_start = torch.cummax(torch.where(first, torch.arange(len(text_order), device=device), 0), 0).values
    within = (torch.arange(len(text_order), device=device) - run_start).float()
    return torch.stack([start + within, within, within], -1)


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
    text_lengths: tuple[int, ...]  # text tokens of each sample
    text_order: torch.Tensor  # (sum text_lengths,) block-causal order of each text token (RoPE offsets of frames)


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


def _joint_positions(video_tokens: tuple[int, ...], text_lengths: tuple[int, ...], seq_len: int, device=None):
    """Flat indices of the video and text tokens of each sample inside a ``(B, seq_len)`` layout."""
    vid_index, txt_index = [], []
    for sample, (num_video, num_text) in enumerate(zip(video_tokens, text_lengths)):
        start = sample * seq_len
        vid_index.append(torch.arange(start, start + num_video, device=device))
        txt_index.append(torch.arange(start + num_video, start + num_video + num_text, device=device))
    return torch.cat(vid_index), torch.cat(txt_index)


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
    _supports_qkv_fusion = False  # q/k/v of each stream carry their own qk-norm; fusing buys little on this layout

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
        q, k, v = (
            proj(x).unflatten(-1, (self.heads, self.head_dim)) for proj in (stream.to_q, stream.to_k, stream.to_v)
        )
        q = apply_rotary(stream.norm_q(q).to(x.dtype), *rope)
        k = apply_rotary(stream.norm_k(k).to(x.dtype), *rope)
        return q, k, v

    def forward(self, vid, txt, vid_rope, txt_rope, plan: _AttentionPlan):
        return self.processor(self, vid, txt, vid_rope, txt_rope, plan)
