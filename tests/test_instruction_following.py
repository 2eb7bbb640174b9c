"""The levers of issue 13 (a default model that reads its instructions): training-time distributions, a trainable
text side (learned word embeddings, a short template), all-MM conversion, and the instruction-sensitivity
indicator, each on tiny random models."""

import json
import math
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO, load_script

from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.evaluation.instruction_sensitivity import (
    SENSITIVITY_SEED,
    changed_fraction,
    instruction_sensitivity,
    sensitivity_sessions,
    swap_op,
    swap_word,
)
from diffusers_vincie.sequence import format_turn_prompt
from diffusers_vincie.text_encoding import build_word_level_tokenizer, encode_prompts
from diffusers_vincie.training.flow import (
    sample_logit_normal,
    sample_timesteps,
    shift_timesteps,
)

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle")


def _script(relative: str, name: str):
    sys.path.insert(0, str((REPO / relative).parent))  # the scripts import their siblings
    return load_script(REPO / relative, name)


def _reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


# =====================================================================================================
#                                          Training times
# =====================================================================================================


def test_default_timesteps_are_the_official_logit_normal():
    a = sample_timesteps(1000, generator=torch.Generator().manual_seed(3))
    b = sample_logit_normal(1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform", "mode"])
def test_high_noise_end_is_covered_by_uniform_mode_and_shift(sampling):
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(100_000, sampling, generator=g)
    shifted = sample_timesteps(100_000, sampling, shift=3.0, generator=g)
    assert 0 <= float(t.min()) and float(t.max()) <= 1
    high, high_shifted = float((t > 0.95).float().mean()), float((shifted > 0.95).float().mean())
    assert high_shifted > 2 * high  # the shift moves mass to high noise
    expected = {"logit_normal": 0.0016, "uniform": 0.05, "mode": 0.083}[sampling]  # analytic mass above 0.95
    assert high == pytest.approx(expected, rel=0.2, abs=5e-4)


def test_shift_is_the_scheduler_shift_and_bad_values_fail():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_timesteps(t, 3.0), torch.tensor([0.0, 0.75, 1.0]))
    with pytest.raises(ValueError, match="mode_scale"):
        sample_timesteps(4, "mode", mode_scale=2.0)
    with pytest.raises(ValueError, match="timestep sampling"):
        sample_timesteps(4, "cosine")
    with pytest.raises(ValueError, match="shift"):
        shift_timesteps(t, 0.0)


# =====================================================================================================
#                                             Text side
# =====================================================================================================


def _learned_embeddings(vocab_size: int, dim: int = 8):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(
        T5Config(vocab_size=vocab_size, d_model=dim, d_kv=4, d_ff=16, num_layers=0, num_heads=2, dropout_rate=0.0)
    )


def test_encode_prompts_has_gradients_only_for_an_encoder_in_training():
    tokenizer = build_word_level_tokenizer(ShapesWorld().vocabulary, strip_template=True)
    encoder = _learned_embeddings(len(tokenizer))
    prompt = [format_turn_prompt("remove the red circle", 0)]
    encoder.eval()  # as loaded by a pipeline: no graph even under grad mode
    assert not encode_prompts(encoder, tokenizer, prompt)[0].requires_grad
    encoder.train()
    embedding = encode_prompts(encoder, tokenizer, prompt)[0]
    embedding.sum().backward()
    assert encoder.shared.weight.grad is not None and encoder.shared.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert not encode_prompts(encoder, tokenizer, prompt)[0].requires_grad
    encoder.requires_grad_(False)
    assert not encode_prompts(encoder, tokenizer, prompt)[0].requires_grad


def test_short_template_tokenizer_keeps_only_the_instruction_words():
    tokenizer = build_word_level_tokenizer(ShapesWorld().vocabulary, strip_template=True)
    for turn in (0, 7, 31):
        ids = tokenizer(format_turn_prompt("change the red circle to blue", turn), add_special_tokens=False)
        assert tokenizer.convert_ids_to_tokens(ids["input_ids"]) == ["change", "the", "red", "circle", "to", "blue"]
    assert tokenizer("", add_special_tokens=False)["input_ids"] == []  # the CFG text stays empty
    long = build_word_level_tokenizer(ShapesWorld().vocabulary)
    assert len(long(format_turn_prompt("remove the red circle", 2), add_special_tokens=False)["input_ids"]) > 8


def test_build_shapes_text_encoder_writes_learned_word_embeddings(tmp_path):
    from transformers import AutoTokenizer, T5EncoderModel

    build = _script("training_scripts/build_shapes_text_encoder.py", "build_shapes_text_encoder")
    build.build(
        tmp_path / "text",
        {"resolution": 16},
        d_model=8,
        num_layers=0,
        tokenizer_kind="word_level",
        strip_template=True,
        dropout_rate=0.0,
    )
    encoder = T5EncoderModel.from_pretrained(tmp_path / "text" / "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "text" / "tokenizer")
    assert encoder.config.num_layers == 0 and encoder.config.vocab_size == len(tokenizer)
    ids = tokenizer(format_turn_prompt("remove the red circle", 3), add_special_tokens=False)["input_ids"]
    assert len(ids) == 4 and tokenizer.unk_token_id not in ids
    with pytest.raises(ValueError, match="word-level"):
        build.build(tmp_path / "bad", {}, strip_template=True)


# =====================================================================================================
#                                            All-MM blocks
# =====================================================================================================


def test_all_mm_conversion_keeps_the_function(tmp_path):
    from diffusers_vincie.models.transformer_vincie import VincieTransformer
    from diffusers_vincie.testing import tiny_transformer_config

    convert = _script("training_scripts/recipes/convert_to_all_mm.py", "convert_to_all_mm")
    torch.manual_seed(0)
    shared = VincieTransformer(**tiny_transformer_config(num_layers=3, attention_layout="block_causal"))
    with torch.no_grad():
        for p in shared.parameters():  # zero-initialised modulation tables would hide a wrong copy
            p.add_(0.05 * torch.randn_like(p))
    converted = convert.all_mm_transformer(shared)
    assert converted.config.num_mm_layers == 3 and shared.config.num_mm_layers == 1
    assert sum(p.numel() for p in converted.parameters()) > sum(p.numel() for p in shared.parameters())
    pipe_a, pipe_b = _tiny_pipeline(shared), _tiny_pipeline(converted)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    a = _edit(pipe_a, image, "remove the red circle")
    b = _edit(pipe_b, image, "remove the red circle")
    assert np.array_equal(a, b)


# =====================================================================================================
#                                       Instruction sensitivity
# =====================================================================================================


def _tiny_pipeline(transformer=None):
    from transformers import T5Config, T5EncoderModel

    from diffusers_vincie.models.transformer_vincie import VincieTransformer
    from diffusers_vincie.pipelines import VincieInContextPipeline, official_scheduler
    from diffusers_vincie.testing import tiny_transformer_config

    tokenizer = build_word_level_tokenizer(ShapesWorld().vocabulary)
    torch.manual_seed(0)
    encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    ).eval()
    if transformer is None:
        transformer = VincieTransformer(**tiny_transformer_config(attention_layout="block_causal"))
        with torch.no_grad():
            for p in transformer.parameters():
                p.add_(0.05 * torch.randn_like(p))
    pipe = VincieInContextPipeline(
        transformer=transformer.eval(),
        vae=None,
        text_encoder=encoder,
        tokenizer=tokenizer,
        scheduler=official_scheduler(),
        default_negative_prompt="",
        frame_index_mode="slots",
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _edit(pipe, image, instruction):
    g = torch.Generator().manual_seed(0)
    session = pipe.start_session(PIL.Image.fromarray(image), resolution=image.shape[0], generator=g)
    return np.asarray(session.edit(instruction, generator=g, num_inference_steps=2).convert("RGB"))


def test_word_swaps():
    assert swap_word("change the red circle to blue", COLOURS) == "change the green circle to blue"
    assert swap_word("move the purple square up", COLOURS) == "move the red square up"  # cyclic
    assert swap_word("move the purple square up", SHAPES) == "move the purple triangle up"
    assert swap_word("pan the camera left", COLOURS) is None
    assert swap_op("add a big red circle at the top left", COLOURS, SHAPES) == "remove the red circle"
    assert swap_op("remove the red circle", COLOURS, SHAPES) == "make the red circle bigger"
    assert swap_op("pan the camera left", COLOURS, SHAPES) is None
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 2] = 33
    b[1, 1] = 32  # not more than the threshold
    assert changed_fraction(a, b) == 1 / 16


def test_sensitivity_runs_on_a_tiny_random_pipeline():
    sessions = sensitivity_sessions(3, resolution=16, grid=2)
    assert [s.frames[0].shape for s in sessions] == [(16, 16, 3)] * 3
    assert (
        sessions[0].instructions
        == ShapesWorld(resolution=16, grid=2).sample_session(SENSITIVITY_SEED, num_turns=1).instructions
    )
    result = instruction_sensitivity(_tiny_pipeline(), sessions, COLOURS, SHAPES, sampling={"num_inference_steps": 2})
    for name in ("colour", "shape", "op", "noise"):
        assert math.isnan(result[name]) or 0.0 <= result[name] <= 1.0, (name, result)
    assert result["counts"]["noise"] == 3
    assert result["noise"] > 0  # another noise seed changes a random model's output


def test_sensitivity_cli_on_a_saved_tiny_pipeline(tmp_path):
    pipe = _tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    world = tmp_path / "world.json"
    world.write_text(json.dumps({"resolution": 16, "grid": 2}))
    bench = load_script(REPO / "benchmarks" / "instruction_sensitivity.py", "instruction_sensitivity_bench")
    result = bench.main(
        [
            "--model",
            str(tmp_path / "pipe"),
            "--num_sessions",
            "2",
            "--world_config",
            str(world),
            "--num_inference_steps",
            "2",
            "--output",
            str(tmp_path / "s.json"),
        ]
    )
    assert json.loads((tmp_path / "s.json").read_text())["noise"] == result["noise"]
    with pytest.raises(SystemExit) as error:
        bench.main(["--num_sessions", "0"])
    assert error.value.code == 2


# =====================================================================================================
#                                  Training script with the new flags
# =====================================================================================================


def test_training_the_text_encoder_with_high_noise_times_resumes_and_exports(tmp_path):
    """Learned word embeddings (0-layer T5, short template) trained with the transformer under uniform shifted
    times: the embeddings move, checkpoints hold them, a resume continues, sensitivity is logged, and
    export_checkpoint.py ships the trained (EMA) text encoder."""
    from safetensors.torch import load_file

    from diffusers_vincie.testing import write_tiny_components

    components = write_tiny_components(tmp_path / "components")
    build = _script("training_scripts/build_shapes_text_encoder.py", "build_shapes_text_encoder")
    build.build(
        tmp_path / "text",
        {"resolution": 16, "grid": 2},
        d_model=16,
        num_layers=0,
        tokenizer_kind="word_level",
        strip_template=True,
        dropout_rate=0.0,
    )
    train = _script("training_scripts/train_vincie.py", "train_vincie")
    out = tmp_path / "run"
    flags = [
        "--transformer_config",
        str(components / "transformer.json"),
        "--text_encoder_name_or_path",
        str(tmp_path / "text" / "text_encoder"),
        "--tokenizer_name_or_path",
        str(tmp_path / "text" / "tokenizer"),
        "--vae_name_or_path",
        "none",
        "--output_dir",
        str(out),
        "--train_batch_size",
        "2",
        "--seed",
        "0",
        "--synthetic_world",
        "--synthetic_world_config",
        '{"grid": 2}',
        "--resolution",
        "16",
        "--synthetic_num_turns",
        "2",
        "--attention_layout",
        "block_causal",
        "--train_text_encoder",
        "--text_encoder_learning_rate",
        "1e-2",
        "--timestep_sampling",
        "uniform",
        "--timestep_shift",
        "3",
        "--cache_text_embeddings",
        "--use_ema",
        "--checkpointing_steps",
        "2",
        "--sensitivity_steps",
        "2",
        "--num_sensitivity_sessions",
        "2",
        "--validation_inference_steps",
        "2",
        "--resume_from_checkpoint",
        "latest",
        "--learning_rate",
        "1e-3",
    ]
    _reset_accelerate()
    train.main(train.parse_args(flags + ["--max_train_steps", "2"]))
    _reset_accelerate()
    result = train.main(train.parse_args(flags + ["--max_train_steps", "4"]))
    assert result["global_step"] == 4
    logged = [json.loads(line) for line in (out / "sensitivity.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4] and all(0 <= r["noise"] <= 1 for r in logged)
    initial = load_file(str(tmp_path / "text" / "text_encoder" / "model.safetensors"))["shared.weight"]
    final = load_file(str(out / "pipeline" / "text_encoder" / "model.safetensors"))["shared.weight"]
    in_checkpoint = load_file(str(out / "checkpoint-4" / "model_1.safetensors"))["shared.weight"]
    assert (final - initial).abs().max() > 1e-4 and (in_checkpoint - initial).abs().max() > 1e-4

    export = _script("training_scripts/recipes/export_checkpoint.py", "export_checkpoint")
    exported = export.export(
        out, "4", tmp_path / "exported", components / "transformer.json", text_dir=tmp_path / "text"
    )
    shipped = load_file(str(exported / "text_encoder" / "model.safetensors"))["shared.weight"]
    assert torch.allclose(shipped, final)  # both the EMA of the text encoder at step 4
    assert json.loads((exported / "checkpoint.json").read_text())["trained_text_encoder"] is True


def test_sensitivity_probe_on_a_sessions_dataset_draws_from_the_named_world(tmp_path, monkeypatch):
    """Training on a streamed sessions dataset, the probe draws its held-out sessions from the world named by
    --synthetic_world_config (the videos' world.json); without it the flag is refused before any work."""
    from diffusers_vincie.data.loaders import records_to_dataset
    from diffusers_vincie.testing import write_tiny_components

    components = write_tiny_components(tmp_path / "components")
    world = {"resolution": 16, "grid": 2, "max_objects": 3}
    records = [ShapesWorld(**world).sample_session(seed, num_turns=2).to_record() for seed in range(4)]
    records_to_dataset(records).to_parquet(str(tmp_path / "sessions" / "data" / "train-00000-of-00001.parquet"))
    train = _script("training_scripts/train_vincie.py", "train_vincie")
    flags = [
        "--transformer_config",
        str(components / "transformer.json"),
        "--text_encoder_name_or_path",
        str(components / "text_encoder"),
        "--vae_name_or_path",
        "none",
        "--output_dir",
        str(tmp_path / "run"),
        "--dataset_name",
        str(tmp_path / "sessions"),
        "--streaming",
        "--resolution",
        "16",
        "--train_batch_size",
        "2",
        "--attention_layout",
        "block_causal",
        "--max_train_steps",
        "1",
        "--sensitivity_steps",
        "1",
        "--num_sensitivity_sessions",
        "2",
        "--validation_inference_steps",
        "2",
    ]
    with pytest.raises(ValueError, match="--synthetic_world_config"):
        train.parse_args(flags)
    assert not (tmp_path / "run").exists()
    probed_worlds = []
    probe = train.log_instruction_sensitivity

    def recording_probe(args, transformer, ema, components, probe_world, *rest):
        probed_worlds.append(probe_world.config)
        return probe(args, transformer, ema, components, probe_world, *rest)

    monkeypatch.setattr(train, "log_instruction_sensitivity", recording_probe)
    _reset_accelerate()
    train.main(train.parse_args(flags + ["--synthetic_world_config", json.dumps(world)]))
    assert [{key: c[key] for key in world} for c in probed_worlds] == [world]
    logged = [json.loads(line) for line in (tmp_path / "run" / "sensitivity.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1] and 0 <= logged[0]["noise"] <= 1


def test_new_flags_fail_with_the_flag_named(tmp_path):
    from diffusers_vincie.testing import write_tiny_components

    components = write_tiny_components(tmp_path / "components")
    train = _script("training_scripts/train_vincie.py", "train_vincie")
    base = [
        "--transformer_config",
        str(components / "transformer.json"),
        "--text_encoder_name_or_path",
        str(components / "text_encoder"),
        "--output_dir",
        str(tmp_path / "run"),
        "--synthetic_world",
    ]
    with pytest.raises(ValueError, match="--timestep_shift"):
        train.parse_args(base + ["--timestep_shift", "0"])
    with pytest.raises(ValueError, match="--train_text_encoder"):
        train.parse_args(base + ["--text_encoder_learning_rate", "1e-3"])
    with pytest.raises(ValueError, match="--mode_scale"):
        train.parse_args(base + ["--mode_scale", "3"])
    with pytest.raises(SystemExit):
        train.parse_args(base + ["--timestep_sampling", "cosine"])
    assert train.parse_args(base + ["--timestep_sampling", "mode", "--timestep_shift", "3"]).timestep_shift == 3
