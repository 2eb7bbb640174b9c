from .transformer_vincie import VincieContextCache, VincieTransformer

__all__ = ["VincieTransformer", "VincieContextCache"]
