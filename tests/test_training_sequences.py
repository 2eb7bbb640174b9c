"""Unit tests of the training library: sequence plans, assembly, flow matching, no-leakage, data order."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.models.transformer_vincie import VincieTransformer
from diffusers_vincie.sequence import Frame, Text, block_causal_layout, session_items
from diffusers_vincie.testing import tiny_transformer_config
from diffusers_vincie.text_encoding import build_word_level_tokenizer
from diffusers_vincie.training import (
    PromptEmbeddingCache,
    ResumableBatchSampler,
    SequenceConfig,
    ShapesSessionsDataset,
    VincieTrainingModule,
    add_noise,
    build_training_batch,
    encode_plan_frames,
    plan_sequence,
    sample_logit_normal,
    weighted_frame_mse,
)
from diffusers_vincie.training.sequences import frame_task

WORLD = ShapesWorld(resolution=16, grid=2)


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def text_cache():
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_word_level_tokenizer(WORLD.vocabulary)
    torch.manual_seed(0)
    encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    ).eval()
    return PromptEmbeddingCache(encoder, tokenizer)


def _model(layout="block_causal"):
    torch.manual_seed(0)
    model = VincieTransformer(**tiny_transformer_config(attention_layout=layout)).eval()
    # non-zero modulation offsets so that every input path reaches the output
    for p in model.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    return model


# =====================================================================================================
#                                               Plans
# =====================================================================================================


def test_session_items_order_chain_of_editing():
    items = session_items(2, with_masks=True)
    names = [(i.kind, i.turn) if isinstance(i, Frame) else ("text", i.turn) for i in items]
    assert names == [
        ("image", 0),
        ("text", 0),
        ("current_mask", 0),
        ("next_mask", 0),
        ("image", 1),
        ("text", 1),
        ("current_mask", 1),
        ("next_mask", 1),
        ("image", 2),
    ]


def test_full_plan_has_one_target_last_and_keeps_its_source():
    config = SequenceConfig(layout="full", max_turns=4, drop_current_frame=1.0)
    tasks = set()
    for seed in range(200):
        plan = plan_sequence(4, True, config, _rng(seed))
        assert len(plan.targets) == 1
        target = plan.targets[0]
        tasks.add(frame_task(target))
        assert all(plan.order(c) < plan.order(target) for c in plan.context)
        kinds = {(c.kind, c.turn) for c in plan.context}
        assert ("image", 0) in kinds  # I_0 is never dropped
        last = plan.num_turns - 1
        assert ("image", last) in kinds  # the edited frame is never dropped
        # every other image is dropped with probability 1
        assert {t for k, t in kinds if k == "image"} <= {0, last}
        assert plan.num_prompts == plan.num_turns
    assert tasks == {"next_image", "current_mask", "next_mask"}


def test_mask_probability_and_dropout_rates():
    config = SequenceConfig(
        layout="block_causal",
        min_turns=4,
        max_turns=4,
        mask_probability=0.8,
        drop_current_frame=0.2,
        drop_current_mask=0.7,
        drop_next_mask=0.7,
    )
    plans = [plan_sequence(4, True, config, _rng(seed)) for seed in range(600)]
    with_masks = np.mean([p.with_masks for p in plans])
    assert 0.74 < with_masks < 0.86
    kept = {"image": [], "current_mask": [], "next_mask": []}
    for p in plans:
        if not p.with_masks:
            continue
        present = {(c.kind, c.turn) for c in p.context}
        for turn in range(1, 4):
            kept["image"].append(("image", turn) in present)
        for turn in range(4):
            kept["current_mask"].append(("current_mask", turn) in present)
            kept["next_mask"].append(("next_mask", turn) in present)
    assert abs(np.mean(kept["image"]) - 0.8) < 0.05
    assert abs(np.mean(kept["current_mask"]) - 0.3) < 0.05
    assert abs(np.mean(kept["next_mask"]) - 0.3) < 0.05


def test_block_causal_plan_trains_every_frame_of_enabled_tasks():
    config = SequenceConfig(
        layout="block_causal",
        min_turns=3,
        max_turns=3,
        mask_probability=1.0,
        task_weights={"next_image": 1.0, "current_mask": 0.0, "next_mask": 0.5},
    )
    plan = plan_sequence(3, True, config, _rng())
    assert [(t.kind, t.turn) for t in plan.targets] == [
        ("next_mask", 0),
        ("image", 1),
        ("next_mask", 1),
        ("image", 2),
        ("next_mask", 2),
        ("image", 3),
    ]
    assert max(plan.order(c) for c in plan.context) < plan.order(plan.targets[-1])


def test_no_masks_without_mask_data():
    config = SequenceConfig(layout="full", mask_probability=1.0)
    for seed in range(50):
        plan = plan_sequence(3, False, config, _rng(seed))
        assert not plan.with_masks and plan.targets[0].kind == "image"


def test_plan_is_deterministic_in_the_generator():
    config = SequenceConfig(layout="block_causal")
    assert plan_sequence(4, True, config, _rng(3)) == plan_sequence(4, True, config, _rng(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layout="causal"), "layout"),
        (dict(min_turns=3, max_turns=2), "min_turns"),
        (dict(mask_probability=1.5), "mask_probability"),
        (dict(task_weights={"edges": 1.0}), "unknown tasks"),
        (dict(task_weights={"next_image": 0.0}), "next_image"),
        (dict(frame_index="absolute"), "frame_index"),
    ],
)
def test_sequence_config_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceConfig(**kwargs)


def test_frame_indices_compact_counts_context_before_each_target():
    config = SequenceConfig(
        layout="block_causal",
        min_turns=2,
        max_turns=2,
        mask_probability=1.0,
        drop_current_frame=0.0,
        drop_current_mask=1.0,
        drop_next_mask=1.0,
    )
    plan = plan_sequence(2, True, config, _rng())

    def indices(mode):
        layout = block_causal_layout(plan.items, [1] * plan.num_prompts, plan.context, plan.targets, mode)
        context = {(f.kind, f.turn): int(i) for f, i in zip(plan.context, layout.context_index)}
        targets = {(f.kind, f.turn): int(i) for f, i in zip(plan.targets, layout.target_index)}
        return context, targets

    context, targets = indices("compact")
    # context: I_0, I_1 (masks dropped) -> 0, 1; Mc_0 / Mn_0 / I_1 targets see only I_0 -> 1; I_2 sees I_0, I_1 -> 2
    assert context[("image", 0)] == 0 and context[("image", 1)] == 1
    assert targets[("current_mask", 0)] == 1 and targets[("image", 2)] == 2
    assert indices("slots")[1][("next_mask", 1)] == 5


# =====================================================================================================
#                                           Flow matching
# =====================================================================================================


def test_flow_matching_conventions():
    x0, noise = torch.randn(3, 4, 4, 3), torch.randn(3, 4, 4, 3)
    assert torch.equal(add_noise(x0, noise, torch.tensor(0.0)), x0)
    assert torch.equal(add_noise(x0, noise, torch.tensor(1.0)), noise)
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(add_noise(x0, noise, t)[1], 0.5 * (x0[1] + noise[1]))
    g = torch.Generator().manual_seed(0)
    times = sample_logit_normal(20000, generator=g)
    assert 0 < float(times.min()) and float(times.max()) < 1
    assert abs(float(times.mean()) - 0.5) < 0.01
    # logit of the draws is standard normal
    logits = torch.log(times / (1 - times))
    assert abs(float(logits.std()) - 1.0) < 0.03


def test_weighted_frame_mse_ignores_context_frames():
    pred, target = torch.zeros(3 * 4, 2), torch.zeros(3 * 4, 2)
    target[:4] = 100.0  # frame 0 (context, weight 0) is wildly wrong
    target[8:] = 1.0  # frame 2 (target) has error 1
    loss = weighted_frame_mse(pred, target, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([4, 4, 4]))
    assert loss.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no target"):
        weighted_frame_mse(pred, target, torch.zeros(3), torch.tensor([4, 4, 4]))


# =====================================================================================================
#                                   Assembly and the no-leakage test
# =====================================================================================================


def _batch(layout, text_cache, config_kwargs=None, seed=0, index=0):
    config = SequenceConfig(layout=layout, **(config_kwargs or {}))
    dataset = ShapesSessionsDataset(WORLD, 10, 3, config)
    planned = [dataset[(index, 0)]]
    return (
        planned,
        config,
        build_training_batch(planned, encode_plan_frames(planned), text_cache, config, seed=seed, text_dropout=0.0),
    )


def test_full_attention_batch_follows_the_official_condition(text_cache):
    planned, config, batch = _batch("full", text_cache, dict(min_turns=2, max_turns=2))
    (f, h, w) = batch.inputs.video_shapes[0].tolist()
    video = batch.inputs.hidden_states.view(f, h, w, 7)
    # target (last frame): condition and mask channels are zero; context: mask 1, condition = clean frame
    assert torch.all(video[-1, ..., 3:] == 0)
    assert torch.all(video[:-1, ..., 6] == 1)
    latents = encode_plan_frames(planned)[0]
    assert torch.allclose(video[0, ..., 3:6], latents[planned[0].plan.context[0]])
    assert batch.loss_weight.tolist()[:-1] == [0.0] * (f - 1) and batch.loss_weight[-1] > 0
    # the same t for every frame
    assert batch.timestep.numel() == 1 and 0 < batch.timestep.item() < 1000


def test_block_causal_batch_layout(text_cache):
    planned, config, batch = _batch("block_causal", text_cache, dict(min_turns=3, max_turns=3))
    plan = planned[0].plan
    n_ctx, n_tgt = len(plan.context), len(plan.targets)
    assert batch.inputs.frame_is_noisy.tolist() == [False] * n_ctx + [True] * n_tgt
    assert torch.all(batch.inputs.frame_timestep[:n_ctx] == 0) and torch.all(batch.inputs.frame_timestep[n_ctx:] > 0)
    assert batch.timestep.tolist() == [0.0]
    assert batch.inputs.frame_order[n_ctx:].tolist() == [plan.order(t) for t in plan.targets]
    (f, h, w) = batch.inputs.video_shapes[0].tolist()
    video = batch.inputs.hidden_states.view(f, h, w, 7)
    assert torch.equal(video[:n_ctx, ..., :3], video[:n_ctx, ..., 3:6])  # clean: [latent, latent, 1]
    assert torch.all(video[n_ctx:, ..., 3:] == 0)  # noisy copies: [x_t, 0, 0]


def _per_frame_prediction(module, batch):
    with torch.no_grad():
        pred = module(batch)
    sizes = batch.pixels_per_frame.tolist()
    return list(pred.split(sizes))


def test_block_causal_no_leakage(text_cache):
    """Perturbing anything after a target (later clean frames, its own clean copy, later text, other noisy targets)
    leaves that target's prediction and loss unchanged; perturbing earlier context changes it."""
    module = VincieTrainingModule(_model(), "block_causal")
    planned, config, batch = _batch(
        "block_causal",
        text_cache,
        dict(
            min_turns=3, max_turns=3, mask_probability=1.0, drop_current_frame=0, drop_current_mask=0, drop_next_mask=0
        ),
    )
    plan = planned[0].plan
    n_ctx = len(plan.context)
    orders = batch.inputs.frame_order
    base = _per_frame_prediction(module, batch)
    checked = 0
    for j, target in enumerate(plan.targets):
        frame = n_ctx + j
        order = plan.order(target)
        later_clean = [i for i in range(n_ctx) if orders[i] >= order]  # incl. the target's own clean copy
        other_noisy = [n_ctx + k for k in range(len(plan.targets)) if k != j]
        later_text = [k for k in range(plan.num_prompts) if plan.order(Text(k)) > order]
        earlier_clean = [i for i in range(n_ctx) if orders[i] < order]
        if not (later_clean or later_text):
            continue
        perturbed = _perturb(batch, later_clean + other_noisy, later_text)
        after = _per_frame_prediction(module, perturbed)
        assert torch.allclose(after[frame], base[frame], atol=1e-5), f"target {target} sees later items"
        weights = torch.zeros_like(batch.loss_weight)
        weights[frame] = 1.0
        loss = lambda p: weighted_frame_mse(torch.cat(p), batch.velocity, weights, batch.pixels_per_frame)  # noqa
        assert loss(after).item() == pytest.approx(loss(base).item(), abs=1e-6)
        # control: the same perturbation applied to earlier context does change the target
        control = _per_frame_prediction(module, _perturb(batch, earlier_clean, []))
        assert not torch.allclose(control[frame], base[frame], atol=1e-3)
        checked += 1
    assert checked >= 3


def _perturb(batch, frames, prompts):
    import copy

    out = copy.deepcopy(batch)
    sizes = out.pixels_per_frame.tolist()
    starts = np.cumsum([0] + sizes)
    hidden = out.inputs.hidden_states.clone()
    for f in frames:
        hidden[starts[f] : starts[f + 1]] += 3.0 * torch.randn_like(hidden[starts[f] : starts[f + 1]])
    out.inputs.hidden_states = hidden
    text = out.inputs.encoder_hidden_states.clone()
    segment = torch.cumsum(out.inputs.text_turn_ids >= 0, 0) - 1  # segment of each text row (one sample)
    for k in prompts:
        rows = (segment == k) & (out.inputs.text_turn_ids < 0)
        text[rows] += 3.0 * torch.randn_like(text[rows])
    out.inputs.encoder_hidden_states = text
    return out


def test_text_dropout_gives_one_unconditional_segment(text_cache):
    config = SequenceConfig(layout="block_causal", min_turns=3, max_turns=3)
    dataset = ShapesSessionsDataset(WORLD, 10, 3, config)
    planned = [dataset[(0, 0)]]
    batch = build_training_batch(planned, encode_plan_frames(planned), text_cache, config, seed=0, text_dropout=1.0)
    # one segment: its turn token (turn 0) and the empty prompt's end token, at the order of T_0
    assert batch.inputs.text_turn_ids.tolist() == [0, -1]
    assert batch.inputs.text_order.tolist() == [planned[0].plan.order(Text(0))] * 2


def test_text_dropout_with_masks_drops_the_instructions_of_the_sequences_with_masks_only(text_cache):
    config = SequenceConfig(layout="block_causal", min_turns=3, max_turns=3, mask_probability=0.5)
    dataset = ShapesSessionsDataset(WORLD, 10, 3, config)
    samples = [dataset[(0, step)] for step in range(12)]
    assert {s.plan.with_masks for s in samples} == {True, False}

    def unconditional(sample, **dropout) -> bool:
        batch = build_training_batch([sample], encode_plan_frames([sample]), text_cache, config, seed=0, **dropout)
        return batch.inputs.text_turn_ids.tolist() == [0, -1]  # one segment: the empty prompt

    for sample in samples:
        assert unconditional(sample, text_dropout=0.0, text_dropout_with_masks=1.0) == sample.plan.with_masks
        assert not unconditional(sample, text_dropout=0.0)  # default: --text_dropout for every sequence
        assert unconditional(sample, text_dropout=1.0, text_dropout_with_masks=None)
        assert unconditional(sample, text_dropout=1.0, text_dropout_with_masks=0.0) == (not sample.plan.with_masks)


# =====================================================================================================
#                                            Data order
# =====================================================================================================


def test_resumable_batch_sampler_shards_and_resumes():
    full = ResumableBatchSampler(10, 2, num_processes=2, process_index=0, seed=1)
    other = ResumableBatchSampler(10, 2, num_processes=2, process_index=1, seed=1)
    it_a, it_b = iter(full), iter(other)
    first_epoch = [next(it_a) for _ in range(2)] + [next(it_b) for _ in range(2)]
    indices = [i for batch in first_epoch for i, _ in batch]
    assert len(set(indices)) == 8  # the two processes read disjoint sessions within an epoch
    it = iter(ResumableBatchSampler(10, 2, 2, 0, seed=1))
    stream = [next(it) for _ in range(7)]
    resumed = iter(ResumableBatchSampler(10, 2, 2, 0, seed=1, start_step=4))
    assert [next(resumed) for _ in range(3)] == stream[4:]
    assert stream[3][0][1] == 3  # items carry their micro-step
    with pytest.raises(ValueError, match="train_batch_size"):
        ResumableBatchSampler(3, 2, num_processes=2)


def test_prompt_cache_returns_the_encoder_output(text_cache):
    prompts = ["Based on <IMG0>, remove the red circle. Output <IMG1>: ", ""]
    first = text_cache(prompts)
    fresh = PromptEmbeddingCache(text_cache.text_encoder, text_cache.tokenizer, enabled=False)(prompts)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, fresh))
    hits = text_cache.hits
    text_cache(prompts)
    assert text_cache.hits == hits + 2
    assert first[1].shape[0] == 1 and first[0].shape[0] > 5


def test_dataset_groups_turns_and_masks_per_micro_step():
    config = SequenceConfig(layout="block_causal", min_turns=1, max_turns=3, mask_probability=0.5)
    grouped = ShapesSessionsDataset(WORLD, 20, 3, config, group_turns=True)
    free = ShapesSessionsDataset(WORLD, 20, 3, config, group_turns=False)
    mixed_free = 0
    for step in range(8):
        plans = [grouped[(i, step)].plan for i in range(6)]
        assert len({(p.num_turns, p.with_masks) for p in plans}) == 1
        mixed_free += len({(free[(i, step)].plan.num_turns, free[(i, step)].plan.with_masks) for i in range(6)}) > 1
    assert mixed_free >= 6  # without grouping the samples of a step differ
