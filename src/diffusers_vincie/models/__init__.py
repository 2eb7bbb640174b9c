from .autoencoder_kl_vincie import VincieAutoencoderKL
from .autoencoder_kl_vincie_7b import VincieAutoencoderKL7B
from .transformer_vincie import VincieContextCache, VincieTransformer

__all__ = ["VincieAutoencoderKL", "VincieAutoencoderKL7B", "VincieTransformer", "VincieContextCache"]
