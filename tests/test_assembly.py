"""Session assembly against the pre-assembly pieces of the official fixtures, plus the pure helpers."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers_vincie.assembly import (
    build_condition,
    format_turn_prompt,
    insert_turn_tokens,
    interleaved_order,
    pack_frames,
    pack_sessions,
    rope_position_ids,
    select_valid_tokens,
    sequence_order,
    FRAME,
    unpack_video,
)


def test_prompt_template_matches_official_strings(official_fixtures):
    with safe_open(str(official_fixtures / "forward_session.safetensors"), "pt") as f:
        meta = f.metadata()
    import json

    prompts, texts = json.loads(meta["prompts"]), json.loads(meta["texts"])
    assert [format_turn_prompt(p, k) for k, p in enumerate(prompts)] == texts


def test_text_and_video_assembly_exact(official_fixtures):
    t = load_file(official_fixtures / "forward_session.safetensors")
    table = load_file(official_fixtures / "dit_official.safetensors")["prompt_id_embedding.embedding.weight"]
    text = insert_turn_tokens(select_valid_tokens(t["pre.text_embeds"], t["pre.text_masks"]), t["pre.turn_ids"], table)
    assert torch.equal(text, t["dit.txt"])
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
    vid, txt = rope_position_ids(torch.tensor([[2, 2, 3]]), torch.tensor([4]), torch.tensor([0, 1]))
    assert txt.tolist() == [[j, j, j] for j in range(4)]
    assert vid[0].tolist() == [4, 0, 0] and vid[5].tolist() == [4, 1, 2] and vid[6].tolist() == [5, 0, 0]


def test_sequence_order():
    frames, text = interleaved_order(3, [2, 1])
    assert frames.tolist() == [0, 2, 4] and text.tolist() == [1, 1, 3]
    frames, text = sequence_order([FRAME, 2, FRAME, FRAME, FRAME])
    assert frames.tolist() == [0, 2, 3, 4] and text.tolist() == [1, 1]


def test_assembly_errors():
    with pytest.raises(ValueError, match="one id per segment"):
        insert_turn_tokens([torch.randn(2, 4)], [0, 1], torch.randn(8, 4))
    with pytest.raises(ValueError, match="width"):
        insert_turn_tokens([torch.randn(2, 5)], [0], torch.randn(8, 4))
    with pytest.raises(ValueError, match="differ"):
        pack_frames(torch.randn(2, 4, 4, 3), torch.randn(3, 4, 4, 4))
    with pytest.raises(TypeError):
        format_turn_prompt(None, 0)
