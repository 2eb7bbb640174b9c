"""A quantized text encoder (torchao int8 weight-only) loaded through diffusers' `PipelineQuantizationConfig`.

Runs on CPU on a tiny random Qwen2Model, the architecture of the converted VINCIE text encoder (docs/memory.md).
bitsandbytes (nf4 / int8) needs CUDA and is documented, not tested here.
"""

import numpy as np
import PIL.Image
import pytest
import torch

torchao = pytest.importorskip("torchao", reason="torchao is in the test extra: pip install -e '.[test]'")

PROMPTS = ["add a red circle", "make the blue square bigger", "remove the green star"]


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """A tiny pipeline whose text encoder is a random Qwen2Model (64 wide, 2 layers), saved as a folder."""
    from transformers import Qwen2Config, Qwen2Model

    from diffusers_vincie import VincieInContextPipeline
    from diffusers_vincie.pipelines.sampling import official_scheduler
    from diffusers_vincie.testing import tiny_tokenizer, tiny_transformer, tiny_vae

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    encoder = Qwen2Model(config).eval()
    pipe = VincieInContextPipeline(tiny_transformer(4, 64), tiny_vae(4), encoder, tokenizer, official_scheduler())
    folder = tmp_path_factory.mktemp("qwen_pipeline")
    pipe.save_pretrained(folder)
    return folder


def load(folder, quantization_config=None):
    from diffusers_vincie import VincieInContextPipeline

    pipe = VincieInContextPipeline.from_pretrained(folder, quantization_config=quantization_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def int8_text_encoder_config():
    from diffusers.quantizers import PipelineQuantizationConfig
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return PipelineQuantizationConfig(quant_mapping={"text_encoder": TorchAoConfig(Int8WeightOnlyConfig())})


def test_int8_text_encoder_embeds_close_and_edits(saved_pipeline):
    reference, quantized = load(saved_pipeline), load(saved_pipeline, int8_text_encoder_config())

    linear = quantized.text_encoder.layers[0].mlp.up_proj
    assert type(linear.weight).__name__ == "Int8Tensor"  # the weights really are int8
    assert type(reference.text_encoder.layers[0].mlp.up_proj.weight) is torch.nn.Parameter
    transformer_weights = {type(m.weight) for m in quantized.transformer.modules() if isinstance(m, torch.nn.Linear)}
    assert transformer_weights == {torch.nn.Parameter}  # only the text encoder is quantized

    for exact, approx in zip(reference.encode_text(PROMPTS), quantized.encode_text(PROMPTS)):
        assert exact.shape == approx.shape
        cosine = torch.nn.functional.cosine_similarity(exact, approx, dim=-1)
        assert cosine.min() > 0.999, cosine
        assert (exact - approx).abs().max() < 0.05 * exact.abs().max()
        assert not torch.equal(exact, approx)  # int8 rounding changed them: the quantized path really ran

    def first_turn(pipe, instruction):
        session = pipe.start_session(
            PIL.Image.new("RGB", (32, 32), "white"), resolution=32, generator=torch.Generator().manual_seed(0)
        )
        image = session.edit(instruction, num_inference_steps=3, generator=torch.Generator().manual_seed(1))
        return np.asarray(image, dtype=np.float32)

    exact, approx = first_turn(reference, PROMPTS[0]), first_turn(quantized, PROMPTS[0])
    other_instruction = first_turn(reference, PROMPTS[2])
    assert exact.shape == approx.shape == (32, 32, 3)
    # the quantized pipeline edits like the exact one: much closer to it than another instruction's edit is
    assert np.abs(exact - approx).mean() < 0.5 * np.abs(exact - other_instruction).mean()
