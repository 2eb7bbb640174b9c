"""Instruction encoding for training: templated prompts -> per-prompt token embeddings (+ one end token).

Follows the official recipe (spec section 8.2) with any ``transformers`` encoder (``T5EncoderModel`` for the small
models, ``Qwen2Model`` for the released ones): each instruction is wrapped by
:func:`~diffusers_vincie.assembly.format_turn_prompt`, tokenized alone without special tokens, followed by one end
token, encoded, and only its valid positions are kept (:func:`~diffusers_vincie.assembly.select_valid_tokens`).
The model adds the turn tokens (``VincieTransformer.build_session_text``).

The text encoder is frozen during training, so an embedding depends only on the prompt string:
:class:`PromptEmbeddingCache` keeps them in memory (``--cache_text_embeddings``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch

from ..assembly import format_turn_prompt, select_valid_tokens


def end_token_id(tokenizer) -> int:
    """The id appended after each prompt: the tokenizer's EOS token, else its pad token."""
    for name in ("eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("The tokenizer has neither an EOS nor a pad token; set `tokenizer.eos_token` (the end token).")


@torch.no_grad()
def encode_prompts(
    text_encoder, tokenizer, prompts: Sequence[str], max_length: int = 150, device=None
) -> list[torch.Tensor]:
    """Encodes each prompt alone: ``tokens[: max_length - 1] + [end]`` -> ``(n_i + 1, dim)`` float32 embeddings.

    Args:
        text_encoder: a ``transformers`` encoder returning ``last_hidden_state``.
        tokenizer: its tokenizer.
        prompts: already templated prompt strings.
        max_length: longest kept sequence, end token included (official: 150).
        device: where to run the encoder (default: its own device).
    """
    if max_length < 2:
        raise ValueError(f"`max_length` must be >= 2 (at least one token and the end token), got {max_length}.")
    device = device or text_encoder.device
    end = end_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][: max_length - 1] + [end] for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    states = text_encoder(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return [seg.float() for seg in select_valid_tokens(states, mask.to(states.device))]


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


def build_word_level_tokenizer(vocabulary: Sequence[str]):
    """A ``PreTrainedTokenizerFast`` over whole words (lower-cased, punctuation split), built offline in code.

    Special tokens: ``<pad>`` (0), ``</s>`` (1, the end token), ``<unk>`` (2). Enough for the templated prompts of
    the synthetic world (its vocabulary plus the prompt template's words) and for tests.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    template_words = format_turn_prompt("x", 0).replace("x", " ")
    words = ["<pad>", "</s>", "<unk>"]
    pieces = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    for word in list(vocabulary) + [w for w, _ in pieces.pre_tokenize_str(template_words.lower())]:
        if word not in words:
            words.append(word)
    words += [f"img{i}" for i in range(2, 65)]  # image indices of the template ("<IMG3>" -> "<", "img3", ">")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pieces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


__all__ = [
    "PromptEmbeddingCache",
    "build_word_level_tokenizer",
    "encode_prompts",
    "end_token_id",
    "session_prompts",
]
