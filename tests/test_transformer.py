"""VincieTransformer: diffusers model-test style checks on tiny random configs."""

import json

import pytest
import torch
from conftest import official_fixtures_dir

from diffusers_vincie.conversion.dit import VINCIE_3B_CONFIG, convert_dit_state_dict, load_official_dit
from diffusers_vincie.models import VincieTransformer
from diffusers_vincie.sequence import (
    clean_context_frames,
    noisy_target_frames,
    pack_sessions,
    sequence_order,
    session_items,
    session_text,
)
from diffusers_vincie.testing import tiny_transformer

# shared/reference sits beside shared/fixtures (../shared, or wherever $VINCIE_OFFICIAL_FIXTURES points)
REFERENCE = official_fixtures_dir().parent.parent / "reference"


def _session(f, h, w, text_len, c=4, text_dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(f, h, w, 2 * c + 1, generator=g), torch.randn(text_len, text_dim, generator=g)


def _run(model, sessions, timesteps, **kw):
    video, shapes, text, lengths = pack_sessions([s[0] for s in sessions], [s[1] for s in sessions])
    return model(video, shapes, text, lengths, torch.tensor(timesteps), **kw).sample, shapes


@pytest.fixture(scope="module")
def model():
    return tiny_transformer()


def test_output_shape_and_determinism(model):
    sess = [_session(3, 4, 6, 9)]
    a, _ = _run(model, sess, [500.0])
    b, _ = _run(model, sess, [500.0])
    assert a.shape == (3 * 4 * 6, 4)
    assert torch.equal(a, b)


def test_batch_equals_per_sample_whatever_the_padding(model):
    sessions = [_session(2, 4, 4, 7, seed=1), _session(3, 4, 6, 14, seed=2), _session(1, 8, 2, 3, seed=3)]
    timesteps = [571.4, 923.1, 10.0]
    batched, shapes = _run(model, sessions, timesteps)
    for i, part in enumerate(batched.split(shapes.prod(-1).tolist())):
        alone, _ = _run(model, [sessions[i]], [timesteps[i]])
        torch.testing.assert_close(part, alone, atol=2e-5, rtol=0)
    # a different companion (different padding) leaves sample 0 unchanged too
    other, shapes2 = _run(model, [sessions[0], _session(4, 6, 6, 30, seed=9)], [timesteps[0], 3.0])
    torch.testing.assert_close(other[: shapes2[0].prod()], batched[: shapes[0].prod()], atol=2e-5, rtol=0)


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = VincieTransformer.from_pretrained(tmp_path).eval()
    sess = [_session(2, 4, 4, 5)]
    torch.testing.assert_close(_run(loaded, sess, [100.0])[0], _run(model, sess, [100.0])[0], atol=1e-6, rtol=0)
    assert {k: loaded.config[k] for k in model.config if not k.startswith("_")} == {
        k: v for k, v in model.config.items() if not k.startswith("_")
    }
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()


def test_modulation_offsets_start_as_the_official_adasingle():
    """``__init__`` and ``initialize_weights()`` draw the learned offsets as the official ``AdaSingle``: N(0, 1/D)
    shifts and gates, 1 + N(0, 1/D) scales (the forward has no ``1 +``). With zeros (an earlier bug) a fresh model
    scaled every block input by the small time embedding alone, and diffusers' LoRA mixin saw no LoRA effect."""
    dim = 256
    for model in (
        VincieTransformer(
            hidden_size=dim,
            num_attention_heads=2,
            attention_head_dim=128,
            num_layers=2,
            num_mm_layers=1,
            text_embed_dim=32,
            rope_dim=12,
            mlp_hidden_size=64,
        ),
    ):
        for init in ("__init__", "initialize_weights"):
            if init == "initialize_weights":
                model.initialize_weights(generator=torch.Generator().manual_seed(1))
            blocks = model.transformer_blocks
            tables = [blocks[0].scale_shift_table, blocks[0].scale_shift_table_context, blocks[1].scale_shift_table]
            for table in tables:  # (layer, slot = shift/scale/gate, D)
                for slot, unit in ((0, 0.0), (1, 1.0), (2, 0.0)):
                    values = table[:, slot].detach()
                    assert abs(values.mean() - unit) < 0.05 and abs(values.std() - dim**-0.5) < 0.01, (init, slot)
            head = model.norm_out_shift_scale.detach()  # (shift, scale) of the output head
            assert abs(head[0].mean()) < 0.05 and abs(head[1].mean() - 1.0) < 0.05, init
        model.initialize_weights(zero_modulation=True)  # the pre-2026-12-01 init of the issue-13 ablations
        offsets = [p for n, p in model.named_parameters() if "scale_shift_table" in n or "norm_out_shift_scale" in n]
        assert len(offsets) == 4 and all(not p.any() for p in offsets)
        assert model.proj_out.weight.abs().sum() > 0  # only the offsets are zero


def test_gradient_checkpointing_gives_equal_gradients():
    sess = [_session(2, 4, 4, 5), _session(1, 4, 6, 3, seed=4)]
    grads = []
    for checkpointing in (False, True):
        m = tiny_transformer().train()
        if checkpointing:
            m.enable_gradient_checkpointing()
        out, _ = _run(m, sess, [300.0, 700.0])
        out.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_lora_add_save_load(model, tmp_path):
    from peft import LoraConfig

    m = tiny_transformer()
    sess = [_session(2, 4, 4, 5)]
    base, _ = _run(m, sess, [400.0])
    m.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out"])
    )
    with_lora, _ = _run(m, sess, [400.0])
    assert (with_lora - base).abs().max() > 1e-4
    from peft.utils import get_peft_model_state_dict

    lora_state = get_peft_model_state_dict(m)
    assert any("to_q" in k for k in lora_state)
    fresh = tiny_transformer()
    fresh.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out"]))
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(fresh, lora_state)
    torch.testing.assert_close(_run(fresh, sess, [400.0])[0], with_lora)


def test_bf16_forward_close_to_fp32(model):
    sess = [_session(2, 4, 4, 6)]
    ref, _ = _run(model, sess, [600.0])
    m16 = tiny_transformer().to(torch.bfloat16)
    out, _ = _run(m16, sess, [600.0])
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_attention_backend_switch(model):
    from diffusers.models.attention_dispatch import attention_backend

    sess = [_session(2, 4, 4, 6), _session(1, 4, 4, 2, seed=5)]
    ref, _ = _run(model, sess, [600.0, 5.0])
    model.set_attention_backend("_native_math")
    try:
        math_out, _ = _run(model, sess, [600.0, 5.0])
    finally:
        model.set_attention_backend("native")
    with attention_backend("_native_math"):
        ctx_out, _ = _run(model, sess, [600.0, 5.0])
    torch.testing.assert_close(math_out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ctx_out, ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- block-causal


def _block_causal_inputs(num_frames=3, segments=(4, 3), h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(num_frames, h, w, 4, generator=g)
    text = torch.randn(sum(segments), 32, generator=g)
    frame_order, text_order = sequence_order(session_items(num_frames - 1), list(segments))
    return latents, text, frame_order, text_order


def test_block_causal_mask_really_blocks():
    model = tiny_transformer(attention_layout="block_causal")
    latents, text, frame_order, text_order = _block_causal_inputs()
    f, h, w, _ = latents.shape
    frames = clean_context_frames(latents)

    def run(fr, txt):
        return model(
            fr.flatten(0, 2),
            torch.tensor([[f, h, w]]),
            txt,
            torch.tensor([len(txt)]),
            torch.zeros(1),
            frame_order=frame_order,
            text_order=text_order,
        ).sample

    base = run(frames, text)
    later = frames.clone()
    later[2] += 1.0  # perturb the last frame: frames 0 and 1 must not change
    out = run(later, text)
    per_frame = h * w
    assert torch.equal(out[: 2 * per_frame], base[: 2 * per_frame])
    assert (out[2 * per_frame :] - base[2 * per_frame :]).abs().max() > 1e-3
    txt2 = text.clone()
    txt2[4:] += 1.0  # instruction 1 comes after frame 1: frames 0, 1 unchanged, frame 2 changes
    out = run(frames, txt2)
    assert torch.equal(out[: 2 * per_frame], base[: 2 * per_frame])
    assert (out[2 * per_frame :] - base[2 * per_frame :]).abs().max() > 1e-3
    # the full layout of the same model does see later frames
    full = model(
        later.flatten(0, 2),
        torch.tensor([[f, h, w]]),
        text,
        torch.tensor([len(text)]),
        torch.zeros(1),
        attention_layout="full",
    ).sample
    assert (full[:per_frame] - base[:per_frame]).abs().max() > 1e-4


def test_cached_context_equals_uncached_and_multi_target():
    model = tiny_transformer(attention_layout="block_causal")
    latents, text, frame_order, text_order = _block_causal_inputs()
    f, h, w, _ = latents.shape
    noise = torch.randn(1, h, w, 4)
    x_t = 0.4 * latents[2:] + 0.6 * noise
    # one sequence: clean frames 0, 1 and the noisy copy of frame 2 (per-frame timesteps)
    frames = torch.cat([clean_context_frames(latents[:2]), noisy_target_frames(x_t)])
    full = model(
        frames.flatten(0, 2),
        torch.tensor([[3, h, w]]),
        text,
        torch.tensor([len(text)]),
        torch.zeros(1),
        frame_timestep=torch.tensor([0.0, 0.0, 600.0]),
        frame_order=frame_order,
        text_order=text_order,
        frame_is_noisy=torch.tensor([False, False, True]),
    ).sample
    cache = model.encode_context(
        clean_context_frames(latents[:2]).flatten(0, 2),
        torch.tensor([[2, h, w]]),
        text,
        torch.tensor([len(text)]),
        frame_order[:2],
        text_order,
    )
    target = model(
        noisy_target_frames(x_t).flatten(0, 2),
        torch.tensor([[1, h, w]]),
        None,
        torch.tensor([len(text)]),
        torch.zeros(1),
        frame_timestep=torch.tensor([600.0]),
        frame_index=torch.tensor([2]),
        frame_order=frame_order[2:],
        frame_is_noisy=torch.tensor([True]),
        context_cache=cache,
    ).sample
    torch.testing.assert_close(target, full[2 * h * w :], atol=1e-5, rtol=0)
    # multi-target: add a clean copy of frame 2 (context for later turns); the noisy copy must not see it
    frames_mt = torch.cat([clean_context_frames(latents), noisy_target_frames(x_t)])
    multi = model(
        frames_mt.flatten(0, 2),
        torch.tensor([[4, h, w]]),
        text,
        torch.tensor([len(text)]),
        torch.zeros(1),
        frame_timestep=torch.tensor([0.0, 0.0, 0.0, 600.0]),
        frame_index=torch.tensor([0, 1, 2, 2]),
        frame_order=torch.cat([frame_order, frame_order[2:]]),
        text_order=text_order,
        frame_is_noisy=torch.tensor([False, False, False, True]),
    ).sample
    torch.testing.assert_close(multi[3 * h * w :], full[2 * h * w :], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(model):
    video, text = _session(2, 4, 4, 5)
    shapes, lengths, t = torch.tensor([[2, 4, 4]]), torch.tensor([5]), torch.tensor([1.0])
    flat = video.flatten(0, 2)
    with pytest.raises(ValueError, match="2\\*latent_channels\\+1"):
        model(flat[:, :5], shapes, text, lengths, t)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(torch.randn(2 * 3 * 4, 9), torch.tensor([[2, 3, 4]]), text, lengths, t)
    with pytest.raises(ValueError, match="text_lengths"):
        model(flat, shapes, text[:0], torch.tensor([0]), t)
    with pytest.raises(ValueError, match="one entry per sample"):
        model(flat, shapes, text, torch.tensor([2, 3]), t)
    with pytest.raises(ValueError, match="describe"):
        model(flat[:-1], shapes, text, lengths, t)
    with pytest.raises(ValueError, match="NaN"):  # value checks live apart from forward (they sync the host)
        model.check_input_values(flat * float("nan"))
    packed = session_text([text[:2]] * 3, [0, 1, 8])
    with pytest.raises(ValueError, match="turn-embedding table"):
        model.check_input_values(flat, packed.turn_ids)
    model.check_input_values(flat, session_text([text[:2]] * 3, [0, 1, 2]).turn_ids)  # in range: no error
    with pytest.raises(ValueError, match="video_shapes"):
        model(flat, [[2, 4]], text, lengths, t)
    with pytest.raises(ValueError, match="one entry per row"):
        model(flat, shapes, text, lengths, t, text_turn_ids=packed.turn_ids)
    with pytest.raises(ValueError, match="one text per sample"):
        pack_sessions([video, video], [text])
    with pytest.raises(ValueError, match="block-causal layout needs"):
        model(flat, shapes, text, lengths, t, attention_layout="block_causal")
    with pytest.raises(ValueError, match="context cache needs the block-causal"):
        model(flat, shapes, text, lengths, t, return_context_cache=True)


def test_checkpoint_refusals(official_fixtures):
    from safetensors.torch import load_file

    state = load_file(official_fixtures / "dit_official.safetensors")
    missing = {k: v for k, v in state.items() if k != "prompt_id_embedding.embedding.weight"}
    with pytest.raises(ValueError, match="turn-index table"):
        load_official_dit(missing)
    with pytest.raises(ValueError, match="Unexpected keys"):
        load_official_dit({**state, "blocks.0.extra.weight": torch.zeros(1)})
    without_block_key = dict(state)
    del without_block_key["blocks.2.mlp.all.proj_out.weight"]
    with pytest.raises(ValueError, match="missing `blocks.2.mlp.all.proj_out.weight`"):
        load_official_dit(without_block_key)
    bad_shape = {**state, "txt_in.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="shape"):
        load_official_dit(bad_shape)
    wrapped = {f"_flops_wrap_module.{k}" if k.startswith("blocks.") else k: v for k, v in state.items()}
    assert load_official_dit(wrapped).config.num_layers == 4


class _Arbitrary:
    """Any class outside torch's weights-only allowlist."""


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "dit.pth"
    torch.save({"blocks.0.weight": torch.zeros(1), "extra": _Arbitrary()}, path)
    with pytest.raises(ValueError, match="objects other than tensors"):
        load_official_dit(path)
    torch.save({"model": {"nested": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not a flat state dict"):
        load_official_dit(path)


def test_3b_preset_matches_official_key_list():
    keys = json.loads((REFERENCE / "official-3b-dit-keys.json").read_text())
    shapes = {k: torch.Size(v) for k, v in keys.items()}
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted = convert_dit_state_dict(state, VINCIE_3B_CONFIG)
    with torch.device("meta"):
        model = VincieTransformer(**VINCIE_3B_CONFIG)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k] for k in ours)
    official_params = sum(s.numel() for k, s in shapes.items() if not k.endswith("rope.freqs"))
    assert sum(p.numel() for p in model.parameters()) == official_params
    from diffusers_vincie.conversion.dit import infer_transformer_config

    assert infer_transformer_config(state) == VINCIE_3B_CONFIG


def test_block_causal_refuses_backends_without_masks():
    model = tiny_transformer(attention_layout="block_causal")
    latents, text, frame_order, text_order = _block_causal_inputs()
    from diffusers.models.attention_dispatch import AttentionBackendName

    from diffusers_vincie.models.transformer_vincie import VincieAttention

    for m in model.modules():
        if isinstance(m, VincieAttention):
            m.processor._attention_backend = AttentionBackendName("flash_varlen")  # not installable on CPU
    with pytest.raises(ValueError, match="cannot apply the block-causal mask"):
        model(
            clean_context_frames(latents).flatten(0, 2),
            torch.tensor([[3, 4, 4]]),
            text,
            torch.tensor([len(text)]),
            torch.zeros(1),
            frame_order=frame_order,
            text_order=text_order,
        )


def test_spatial_rope_theta_changes_only_the_spatial_axes():
    """``spatial_rope_theta`` gives the (h, w) axes their own RoPE base; unset, every axis keeps ``rope_theta``
    (the official frequencies), and the time axis keeps it either way."""
    from diffusers_vincie.models.attention_vincie import VincieRotaryEmbedding

    official = VincieRotaryEmbedding(12, 10000.0).inverse_frequencies()
    assert torch.equal(official[0], official[1]) and torch.equal(official[1], official[2])
    torch.testing.assert_close(official[0], 1.0 / 10000.0 ** (torch.arange(0, 4, 2).float() / 4))
    spatial = VincieRotaryEmbedding(12, 10000.0, spatial_theta=30.0).inverse_frequencies()
    assert torch.equal(spatial[0], official[0])
    torch.testing.assert_close(spatial[1:], (1.0 / 30.0 ** (torch.arange(0, 4, 2).float() / 4)).expand(2, -1))

    sess = [_session(2, 4, 4, 5)]
    base, spatial_model = tiny_transformer(), tiny_transformer(spatial_rope_theta=30.0)
    assert spatial_model.config.spatial_rope_theta == 30.0 and base.config.spatial_rope_theta is None
    # same weights, different spatial frequencies: a different velocity (the rotation is really applied)
    spatial_model.load_state_dict(base.state_dict())
    assert not torch.allclose(_run(base, sess, [500.0])[0], _run(spatial_model, sess, [500.0])[0], atol=1e-4)
