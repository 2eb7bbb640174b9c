"""MagicBrush metrics: exact L1/L2, preprocessing geometry, tiny random CLIP/DINO plumbing, CLI, `evaluate` modules."""

from __future__ import annotations

import json
import math
import os
import string

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, Value

from diffusers_vincie.evaluation.__main__ import main
from diffusers_vincie.evaluation.magicbrush import (
    ClipScorer,
    DinoScorer,
    evaluate_magicbrush,
    l1_distance,
    l2_distance,
    resize_and_center_crop,
)
from diffusers_vincie.evaluation.metrics import METRIC_MODULES, metric_path
from diffusers_vincie.evaluation.sessions import load_benchmark_sessions


def solid(value: int, size=(12, 10)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, (value, value, value))


def noise(seed: int, size=(40, 36)) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A random CLIP (with a tiny BPE tokenizer) and a random DINO-like ViT, saved like Hub checkpoints."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    letters = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
    clip_config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    CLIPModel(clip_config).save_pretrained(root / "clip")
    CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=[]).save_pretrained(root / "clip")
    vit_config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    ViTModel(vit_config, add_pooling_layer=False).save_pretrained(root / "dino")
    return str(root / "clip"), str(root / "dino")


# -----------------------------------------------------------------------------------------------------
# Exact pixel metrics and preprocessing
# -----------------------------------------------------------------------------------------------------


def test_l1_l2_exact_on_known_images():
    checker = PIL.Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("RGB")
    black = solid(0, size=(2, 2))
    assert l1_distance(checker, black) == pytest.approx(0.5, abs=1e-7)
    assert l2_distance(checker, black) == pytest.approx(0.5, abs=1e-7)
    # The prediction is resized to the reference size (a constant image stays constant under bicubic).
    assert l1_distance(solid(100, (8, 8)), solid(50, (4, 6))) == pytest.approx(50 / 255, abs=1e-7)
    assert l2_distance(solid(100, (8, 8)), solid(50, (4, 6))) == pytest.approx((50 / 255) ** 2, abs=1e-7)
    assert l1_distance(noise(1), noise(1)) == 0.0


def test_resize_and_center_crop_matches_torchvision_geometry():
    columns = np.tile(np.arange(30, dtype=np.uint8), (10, 1))  # pixel value = x
    image = PIL.Image.fromarray(columns).convert("RGB")
    cropped = resize_and_center_crop(image, resize=10, crop=10)  # shorter side already 10: no resize
    assert cropped.size == (10, 10) and cropped.getpixel((0, 0))[0] == 10  # left = round((30 - 10) / 2)
    assert resize_and_center_crop(noise(0, (40, 20)), resize=16, crop=14).size == (14, 14)
    tall = resize_and_center_crop(noise(0, (20, 50)), resize=10, crop=8)
    assert tall.size == (8, 8)


# -----------------------------------------------------------------------------------------------------
# Embedding models (random weights: plumbing, shapes, ranges)
# -----------------------------------------------------------------------------------------------------


def test_clip_and_dino_scorers_shapes_and_ranges(tiny_models):
    clip_path, dino_path = tiny_models
    clip = ClipScorer(clip_path, batch_size=2)
    images = [noise(seed) for seed in range(3)]
    image_features = clip.image_features(images)
    assert image_features.shape == (3, 16) and torch.isfinite(image_features).all()
    text_features = clip.text_features(["a red hat", "blue sky over the sea", "x " * 40])  # last one is truncated
    assert text_features.shape == (3, 16)
    # Batching does not change the features.
    assert torch.allclose(ClipScorer(clip_path, batch_size=3).image_features(images), image_features, atol=1e-5)

    dino = DinoScorer(dino_path, batch_size=2)
    assert (dino.resize, dino.crop) == (37, 32)
    dino_features = dino.image_features(images)
    assert dino_features.shape == (3, 24)
    # The class token is taken after the final LayerNorm (zero mean, unit variance before its affine = identity).
    assert torch.allclose(dino_features.mean(-1), torch.zeros(3), atol=1e-4)


def magicbrush_dataset(tmp_path):
    """Two MagicBrush-format sessions (2 and 3 turns) and their `generate` outputs."""
    rows = {"img_id": [], "turn_index": [], "source_img": [], "target_img": [], "instruction": []}
    for img_id, turns in (("11", 2), ("12", 3)):
        for turn in range(1, turns + 1):
            rows["img_id"].append(img_id)
            rows["turn_index"].append(turn)
            rows["source_img"].append(noise(100 + turn))
            rows["target_img"].append(solid(10 * turn, (40, 36)))
            rows["instruction"].append(f"edit {turn}")
    features = Features(
        {
            "img_id": Value("string"),
            "turn_index": Value("int32"),
            "source_img": Image(),
            "target_img": Image(),
            "instruction": Value("string"),
        }
    )
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "magicbrush.parquet"))
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for img_id, turns in (("11", 2), ("12", 3)):
        for turn in range(turns):
            solid(10 * (turn + 1) + 51, (20, 18)).save(outputs / f"{img_id}_turn{turn}_rep0_seed{img_id}.png")
    captions = {
        img_id: {f"{img_id}-output{t}.png": f"caption {'abc'[t - 1]}" for t in range(1, 4)} for img_id in ("11", "12")
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return tmp_path / "magicbrush.parquet", outputs, tmp_path / "captions.json"


def test_metrics_cli_final_all_and_per_turn(tmp_path, tiny_models):
    clip_path, dino_path = tiny_models
    dataset, outputs, captions = magicbrush_dataset(tmp_path)
    assert (
        main(
            [
                "metrics",
                "--dataset",
                str(dataset),
                "--outputs",
                str(outputs),
                "--captions",
                str(captions),
                "--clip-model",
                clip_path,
                "--dino-model",
                dino_path,
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    results = json.loads((outputs / "magicbrush_metrics.json").read_text())
    assert (results["num_sessions"], results["num_pairs"]) == (2, 5)
    # Every output is its reference + 51 grey levels: L1 = 51/255 in every setting, L2 its square.
    for setting in (results["final_turn"], results["all_turn"], *results["per_turn"].values()):
        assert setting["l1"] == pytest.approx(51 / 255, abs=1e-6)
        assert setting["l2"] == pytest.approx((51 / 255) ** 2, abs=1e-6)
        for name in ("clip-i", "clip-t", "clip-t_oracle", "dino"):
            assert -1.0 <= setting[name] <= 1.0 and not math.isnan(setting[name])
    assert sorted(results["per_turn"]) == ["1", "2", "3"]
    # The per-turn means recombine into the all-turn mean (weights: 2, 2 and 1 pairs).
    per_turn = results["per_turn"]
    weighted = (2 * per_turn["1"]["dino"] + 2 * per_turn["2"]["dino"] + per_turn["3"]["dino"]) / 5
    assert results["all_turn"]["dino"] == pytest.approx(weighted, abs=1e-9)


def test_metrics_errors_name_the_fix(tmp_path, tiny_models):
    dataset, outputs, _ = magicbrush_dataset(tmp_path)
    sessions = load_benchmark_sessions(dataset)
    with pytest.raises(ValueError, match="--captions"):
        evaluate_magicbrush(sessions, outputs, metrics=["clip-t"])
    with pytest.raises(ValueError, match="unknown names"):
        evaluate_magicbrush(sessions, outputs, metrics=["psnr"])
    (outputs / "12_turn2_rep0_seed12.png").unlink()
    with pytest.raises(FileNotFoundError, match="run `generate` first"):
        evaluate_magicbrush(sessions, outputs, metrics=["l1"])
    assert evaluate_magicbrush(sessions, outputs, metrics=["l1"], max_turns=2)["num_pairs"] == 4
    with pytest.raises(KeyError, match="no caption for session 11 turn 1"):
        evaluate_magicbrush(sessions, outputs, metrics=["clip-t"], captions={"12": ["x"]})


# -----------------------------------------------------------------------------------------------------
# `evaluate` modules shipped in the package
# -----------------------------------------------------------------------------------------------------


def test_evaluate_modules_load_offline_and_agree_with_the_library(tiny_models):
    import evaluate

    clip_path, dino_path = tiny_models
    predictions = [noise(1), solid(100, (8, 8))]
    references = [noise(2), solid(50, (4, 6))]
    assert os.path.isfile(os.path.join(metric_path("l1"), "l1.py"))

    l1 = evaluate.load(metric_path("l1")).compute(predictions=predictions, references=references)["l1"]
    l2 = evaluate.load(metric_path("l2")).compute(predictions=predictions, references=references)["l2"]
    assert l1 == pytest.approx(np.mean([l1_distance(p, r) for p, r in zip(predictions, references)]), abs=1e-9)
    assert l2 == pytest.approx(np.mean([l2_distance(p, r) for p, r in zip(predictions, references)]), abs=1e-9)

    clip_i = evaluate.load(metric_path("clip_i")).compute(
        predictions=predictions, references=references, model_name_or_path=clip_path
    )["clip_i"]
    clip = ClipScorer(clip_path)
    expected = torch.nn.functional.cosine_similarity(
        clip.image_features(predictions), clip.image_features(references)
    ).mean()
    assert clip_i == pytest.approx(expected.item(), abs=1e-5)
    clip_t = evaluate.load(metric_path("clip_t")).compute(
        predictions=predictions, references=["a cat", "a dog"], model_name_or_path=clip_path
    )["clip_t"]
    dino = evaluate.load(metric_path("dino")).compute(
        predictions=predictions, references=references, model_name_or_path=dino_path
    )["dino"]
    assert -1 <= clip_t <= 1 and -1 <= dino <= 1
    with pytest.raises(ValueError, match="Unknown metric module"):
        metric_path("fid")
    assert set(METRIC_MODULES) == {"l1", "l2", "clip_i", "clip_t", "dino"}


def test_metrics_cli_skips_clip_t_without_captions(tmp_path, tiny_models, capsys):
    clip_path, dino_path = tiny_models
    dataset, outputs, _ = magicbrush_dataset(tmp_path)
    output_json = tmp_path / "results.json"
    assert (
        main(
            [
                "metrics",
                "--dataset",
                str(dataset),
                "--outputs",
                str(outputs),
                "--clip-model",
                clip_path,
                "--dino-model",
                dino_path,
                "--output-json",
                str(output_json),
            ]
        )
        == 0
    )
    assert "clip-t is skipped" in capsys.readouterr().out
    assert sorted(json.loads(output_json.read_text())["final_turn"]) == ["clip-i", "dino", "l1", "l2"]
