"""Instruction encoding for training: templated prompts -> per-prompt token embeddings (+ one end token).

Follows the official recipe with any ``transformers`` encoder (``T5EncoderModel`` for the small
models, ``Qwen2Model`` for the released ones): each instruction is wrapped by
:func:`~diffusers_vincie.sequence.format_turn_prompt` and encoded by
:func:`~diffusers_vincie.text_encoding.encode_prompts`, the pipeline's own rule. The model adds the turn tokens
inside its ``forward`` (``diffusers_vincie.sequence.session_text``).

The text encoder is frozen during training, so an embedding depends only on the prompt string:
:class:`PromptEmbeddingCache` keeps them in memory (``--cache_text_embeddings``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch

from ..sequence import format_turn_prompt
from ..text_encoding import encode_prompts


class PromptEmbeddingCache:
    """In-memory LRU cache ``prompt -> embedding`` in front of :func:`encode_prompts` (frozen encoder only).

    Args:
        text_encoder, tokenizer, max_length: as in :func:`encode_prompts`.
        enabled: ``False`` encodes every call (no memory kept).
        max_entries: prompts kept; the least recently used are evicted.
    """

    def __init__(
        self, text_encoder, tokenizer, max_length: int = 150, enabled: bool = True, max_entries: int = 200_000
    ):
        self.text_encoder, self.tokenizer, self.max_length = text_encoder, tokenizer, max_length
        self.enabled, self.max_entries = enabled, max_entries
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, prompts: Sequence[str], device=None) -> list[torch.Tensor]:
        if not self.enabled:
            return [e.to(device) for e in encode_prompts(self.text_encoder, self.tokenizer, prompts, self.max_length)]
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if missing:
            encoded = encode_prompts(self.text_encoder, self.tokenizer, missing, self.max_length)
            for prompt, emb in zip(missing, encoded):
                self._cache[prompt] = emb.cpu()
        out = []
        for p in prompts:
            self._cache.move_to_end(p)
            out.append(self._cache[p].to(device))
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return out


def session_prompts(
    instructions: Sequence[str], drop: bool = False, negative_prompt: Optional[str] = None
) -> list[str]:
    """Templated prompts of one sequence's instructions; with ``drop`` (CFG text dropout) the unconditional text.

    The unconditional text is a single raw ``negative_prompt`` segment (default ``""``: only the end token),
    exactly what ``VincieInContextPipeline`` feeds its negative branch (one segment, turn 0, after ``I_0``); save
    the pipeline with ``default_negative_prompt`` equal to the training one.
    """
    if drop:
        return [negative_prompt or ""]
    return [format_turn_prompt(text, turn) for turn, text in enumerate(instructions)]


__all__ = ["PromptEmbeddingCache", "session_prompts"]
