"""Official VINCIE DiT checkpoint (``dit.pth`` / ``ema.pth``, NaDiT + turn table) -> `VincieTransformer`.

The configuration is read from the checkpoint itself (key names and shapes), so releases that ship no config
(VINCIE-7B) convert too, and a tiny checkpoint in the official layout converts with the same code as the real one.
Two layouts exist, told apart by their key names:

* VINCIE-3B: ``vid_in.proj`` / ``vid_out.proj`` (2x2 patches) and one ``txt_in`` Linear;
* VINCIE-7B: ``vid_in.img_proj`` / ``vid_out.img_proj`` (official ``patch_type: v2``, patch 1) and the MLP text
  projection ``txt_in.0.0.0`` / ``txt_in.0.0.2`` + RMSNorm ``txt_in.0.1``. The weights do not carry the RoPE
  variant; the 7B release is configured with ``mmrope3d_v3`` (frames at RoPE time 0, no text offset), so this
  layout converts with ``rope_type="mmrope3d_v3"``.

Loading is strict: a missing turn table, an unknown key or a shape mismatch is an error (the official loader is
non-strict and would silently keep random weights).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

import torch

from ..models.transformer_vincie import VincieRotaryEmbedding, VincieTransformer, swiglu_hidden_size
from .checkpoint import SAFETENSORS_DTYPES, StreamingSafetensorsWriter, load_torch_state_dict, validate_state_dict

FLOPS_WRAP_FRAGMENT = "_flops_wrap_module."
TURN_TABLE_KEY = "prompt_id_embedding.embedding.weight"

# Official VINCIE-3B (configs/generate.yaml); checked key by key against the official key list in the tests.
VINCIE_3B_CONFIG = dict(
    latent_channels=16,
    hidden_size=2560,
    num_attention_heads=20,
    attention_head_dim=128,
    num_layers=32,
    num_mm_layers=10,
    text_embed_dim=5120,
    patch_size=2,
    mlp_hidden_size=None,
    rope_dim=128,
    rope_theta=10000.0,
    norm_eps=1e-5,
    max_turns=64,
    attention_layout="full",
    text_projection="linear",
    rope_type="mmrope3d",
)

# Official VINCIE-7B (configs/generate_7b.yaml): attention 32 x 128 = 4096 wide over D = 3584, patch 1, MLP text
# projection, mmrope3d_v3 with 120 of 128 head dims rotated; checked key by key in the tests.
VINCIE_7B_CONFIG = dict(
    VINCIE_3B_CONFIG,
    latent_channels=48,
    hidden_size=3584,
    num_attention_heads=32,
    num_mm_layers=12,
    text_embed_dim=4096,
    patch_size=1,
    rope_dim=120,
    text_projection="mlp",
    rope_type="mmrope3d_v3",
)

_ADA = {"attn": 0, "mlp": 1}
_SLOT = {"shift": 0, "scale": 1, "gate": 2}


# =====================================================================================================
#                                            Loading
# =====================================================================================================


def load_official_state_dict(source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Reads ``dit.pth`` safely (``weights_only``, ``mmap``) and strips the ``_flops_wrap_module.`` fragment."""
    state = validate_state_dict(source, "state dict") if isinstance(source, Mapping) else load_torch_state_dict(source)
    return {k.replace(FLOPS_WRAP_FRAGMENT, ""): v for k, v in state.items()}


# =====================================================================================================
#                                        Config from keys
# =====================================================================================================


def official_layout(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Official key names of the parts that differ between the two layouts (see the module docstring)."""
    if "vid_in.img_proj.weight" in state or "txt_in.0.0.0.weight" in state:  # VINCIE-7B: patch v2, MLP text
        return dict(vid_in="vid_in.img_proj", vid_out="vid_out.img_proj", txt_in="txt_in.0.0.0")
    return dict(vid_in="vid_in.proj", vid_out="vid_out.proj", txt_in="txt_in")


def _text_projection_keys(layout: Mapping[str, str]) -> dict[str, str]:
    """Official text-projection keys -> `VincieTransformer` keys."""
    if layout["txt_in"] == "txt_in":
        return {f"txt_in.{p}": f"context_embedder.{p}" for p in ("weight", "bias")}
    keys = {
        f"txt_in.0.0.{i}.{p}": f"context_embedder.mlp.linear_{n}.{p}"
        for i, n in ((0, 1), (2, 2))
        for p in ("weight", "bias")
    }
    return {**keys, "txt_in.0.1.weight": "context_embedder.norm.weight"}


def infer_transformer_config(state: Mapping[str, torch.Tensor], rope_dim: Optional[int] = None) -> dict:
    """Derives the `VincieTransformer` config from official key names and shapes (either layout).

    ``rope_dim`` is read from the RoPE frequency buffers; pass it for a 7B-layout checkpoint saved without them."""
    layout = official_layout(state)
    mlp_text = layout["txt_in"] != "txt_in"
    required = [f"{layout['vid_in']}.weight", f"{layout['vid_out']}.weight", *_text_projection_keys(layout)]
    missing = [k for k in [*required, TURN_TABLE_KEY] if k not in state]
    if missing:
        hint = " (the turn-index table must be inside the checkpoint)" if TURN_TABLE_KEY in missing else ""
        raise ValueError(f"Not an official VINCIE DiT checkpoint: missing {missing}{hint}.")
    hidden, patch_in = state[f"{layout['vid_in']}.weight"].shape
    patch_out = state[f"{layout['vid_out']}.weight"].shape[0]
    patch_area = patch_in - 2 * patch_out  # p*p*(2C+1) - 2*p*p*C
    patch = int(round(patch_area**0.5))
    if patch * patch != patch_area or patch_out % patch_area:
        raise ValueError(f"Cannot infer patch size / latent channels from vid_in {patch_in} and vid_out {patch_out}.")
    block_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if block_ids != list(range(len(block_ids))) or not block_ids:
        raise ValueError(f"Transformer blocks must be numbered 0..n-1; found {block_ids[:5]}...")
    mm_layers = sum(f"blocks.{i}.attn.proj_qkv.vid.weight" in state for i in block_ids)
    head_dim = state["blocks.0.attn.norm_q." + ("vid" if mm_layers else "all") + ".weight"].shape[0]
    qkv_rows = state["blocks.0.attn.proj_qkv." + ("vid" if mm_layers else "all") + ".weight"].shape[0]
    branch = "vid" if mm_layers else "all"
    mlp_hidden = state[f"blocks.0.mlp.{branch}.proj_in.weight"].shape[0]
    freqs = state.get("blocks.0.attn.rope.rope.freqs")
    if freqs is None and mlp_text and rope_dim is None:
        raise ValueError(
            "The checkpoint holds no RoPE frequency buffer (`blocks.0.attn.rope.rope.freqs`), so `rope_dim` cannot be "
            "read from it; pass rope_dim=120 (the official VINCIE-7B value)."
        )
    if rope_dim is None:
        rope_dim = head_dim  # the official 3B value (rope_dim = head_dim, 2 * (head_dim // 3 // 2) dims per axis)
        if freqs is not None and head_dim // 3 != 2 * freqs.numel():
            rope_dim = 3 * 2 * freqs.numel()
    return dict(
        latent_channels=patch_out // patch_area,
        hidden_size=hidden,
        num_attention_heads=qkv_rows // 3 // head_dim,
        attention_head_dim=head_dim,
        num_layers=len(block_ids),
        num_mm_layers=mm_layers,
        text_embed_dim=state[f"{layout['txt_in']}.weight"].shape[1],
        patch_size=patch,
        mlp_hidden_size=None if mlp_hidden == swiglu_hidden_size(hidden) else mlp_hidden,
        rope_dim=rope_dim,
        rope_theta=10000.0,
        norm_eps=1e-5,
        max_turns=state[TURN_TABLE_KEY].shape[0],
        attention_layout="full",
        text_projection="mlp" if mlp_text else "linear",
        rope_type="mmrope3d_v3" if mlp_text else "mmrope3d",
    )


# =====================================================================================================
#                                          Key mapping
# =====================================================================================================

_TOP_LEVEL = {
    "emb_in.proj_in.weight": "time_embed.linear_1.weight",
    "emb_in.proj_in.bias": "time_embed.linear_1.bias",
    "emb_in.proj_hid.weight": "time_embed.linear_2.weight",
    "emb_in.proj_hid.bias": "time_embed.linear_2.bias",
    "emb_in.proj_out.weight": "time_embed.linear_3.weight",
    "emb_in.proj_out.bias": "time_embed.linear_3.bias",
    TURN_TABLE_KEY: "turn_embedding.weight",
    "vid_out_norm.weight": "norm_out.weight",
}


def top_level_keys(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Official keys outside the blocks -> `VincieTransformer` keys, for the checkpoint's layout."""
    layout = official_layout(state)
    keys = {
        f"{layout[part]}.{p}": f"{name}.{p}"
        for part, name in (("vid_in", "patch_embed"), ("vid_out", "proj_out"))
        for p in ("weight", "bias")
    }
    return {**keys, **_text_projection_keys(layout), **_TOP_LEVEL}


def convert_dit_state_dict(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """Renames/reshapes official keys to `VincieTransformer` keys. Every official key must be consumed."""
    return dict(iter_converted_dit(state, config))


def iter_converted_dit(state: Mapping[str, torch.Tensor], config: Mapping) -> Iterator[tuple[str, torch.Tensor]]:
    """``(VincieTransformer key, tensor)`` pairs, produced one at a time in a fixed order (renames are views of
    the official tensors; only the SwiGLU input projections and the modulation tables are new tensors). Raises
    after the last pair if official keys were left over."""
    remaining = dict(state)

    def take(key: str) -> torch.Tensor:
        if key not in remaining:
            raise ValueError(f"Official DiT checkpoint is missing `{key}`.")
        return remaining.pop(key)

    for src, dst in top_level_keys(state).items():
        yield dst, take(src)
    yield "norm_out_shift_scale", torch.stack([take("vid_out_ada.out_shift"), take("vid_out_ada.out_scale")])

    heads_dim = config["num_attention_heads"] * config["attention_head_dim"]
    for i in range(config["num_layers"]):
        separate = i < config["num_mm_layers"]
        branches = {"vid": ("video_stream", "ff", "scale_shift_table")}
        if separate:
            branches["txt"] = ("text_projections", "ff_context", "scale_shift_table_context")
        else:
            branches = {"all": branches["vid"]}
        for tag, (stream, ff, table) in branches.items():
            src, dst = f"blocks.{i}", f"transformer_blocks.{i}"
            qkv = take(f"{src}.attn.proj_qkv.{tag}.weight")
            if qkv.shape[0] != 3 * heads_dim:
                raise ValueError(
                    f"`{src}.attn.proj_qkv.{tag}.weight` has shape {tuple(qkv.shape)}, expected 3*{heads_dim} rows."
                )
            for name, part in zip(("to_q", "to_k", "to_v"), qkv.split(heads_dim)):  # rows (qkv, head, head_dim)
                yield f"{dst}.attn.{stream}.{name}.weight", part
            for suffix in ("weight", "bias"):
                yield f"{dst}.attn.{stream}.to_out.{suffix}", take(f"{src}.attn.proj_out.{tag}.{suffix}")
            yield f"{dst}.attn.{stream}.norm_q.weight", take(f"{src}.attn.norm_q.{tag}.weight")
            yield f"{dst}.attn.{stream}.norm_k.weight", take(f"{src}.attn.norm_k.{tag}.weight")
            # diffusers SwiGLU: one projection whose first half is the value branch, second half the gate
            value, gate = take(f"{src}.mlp.{tag}.proj_in.weight"), take(f"{src}.mlp.{tag}.proj_in_gate.weight")
            yield f"{dst}.{ff}.net.0.proj.weight", torch.cat([value, gate])
            del value, gate
            yield f"{dst}.{ff}.net.2.weight", take(f"{src}.mlp.{tag}.proj_out.weight")
            yield (
                f"{dst}.{table}",
                torch.stack(
                    [torch.stack([take(f"{src}.ada.{tag}.{layer}_{slot}") for slot in _SLOT]) for layer in _ADA]
                ),
            )
        remaining.pop(f"blocks.{i}.attn.rope.rope.freqs", None)  # deterministic buffer, recomputed by the model
    if remaining:
        raise ValueError(f"Unexpected keys in the official DiT checkpoint: {sorted(remaining)[:10]} ...")


# =====================================================================================================
#                                         Public entry point
# =====================================================================================================


def load_official_dit(
    source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    dtype: Optional[torch.dtype] = None,
    config_overrides: Optional[Mapping] = None,
) -> VincieTransformer:
    """Builds a `VincieTransformer` from an official ``dit.pth`` (path or state dict).

    Args:
        source: path of ``dit.pth`` or an already loaded official state dict.
        dtype: cast the weights to this dtype (default: keep the checkpoint's dtype).
        config_overrides: config entries to override after inference (e.g. ``norm_eps``).
    """
    state = load_official_state_dict(source)
    config = transformer_config_from_state_dict(state, config_overrides)
    converted = convert_dit_state_dict(state, config)
    with torch.device("meta"):
        model = VincieTransformer(**config)
    _check_against_model({k: v.shape for k, v in converted.items()}, model)
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def transformer_config_from_state_dict(
    state: Mapping[str, torch.Tensor], config_overrides: Optional[Mapping] = None
) -> dict:
    """The `VincieTransformer` config of an official state dict (`infer_transformer_config` + overrides), with its
    RoPE frequency buffers checked against the config."""
    overrides = dict(config_overrides or {})
    config = {**infer_transformer_config(state, rope_dim=overrides.get("rope_dim")), **overrides}
    _check_rope_buffers(state, config)
    return config


def convert_official_dit(
    source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    output_dir: Union[str, os.PathLike],
    dtype: Optional[torch.dtype] = None,
    config_overrides: Optional[Mapping] = None,
) -> dict:
    """Writes an official DiT checkpoint as a `VincieTransformer` folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``), streaming: the checkpoint is memory-mapped and each converted tensor
    is written and released before the next is made, so the added memory stays near the largest tensor (the 29 GB
    float32 VINCIE-7B DiT never sits in memory). The whole key mapping is validated on shapes alone before any
    byte is written. ``VincieTransformer.from_pretrained(output_dir)`` loads the result.

    Args:
        source: ``dit.pth`` / ``ema.pth`` path or an already loaded official state dict.
        output_dir: destination folder (created; a caller wanting atomicity passes a temporary folder).
        dtype: dtype of the written weights (default: the checkpoint's own, float32 if it mixes dtypes).
        config_overrides: config entries to override after inference.

    Returns:
        The written config.
    """
    state = load_official_state_dict(source)
    config = transformer_config_from_state_dict(state, config_overrides)
    shapes_only = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    plan = [(name, tuple(tensor.shape)) for name, tensor in iter_converted_dit(shapes_only, config)]
    with torch.device("meta"):
        model = VincieTransformer(**config)
    _check_against_model(dict(plan), model)
    if dtype is None:
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    writer = StreamingSafetensorsWriter(output_dir / "diffusion_pytorch_model.safetensors", plan, dtype)
    for name, tensor in iter_converted_dit(state, config):
        writer.write(name, tensor)
        del tensor
    writer.close()
    model.save_config(output_dir)
    return config


def _check_against_model(shapes: Mapping[str, tuple], model: VincieTransformer) -> None:
    expected = model.state_dict()
    shape_errors = [
        f"{k}: checkpoint {tuple(v)} vs model {tuple(expected[k].shape)}"
        for k, v in shapes.items()
        if k in expected and tuple(v) != tuple(expected[k].shape)
    ]
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if shape_errors or missing or unexpected:
        raise ValueError(
            f"Checkpoint does not fit the inferred config: shape mismatches {shape_errors[:5]}, "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )


def _check_rope_buffers(state: Mapping[str, torch.Tensor], config: Mapping) -> None:
    """The official ``freqs`` buffers are deterministic; refuse a checkpoint whose values differ from ours."""
    expected = VincieRotaryEmbedding(config["rope_dim"], config["rope_theta"]).inverse_frequencies()[0]
    for key, value in state.items():
        if key.endswith("attn.rope.rope.freqs") and not torch.allclose(value.float(), expected, rtol=1e-3):
            raise ValueError(f"`{key}` does not hold the standard RoPE frequencies for rope_dim={config['rope_dim']}.")
