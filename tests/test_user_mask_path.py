"""A user's region-of-editing mask enters the model exactly as a training mask frame does: the same pixels (or
latent), the same frame index, the same place in the sequence, hence the same velocity."""

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_vincie.data.schema import mask_to_array
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.pipelines.image_processing import mask_to_image
from diffusers_vincie.sequence import CURRENT_MASK, IMAGE, NEXT_MASK, Frame, format_turn_prompt
from diffusers_vincie.testing import tiny_pipeline
from diffusers_vincie.training import SequenceConfig, VincieTrainingModule, plan_sequence
from diffusers_vincie.training.data import TrainingSession, encode_frames
from diffusers_vincie.training.sequences import assemble_block_causal, collate_samples

RESOLUTION = 32


def _world_session(seed: int = 3):
    """A two-edit world session whose edits both have a non-empty region in their source frame."""
    world = ShapesWorld(resolution=RESOLUTION)
    for offset in range(200):
        session = world.sample_session(seed + offset, num_turns=2)
        if all(m.any() for m in session.source_masks) and all(m.any() for m in session.target_masks):
            return session
    raise AssertionError("no session with two visible regions")


def _training_pixels(session, frame: Frame) -> torch.Tensor:
    """The ``(H, W, 3)`` pixels the training data gives a frame of ``session`` (masks: +1 inside, -1 outside)."""
    record = TrainingSession(
        np.stack(session.frames), list(session.instructions), np.stack(session.source_masks),
        np.stack(session.target_masks),
    )  # fmt: skip
    return torch.from_numpy(record.frame_image(frame, 0))


def test_user_masks_enter_the_model_as_training_mask_frames_do(monkeypatch):
    pipe = tiny_pipeline(pixel_space=True, attention_layout="block_causal", frame_index_mode="slots")
    pipe.set_progress_bar_config(disable=True)
    session = _world_session()
    recorded = []
    encode_context = pipe.transformer.encode_context

    def record(hidden_states, video_shapes, text, text_lengths, frame_order, text_order, frame_index, **kwargs):
        recorded.append((hidden_states.clone(), frame_order.clone(), text_order.clone(), frame_index.clone()))
        return encode_context(
            hidden_states, video_shapes, text, text_lengths, frame_order, text_order, frame_index=frame_index, **kwargs
        )

    monkeypatch.setattr(pipe.transformer, "encode_context", record)
    noise = torch.randn(1, RESOLUTION, RESOLUTION, 3, generator=torch.Generator().manual_seed(5))
    velocities = []

    def keep_velocity(pipe_, step, timestep, tensors):
        if step == 0:
            velocities.append(tensors["noise_pred"].clone())
        return {}

    editing = pipe.start_session(PIL.Image.fromarray(session.frames[0]), resolution=RESOLUTION)
    for turn in range(2):  # a user mask of each kind: an array for the current frame, an image for the next
        editing.edit(
            session.instructions[turn],
            current_mask=session.source_masks[turn],
            next_mask=PIL.Image.fromarray(session.target_masks[turn]),
            num_inference_steps=2,
            guidance_scale=1.0,
            latents=noise.clone(),
            callback_on_step_end=keep_velocity,
            callback_on_step_end_tensor_inputs=("latents", "noise_pred"),
        )

    # training: the same two edits with both masks in, nothing dropped, every frame a target at t = 1 (pure noise)
    config = SequenceConfig(
        layout="block_causal",
        min_turns=2,
        max_turns=2,
        mask_probability=1.0,
        drop_current_frame=0.0,
        drop_current_mask=0.0,
        drop_next_mask=0.0,
        frame_index="slots",
    )
    plan = plan_sequence(2, True, config, np.random.default_rng(0))
    assert plan.with_masks and plan.start == 0
    latents = {f: encode_frames(_training_pixels(session, f)[None])[0] for f in plan.frames}
    latents[Frame(IMAGE, 1)] = editing.turns[0].latent  # the chained session continues from its own output
    prompts = [format_turn_prompt(text, k) for k, text in enumerate(session.instructions)]
    t = torch.ones(len(plan.targets))
    sample = assemble_block_causal(
        plan, latents, pipe.encode_text(prompts), t, noise.expand(len(plan.targets), -1, -1, -1), config.task_weights
    )
    with torch.no_grad():
        trained = VincieTrainingModule(pipe.transformer, "block_causal")(collate_samples([sample]))
    trained = trained.split(RESOLUTION * RESOLUTION)

    # the mask frames the model was given hold exactly the training mask frames' pixels
    for turn in range(2):
        given = [frame.latent for frame in editing.turns[turn].mask_frames]
        assert [frame.item for frame in editing.turns[turn].mask_frames] == [
            Frame(CURRENT_MASK, turn),
            Frame(NEXT_MASK, turn),
        ]
        assert torch.equal(given[0], latents[Frame(CURRENT_MASK, turn)])
        assert torch.equal(given[1], latents[Frame(NEXT_MASK, turn)])

    # the last image's context: the same frames, frame indices and block-causal orders as in training
    target = Frame(IMAGE, 2)
    hidden, order, _, index = recorded[-1]
    context = [f for f in plan.context if plan.order(f) < plan.order(target)]
    positions = [plan.frames.index(f) for f in context]  # training's clean frames come first, in plan order
    assert len(context) == 6  # I_0, Mc_0, Mn_0, I_1, Mc_1, Mn_1
    assert torch.equal(hidden.view(len(context), RESOLUTION, RESOLUTION, -1), sample.video[positions])
    assert index.tolist() == sample.frame_index[positions].tolist() == [0, 1, 2, 3, 4, 5]
    assert order.tolist() == sample.frame_order[positions].tolist()

    # and the same velocity for each generated image (I_1 after Mc_0, Mn_0; I_2 after Mc_1, Mn_1)
    num_context = len(plan.context)
    for turn, velocity in enumerate(velocities):
        j = num_context + plan.targets.index(Frame(IMAGE, turn + 1))
        error = (velocity.flatten(0, 2) - trained[j]).abs().max().item()
        assert error <= 1e-5, f"I_{turn + 1}: |dv| = {error:.2e}"
    assert len(velocities) == 2


def test_a_resized_user_mask_stays_binary_as_training_masks_are():
    pipe = tiny_pipeline(pixel_space=True, attention_layout="block_causal", frame_index_mode="slots")
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (64, 64), (200, 200, 200))
    mask = np.zeros((64, 64), bool)
    mask[10:31, 17:40] = True  # odd edges: a bicubic downscale leaves grey values along them
    editing = pipe.start_session(image, resolution=RESOLUTION)
    editing.edit("remove it", current_mask=mask, num_inference_steps=1)
    given = editing.turns[0].mask_frames[0].latent
    assert set(given.unique().tolist()) == {-1.0, 1.0}
    # training resizes masks to the frame size with nearest neighbour: the two agree but for edge pixels
    trained = mask_to_array(mask_to_image(mask), (RESOLUTION, RESOLUTION))
    agree = (given[..., 0] > 0).numpy() == trained
    assert agree.mean() >= 0.9


@pytest.mark.parametrize("mask_dtype", [bool, np.uint8, np.float32])
def test_user_masks_of_every_documented_dtype_give_the_same_frame(mask_dtype):
    pipe = tiny_pipeline(pixel_space=True, attention_layout="block_causal", frame_index_mode="slots")
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (32, 32), (20, 20, 20))
    mask = np.zeros((32, 32), bool)
    mask[4:12, 8:20] = True
    editing = pipe.start_session(image, resolution=RESOLUTION)
    editing.edit("remove it", current_mask=mask.astype(mask_dtype), num_inference_steps=1)
    given = editing.turns[0].mask_frames[0].latent[..., 0] > 0
    assert np.array_equal(given.numpy(), mask)  # a 0/1 uint8 array is not read as an empty 0/255 image


def test_a_user_mask_gets_the_training_latent_in_latent_space():
    pipe = tiny_pipeline(attention_layout="block_causal", frame_index_mode="slots")
    pipe.set_progress_bar_config(disable=True)
    session = _world_session()
    editing = pipe.start_session(PIL.Image.fromarray(session.frames[0]), resolution=RESOLUTION, posterior="mode")
    editing.edit(session.instructions[0], current_mask=session.source_masks[0], num_inference_steps=1)
    given = editing.turns[0].mask_frames[0].latent
    trained = encode_frames(_training_pixels(session, Frame(CURRENT_MASK, 0))[None], pipe.vae)[0]
    torch.testing.assert_close(given, trained, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["true_mask", "true_masks"])
def test_shapes_bench_true_mask_modes_predict_a_true_mask_that_marks_nothing(mode):
    """The source region of "add" is empty: the pipeline refuses an empty user mask, so the bench predicts it."""
    from diffusers_vincie.evaluation.shapes_bench import ChainedEditor

    pipe = tiny_pipeline(pixel_space=True, attention_layout="block_causal", frame_index_mode="slots")
    pipe.set_progress_bar_config(disable=True)
    world = ShapesWorld(resolution=RESOLUTION)
    session = next(s for s in map(world.sample_session, range(100, 400)) if s.ops[0] == "add")
    assert not session.source_masks[0].any() and session.target_masks[0].any()
    editor = ChainedEditor(pipe, mode, session, {"num_inference_steps": 1, "guidance_scale": 1.0}, seed=0)
    editor.edit(session.frames[0], 0)
    current, following = editor.editing.turns[0].mask_frames
    assert current.pixels is not None  # sampled by the model, not given
    given_next = following.pixels is None
    assert given_next == (mode == "true_masks")
    if given_next:
        assert np.array_equal(following.latent[..., 0].numpy() > 0, session.target_masks[0])


@pytest.mark.parametrize("mode, given", [("full", 0), ("true_mask", 1), ("true_masks", 2)])
def test_shapes_bench_true_mask_modes_give_the_worlds_masks(mode, given):
    from diffusers_vincie.evaluation.shapes_bench import ChainedEditor

    pipe = tiny_pipeline(pixel_space=True, attention_layout="block_causal", frame_index_mode="slots")
    pipe.set_progress_bar_config(disable=True)
    session = _world_session()
    editor = ChainedEditor(pipe, mode, session, {"num_inference_steps": 1, "guidance_scale": 1.0}, seed=0)
    editor.edit(session.frames[0], 0)
    frames = editor.editing.turns[0].mask_frames
    assert len(frames) == (2 if given else 0)
    true = (session.source_masks[0], session.target_masks[0])
    for k, frame in enumerate(frames[:given]):
        assert np.array_equal(frame.latent[..., 0].numpy() > 0, true[k])  # given, not predicted
