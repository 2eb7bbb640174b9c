"""LoRA loading for VINCIE pipelines: ``pipe.load_lora_weights(...)`` / ``unload_lora_weights()`` / ``fuse_lora()``.

The adapters live on the transformer only (PEFT, diffusers key format ``transformer.<module>.lora_A/B``), the same
contract as diffusers' transformer-only loaders, so we reuse that implementation unchanged.
"""

from diffusers.loaders.lora_pipeline import SanaLoraLoaderMixin


class VincieLoraLoaderMixin(SanaLoraLoaderMixin):
    """Loads/saves LoRA layers of `VincieTransformer` (``pytorch_lora_weights.safetensors``)."""

    _lora_loadable_modules = ["transformer"]
    transformer_name = "transformer"
