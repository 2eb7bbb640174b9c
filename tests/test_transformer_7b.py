"""The VINCIE-7B family of `VincieTransformer`: config options, the official 7B key list, text rule, bf16 rounding."""

import json

import pytest
import torch
from conftest import official_fixtures_dir

from diffusers_vincie.conversion.dit import VINCIE_7B_CONFIG, convert_dit_state_dict, infer_transformer_config
from diffusers_vincie.models import VincieTransformer
from diffusers_vincie.sequence import pack_sessions, sequence_order, session_items, session_text
from diffusers_vincie.testing import tiny_7b_family_overrides, tiny_t5_tokenizer, tiny_transformer
from diffusers_vincie.text_encoding import tokenize_prompts

REFERENCE = official_fixtures_dir().parent.parent / "reference"


def test_7b_preset_matches_official_key_list():
    keys = json.loads((REFERENCE / "official-7b-dit-keys.json").read_text())
    state = {k: torch.empty(v, device="meta") for k, v in keys.items()}
    assert infer_transformer_config(state) == VINCIE_7B_CONFIG
    converted = convert_dit_state_dict(state, VINCIE_7B_CONFIG)
    with torch.device("meta"):
        model = VincieTransformer(**VINCIE_7B_CONFIG)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k] for k in ours)
    assert sum(p.numel() for p in model.parameters()) == 7_310_132_784
    assert model.transformer_blocks[0].attn.video_stream.to_q.weight.shape == (4096, 3584)  # inner width != D


def test_the_7b_layout_needs_its_rope_buffers():
    keys = json.loads((REFERENCE / "official-7b-dit-keys.json").read_text())
    state = {k: torch.empty(v, device="meta") for k, v in keys.items() if not k.endswith("rope.freqs")}
    with pytest.raises(ValueError, match="rope_dim=120"):
        infer_transformer_config(state)
    from diffusers_vincie.conversion.dit import transformer_config_from_state_dict

    assert transformer_config_from_state_dict(state, {"rope_dim": 120}) == VINCIE_7B_CONFIG


def _session(model, frames=3, h=2, w=4, prompts=(5, 4), channels=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(frames, h, w, 2 * channels + 1, generator=generator)
    segments = [torch.randn(n, model.config.text_embed_dim, generator=generator) for n in prompts]
    text = session_text(segments, list(range(len(prompts))))
    packed, shapes, _, lengths = pack_sessions([video], [text.states])
    return packed, shapes, text, lengths


def _video_angles(model, *inputs, **kwargs) -> torch.Tensor:
    seen = []
    hook = model.rope.register_forward_hook(lambda module, args, out: seen.append(module.angles(args[0])))
    try:
        with torch.no_grad():
            out = model(*inputs, **kwargs).sample
    finally:
        hook.remove()
    return seen[0], out


def test_mmrope3d_v3_puts_frames_at_time_zero():
    """v3: a video token's RoPE time is its frame index whatever the text length; mmrope3d adds the text length."""
    v3 = tiny_transformer(**tiny_7b_family_overrides())
    packed, shapes, text, lengths = _session(v3)
    angles, _ = _video_angles(
        v3, packed, shapes, text.states, lengths, torch.tensor([500.0]), text_turn_ids=text.turn_ids
    )
    time_axis = angles[:, : v3.rope.axis_dim : 2] / v3.rope.inverse_frequencies()[0]  # positions on the t axis
    expected_frames = torch.arange(3).repeat_interleave(2 * 4).float()
    torch.testing.assert_close(time_axis, expected_frames[:, None].expand_as(time_axis))

    v1 = tiny_transformer(**{**tiny_7b_family_overrides(), "rope_type": "mmrope3d"})
    angles, _ = _video_angles(
        v1, packed, shapes, text.states, lengths, torch.tensor([500.0]), text_turn_ids=text.turn_ids
    )
    time_axis = angles[:, : v1.rope.axis_dim : 2] / v1.rope.inverse_frequencies()[0]
    torch.testing.assert_close(time_axis, (expected_frames + len(text))[:, None].expand_as(time_axis))


def test_turn_rows_go_through_the_mlp_projection():
    model = tiny_transformer(**tiny_7b_family_overrides())
    packed, shapes, text, lengths = _session(model)
    projected = []
    hook = model.context_embedder.register_forward_hook(lambda m, a, out: projected.append(out))
    with torch.no_grad():
        model(packed, shapes, text.states, lengths, torch.tensor([500.0]), text_turn_ids=text.turn_ids)
        hook.remove()
        turn_rows = (text.turn_ids >= 0).nonzero()[:, 0]
        expected = model.context_embedder(model.turn_embedding.weight[: len(turn_rows)])
    torch.testing.assert_close(projected[0][turn_rows], expected)
    assert projected[0].shape[-1] == model.config.hidden_size


@pytest.mark.parametrize("layout", ["full", "block_causal"])
def test_tiny_7b_family_runs_both_layouts(layout):
    model = tiny_transformer(**tiny_7b_family_overrides(), attention_layout=layout)
    packed, shapes, text, lengths = _session(model)
    kwargs = {}
    if layout == "block_causal":
        frame_order, text_order = sequence_order(session_items(2), text.segment_lengths)
        kwargs = dict(frame_order=frame_order, text_order=text_order)
    with torch.no_grad():
        out = model(packed, shapes, text.states, lengths, torch.tensor([500.0]), text_turn_ids=text.turn_ids, **kwargs)
    assert out.sample.shape == (packed.shape[0], model.config.latent_channels)
    assert torch.isfinite(out.sample).all()


def test_bf16_timestep_and_rope_rounding_is_an_option():
    model = tiny_transformer(**tiny_7b_family_overrides())
    packed, shapes, text, lengths = _session(model)
    t = torch.tensor([997.9634])
    plain_angles, plain = _video_angles(model, packed, shapes, text.states, lengths, t, text_turn_ids=text.turn_ids)
    model.set_timestep_and_rope_dtype(torch.bfloat16)
    assert model.time_embed.rounded_timestep(t).item() == 996.0  # bf16 steps of 4 in [512, 1024)
    angles, rounded = _video_angles(model, packed, shapes, text.states, lengths, t, text_turn_ids=text.turn_ids)
    _, at_996 = _video_angles(
        model, packed, shapes, text.states, lengths, torch.tensor([996.0]), text_turn_ids=text.turn_ids
    )
    torch.testing.assert_close(rounded, at_996, rtol=0, atol=0)
    assert (rounded - plain).abs().max() > 1e-3
    torch.testing.assert_close(angles, plain_angles.bfloat16().float(), rtol=1e-2, atol=0)
    model.set_timestep_and_rope_dtype(None)
    _, back = _video_angles(model, packed, shapes, text.states, lengths, t, text_turn_ids=text.turn_ids)
    torch.testing.assert_close(back, plain, rtol=0, atol=0)


@pytest.mark.parametrize("max_length", [150, 8])
def test_t5_tokenisation_equals_the_official_call(max_length):
    """Official 7B rule: ``tokenizer(texts, truncation=True, padding="max_length")`` with the T5 tokenizer's own
    ``</s>``, keeping the masked-in ids; a long prompt keeps ``max_length - 1`` tokens + ``</s>``."""
    tokenizer = tiny_t5_tokenizer()
    prompts = [
        "Based on <IMG0>, make the red circle bigger. Output <IMG1>: ",
        "Based on <IMG1>, add a star. Output <IMG2>: ",
    ]
    official = tokenizer(prompts, truncation=True, padding="max_length", max_length=max_length)
    official_rows = [
        [i for i, m in zip(ids, mask) if m] for ids, mask in zip(official["input_ids"], official["attention_mask"])
    ]
    ids, mask = tokenize_prompts(tokenizer, prompts, max_length)
    ours = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    assert ours == official_rows
    assert all(row[-1] == tokenizer.eos_token_id == 1 for row in ours)
    assert max(len(row) for row in ours) <= max_length


def test_tiny_7b_family_traces_as_one_graph():
    """``fullgraph=True`` capture (no graph break) with dynamo's eager backend: inductor's code generation is
    covered by tests/test_compile.py and costs minutes on CPU."""
    model = tiny_transformer(**tiny_7b_family_overrides())
    packed, shapes, text, lengths = _session(model)
    args = (packed, [list(s) for s in shapes.tolist()], text.states, lengths.tolist(), torch.tensor([500.0]))
    with torch.no_grad():
        eager = model(*args, text_turn_ids=text.turn_ids).sample
        compiled = torch.compile(model, fullgraph=True, backend="eager")(*args, text_turn_ids=text.turn_ids).sample
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_streaming_conversion_of_an_official_7b_layout_checkpoint(official_7b_fixtures, tmp_path):
    """``ema.pth`` in the official 7B layout -> a `VincieTransformer` folder written tensor by tensor, equal to the
    in-memory conversion and reproducing the official forward."""
    from safetensors.torch import load_file

    from diffusers_vincie.conversion.dit import convert_official_dit, load_official_dit

    state = load_file(official_7b_fixtures / "dit_official.safetensors")
    torch.save(state, tmp_path / "ema.pth")
    config = convert_official_dit(tmp_path / "ema.pth", tmp_path / "transformer")
    assert config["text_projection"] == "mlp" and config["rope_type"] == "mmrope3d_v3"
    model = VincieTransformer.from_pretrained(tmp_path / "transformer")
    reference = load_official_dit(state)
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    t = load_file(official_7b_fixtures / "forward_session.safetensors")
    with torch.no_grad():
        out = model(t["dit.vid"], t["dit.vid_shape"], t["dit.txt"], t["dit.txt_shape"][:, 0], t["dit.timestep"])
    torch.testing.assert_close(out.sample, t["out.vid_sample"], rtol=0, atol=1e-4)

    bf16 = convert_official_dit(tmp_path / "ema.pth", tmp_path / "transformer-bf16", dtype=torch.bfloat16)
    assert bf16 == config
    written = load_file(tmp_path / "transformer-bf16" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in written.values()} == {torch.bfloat16}
    del state["txt_in.0.1.weight"]
    with pytest.raises(ValueError, match="txt_in.0.1.weight"):
        convert_official_dit(state, tmp_path / "broken")
    assert not (tmp_path / "broken").exists()  # validated before anything is written


def test_tiny_7b_family_pipeline_with_t5_tokenizer_edits_and_reuses_prompt_embeds():
    """A 7B-family pipeline (T5 tokenizer and encoder, MLP text projection, v3 RoPE, patch 1) runs with no family
    flag anywhere: prompt embeddings from `encode_prompt` give the prompts' images, and a session edits and undoes."""
    from PIL import Image

    from diffusers_vincie.testing import tiny_pipeline, tiny_text_encoder

    pipe = tiny_pipeline(**tiny_7b_family_overrides())
    pipe.tokenizer = tiny_t5_tokenizer()
    pipe.text_encoder = tiny_text_encoder(len(pipe.tokenizer))
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (32, 32), (200, 10, 10))
    prompts = ["make the circle red", "add a star"]
    common = dict(image=image, num_inference_steps=2, resolution=32, output_type="pt")
    by_prompt = pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), **common).images
    embeds, negative = pipe.encode_prompt(prompts)
    assert all(e[-1].shape == (pipe.text_encoder.config.d_model,) for e in embeds)
    by_embeds = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=negative, generator=torch.Generator().manual_seed(0), **common
    ).images
    torch.testing.assert_close(by_embeds, by_prompt, rtol=0, atol=1e-5)

    session = pipe.start_session(image, resolution=32)
    session.edit("make the circle red", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    session.edit("add a star", num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    edited = len(session.images)
    session.undo()
    assert len(session.images) == edited - 1
