"""The session sequence module against the pre-assembly pieces of the official fixtures, plus its pure helpers."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers_vincie.models.attention_vincie import frame_text_offsets, per_turn_text_positions, rope_positions
from diffusers_vincie.sequence import (
    CURRENT_MASK,
    IMAGE,
    NEXT_MASK,
    Frame,
    Text,
    block_causal_layout,
    build_condition,
    format_turn_prompt,
    frame_indices,
    pack_frames,
    pack_sessions,
    select_valid_tokens,
    sequence_order,
    session_items,
    session_text,
    unconditional_items,
    unpack_video,
)
from diffusers_vincie.testing import tiny_transformer


def test_prompt_template_matches_official_strings(official_fixtures):
    with safe_open(str(official_fixtures / "forward_session.safetensors"), "pt") as f:
        meta = f.metadata()
    prompts, texts = json.loads(meta["prompts"]), json.loads(meta["texts"])
    assert [format_turn_prompt(p, k) for k, p in enumerate(prompts)] == texts


def test_text_and_video_assembly_exact(official_fixtures):
    """session_text + the model's in-forward fusion reproduce the official fused text bit for bit."""
    t = load_file(official_fixtures / "forward_session.safetensors")
    model = tiny_transformer(text_embed_dim=t["dit.txt"].shape[1], max_turns=64)
    table = load_file(official_fixtures / "dit_official.safetensors")["prompt_id_embedding.embedding.weight"]
    model.turn_embedding.weight.data = table.clone()
    text = session_text(select_valid_tokens(t["pre.text_embeds"], t["pre.text_masks"]), t["pre.turn_ids"].tolist())
    assert torch.equal(model.fuse_turn_tokens(text.states, text.turn_ids), t["dit.txt"])
    cond = build_condition(t["pre.image_latents"])
    assert torch.equal(cond, t["pre.cond"])
    assert torch.equal(pack_frames(t["pre.x_t"], cond), t["dit.vid"])


def test_pack_unpack_round_trip():
    videos = [torch.randn(2, 4, 6, 3), torch.randn(1, 2, 2, 3)]
    texts = [torch.randn(5, 8), torch.randn(2, 8)]
    video, shapes, text, lengths = pack_sessions(videos, texts)
    assert shapes.tolist() == [[2, 4, 6], [1, 2, 2]] and lengths.tolist() == [5, 2]
    for a, b in zip(unpack_video(video, shapes), videos):
        assert torch.equal(a, b)


def test_rope_positions_follow_text_offset():
    offsets = frame_text_offsets(torch.tensor([2]), torch.tensor([4]))
    vid, txt = rope_positions(torch.tensor([[2, 2, 3]]), offsets + torch.tensor([0, 1]), torch.tensor([4]))
    assert txt.tolist() == [[j, j, j] for j in range(4)]
    assert vid[0].tolist() == [4, 0, 0] and vid[5].tolist() == [4, 1, 2] and vid[6].tolist() == [5, 0, 0]


def test_block_causal_frame_positions_count_only_preceding_text():
    """I_0 T_0(3) I_1 T_1(2) I_2: frames sit after the text before them, not after the whole text."""
    frame_order, text_order = sequence_order(session_items(2), [3, 2])
    offsets = frame_text_offsets(torch.tensor([3]), torch.tensor([5]), frame_order, text_order)
    assert offsets.tolist() == [0, 3, 5]
    assert frame_text_offsets(torch.tensor([3]), torch.tensor([5])).tolist() == [5, 5, 5]  # official full layout


def test_per_turn_text_positions_restart_the_grid_at_every_instruction():
    """I_0 T_0(3) I_1 T_1(2) I_2 (slots 0, 3, 6), packed with a one-turn sample I_0 T_0(2) I_1."""
    frame_order, text_order = sequence_order(session_items(2), [3, 2])
    other_frames, other_text = sequence_order(session_items(1), [2])
    frame_time = torch.cat(
        [
            frame_text_offsets(torch.tensor([3]), torch.tensor([5]), frame_order, text_order)
            + torch.tensor([0, 3, 6]),
            torch.tensor([0, 5]),
        ]
    )
    assert frame_time.tolist() == [0, 6, 11, 0, 5]
    txt = per_turn_text_positions(
        [3, 2], [5, 2], frame_time, torch.cat([frame_order, other_frames]), torch.cat([text_order, other_text])
    )
    # T_0: the official (j, j, j); T_1: after I_1 (time 6) on the time axis, its own grid offsets 0, 1
    assert txt.tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2], [6, 0, 0], [7, 1, 1], [0, 0, 0], [1, 1, 1]]


def test_per_turn_text_positions_need_the_block_causal_layout():
    with pytest.raises(ValueError, match="block_causal"):
        tiny_transformer(3, 16, attention_layout="full", text_rope_mode="per_turn")
    with pytest.raises(ValueError, match="text_rope_mode"):
        tiny_transformer(3, 16, attention_layout="block_causal", text_rope_mode="spiral")


def test_sequence_items_and_order():
    items = session_items(2, with_masks=True)
    assert items[:5] == [Frame(IMAGE, 0), Text(0), Frame(CURRENT_MASK, 0), Frame(NEXT_MASK, 0), Frame(IMAGE, 1)]
    frames, text = sequence_order(session_items(2), [2, 1])
    assert frames.tolist() == [0, 2, 4] and text.tolist() == [1, 1, 3]
    frames, text = sequence_order([Frame(), Text(0), Frame(CURRENT_MASK), Frame(NEXT_MASK), Frame(IMAGE, 1)], [2])
    assert frames.tolist() == [0, 2, 3, 4] and text.tolist() == [1, 1]
    assert unconditional_items(session_items(2)) == [Frame(IMAGE, 0), Text(0), Frame(IMAGE, 1), Frame(IMAGE, 2)]


def test_frame_index_modes():
    frames = [Frame(IMAGE, 0), Frame(CURRENT_MASK, 0), Frame(NEXT_MASK, 0), Frame(IMAGE, 1), Frame(NEXT_MASK, 1)]
    assert frame_indices(frames, "compact").tolist() == [0, 1, 2, 3, 4]
    assert frame_indices(frames, "slots").tolist() == [0, 1, 2, 3, 5]
    items = session_items(2)
    layout = block_causal_layout(items, [3, 2], [Frame(IMAGE, 0), Frame(IMAGE, 2)], [Frame(IMAGE, 1)], "compact")
    assert layout.context_index.tolist() == [0, 1] and layout.target_index.tolist() == [1]
    assert layout.context_order.tolist() == [0, 4] and layout.target_order.tolist() == [2]


def test_sequence_errors():
    with pytest.raises(ValueError, match="one id per segment"):
        session_text([torch.randn(2, 4)], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        session_text([torch.randn(0, 4)], [0])
    with pytest.raises(ValueError, match="differ"):
        pack_frames(torch.randn(2, 4, 4, 3), torch.randn(3, 4, 4, 4))
    with pytest.raises(ValueError, match="kind"):
        Frame("mask", 0)
    with pytest.raises(ValueError, match="text lengths"):
        sequence_order(session_items(1), [])
    with pytest.raises(TypeError):
        format_turn_prompt(None, 0)
