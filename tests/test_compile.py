"""torch.compile(transformer, fullgraph=True) on CPU: the sampler's step loop compiles without graph breaks (no host
syncs in `VincieTransformer.forward`), never recompiles across the steps of a turn, and gives the eager velocity."""

import pytest
import torch

from diffusers_vincie.pipelines.sampling import frame_velocity
from diffusers_vincie.sequence import Frame, Text, session_items, session_text
from diffusers_vincie.testing import tiny_transformer

TURNS = 2


def _session(model, seed=0):
    """The items, latents and packed text of a 2-turn session, and the frame that follows it."""
    g = torch.Generator().manual_seed(seed)
    items = session_items(TURNS)[:-1]  # I_0 T_0 I_1 T_1, then the target I_2
    frames = [item for item in items if isinstance(item, Frame)]
    latents = torch.rand(len(frames), 8, 8, 3, generator=g) * 2 - 1
    segments = [torch.randn(3 + k, model.config.text_embed_dim, generator=g) for k in range(TURNS)]
    text = session_text(segments, [item.turn for item in items if isinstance(item, Text)])
    return items, latents, text, session_items(TURNS)[-1]


def _velocities(transformer, model, guided: bool, steps: torch.Tensor, x: torch.Tensor):
    items, latents, text, target = _session(model)
    negative = session_text([torch.zeros(1, model.config.text_embed_dim)], [0])  # `unconditional_items`: one text
    velocity, _ = frame_velocity(transformer, items, latents, text, negative if guided else None, target, "slots")
    scale = 3.0 if guided else 1.0
    outs = []
    for i, t in enumerate(steps):
        outs.append(velocity(x, t, scale).velocity)
        if i == 0:  # the first step compiles; any later recompilation raises
            torch.compiler.set_stance("fail_on_recompile")
    torch.compiler.set_stance("default")
    return torch.stack(outs)


@pytest.mark.parametrize("layout", ["block_causal", "full"])
def test_fullgraph_compile_has_no_recompiles_across_steps_and_matches_eager(layout):
    torch._dynamo.reset()
    model = tiny_transformer(latent_channels=3, text_embed_dim=16, patch_size=2, attention_layout=layout)
    compiled = torch.compile(model, fullgraph=True)
    steps = torch.tensor([1000.0, 750.0, 500.0, 250.0])
    frames = 1 if layout == "block_causal" else TURNS + 1
    x = torch.randn(frames, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    try:
        with torch.no_grad():
            fast = _velocities(compiled, model, True, steps, x)  # with CFG: both branches per step
            eager = _velocities(model, model, True, steps, x)
    finally:
        torch.compiler.set_stance("default")
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)
    assert not torch.equal(fast[0], fast[-1])  # the steps really differ (t is an input, not a constant)


def test_regional_compile_of_the_repeated_block_matches_eager():
    torch._dynamo.reset()
    model = tiny_transformer(latent_channels=3, text_embed_dim=16, patch_size=2, attention_layout="block_causal")
    assert model._repeated_blocks == ["VincieTransformerBlock"]
    x = torch.randn(1, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    steps = torch.tensor([900.0, 300.0])
    with torch.no_grad():
        eager = _velocities(model, model, False, steps, x)
        model.compile_repeated_blocks(fullgraph=True)  # diffusers' regional compilation: each block on its own
        assert all(getattr(block, "_compiled_call_impl", None) for block in model.transformer_blocks)
        regional = _velocities(model, model, False, steps, x)
    torch.testing.assert_close(regional, eager, atol=1e-5, rtol=1e-5)
