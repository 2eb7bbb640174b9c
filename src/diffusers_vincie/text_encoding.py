"""Text encoding shared by the pipeline and training: each prompt tokenized alone, one end token appended,
encoded by any ``transformers`` encoder with its padding mask, valid states kept; and a word-level tokenizer built
in code for small models and tests.

One rule serves both official text encoders. VINCIE-3B (Qwen-14B, causal) appends its end-of-text token; VINCIE-7B
(flan-ul2 ``T5EncoderModel`` + ``T5TokenizerFast``, bidirectional) tokenizes with the tokenizer's own ``</s>``
appended, pads to 150 with a mask passed to the encoder, and cuts longer prompts to 149 tokens + ``</s>``. Both keep
the prompt's tokens and the end token as rows. ``tokens[: max_length - 1] + [eos]`` with the padding masked is
exactly that for both; which encoder runs is whatever the components are.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .sequence import PROMPT_TEMPLATE, format_turn_prompt, select_valid_tokens


def load_text_encoder(path: str):
    """The text encoder saved at ``path``: the encoder alone of an encoder-decoder T5 family config (its decoder
    weights are never needed to encode prompts), ``AutoModel`` otherwise."""
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    config = AutoConfig.from_pretrained(path)
    if config.model_type in ("t5", "umt5", "mt5"):
        return T5EncoderModel.from_pretrained(path)
    return AutoModel.from_pretrained(path)


def end_token_id(tokenizer) -> int:
    """The id appended after each prompt: the tokenizer's EOS token, else its pad token."""
    for name in ("eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("The tokenizer has neither an EOS nor a pad token; set `tokenizer.eos_token` (the end token).")


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

    Gradients flow only into an encoder that is being trained: in training mode (``text_encoder.train()``) with
    trainable parameters, under grad mode. A loaded encoder is in eval mode, so inference never builds a graph.
    """
    input_ids, mask = tokenize_prompts(tokenizer, prompts, max_length)
    return encode_token_ids(text_encoder, input_ids, mask, device)


def tokenize_prompts(tokenizer, prompts: Sequence[str], max_length: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``tokens[: max_length - 1] + [end]`` per prompt, right-padded to the
    longest (pad id, mask 0)."""
    if max_length < 2:
        raise ValueError(f"`max_length` must be >= 2 (at least one token and the end token), got {max_length}.")
    end = end_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][: max_length - 1] + [end] for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return input_ids, mask


def encode_token_ids(
    text_encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, device=None
) -> list[torch.Tensor]:
    """Runs the encoder on padded ids with their mask (padding never changes a bidirectional encoder's rows) and
    keeps each prompt's masked-in rows, ``[(n_i, dim)]`` in float32. Gradients as in `encode_prompts`."""
    device = device or text_encoder.device
    trains = text_encoder.training and any(p.requires_grad for p in text_encoder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
        states = text_encoder(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
        ).last_hidden_state
    return [seg.float() for seg in select_valid_tokens(states, attention_mask.to(states.device))]


def template_boilerplate_patterns() -> tuple[str, str]:
    """Regexes of the prompt template's text before and after the instruction (``PROMPT_TEMPLATE``, any image
    index), e.g. ``"Based on <IMG3>, "`` and ``". Output <IMG4>: "``."""
    import re

    before, after = PROMPT_TEMPLATE.split("{instruction}")

    def pattern(text: str) -> str:
        return re.sub(r"\\\{(index|next_index)\\\}", r"\\d+", re.escape(text))

    return "^" + pattern(before), pattern(after) + "$"


def build_word_level_tokenizer(vocabulary: Sequence[str], strip_template: bool = False):
    """A ``PreTrainedTokenizerFast`` over whole words (lower-cased, punctuation split), built offline in code.

    Special tokens: ``<pad>`` (0), ``</s>`` (1, the end token), ``<unk>`` (2). Enough for the templated prompts of
    the synthetic world (its vocabulary plus the prompt template's words) and for tests.

    Args:
        vocabulary: the words of the instructions.
        strip_template: the tokenizer's normalizer removes the template's boilerplate (``"Based on <IMGk>, "``,
            ``". Output <IMGk+1>: "``), so a templated prompt becomes the instruction's words only. The saved
            ``tokenizer.json`` carries the rule, so a pipeline loading the tokenizer needs no change; the turn
            tokens of ``diffusers_vincie.sequence.session_text`` still tell the model which turn a prompt is.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"]
    pieces = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    template_words = (
        []
        if strip_template
        else [w for w, _ in pieces.pre_tokenize_str(format_turn_prompt("x", 0).replace("x", " ").lower())]
    )
    for word in list(vocabulary) + template_words:
        if word not in words:
            words.append(word)
    if not strip_template:
        words += [f"img{i}" for i in range(2, 65)]  # image indices of the template ("<IMG3>" -> "<", "img3", ">")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    rules = (
        [normalizers.Replace(Regex(pattern), "") for pattern in template_boilerplate_patterns()]
        if strip_template
        else []
    )
    tokenizer.normalizer = normalizers.Sequence([*rules, normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pieces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
