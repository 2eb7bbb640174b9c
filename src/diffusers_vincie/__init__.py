"""diffusers-vincie: in-context multi-turn image editing (VINCIE) for diffusers."""

__version__ = "0.1.0"
