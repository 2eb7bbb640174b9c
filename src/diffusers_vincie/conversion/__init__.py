"""Converters from the official VINCIE release (``dit.pth``, ``vae.pth``, ``llm14b/``) to diffusers/transformers."""
