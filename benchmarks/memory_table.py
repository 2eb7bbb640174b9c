"""Weight memory of VINCIE-3B and VINCIE-7B per component, dtype and offload mode (the table in docs/memory.md).

Every component is built on the meta device (`accelerate.init_empty_weights`: no memory, no download) from its
configuration and its parameters are counted, so the table follows the configs, not hand arithmetic::

    python benchmarks/memory_table.py            # prints the markdown table of docs/memory.md

Quantized sizes: int8 and nf4 (bitsandbytes or torchao) quantize the weights of `nn.Linear` layers only; the rest
(embeddings, norms, convolutions, modulation tables) stays bf16. int8 is 1 byte per weight plus one bf16 scale per
output row; nf4 is 4 bits per weight plus one fp32 absmax per block of 64 weights (no double quantization).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

GIB = 2**30
NF4_BLOCK = 64


@dataclass
class Component:
    """One model: its name, where its config comes from, and its parameter counts."""

    model: str
    name: str
    source: str
    parameters: int
    linear_weights: int  # weights of nn.Linear layers (what int8 / nf4 quantize)
    linear_rows: int  # output rows of those layers (one int8 scale each)
    largest_leaf: int  # parameters of the largest module without children (what sequential offload moves at once)

    def gib(self, dtype: str) -> float:
        rest = self.parameters - self.linear_weights
        if dtype == "fp32":
            return 4 * self.parameters / GIB
        if dtype == "bf16":
            return 2 * self.parameters / GIB
        if dtype == "int8":
            return (self.linear_weights + 2 * self.linear_rows + 2 * rest) / GIB
        if dtype == "nf4":
            return (self.linear_weights / 2 + 4 * self.linear_weights / NF4_BLOCK + 2 * rest) / GIB
        raise ValueError(f"unknown dtype {dtype!r}")


def count(model: str, name: str, source: str, module: nn.Module) -> Component:
    if hasattr(module, "tie_weights"):  # init_empty_weights unties shared weights (T5's token embedding)
        module.tie_weights()
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    leaves = [m for m in module.modules() if not list(m.children())]
    return Component(
        model,
        name,
        source,
        parameters=sum(p.numel() for p in module.parameters()),
        linear_weights=sum(m.weight.numel() for m in linears),
        linear_rows=sum(m.out_features for m in linears),
        largest_leaf=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in leaves),
    )


# Official VINCIE-3B text encoder (llm14b/config.json: first-generation Qwen-14B).
QWEN_14B = {
    "hidden_size": 5120,
    "num_attention_heads": 40,
    "num_hidden_layers": 40,
    "intermediate_size": 27392,
    "vocab_size": 152064,
}
# Official VINCIE-3B VAE on one frame as a 2D AutoencoderKL (models/vae/s8_c16_t4_inflation_sd3.yaml).
VAE_3B = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512))
# VINCIE-7B's text encoder: Flan-UL2's T5 encoder (4096 wide, 32 layers, 16 heads of 256, gated-SiLU FFN of 16384,
# vocabulary 32128, as in the UL2 paper); its DiT is `VINCIE_7B_CONFIG`, its VAE `VincieAutoencoderKL7B`'s defaults.
UL2_ENCODER = dict(
    vocab_size=32128, d_model=4096, d_kv=256, d_ff=16384, num_layers=32, num_heads=16, feed_forward_proj="gated-silu"
)


def vae(latent_channels: int, block_out_channels: tuple) -> nn.Module:
    from diffusers import AutoencoderKL

    blocks = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=2,
        norm_num_groups=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def components() -> list[Component]:
    """Every component of both models, built on the meta device."""
    from accelerate import init_empty_weights
    from transformers import Qwen2Model, T5Config, T5EncoderModel

    from diffusers_vincie.conversion.dit import VINCIE_3B_CONFIG, VINCIE_7B_CONFIG
    from diffusers_vincie.conversion.qwen import qwen2_config_from_qwen
    from diffusers_vincie.models.autoencoder_kl_vincie_7b import VincieAutoencoderKL7B
    from diffusers_vincie.models.transformer_vincie import VincieTransformer

    with init_empty_weights():
        models = {
            ("VINCIE-3B", "DiT", "`VINCIE_3B_CONFIG`"): VincieTransformer(**VINCIE_3B_CONFIG),
            ("VINCIE-3B", "text encoder (Qwen-14B)", "llm14b config"): Qwen2Model(qwen2_config_from_qwen(QWEN_14B)),
            ("VINCIE-3B", "VAE (2D, one frame)", "s8_c16 VAE"): vae(**VAE_3B),
            ("VINCIE-7B", "DiT", "`VINCIE_7B_CONFIG`"): VincieTransformer(**VINCIE_7B_CONFIG),
            ("VINCIE-7B", "text encoder (Flan-UL2 T5)", "UL2 paper"): T5EncoderModel(T5Config(**UL2_ENCODER)),
            ("VINCIE-7B", "VAE (2D, one frame)", "t4_s16_c48 VAE"): VincieAutoencoderKL7B(),  # official defaults
        }
    return [count(*key, module) for key, module in models.items()]  # counted outside: tying works there


def offload_peaks(rows: list[Component], text_dtype: str, dit_dtype: str = "bf16") -> tuple[float, float, float]:
    """GiB of weights on the GPU at once: all of them, `enable_model_cpu_offload` (one component at a time) and
    `enable_sequential_cpu_offload` (one leaf module at a time), with the text encoder in ``text_dtype``."""
    sizes = [r.gib(text_dtype if "text" in r.name else dit_dtype if r.name == "DiT" else "bf16") for r in rows]
    return sum(sizes), max(sizes), max(2 * r.largest_leaf / GIB for r in rows)


def markdown() -> str:
    rows = components()
    lines = [
        "| model | component | config | parameters | fp32 GiB | bf16 GiB | int8 GiB | nf4 GiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sizes = " | ".join(f"{r.gib(d):.2f}" for d in ("fp32", "bf16", "int8", "nf4"))
        lines.append(f"| {r.model} | {r.name} | {r.source} | {r.parameters:,} | {sizes} |")
    lines += [
        "",
        "| model | text encoder | all on the GPU | `enable_model_cpu_offload` | `enable_sequential_cpu_offload` |",
        "|---|---|---:|---:|---:|",
    ]
    for model in ("VINCIE-3B", "VINCIE-7B"):
        parts = [r for r in rows if r.model == model]
        for text_dtype in ("bf16", "int8", "nf4"):
            peaks = " | ".join(f"{p:.2f}" for p in offload_peaks(parts, text_dtype))
            lines.append(f"| {model} | {text_dtype} | {peaks} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
