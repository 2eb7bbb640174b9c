"""MagicBrush-style image metrics: L1, L2, CLIP-I, CLIP-T and DINO, with transformers models.

Definitions (those of MagicBrush's ``evaluation/image_eval.py``, used by the VINCIE paper):

- **L1 / L2**: the output is resized to the reference size (PIL bicubic), both become ``[0, 1]`` float
  tensors (``ToTensor``) and L1 is the mean absolute difference, L2 the mean *squared* difference
  (``nn.MSELoss``, no square root), per pair, then averaged over pairs.
- **CLIP-I**: cosine similarity of the CLIP image embeddings (after the projection) of output and reference.
- **CLIP-T**: cosine similarity of the output's CLIP image embedding and the CLIP text embedding of the
  reference's global caption (MagicBrush ``global_descriptions.json``); the "oracle" value uses the reference.
- **DINO**: cosine similarity of the DINO ViT class tokens (after the final LayerNorm) of output and reference.

Checkpoints that give the published numbers: CLIP ViT-B/32 (``openai/clip-vit-base-patch32`` on the Hub, the
weights of ``clip.load("ViT-B/32")``) and DINO ViT-S/16 (``facebook/dino-vits16``, the weights of
``torch.hub.load("facebookresearch/dino:main", "dino_vits16")``). Preprocessing is re-implemented with PIL so the
pixels match torchvision's ``Resize(int, bicubic)`` + ``CenterCrop`` on PIL images: CLIP resizes the shorter
side to 224 and crops 224 with the CLIP mean/std; DINO resizes the shorter side to 256 and crops 224 with the
ImageNet mean/std. Where our numbers can differ from the original ``clip`` / ``torch.hub`` code:

- ``clip.load`` on CUDA runs the model in float16; we run float32 (differences around 1e-3 in cosine).
- ``clip.tokenize`` cleans text with ``ftfy`` and fails on captions over 77 tokens; the transformers
  tokenizer uses ``ftfy`` only when installed and we truncate to 77 tokens.
- The Hub port of DINO may use a different LayerNorm epsilon than the original (1e-6); check the
  checkpoint's ``config.json`` (``layer_norm_eps``); the effect is far below the reported precision.
- MagicBrush's "all-turn" setting scores outputs edited *independently* from each ground-truth input; our
  outputs come from ``generate`` (iterative, with the history), so "all-turn" here averages the iterative
  outputs of every turn; ``per_turn`` gives the per-turn table of the VINCIE paper.

Weights are loaded with ``from_pretrained`` (a Hub id resolved from the local cache when ``HF_HUB_OFFLINE=1``,
or a local folder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import PIL.Image
import torch

from .sessions import BenchmarkSession, output_path, session_seed

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METRIC_NAMES",
    "ClipScorer",
    "DinoScorer",
    "cosine_similarities",
    "evaluate_magicbrush",
    "l1_distance",
    "l2_distance",
    "resize_and_center_crop",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METRIC_NAMES = ("l1", "l2", "clip-i", "clip-t", "dino")


# =====================================================================================================
# Pixel distances
# =====================================================================================================


def _unit_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor [3, H, W] in [0, 1] (``ToTensor``)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1)


def _aligned_pair(prediction: PIL.Image.Image, reference: PIL.Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    prediction, reference = prediction.convert("RGB"), reference.convert("RGB")
    if prediction.size != reference.size:
        prediction = prediction.resize(reference.size, PIL.Image.BICUBIC)  # PIL's default filter
    return _unit_tensor(prediction), _unit_tensor(reference)


def l1_distance(prediction: PIL.Image.Image, reference: PIL.Image.Image) -> float:
    """Mean absolute difference in [0, 1] after resizing ``prediction`` to the size of ``reference``."""
    output, target = _aligned_pair(prediction, reference)
    return torch.nn.functional.l1_loss(output, target).item()


def l2_distance(prediction: PIL.Image.Image, reference: PIL.Image.Image) -> float:
    """Mean squared difference in [0, 1] (MagicBrush's "L2" is ``nn.MSELoss``) after the same resize."""
    output, target = _aligned_pair(prediction, reference)
    return torch.nn.functional.mse_loss(output, target).item()


# =====================================================================================================
# Embedding models
# =====================================================================================================


def resize_and_center_crop(image: PIL.Image.Image, resize: int, crop: int) -> PIL.Image.Image:
    """torchvision ``Resize(resize, bicubic)`` then ``CenterCrop(crop)`` on a PIL image, in plain PIL."""
    width, height = image.size
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    if size != image.size:
        image = image.resize(size, PIL.Image.BICUBIC)
    width, height = image.size
    top, left = round((height - crop) / 2.0), round((width - crop) / 2.0)
    return image.crop((left, top, left + crop, top + crop))


def _pixel_batch(images: Sequence[PIL.Image.Image], resize: int, crop: int, mean, std) -> torch.Tensor:
    tensors = [_unit_tensor(resize_and_center_crop(image.convert("RGB"), resize, crop)) for image in images]
    batch = torch.stack(tensors)  # [N, 3, crop, crop]
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def cosine_similarities(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Row-wise cosine similarity of two [N, D] tensors, in float64."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).tolist()


class ClipScorer:
    """CLIP image and text embeddings (projected, not normalized) with the original ``clip`` preprocessing.

    Args:
        model_name_or_path: A ``CLIPModel`` checkpoint (published numbers: ``openai/clip-vit-base-patch32``).
        device: Torch device.
        batch_size: Images or captions per forward.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(str(model_name_or_path)).eval().to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_name_or_path))
        self.device = device
        self.batch_size = batch_size
        self.image_size = self.model.config.vision_config.image_size
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def image_features(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """[N, D] projected image embeddings."""
        features = []
        for start in range(0, len(images), self.batch_size):
            pixels = _pixel_batch(
                images[start : start + self.batch_size], self.image_size, self.image_size, CLIP_MEAN, CLIP_STD
            )
            pooled = self.model.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            features.append(self.model.visual_projection(pooled).float().cpu())
        return torch.cat(features)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] projected text embeddings (captions truncated to the model's context length)."""
        features = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            features.append(self.model.text_projection(pooled).float().cpu())
        return torch.cat(features)


class DinoScorer:
    """DINO ViT class-token features, with the MagicBrush preprocessing (shorter side 256, center crop 224).

    Args:
        model_name_or_path: A ``ViTModel`` checkpoint (published numbers: ``facebook/dino-vits16``).
        device: Torch device.
        batch_size: Images per forward.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str = "cpu", batch_size: int = 16):
        from transformers import ViTModel

        self.model = ViTModel.from_pretrained(str(model_name_or_path), add_pooling_layer=False).eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.crop = self.model.config.image_size
        self.resize = round(self.crop * 256 / 224)  # 256 for the 224 checkpoints

    @torch.no_grad()
    def image_features(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """[N, D] class tokens after the final LayerNorm."""
        features = []
        for start in range(0, len(images), self.batch_size):
            pixels = _pixel_batch(
                images[start : start + self.batch_size], self.resize, self.crop, IMAGENET_MEAN, IMAGENET_STD
            )
            hidden = self.model(pixel_values=pixels.to(self.device)).last_hidden_state  # [B, 1 + patches, D]
            features.append(hidden[:, 0].float().cpu())
        return torch.cat(features)


@lru_cache(maxsize=4)
def cached_clip_scorer(model_name_or_path: str, device: str = "cpu", batch_size: int = 16) -> ClipScorer:
    """One :class:`ClipScorer` per (checkpoint, device), shared by the `evaluate` modules."""
    return ClipScorer(model_name_or_path, device, batch_size)


@lru_cache(maxsize=4)
def cached_dino_scorer(model_name_or_path: str, device: str = "cpu", batch_size: int = 16) -> DinoScorer:
    return DinoScorer(model_name_or_path, device, batch_size)


# =====================================================================================================
# Benchmark evaluation
# =====================================================================================================


@dataclass
class _Pair:
    session: int
    turn: int
    prediction: PIL.Image.Image
    reference: PIL.Image.Image
    caption: str | None


def _caption(captions: dict[str, Any], index: str, turn: int) -> str:
    """Caption of turn ``turn`` (0-based): MagicBrush ``{id: {"{id}-output{t}.png": text}}`` or ``{id: [texts]}``."""
    entry = captions.get(index)
    if isinstance(entry, list) and turn < len(entry):
        return str(entry[turn])
    if isinstance(entry, dict) and f"{index}-output{turn + 1}.png" in entry:
        return str(entry[f"{index}-output{turn + 1}.png"])
    raise KeyError(
        f"`captions` has no caption for session {index} turn {turn + 1} "
        f"(expected captions[{index!r}][{f'{index}-output{turn + 1}.png'!r}])."
    )


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def evaluate_magicbrush(
    sessions: Sequence[BenchmarkSession],
    outputs_dir: str | os.PathLike,
    metrics: Sequence[str] = METRIC_NAMES,
    captions: dict[str, Any] | None = None,
    clip_model: str | os.PathLike = "openai/clip-vit-base-patch32",
    dino_model: str | os.PathLike = "facebook/dino-vits16",
    device: str = "cpu",
    batch_size: int = 16,
    seed_offset: int = 0,
    max_turns: int | None = None,
) -> dict[str, Any]:
    """MagicBrush metrics of ``generate`` outputs against the per-turn references.

    Args:
        sessions: Sessions with ``references`` (MagicBrush format, see ``load_benchmark_sessions``).
        outputs_dir: Folder of the ``generate`` outputs.
        metrics: Subset of ``l1, l2, clip-i, clip-t, dino``.
        captions: MagicBrush global descriptions (required by ``clip-t``).
        clip_model: CLIP checkpoint for ``clip-i`` and ``clip-t``.
        dino_model: DINO checkpoint for ``dino``.
        device: Torch device of the models.
        batch_size: Images per forward.
        seed_offset: The ``--seed-offset`` used by ``generate`` (for the file names).
        max_turns: Evaluate at most this many turns per session.

    Returns:
        ``{"final_turn": {metric: value}, "all_turn": {...}, "per_turn": {"1": {...}, ...}, "num_sessions",
        "num_pairs", "models"}``; ``clip-t`` comes with ``clip-t_oracle`` (the reference against its caption).
    """
    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"`metrics` has unknown names {unknown}; choose from {list(METRIC_NAMES)}.")
    if "clip-t" in metrics and captions is None:
        raise ValueError(
            "`clip-t` needs the captions: pass --captions global_descriptions.json (MagicBrush), or drop clip-t."
        )

    pairs: list[_Pair] = []
    final_positions: list[int] = []
    for position, session in enumerate(sessions):
        if not session.references:
            raise ValueError(
                f"session {session.index} has no reference images: the metrics need a MagicBrush-format dataset."
            )
        seed = session_seed(session.index, position, seed_offset)
        num_turns = min(len(session.references), max_turns or len(session.references))
        for turn in range(num_turns):
            path = output_path(outputs_dir, session.index, turn, seed)
            if not path.exists():
                raise FileNotFoundError(f"missing output {path}; run `generate` first (same --seed-offset).")
            with PIL.Image.open(path) as stored:
                prediction = stored.convert("RGB")
            caption = _caption(captions, session.index, turn) if "clip-t" in metrics else None
            pairs.append(_Pair(position, turn, prediction, session.references[turn], caption))
        final_positions.append(len(pairs) - 1)

    scores = _pair_scores(pairs, metrics, clip_model, dino_model, device, batch_size)
    subsets = {"final_turn": final_positions, "all_turn": list(range(len(pairs)))}
    turns = sorted({pair.turn for pair in pairs})
    per_turn = {str(t + 1): [i for i, pair in enumerate(pairs) if pair.turn == t] for t in turns}

    def aggregate(positions: list[int]) -> dict[str, float]:
        return {name: _mean([values[i] for i in positions]) for name, values in scores.items()}

    return {
        **{setting: aggregate(positions) for setting, positions in subsets.items()},
        "per_turn": {turn: aggregate(positions) for turn, positions in per_turn.items()},
        "num_sessions": len(sessions),
        "num_pairs": len(pairs),
        "models": {"clip": str(clip_model), "dino": str(dino_model)},
    }


def _pair_scores(
    pairs: list[_Pair], metrics: Sequence[str], clip_model: Any, dino_model: Any, device: str, batch_size: int
) -> dict[str, list[float]]:
    """Per-pair values of every requested metric, in the order of ``METRIC_NAMES``."""
    predictions = [pair.prediction for pair in pairs]
    references = [pair.reference for pair in pairs]
    scores: dict[str, list[float]] = {}
    if "l1" in metrics:
        scores["l1"] = [l1_distance(p, r) for p, r in zip(predictions, references)]
    if "l2" in metrics:
        scores["l2"] = [l2_distance(p, r) for p, r in zip(predictions, references)]
    if "clip-i" in metrics or "clip-t" in metrics:
        clip = ClipScorer(clip_model, device, batch_size)
        predicted = clip.image_features(predictions)
        referenced = clip.image_features(references)
        if "clip-i" in metrics:
            scores["clip-i"] = cosine_similarities(predicted, referenced)
        if "clip-t" in metrics:
            text = clip.text_features([pair.caption for pair in pairs])
            scores["clip-t"] = cosine_similarities(predicted, text)
            scores["clip-t_oracle"] = cosine_similarities(referenced, text)
    if "dino" in metrics:
        dino = DinoScorer(dino_model, device, batch_size)
        scores["dino"] = cosine_similarities(dino.image_features(predictions), dino.image_features(references))
    return scores
